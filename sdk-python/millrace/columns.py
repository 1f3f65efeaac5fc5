"""moose_lib's column annotations (`clickhouse_default`, `ClickHouseCodec`, `FixedString`, `clickhouse_datetime64`,
`aggregated`, ...) with its names and arguments, and what each adds to a contract field. Types are mapped in
`types.field_type`; the options a column carries beside its type (DEFAULT, CODEC, TTL, ...) in `column_options`.
The table is in docs/python-sdk.md."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import types as _types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import GetCoreSchemaHandler
from pydantic_core import CoreSchema, core_schema


class AnnotationError(TypeError):
    """An annotation that has no contract type; the message names the model and the field."""


# --- types ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClickhousePrecision:
    """`Annotated[datetime, ClickhousePrecision(3)]`: a DateTime64(precision) column (see `clickhouse_datetime64`)."""

    precision: int

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        # Python's datetimes hold microseconds; a column with fewer digits takes no more than it holds, so records
        # are written (JSON only) with the fraction cut to `precision` digits, rounded down. Only such fields pay.
        schema = handler(source)
        digits = self.precision
        if not isinstance(digits, int) or not 0 <= digits < 6:
            return schema

        def cut(value: Any, write: Any) -> Any:
            text = write(value)
            return _cut_fraction(text, digits) if isinstance(text, str) else text

        return {**schema, "serialization": core_schema.wrap_serializer_function_ser_schema(cut, when_used="json")}


def _cut_fraction(text: str, digits: int) -> str:
    """`2024-01-02T03:04:05.123456Z` with at most `digits` fraction digits (pydantic's format: the fraction, when
    there is one, follows the 19 characters of date and time)."""
    if len(text) <= 19 or text[19] != ".":
        return text
    end = 20
    while end < len(text) and text[end].isdigit():
        end += 1
    return text[:19] + ("." + text[20 : 20 + digits] if digits else "") + text[end:]


def clickhouse_datetime64(precision: int) -> Any:
    """A `DateTime64(precision, 'UTC')` column (0 to 9 digits after the second; ClickHouse 20.1). Python's datetimes
    hold microseconds at most; with fewer digits than 6 records are written with the fraction rounded down."""
    if isinstance(precision, bool) or not isinstance(precision, int) or not 0 <= precision <= 9:
        raise AnnotationError(f"clickhouse_datetime64({precision!r}): the precision is 0 to 9 digits after the second")
    return Annotated[_dt.datetime, ClickhousePrecision(precision=precision)]


@dataclasses.dataclass(frozen=True)
class ClickhouseSize:
    """Byte size of a date (2 or 4: `Date`) or a float (4: Float32, 8: Float64), as moose writes it."""

    size: int


@dataclasses.dataclass(frozen=True)
class ClickhouseFixedStringSize:
    size: int

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        # Records are JSON: `bytes` travel as text, so only UTF-8 can (pydantic's to_json would fail on the rest).
        schema = handler(source)
        if source is not bytes:
            return schema

        def text(value: Any, write: Any) -> Any:
            if isinstance(value, bytes):
                _utf8(value)
            return write(value)

        return core_schema.no_info_after_validator_function(
            _utf8, schema, serialization=core_schema.wrap_serializer_function_ser_schema(text, when_used="json")
        )


def _utf8(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            value.decode()
        except UnicodeDecodeError:
            raise ValueError(
                f"{value[:8]!r}... is not UTF-8 text: a FixedString field's bytes travel in JSON records; "
                "store a binary digest hex-encoded (digest.hex(), FixedString(32) for an MD5)"
            ) from None
    return value


def FixedString(size: int) -> ClickhouseFixedStringSize:  # noqa: N802 (moose_lib's name)
    """`Annotated[str, FixedString(16)]` (or `bytes`): a FixedString(size) column of at most `size` bytes (UTF-8);
    ClickHouse pads shorter values with zero bytes, which read back with them."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 65535:
        raise AnnotationError(f"FixedString({size!r}): the size is 1 to 65535 bytes")
    return ClickhouseFixedStringSize(size=size)


@dataclasses.dataclass(frozen=True)
class ClickHouseJson:
    """`Annotated[dict[str, Any], ClickHouseJson(...)]`, or over a model (with `extra='allow'`) whose fields become
    the JSON column's typed paths: a JSON column's options (ClickHouse 24.8)."""

    max_dynamic_paths: int | None = None
    max_dynamic_types: int | None = None
    skip_paths: tuple[str, ...] = ()
    skip_regexps: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class AggregateFunction:
    agg_func: str
    param_types: tuple[Any, ...]


