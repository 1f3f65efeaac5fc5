"""The parts of moose_lib's surface Millrace does not provide, and how importing one fails: one `NotProvidedError`
naming the thing and what Millrace covers, never a bare ImportError. Mirrored module paths (`millrace.dmv2`, ...)
use `module_getattr`; whole modules Millrace lacks (`millrace.dmv2.workflow`, ...) fail through `_Finder`."""

from __future__ import annotations

import importlib
import sys
from importlib.abc import MetaPathFinder
from typing import Any, Callable

COVERS = "Millrace covers streams, functions (transforms and consumers), ingest APIs and tables"

AREAS = {
    "query": "MooseStack's query APIs (Api, MooseClient, the query builder)",
    "sql": "MooseStack's materialized views, views, dictionaries and SQL resources",
    "workflow": "MooseStack's workflows",
    "web": "MooseStack's web apps",
    "schema": "MooseStack's Kafka schema registry support",
    "insert": "MooseStack's direct table inserts (OlapTable.insert; send records to the table's stream instead)",
}

_BY_AREA = {
    "query": """ApiConfig Api get_moose_base_url set_moose_base_url ConsumptionApi EgressConfig get_apis get_api
        get_consumption_apis get_consumption_api QueryClient MooseClient Sql ApiResult ConsumptionApiResult JWTPayload
        Params to_column Predicate OrderDirection OrderExpr OrderItem ColumnRef col Query and_ or_""",
    "sql": """MaterializedView MaterializedViewOptions View ViewConfig SqlResource get_sql_resources get_sql_resource
        get_materialized_views get_materialized_view get_views get_view OlapDictionary OlapDictionaryConfig
        get_olap_dictionaries get_olap_dictionary DictionaryColumn DictionaryLifetime DictionaryInvalidation
        DictionaryLayout FlatLayout HashedLayout SparseHashedLayout HashedArrayLayout RangeHashedLayout CacheLayout
        SsdCacheLayout DirectLayout IpTrieLayout ComplexKeyHashedLayout ComplexKeySparseHashedLayout
        ComplexKeyHashedArrayLayout ComplexKeyCacheLayout ComplexKeySsdCacheLayout ComplexKeyDirectLayout HttpSource
        ClickHouseRemoteSource MysqlSource PostgresqlSource RedisSource MongoDbSource ExecutableSource S3Source
        ExternalSource Blocks create_aggregation create_materialized_view create_table drop_aggregation drop_table
        drop_view populate_table AggregationCreateOptions AggregationDropOptions MaterializedViewCreateOptions
        PopulateTableOptions TableCreateOptions""",
    "workflow": "TaskContext TaskConfig Task WorkflowConfig Workflow get_workflows get_workflow WorkflowClient",
    "web": "WebApp WebAppConfig WebAppMetadata ApiUtil get_moose_utils get_moose_dependency get_web_apps get_web_app",
    "schema": "SubjectLatest SubjectVersion SchemaById KafkaSchemaConfig",
    "insert": "InsertOptions InsertResult FailedRecord ValidationResult",
}

# moose_lib's exported names Millrace does not provide, to the area each belongs to.
NOT_PROVIDED: dict[str, str] = {name: area for area, names in _BY_AREA.items() for name in names.split()}

# moose_lib's modules that hold only such names: importing `millrace.<path>` fails with the area.
MODULES = {
    "dmv2.consumption": "query",
    "query_builder": "query",
    "query_param": "query",
    "dmv2.sql_resource": "sql",
    "dmv2.view": "sql",
    "dmv2.materialized_view": "sql",
    "dmv2.olap_dictionary": "sql",
    "dmv2.workflow": "workflow",
    "dmv2.web_app": "web",
    "dmv2.web_app_helpers": "web",
}


# Top-level names imported on first use: MooseCache's `redis` costs ~70 ms, which every `import millrace` would pay.
LAZY = {"MooseCache": "millrace.cache"}


class NotProvidedError(ImportError):
    """A moose_lib name or module that Millrace does not provide; the message says which and what Millrace covers."""


def not_provided(what: str, area: str, module: str) -> NotProvidedError:
    return NotProvidedError(
        f"{what} is part of {AREAS[area]}, which Millrace does not provide: {COVERS}. "
        "Keep that part of the app on MooseStack, or remove the import.",
        name=module,
    )


def module_getattr(module: str) -> Callable[[str], Any]:
    """A PEP 562 `__getattr__` for a mirrored module: moose_lib names Millrace lacks raise NotProvidedError; names the
    top-level `millrace` package has (helpers add them there) are forwarded, so each mirror stays a thin list."""

    def __getattr__(name: str) -> Any:
        area = NOT_PROVIDED.get(name)
        if area is not None:
            moose = module.replace("millrace", "moose_lib", 1)
            raise not_provided(f"{name!r} (moose_lib: `from {moose} import {name}`)", area, module)
        if module == "millrace" and name in LAZY:
            value = getattr(importlib.import_module(LAZY[name]), name)
            setattr(sys.modules["millrace"], name, value)
            return value
        if module != "millrace" and not name.startswith("_"):
            top = sys.modules.get("millrace")
            if top is not None and name in getattr(top, "__all__", ()):
                return getattr(top, name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


class _Finder(MetaPathFinder):
    """Consulted only after the normal finders found nothing: turns `import millrace.dmv2.workflow` (and the other
    modules Millrace lacks) into the clear error."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.startswith("millrace."):
            area = MODULES.get(fullname[len("millrace.") :])
            if area is not None:
                moose = fullname.replace("millrace", "moose_lib", 1)
                raise not_provided(f"The module {fullname} (moose_lib: {moose})", area, module=fullname)
        return None


def install_finder() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
