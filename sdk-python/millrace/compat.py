"""Small parts of moose_lib's surface that apps use beside the declarations: `StringToEnumMixin`, `MooseModel`, the
registry getters (`get_stream`, `get_tables`, ...), `StreamingFunction`, `EnhancedJSONEncoder` and dmv2's type
variables. Same names, signatures and return shapes as moose_lib."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, TypeVar, Union

from pydantic import BaseModel, GetCoreSchemaHandler
from pydantic_core import CoreSchema, core_schema

from . import resources

T = TypeVar("T", bound=BaseModel)
U = TypeVar("U", bound=BaseModel)
T_none = TypeVar("T_none", bound=Union[BaseModel, None])
U_none = TypeVar("U_none", bound=Union[BaseModel, None])
ZeroOrMany = Union[T, List[T], None]  # a transform's result: one record, several, or none


class StringToEnumMixin:
    """`class Status(StringToEnumMixin, IntEnum)`: a field of the enum accepts a member's name ("ACTIVE") as well as
    its value, and is written as its value. moose_lib looks names up only; Millrace falls back to the value, so that
    a string-valued enum written by one function reads back in the next."""

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: GetCoreSchemaHandler) -> CoreSchema:
        members = list(cls)  # type: ignore[call-overload]

        def by_name(value: Any) -> Any:
            if isinstance(value, cls):
                return value
            # A value first, then a name: as the ingest API reads a record (a name is an alias of its value), so a
            # name that is also another member's value means that member on both sides.
            try:
                return cls(value)  # type: ignore[call-arg]
            except ValueError:
                pass
            if isinstance(value, str):
                try:
                    return cls[value]  # type: ignore[index]
                except KeyError:
                    pass
            names = ", ".join(m.name for m in members)
            raise ValueError(f"Invalid enum name: {value} (expected one of {names}, or their values)")

        return core_schema.no_info_before_validator_function(by_name, core_schema.enum_schema(cls, members))


class _ModelMeta(type(BaseModel)):  # type: ignore[misc]
    def __getattr__(cls, name: str) -> Any:
        # moose_lib puts a column object for SQL on the class (`User.user_id`, `User.cols`): say why there is none.
        fields = cls.__dict__.get("__pydantic_fields__") or {}
        if name == "cols" or name in fields:
            raise AttributeError(
                f"{cls.__name__}.{name}: MooseModel's column objects serve MooseStack's query APIs, which Millrace "
                "does not provide; use the field's name (or an instance's value)"
            )
        return super().__getattr__(name)


class MooseModel(BaseModel, metaclass=_ModelMeta):
    """moose_lib's base for data models: a pydantic model (records, validation and the column types are as for
    BaseModel). Its class-level column objects, for MooseStack's SQL query building, are not provided."""


@dataclass
class StreamingFunction:
    """moose_lib's holder of a function (`StreamingFunction(run=fn)`). It declares nothing by itself: give `run` to
    `Stream.add_transform` or `add_consumer`."""

    run: Callable


class EnhancedJSONEncoder(json.JSONEncoder):
    """`json.dumps(x, cls=EnhancedJSONEncoder)`: datetimes as ISO 8601 (naive ones taken as UTC), pydantic models
    and dataclasses as dicts."""

    def default(self, o: Any) -> Any:
        if isinstance(o, _dt.datetime):
            return (o if o.tzinfo else o.replace(tzinfo=_dt.timezone.utc)).isoformat()
        if isinstance(o, BaseModel):
            return json.loads(o.model_dump_json())
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        return super().default(o)


# --- the registry getters: what the app declared so far, keyed as moose_lib keys them -----------------------------


def _latest_by(kinds: tuple[str, ...], key: Callable[[Any], str]) -> Dict[str, Any]:
    # Read the registry at call time: loading an app replaces it (resources.reset_registry).
    out: Dict[str, Any] = {}
    for (kind, _, _), res in resources.registry.resources.items():
        if kind in kinds:
            out[key(res)] = res  # a later declaration under one key wins, as in moose_lib
    return out


def get_tables() -> Dict[str, "resources.OlapTable"]:
    """Every table, keyed by name, or `<name>_<version>` for a versioned one."""
    return _latest_by(("table",), lambda t: f"{t.name}_{t.version}" if t.version else t.name)


def get_table(name: str) -> Optional["resources.OlapTable"]:
    return get_tables().get(name)


def get_streams() -> Dict[str, "resources.Stream"]:
    """Every stream and dead letter queue, keyed by name (the last declared version of a name)."""
    return _latest_by(("stream", "dead_letter_queue"), lambda s: s.name)


def get_stream(name: str) -> Optional["resources.Stream"]:
    return get_streams().get(name)


def get_ingest_apis() -> Dict[str, "resources.IngestApi"]:
    """Every ingest API, keyed by name (the last declared version of a name)."""
    return _latest_by(("ingest_api",), lambda a: a.name)


def get_ingest_api(name: str) -> Optional["resources.IngestApi"]:
    return get_ingest_apis().get(name)