def aggregated(result_type: Any, agg_func: str, param_types: list) -> Any:
    """An AggregateFunction(agg_func, param_types...) column whose values read as `result_type`. It holds
    aggregation states, which only ClickHouse writes: no stream may sync into its table."""
    return Annotated[result_type, AggregateFunction(agg_func=agg_func, param_types=tuple(param_types))]


@dataclasses.dataclass(frozen=True)
class SimpleAggregateFunction:
    agg_func: str
    arg_type: Any


def simple_aggregated(agg_func: str, arg_type: Any) -> Any:
    """A SimpleAggregateFunction(agg_func, arg_type) column (ClickHouse 19.8): plain values, merged with
    `agg_func` (`sum`, `max`, `anyLast`, ...)."""
    return Annotated[arg_type, SimpleAggregateFunction(agg_func=agg_func, arg_type=arg_type)]


# moose_lib's geometry types: importable, refused at declaration (field_type says what to use).
GEOMETRY = ("Point", "Ring", "LineString", "MultiLineString", "Polygon", "MultiPolygon")
Point = Annotated[tuple[float, float], "Point"]
Ring = Annotated[list[tuple[float, float]], "Ring"]
LineString = Annotated[list[tuple[float, float]], "LineString"]
MultiLineString = Annotated[list[list[tuple[float, float]]], "MultiLineString"]
Polygon = Annotated[list[list[tuple[float, float]]], "Polygon"]
MultiPolygon = Annotated[list[list[list[tuple[float, float]]]], "MultiPolygon"]


def geometry_error(where: str, name: str) -> AnnotationError:
    return AnnotationError(
        f"{where}: {name} (a ClickHouse geometry type) is not supported yet; store the coordinates as a nested model "
        "(class Coord(BaseModel): x: float; y: float), a list of them, or two float fields"
    )


# --- column options ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClickhouseDefault:
    expression: str


    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return _null_by_default(source, handler)


def clickhouse_default(expression: str) -> ClickhouseDefault:
    """`Annotated[int, clickhouse_default("0")]`: the column's DEFAULT; a record may leave the field out. The model
    takes None (the default) for it, as for MATERIALIZED and ALIAS fields, so that records without it validate; a
    record carrying it null is written without it (ClickHouse fills the DEFAULT). Its column is not Nullable."""
    return ClickhouseDefault(expression=expression)


@dataclasses.dataclass(frozen=True)
class ClickHouseTTL:
    """The column's TTL expression (ClickHouse 19.6), without the word TTL: `"ts + INTERVAL 1 DAY"`."""

    expression: str


@dataclasses.dataclass(frozen=True)
class ClickHouseCodec:
    """The column's CODEC contents (ClickHouse 19.1): `"ZSTD(3)"`, `"Delta, LZ4"`."""

    expression: str


