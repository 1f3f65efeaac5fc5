"""What an app declares: streams, tables, transforms, consumers, ingest APIs and dead letter queues, with the
reference product's names, argument names and defaults. Declaring registers the resource; `plan.build()` turns
the registry into the contract's `Plan`."""

from __future__ import annotations

import ast
import dataclasses
import datetime as _dt
import functools
import hashlib
import inspect
import linecache
import re
import warnings
from enum import Enum
from typing import Any, Callable, ClassVar, Generic, Literal, Optional, TypeVar, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from .types import model_fields

T = TypeVar("T", bound=BaseModel)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Resource names may hold `-` as moose allows (`raw-events`): topic names take it, and SQL quotes it.
_RESOURCE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,127}$")
_VERSION = re.compile(r"^[0-9A-Za-z_.]{1,32}$")
_PATH = re.compile(r"^[A-Za-z0-9_.-]{1,64}(/[A-Za-z0-9_.-]{1,64}){0,7}$")


class LifeCycle(str, Enum):
    FULLY_MANAGED = "FULLY_MANAGED"
    DELETION_PROTECTED = "DELETION_PROTECTED"
    EXTERNALLY_MANAGED = "EXTERNALLY_MANAGED"


class _Config(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")


class StreamConfig(_Config):
    parallelism: int = 1
    retention_period: int = 604800
    destination: Optional[Any] = None
    version: Optional[str] = None
    life_cycle: Optional[LifeCycle] = None
    default_dead_letter_queue: Optional[Any] = None
    metadata: Optional[dict] = None
    # Millrace: the ingest API drops fields the model does not declare instead of refusing the record.
    allow_extra_fields: bool = False


class TransformConfig(_Config):
    version: Optional[str] = None
    dead_letter_queue: Optional[Any] = None
    metadata: Optional[dict] = None


class ConsumerConfig(_Config):
    version: Optional[str] = None
    dead_letter_queue: Optional[Any] = None


# OlapConfig's nested classes (OlapConfig.TableIndex, ...), defined here so that its annotations resolve.
class TableIndex(BaseModel):
    name: str
    expression: str
    type: str
    arguments: list[str] = []
    granularity: int = 1


class TableProjection(BaseModel):
    name: str
    body: str


class TableConstraint(BaseModel):
    name: str
    expression: str
    type: Literal["CHECK", "ASSUME"]


class SeedFilter(BaseModel):
    limit: Optional[int] = None
    where: Optional[str] = None


class OlapConfig(_Config):
    """A table's engine and options, as the reference product names them (docs/python-sdk.md, "Tables")."""

    TableIndex: ClassVar[type] = TableIndex
    TableProjection: ClassVar[type] = TableProjection
    TableConstraint: ClassVar[type] = TableConstraint
    SeedFilter: ClassVar[type] = SeedFilter

    order_by_fields: list[str] = []
    order_by_expression: Optional[str] = None
    partition_by: Optional[str] = None
    sample_by_expression: Optional[str] = None
    primary_key_expression: Optional[str] = None
    # An EngineConfig (millrace.engines) or the legacy ClickHouseEngines enum; checked by OlapTable.
    engine: Optional[Any] = None
    version: Optional[str] = None
    metadata: Optional[dict] = None
    life_cycle: Optional[LifeCycle] = None
    # Values are strings in the reference product; numbers and booleans are taken too.
    settings: Optional[dict[str, Union[bool, int, float, str]]] = None
    ttl: Optional[str] = None
    indexes: list[TableIndex] = []
    database: Optional[str] = None
    # Accepted so that apps declare them as they do, and refused by OlapTable: Millrace does not provide them.
    cluster: Optional[str] = None
    projections: list[TableProjection] = []
    constraints: list[TableConstraint] = []
    seed_filter: Optional[SeedFilter] = None
    # Millrace: a stream's sync inserts once a batch has this many rows, bytes, or waited this long (None: the
    # defaults, 100000 rows, 16 MiB, 1000 ms).
    sync_max_rows: Optional[int] = None
    sync_max_bytes: Optional[int] = None
    sync_max_delay_ms: Optional[int] = None

    def model_post_init(self, __context: Any) -> None:
        if self.order_by_fields and self.order_by_expression:
            raise ValueError("Provide either order_by_fields or order_by_expression, not both.")


class IngestConfig(_Config):
    destination: Optional[Any] = None
    dead_letter_queue: Optional[Any] = None
    version: Optional[str] = None
    # Served at POST /ingest/<path> in place of /ingest/<name>[/<version>].
    path: Optional[str] = None
    metadata: Optional[dict] = None


@dataclasses.dataclass
class IngestConfigWithDestination(Generic[T]):
    """An ingest API's config with its (required) destination stream, as moose_lib's `IngestApi` takes it."""

    destination: Any
    dead_letter_queue: Optional[Any] = None
    version: Optional[str] = None
    path: Optional[str] = None
    metadata: Optional[dict] = None


class IngestPipelineConfig(_Config):
    ingest_api: Union[bool, IngestConfig] = True
    stream: Union[bool, StreamConfig] = True
    table: Union[bool, OlapConfig] = True
    dead_letter_queue: Union[bool, StreamConfig] = True
    version: Optional[str] = None
    life_cycle: Optional[LifeCycle] = None
    metadata: Optional[dict] = None
    path: Optional[str] = None
    # Deprecated (moose_lib too): what `ingest_api` now says; taken when `ingest_api` is not given.
    ingest: Optional[Union[bool, IngestConfig]] = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_ingest(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("ingest") is not None:
            warnings.warn("IngestPipelineConfig(ingest=...) is deprecated: use ingest_api=...", DeprecationWarning, stacklevel=4)
            if "ingest_api" not in data:
                data = {**data, "ingest_api": data["ingest"]}
        return data


class DeclarationError(ValueError):
    """A declaration Millrace cannot accept; the message says which and why."""


def _check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not _RESOURCE_NAME.match(name):
        raise DeclarationError(f"{kind} name {name!r}: use letters, digits, _ and -, starting with a letter or _ (at most 128)")
    return name


def _check_version(kind: str, name: str, version: Optional[str]) -> str:
    if version is None or version == "":
        return ""
    if not isinstance(version, str) or not _VERSION.match(version):
        raise DeclarationError(f"{kind} {name!r}: version {version!r} must be 1-32 of letters, digits, _ and .")
    return version


def physical(name: str, version: str) -> str:
    return f"{name}_{version.replace('.', '_')}" if version else name


class Registry:
    """Everything one app declares, in declaration order."""

    def __init__(self) -> None:
        self.resources: dict[tuple[str, str, str], Any] = {}
        self.transforms: list[Transform] = []
        self.consumers: list[Consumer] = []

    def add(self, kind: str, res: Any) -> None:
        k = (kind, res.name, res.version)
        if k in self.resources:
            shown = f"{res.name!r}" + (f" version {res.version!r}" if res.version else "")
            raise DeclarationError(f"{kind} {shown} is declared twice: give one another name or a version")
        self.resources[k] = res

    def of(self, kind: str) -> list:
        return [r for (k, _, _), r in self.resources.items() if k == kind]

    def add_function(self, f: Union["Transform", "Consumer"]) -> None:
        """Function names are unique in an app: a worker finds each function, and its offsets, by name."""
        for other in [*self.transforms, *self.consumers]:
            if other.name == f.name:
                raise DeclarationError(
                    f"{f.describe()} would be named {f.name!r}, as {other.describe()} is: function names must be unique; "
                    "give one of them a version (TransformConfig/ConsumerConfig(version=...)) or rename a stream"
                )
        (self.consumers if f.consumer else self.transforms).append(f)

    def functions(self) -> dict[str, Union["Transform", "Consumer"]]:
        return {f.name: f for f in [*self.transforms, *self.consumers]}


registry = Registry()


def reset_registry() -> Registry:
    """Forget every declaration (used before importing an app, and by tests)."""
    global registry
    registry = Registry()
    return registry


class _Typed:
    """`Stream[Model](...)`: the subscript picks the record model, as on the reference product."""

    _model: ClassVar[Optional[type]] = None
    _typed_cache: ClassVar[dict] = {}

    def __class_getitem__(cls, model: Any) -> Any:
        key = (cls, model)
        if key not in _Typed._typed_cache:
            shown = getattr(model, "__name__", repr(model))
            _Typed._typed_cache[key] = type(f"{cls.__name__}[{shown}]", (cls,), {"_model": model})
        return _Typed._typed_cache[key]

    def _require_model(self, kind: str, name: str) -> type:
        m = type(self)._model
        if not (isinstance(m, type) and issubclass(m, BaseModel)):
            raise DeclarationError(f"{kind} {name!r}: give its record model as {kind}[Model](...), with a pydantic model")
        return m


def _stable_name(*parts: str) -> str:
    """A transform's or consumer's name from its parts; hashed when too long, so it stays valid and stable."""
    name = "__".join(p for p in parts if p)
    if len(name) > 128:
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = f"{name[:115]}_{digest}"
    return name


class Stream(_Typed, Generic[T]):
    """A typed Kafka topic."""

    _kind: ClassVar[str] = "stream"

    def __init__(self, name: str, config: Optional[StreamConfig] = None, **kwargs: Any):
        self.name = _check_name("Stream", name)
        self.config = config or StreamConfig(**kwargs)
        self.model = self._require_model("Stream", name)
        self.version = _check_version("Stream", name, self.config.version)
        self.fields = model_fields(self.model)
        if self.config.parallelism < 1:
            raise DeclarationError(f"Stream {name!r}: parallelism must be at least 1")
        if self.config.retention_period < 1:
            raise DeclarationError(f"Stream {name!r}: retention_period must be at least 1 second")
        self.transformations: list[Transform] = []
        self.consumers: list[Consumer] = []
        registry.add(self._kind, self)

    @property
    def topic(self) -> str:
        return physical(self.name, self.version)

    def _dlq_for(self, own: Optional["DeadLetterQueue"]) -> Optional["DeadLetterQueue"]:
        return own or getattr(self.config, "default_dead_letter_queue", None)

    def add_transform(self, destination: "Stream", transformation: Callable[[Any], Any], config: Optional[TransformConfig] = None) -> None:
        config = config or TransformConfig()
        if not isinstance(destination, Stream) or isinstance(destination, DeadLetterQueue):
            raise DeclarationError(f"Stream {self.name!r}: add_transform's destination must be a Stream")
        if not callable(transformation):
            raise DeclarationError(f"Stream {self.name!r}: add_transform's transformation must be callable")
        version = _check_version("Transform", self.name, config.version)
        name = _stable_name(self.topic, destination.topic, version.replace(".", "_"))
        # A second transform between the same streams needs a version of its own: a name derived from the function
        # or from declaration order would hand one function's committed offsets to another when the app changes.
        if any(t.name == name for t in self.transformations):
            raise DeclarationError(
                f"Stream {self.name!r} already has a transform to {destination.name!r}"
                + (f" at version {version!r}" if version else "")
                + ": both run when the second has a version of its own, TransformConfig(version=...)"
                + " (MooseStack would keep only the first, silently)"
            )
        t = Transform(name, self, destination, transformation, config, self._dlq_for(config.dead_letter_queue))
        registry.add_function(t)
        self.transformations.append(t)

    def add_consumer(self, consumer: Callable[[Any], Any], config: Optional[ConsumerConfig] = None) -> None:
        config = config or ConsumerConfig()
        if not callable(consumer):
            raise DeclarationError(f"Stream {self.name!r}: add_consumer's consumer must be callable")
        version = _check_version("Consumer", self.name, config.version)
        label = _consumer_label(consumer)
        # `consumer` keeps consumers' names apart from transforms' (`<source>__<destination>`).
        name = _stable_name(self.topic, "consumer", label, version.replace(".", "_"))
        if any(c.name == name for c in self.consumers):
            what = "an identical lambda" if label.startswith("lambda_") else f"a consumer named {label!r}"
            raise DeclarationError(
                f"Stream {self.name!r} already has {what}: give the second one ConsumerConfig(version=...) or another name"
            )
        c = Consumer(name, self, consumer, config, self._dlq_for(config.dead_letter_queue))
        registry.add_function(c)
        self.consumers.append(c)

    def routed(self, values: Any) -> "RoutedMessage":
        """Records for this stream, as a multi-transform returns them: one record, a list, or None."""
        return RoutedMessage(destination=self, values=values)

    def set_multi_transform(self, transformation: Callable[[Any], Any]) -> None:
        """A transform whose function returns `stream.routed(record)` values, sending each record to the stream it
        names (several, one or none per input). One per stream."""
        if not callable(transformation):
            raise DeclarationError(f"Stream {self.name!r}: set_multi_transform's transformation must be callable")
        if any(t.multi for t in self.transformations):
            raise DeclarationError(f"Stream {self.name!r} already has a multi-transform: one function routes to every stream")
        t = Transform(_stable_name(self.topic, "multi_transform"), self, None, transformation, TransformConfig(), self._dlq_for(None))
        registry.add_function(t)
        self.transformations.append(t)

    def send(self, values: Any, timeout: float = 30.0) -> None:
        """Write one record or a list of them, keyed by the model's Key fields; returns once the broker acknowledged
        every one, raises otherwise."""
        from .producer import send

        send(self, values, timeout)


def _upstream_of(stream: Stream) -> set[int]:
    """ids of the streams whose records reach `stream` through the app's transforms (plain ones, and multi-transforms
    whose routes their code names)."""
    from .routes import routed_streams

    feeds: dict[int, list[Stream]] = {}
    for t in registry.transforms:
        targets = [t.destination] if not t.multi else (routed_streams(t.fn) or [])
        for d in targets:
            feeds.setdefault(id(d), []).append(t.source)
    seen: set[int] = set()
    todo = [stream]
    while todo:
        for src in feeds.get(id(todo.pop()), []):
            if id(src) not in seen:
                seen.add(id(src))
                todo.append(src)
    return seen


class RoutedMessage:
    """Records a multi-transform sends to `destination` (made by `destination.routed(values)`)."""

    __slots__ = ("destination", "values")

    def __init__(self, destination: Stream, values: Any):
        self.destination, self.values = destination, values


# moose_lib's name for it.
_RoutedMessage = RoutedMessage


class Transform:
    """A transform; with no destination, a multi-transform (its outputs name their streams)."""

    def __init__(self, name: str, source: Stream, destination: Optional[Stream], fn: Callable, config: TransformConfig, dlq: Any):
        self.name, self.source, self.destination, self.fn, self.config, self.dead_letter_queue = name, source, destination, fn, config, dlq
        self.consumer = False
        self.multi = destination is None

    def routes(self) -> list[Stream]:
        """A multi-transform's streams: those its function calls `.routed` on, read from its code; every other stream
        of the app when the code does not say (say the stream is picked from a dict at run time)."""
        from .routes import routed_streams

        found = routed_streams(self.fn)
        if found is None:
            # Every stream the source does not feed already: a route back upstream would loop records forever
            # (the control plane refuses such cycles).
            upstream = _upstream_of(self.source)
            found = [s for s in registry.of("stream") if s is not self.source and id(s) not in upstream]
        return sorted({id(s): s for s in found}.values(), key=lambda s: s.topic)

    def describe(self) -> str:
        if self.multi:
            return f"the multi-transform of {self.source.name!r}"
        return f"the transform from {self.source.name!r} to {self.destination.name!r}"


class Consumer:
    def __init__(self, name: str, source: Stream, fn: Callable, config: ConsumerConfig, dlq: Any):
        self.name, self.source, self.destination, self.fn, self.config, self.dead_letter_queue = name, source, None, fn, config, dlq
        self.consumer = True

    def describe(self) -> str:
        return f"a consumer of {self.source.name!r}"


def _consumer_label(fn: Callable) -> str:
    """A consumer's own part of its name: its function's name, or for a lambda `lambda_<hash of its code>`, so that
    adding, removing or reordering other consumers never renames it (editing the lambda does)."""
    target = fn.func if isinstance(fn, functools.partial) else fn
    name = getattr(target, "__name__", None) or type(target).__name__
    if name != "<lambda>" and _NAME.match(name):
        return name
    return f"lambda_{_code_digest(target)}"


def _code_digest(fn: Callable) -> str:
    """A short digest of a lambda's syntax tree (blind to spacing, comments and where it sits), or of its bytecode
    when its source cannot be read."""
    code = getattr(fn, "__code__", None)
    node = _lambda_node(fn, code) if code is not None else None
    if node is not None:
        text = ast.dump(node, include_attributes=False)
    elif code is not None:
        text = repr((code.co_code, code.co_consts, code.co_names))
    else:
        text = repr(fn)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _lambda_node(fn: Callable, code: Any) -> Optional[ast.Lambda]:
    try:
        file = inspect.getsourcefile(fn)
        source = "".join(linecache.getlines(file)) if file else ""
        tree = ast.parse(source) if source else None
    except (OSError, TypeError, SyntaxError, ValueError):
        return None
    if tree is None:
        return None
    here = [n for n in ast.walk(tree) if isinstance(n, ast.Lambda) and n.lineno == code.co_firstlineno]
    if len(here) > 1 and hasattr(code, "co_positions"):
        # Several lambdas on the line: the one whose span holds this code's own columns.
        cols = [c for (line, _, c, _) in code.co_positions() if c is not None and line == code.co_firstlineno]
        if cols:
            inside = [n for n in here if n.col_offset <= min(cols) and (n.end_lineno > n.lineno or (n.end_col_offset or 0) >= max(cols))]
            here = sorted(inside, key=lambda n: n.end_col_offset - n.col_offset)[:1] or here
    return here[0] if here else None


class OlapTable(_Typed, Generic[T]):
    """A ClickHouse table."""

    def __init__(self, name: str, config: Optional[OlapConfig] = None, **kwargs: Any):
        self.name = _check_name("OlapTable", name)
        self.config = config or OlapConfig(**kwargs)
        self.model = self._require_model("OlapTable", name)
        self.version = _check_version("OlapTable", name, self.config.version)
        self.fields = model_fields(self.model)
        known = {f["name"] for f in self.fields}
        for f in self.config.order_by_fields:
            if f not in known:
                raise DeclarationError(f"OlapTable {name!r}: order_by_fields names {f!r}, which is not a field of {self.model.__name__}")
        from .engines import engine_config

        try:
            self.engine = engine_config(self.config.engine, name)
        except ValueError as e:
            raise DeclarationError(f"OlapTable {name!r}: {e}") from None
        unsupported = {
            "cluster": "ON CLUSTER DDL",
            "projections": "projections",
            "constraints": "table constraints",
            "seed_filter": "`moose seed`",
        }
        for option, what in unsupported.items():
            if getattr(self.config, option):
                raise DeclarationError(f"OlapTable {name!r}: OlapConfig({option}=...) is not supported: Millrace does not provide {what}; remove it")
        for index in self.config.indexes:
            if index.granularity < 1:
                raise DeclarationError(f"OlapTable {name!r}: index {index.name!r} needs granularity >= 1")
        registry.add("table", self)


class DeadLetterModel(BaseModel, Generic[T]):
    """A record that failed, as the dead letter queue holds it. Reads the reference product's camelCase names too."""

    model_config = ConfigDict(populate_by_name=True)

    original_record: Any = Field(validation_alias=AliasChoices("original_record", "originalRecord"))
    error_message: str = Field(validation_alias=AliasChoices("error_message", "errorMessage"))
    error_type: str = Field(validation_alias=AliasChoices("error_type", "errorType"))
    failed_at: _dt.datetime = Field(validation_alias=AliasChoices("failed_at", "failedAt"))
    source: Literal["api", "transform", "consumer", "table"]
    # Provenance: where the record was read and which function failed on it ("" / -1 where it does not apply).
    function: str = ""
    topic: str = ""
    partition: int = -1
    offset: int = -1
    original_record_truncated: Optional[bool] = Field(default=None, validation_alias=AliasChoices("original_record_truncated", "originalRecordTruncated"))
    original_bytes: Optional[int] = Field(default=None, validation_alias=AliasChoices("original_bytes", "originalBytes"))

    def as_typed(self) -> T:
        """The original record, parsed as the model it was declared with."""
        args = type(self).__pydantic_generic_metadata__.get("args") or ()
        if not args:
            raise TypeError("as_typed() needs a typed dead letter: DeadLetterModel[Model]")
        return args[0].model_validate(self.original_record)


class DeadLetterQueue(Stream, Generic[T]):
    """A stream of `DeadLetterModel[T]` records; the contract's DeadLetterQueue resource."""

    _kind: ClassVar[str] = "dead_letter_queue"

    def __init__(self, name: str, config: Optional[StreamConfig] = None, **kwargs: Any):
        self.record_model = type(self)._model
        if not (isinstance(self.record_model, type) and issubclass(self.record_model, BaseModel)):
            raise DeclarationError(f"DeadLetterQueue {name!r}: give its record model as DeadLetterQueue[Model](...)")
        self.name = _check_name("DeadLetterQueue", name)
        self.config = config or StreamConfig(**kwargs)
        self.model = DeadLetterModel[self.record_model]
        self.version = _check_version("DeadLetterQueue", name, self.config.version)
        self.fields = []
        self.transformations, self.consumers = [], []
        registry.add(self._kind, self)


class IngestApi(_Typed, Generic[T]):
    """An HTTP endpoint, `POST /ingest/<name>[/<version>]`, writing into a stream."""

    def __init__(self, name: str, config: Optional[Union[IngestConfig, IngestConfigWithDestination]] = None, **kwargs: Any):
        self.name = _check_name("IngestApi", name)
        if isinstance(config, IngestConfigWithDestination):
            config = IngestConfig(
                destination=config.destination, dead_letter_queue=config.dead_letter_queue, version=config.version, path=config.path, metadata=config.metadata
            )
        self.config = config or IngestConfig(**kwargs)
        self.model = self._require_model("IngestApi", name)
        self.version = _check_version("IngestApi", name, self.config.version)
        if not isinstance(self.config.destination, Stream):
            raise DeclarationError(f"IngestApi {name!r}: IngestConfig(destination=...) must be a Stream")
        self.destination = self.config.destination
        self.dead_letter_queue = self.config.dead_letter_queue
        self.path = self.config.path.strip("/") if self.config.path else ""
        if self.config.path is not None and (not _PATH.match(self.path) or {".", ".."} & set(self.path.split("/"))):
            raise DeclarationError(f"IngestApi {name!r}: path {self.config.path!r} must be 1 to 8 segments of letters, digits, _, . and - (not . or ..) joined by /")
        registry.add("ingest_api", self)


def _part(value: Union[bool, BaseModel], cls: type) -> Optional[BaseModel]:
    """A pipeline part's config: None when off, the given config, or the default one."""
    if value is False or value is None:
        return None
    return cls() if value is True else value


class IngestPipeline(_Typed, Generic[T]):
    """A table, a stream synced into it, an ingest API writing into the stream and a dead letter queue, as the
    config asks."""

    def __init__(self, name: str, config: Optional[IngestPipelineConfig] = None, **kwargs: Any):
        self.name = _check_name("IngestPipeline", name)
        config = config or IngestPipelineConfig(**kwargs)
        self.config = config
        model = self._require_model("IngestPipeline", name)
        table_cfg = _part(config.table, OlapConfig)
        stream_cfg = _part(config.stream, StreamConfig)
        api_cfg = _part(config.ingest_api, IngestConfig)
        dlq_cfg = _part(config.dead_letter_queue, StreamConfig)
        if api_cfg is not None and stream_cfg is None:
            raise DeclarationError(
                f"IngestPipeline {name!r}: an ingest API writes into the pipeline's stream, so ingest_api=True needs "
                "stream=True (or set ingest_api=False)"
            )

        def inherit(cfg: BaseModel) -> BaseModel:
            updates = {}
            if config.version is not None and getattr(cfg, "version", None) is None:
                updates["version"] = config.version
            if config.life_cycle is not None and "life_cycle" in type(cfg).model_fields and cfg.life_cycle is None:
                updates["life_cycle"] = config.life_cycle
            # The pipeline's description describes each part that has none of its own.
            if config.metadata and "metadata" in type(cfg).model_fields and not cfg.metadata:
                updates["metadata"] = config.metadata
            return cfg.model_copy(update=updates)

        self.table = OlapTable[model](name, inherit(table_cfg)) if table_cfg is not None else None
        self.dead_letter_queue = DeadLetterQueue[model](f"{name}DeadLetterQueue", inherit(dlq_cfg)) if dlq_cfg is not None else None
        self.stream = None
        if stream_cfg is not None:
            stream_cfg = inherit(stream_cfg)
            updates = {}
            if self.table is not None and stream_cfg.destination is None:
                updates["destination"] = self.table
            if self.dead_letter_queue is not None and stream_cfg.default_dead_letter_queue is None:
                updates["default_dead_letter_queue"] = self.dead_letter_queue
            self.stream = Stream[model](name, stream_cfg.model_copy(update=updates))
        self.ingest_api = None
        if api_cfg is not None:
            api_cfg = inherit(api_cfg).model_copy(
                update={
                    "destination": self.stream,
                    "dead_letter_queue": api_cfg.dead_letter_queue or self.dead_letter_queue,
                    "path": api_cfg.path if api_cfg.path is not None else config.path,
                }
            )
            self.ingest_api = IngestApi[model](name, api_cfg)

    def _get(self, part: str) -> Any:
        value = getattr(self, part)
        if value is None:
            raise DeclarationError(f"IngestPipeline {self.name!r} has no {part.replace('_', ' ')}: its config turned it off")
        return value

    def get_table(self) -> OlapTable:
        return self._get("table")

    def get_stream(self) -> Stream:
        return self._get("stream")

    def get_dead_letter_queue(self) -> DeadLetterQueue:
        return self._get("dead_letter_queue")

    def get_ingest_api(self) -> IngestApi:
        return self._get("ingest_api")