def _null_by_default(source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
    # As moose: ClickHouse computes the value, so the model takes None (the default) for it.
    return core_schema.with_default_schema(core_schema.nullable_schema(handler(source)), default=None)


@dataclasses.dataclass(frozen=True)
class ClickHouseMaterialized:
    """A MATERIALIZED column: ClickHouse computes and stores it. The field is None unless given, and a value given
    is never written."""

    expression: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return _null_by_default(source, handler)


@dataclasses.dataclass(frozen=True)
class ClickHouseAlias:
    """An ALIAS column: computed when read, not stored; never a key. The field is None unless given."""

    expression: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return _null_by_default(source, handler)


_TypeAliasType = getattr(typing, "TypeAliasType", None)  # Python 3.12's `type X = ...`


def unalias(t: Any) -> Any:
    while _TypeAliasType is not None and isinstance(t, _TypeAliasType):
        t = t.__value__
    return t


def _optional_inner(t: Any) -> Any:
    """T for Optional[T] / T | None, else None."""
    if get_origin(t) is Union or get_origin(t) is _types.UnionType:
        args = get_args(t)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return rest[0]
    return None


def layers(t: Any) -> tuple[Any, list]:
    """The type under any Annotated and Optional layers, and the metadata of all of them (moose reads both sides
    of an Optional)."""
    meta: list = []
    while True:
        t = unalias(t)
        if get_origin(t) is Annotated:
            meta += list(t.__metadata__)
            t = t.__origin__
            continue
        inner = _optional_inner(t)
        if inner is None:
            return t, meta
        t = inner


def _expression(meta: list, cls: type, where: str) -> str | None:
    found = [m.expression for m in meta if isinstance(m, cls)]
    if len(set(found)) > 1:
        raise AnnotationError(f"{where}: {cls.__name__} is given twice, with different expressions")
    if found and (not isinstance(found[0], str) or not found[0].strip()):
        raise AnnotationError(f"{where}: {cls.__name__} needs an expression (a non-empty string)")
    return found[0] if found else None


def column_options(annotation: Any, info: Any, where: str, key: bool, nested: bool) -> dict:
    """What a field's column carries beside its type, as the contract's Field keys (only those that are set).
    `nested`: the field of a nested model (a Tuple or Nested column, or a JSON column's typed path), which has no
    column of its own."""
    from .types import field_type

    core, meta = layers(annotation)
    known = {id(m) for m in meta}
    meta += [m for m in getattr(info, "metadata", ()) if id(m) not in known]
    out: dict = {}
    if any(isinstance(m, str) and m == "LowCardinality" for m in meta) or (
        get_origin(core) is Literal and all(isinstance(v, str) for v in get_args(core))
    ):
        out["low_cardinality"] = True  # moose makes a Literal of strings LowCardinality(String)
    given = {
        "DEFAULT": ("default_expression", _expression(meta, ClickhouseDefault, where)),
        "MATERIALIZED": ("materialized", _expression(meta, ClickHouseMaterialized, where)),
        "ALIAS": ("alias", _expression(meta, ClickHouseAlias, where)),
    }
    set_ = [word for word, (_, expr) in given.items() if expr is not None]
    if len(set_) > 1:
        raise AnnotationError(f"{where}: a column can have only one of DEFAULT, MATERIALIZED or ALIAS, not {' and '.join(set_)}")
    if set_ and key and set_[0] == "ALIAS":
        raise AnnotationError(f"{where}: an ALIAS column is computed when read and cannot be a key; drop Key or ClickHouseAlias")
    codec = _expression(meta, ClickHouseCodec, where)
    ttl = _expression(meta, ClickHouseTTL, where)
    aggregate = _aggregate(meta, where, field_type)
    if nested:
        extra = set_ + [w for w, v in (("ClickHouseCodec", codec), ("ClickHouseTTL", ttl), ("an aggregate", aggregate)) if v]
        if extra:
            raise AnnotationError(
                f"{where}: {extra[0]} on a nested model's field has no column of its own; put it on the top-level field"
            )
        return {}  # no column of its own: no comment, and LowCardinality (a storage hint) is left out
    for word, (name, expr) in given.items():
        if expr is not None:
            out[name] = expr
    if codec is not None:
        out["codec"] = codec
    if ttl is not None:
        out["ttl"] = ttl
    comment = getattr(info, "description", None)
    if comment:
        out["comment"] = comment
    if aggregate is not None:
        out["aggregate"] = aggregate
    return out


def _aggregate(meta: list, where: str, field_type: Any) -> dict | None:
    full = [m for m in meta if isinstance(m, AggregateFunction)]
    simple = [m for m in meta if isinstance(m, SimpleAggregateFunction)]
    if full and simple:
        raise AnnotationError(f"{where}: a column is either aggregated(...) or simple_aggregated(...), not both")
    if not full and not simple:
        return None
    m = (full or simple)[0]
    if not isinstance(m.agg_func, str) or not m.agg_func.strip():
        raise AnnotationError(f"{where}: an aggregate needs its function's name, e.g. \"sum\"")

    def arg(t: Any, i: int) -> dict:
        ty, nullable, _ = field_type(t, f"{where} (aggregate argument {i + 1})")
        return {"optional": ty} if nullable else ty

    if full:
        return {"function": m.agg_func, "arguments": [arg(t, i) for i, t in enumerate(m.param_types)]}
    return {"function": m.agg_func, "arguments": [arg(m.arg_type, 0)], "simple": True}


__all__ = [
    "AggregateFunction", "ClickHouseAlias", "ClickHouseCodec", "ClickHouseJson", "ClickHouseMaterialized",
    "ClickHouseTTL", "ClickhouseDefault", "ClickhouseFixedStringSize", "ClickhousePrecision", "ClickhouseSize",
    "FixedString", "LineString", "MultiLineString", "MultiPolygon", "Point", "Polygon", "Ring",
    "SimpleAggregateFunction", "aggregated", "clickhouse_datetime64", "clickhouse_default", "simple_aggregated",
]  # fmt: skip
