"""Field annotations users write (`Key[str]`, `Int32`, `clickhouse_decimal(10, 2)`, ...) and their mapping to the
contract's field types, and the check a transform's outputs pass (`wire_model`). moose_lib's column annotations
(`FixedString`, `clickhouse_default`, ...) are in `columns.py`. The mapping table is in docs/python-sdk.md."""

from __future__ import annotations

import datetime as _dt
import enum
import ipaddress
import types as _types
import typing
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import AfterValidator, AliasChoices, BaseModel, Strict
from pydantic import Field as _PydanticField
from typing_extensions import TypedDict

from .columns import (
    GEOMETRY,
    AnnotationError,
    ClickHouseJson,
    ClickhouseFixedStringSize,
    ClickhousePrecision,
    ClickhouseSize,
    column_options,
    geometry_error,
    unalias,
)


class _KeyMarker:
    """Marks a field as (part of) the record key: records are partitioned by it and tables ordered by it."""

    def __repr__(self) -> str:
        return "Key"


_KEY = _KeyMarker()


class Key:
    """`id: Key[str]`: a key field. Works as a subscript on every supported Python version."""

    def __class_getitem__(cls, item: Any) -> Any:
        return Annotated[item, _KEY]


_SCALAR_NAMES = {
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "float32": "FLOAT32",
    "float64": "FLOAT64",
}

_INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}


def _sized_int(name: str) -> Any:
    lo, hi = _INT_RANGES[name]
    # The string is what the reference product uses to mark the width; the bounds make pydantic refuse values
    # the column could not hold, as the ingest API does.
    return Annotated[int, name, _PydanticField(ge=lo, le=hi)]


Int8 = _sized_int("int8")
Int16 = _sized_int("int16")
Int32 = _sized_int("int32")
Int64 = _sized_int("int64")
UInt8 = _sized_int("uint8")
UInt16 = _sized_int("uint16")
UInt32 = _sized_int("uint32")
UInt64 = _sized_int("uint64")
Float32 = Annotated[float, "float32"]
Float64 = Annotated[float, "float64"]


class _DecimalMarker:
    def __init__(self, precision: int, scale: int):
        self.precision, self.scale = precision, scale

    def __repr__(self) -> str:
        return f"Decimal({self.precision}, {self.scale})"


def clickhouse_decimal(precision: int, scale: int) -> Any:
    """A `Decimal(precision, scale)` column; values with more digits are refused."""
    if not (1 <= precision <= 38 and 0 <= scale <= precision):
        raise ValueError(f"clickhouse_decimal({precision}, {scale}): need 1 <= precision <= 38 and 0 <= scale <= precision")
    return Annotated[Decimal, _DecimalMarker(precision, scale), _PydanticField(max_digits=precision, decimal_places=scale)]


# The reference product's default for a bare `Decimal`.
DEFAULT_DECIMAL = (10, 0)


def _scalar(name: str) -> dict:
    return {"scalar": name}


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _is_union(origin: Any) -> bool:
    return origin is Union or origin is _types.UnionType


def _strip_annotated(t: Any) -> tuple[Any, list]:
    """The bare type and the metadata of any `Annotated` layers around it."""
    meta: list = []
    t = unalias(t)
    while get_origin(t) is Annotated:
        args = get_args(t)
        t, meta = unalias(args[0]), meta + list(args[1:])
    return t, meta


def field_type(t: Any, where: str, depth: int = 0) -> tuple[dict, bool, bool]:
    """(FieldType as a dict for the proto message, nullable, key) for one annotation. `where` names the field."""
    if depth > 16:
        raise AnnotationError(f"{where}: types nest more than 16 deep")
    t, meta = _strip_annotated(t)
    key = any(m is _KEY for m in meta)
    origin = get_origin(t)
    if _is_union(origin):
        args = [a for a in get_args(t) if a is not type(None)]
        if len(args) != 1 or len(args) == len(get_args(t)):
            raise AnnotationError(f"{where}: unions other than Optional[T] have no column type; use one type")
        # Annotated[Optional[T], m] is read as Optional[Annotated[T, m]], as moose reads it.
        inner, _, inner_key = field_type(Annotated[(args[0], *meta)] if meta else args[0], where, depth + 1)
        return inner, True, key or inner_key
    for m in meta:
        if isinstance(m, str) and m in GEOMETRY:
            raise geometry_error(where, m)
        if isinstance(m, _DecimalMarker):
            return {"decimal": {"precision": m.precision, "scale": m.scale}}, False, key
        if isinstance(m, str) and m.lower() in _SCALAR_NAMES:
            return _scalar(_SCALAR_NAMES[m.lower()]), False, key
    special = _column_type(t, meta, where, depth)
    if special is not None:
        return special, False, key
    if t is bool:
        return _scalar("BOOL"), False, key
    if t is int:
        return _scalar("INT64"), False, key
    if t is float:
        return _scalar("FLOAT64"), False, key
    if t is str:
        return _scalar("STRING"), False, key
    if t is _dt.datetime:
        return _scalar("DATETIME"), False, key
    if t is _dt.date:
        return _scalar("DATE"), False, key
    if t is uuid.UUID:
        return _scalar("UUID"), False, key
    if t is Decimal:
        p, s = DEFAULT_DECIMAL
        return {"decimal": {"precision": p, "scale": s}}, False, key
    if origin in (list, typing.List):
        (elem,) = get_args(t) or (None,)
        if elem is None:
            raise AnnotationError(f"{where}: a list needs its element type, e.g. list[str]")
        inner, nullable, _ = field_type(elem, f"{where}[]", depth + 1)
        return {"array": {"optional": inner} if nullable else inner}, False, key
    if origin is Literal:
        values = get_args(t)
        if all(isinstance(v, str) for v in values):
            return _scalar("STRING"), False, key  # LowCardinality: see columns.column_options
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return _scalar("INT64"), False, key
        raise AnnotationError(f"{where}: a Literal must list only strings or only integers")
    if isinstance(t, type) and issubclass(t, enum.Flag):  # any combination of its bits is a value: not a list
        return _scalar("INT64"), False, key
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return _enum(t, where), False, key
    if _is_model(t):
        return {"record": {"fields": model_fields(t, depth + 1)}}, False, key
    shown = getattr(t, "__name__", None) or repr(t)
    hint = ", or Annotated[bytes, FixedString(n)]" if t is bytes else ""
    raise AnnotationError(
        f"{where}: type {shown} has no column type; use str, int (or Int8..UInt64), float, bool, datetime, date, "
        "Decimal, UUID, IPv4Address, IPv6Address, list[T], dict[K, V], Any, Optional[T], an Enum, a Literal or a "
        f"nested model{hint}"
    )


# Map keys the contract takes (MapType.key): strings, integers, dates, datetimes, UUIDs, FixedStrings.
_MAP_KEYS = {"STRING", "DATE", "DATETIME", "UUID", *(n.upper() for n in _INT_RANGES)}


def _column_type(t: Any, meta: list, where: str, depth: int) -> Optional[dict]:
    """The types moose's column annotations add (DateTime64, FixedString, sized dates and floats, IPv4/IPv6, Map,
    JSON); None for the others."""
    if t is _dt.datetime:
        p = next((m.precision for m in meta if isinstance(m, ClickhousePrecision)), None)
        if p is None:
            return None
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 9:
            raise AnnotationError(f"{where}: a DateTime64 precision is 0 to 9 digits after the second, not {p!r}")
        return {"datetime64": {"precision": p}}
    if t is str or t is bytes:
        n = next((m.size for m in meta if isinstance(m, ClickhouseFixedStringSize)), None)
        if n is None:
            return None
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 65535:
            raise AnnotationError(f"{where}: a FixedString size is 1 to 65535 bytes, not {n!r}")
        return {"fixed_string": {"size": n}}
    sizes = [m.size for m in meta if isinstance(m, ClickhouseSize)]
    if t is _dt.date and (sizes or any(m == "Date16" for m in meta if isinstance(m, str))):
        bad = [s for s in sizes if s not in (2, 4)]
        if bad:
            raise AnnotationError(f"{where}: a date is 2 or 4 bytes (Date16 or Date), not {bad[0]!r}")
        return _scalar("DATE")  # ClickHouse's Date is moose's Date16 too
    if t is float and sizes:
        if sizes[0] not in (4, 8):
            raise AnnotationError(f"{where}: a float is 4 or 8 bytes (Float32 or Float64), not {sizes[0]!r}")
        return _scalar("FLOAT32" if sizes[0] == 4 else "FLOAT64")
    if t is ipaddress.IPv4Address:
        return _scalar("IPV4")
    if t is ipaddress.IPv6Address:
        return _scalar("IPV6")
    options = next((m for m in meta if isinstance(m, ClickHouseJson)), None)
    if t is Any:
        return _json(options, [])
    if get_origin(t) in (dict, typing.Dict):
        return _map_or_json(t, options, where, depth)
    if options is not None:
        if not _is_model(t):
            raise AnnotationError(f"{where}: ClickHouseJson goes on dict[str, Any] or on a model, not on {getattr(t, '__name__', t)}")
        if t.model_config.get("extra") != "allow":
            raise AnnotationError(
                f"{where}: model {t.__name__} with ClickHouseJson must allow extra fields (its JSON's other paths): "
                "add model_config = ConfigDict(extra='allow')"
            )
        return _json(options, model_fields(t, depth + 1))
    return None


def _map_or_json(t: Any, options: Any, where: str, depth: int) -> dict:
    args = get_args(t)
    if len(args) != 2:
        raise AnnotationError(f"{where}: a dict needs its key and value types, e.g. dict[str, int] (or dict[str, Any] for JSON)")
    k, v = args
    if k is str and v is Any:  # moose: any JSON object
        return _json(options, [])
    if options is not None:
        raise AnnotationError(f"{where}: ClickHouseJson goes on dict[str, Any] or on a model, not on a map")
    key, key_nullable, _ = field_type(k, f"{where}{{key}}", depth + 1)
    if key_nullable or not (key.get("scalar") in _MAP_KEYS or "fixed_string" in key):
        raise AnnotationError(
            f"{where}: a map's keys are str, an integer type, date, datetime, UUID or a FixedString (never None)"
        )
    value, value_nullable, _ = field_type(v, f"{where}{{}}", depth + 1)
    return {"map": {"key": key, "value": {"optional": value} if value_nullable else value}}


def _json(options: Optional[ClickHouseJson], typed_paths: list[dict]) -> dict:
    j: dict = {}
    if options is not None:
        for name in ("max_dynamic_paths", "max_dynamic_types"):
            n = getattr(options, name)
            if n is not None:
                j[name] = n
        if options.skip_paths:
            j["skip_paths"] = list(options.skip_paths)
        if options.skip_regexps:
            j["skip_regexps"] = list(options.skip_regexps)
    if typed_paths:
        j["typed_paths"] = typed_paths
    return {"json": j}


def _enum(t: type, where: str) -> dict:
    """An Enum as moose maps it (ClickHouse Enum8/Enum16): a string Enum's records carry its values, numbered in
    order; an IntEnum's carry its numbers, labelled by member name (and, with StringToEnumMixin, the names too)."""
    from .compat import StringToEnumMixin

    members = list(t)
    values = [m.value for m in members]
    if values and all(isinstance(v, str) for v in values):
        if len(values) > 32767:
            raise AnnotationError(f"{where}: enum {t.__name__} has {len(values)} members; ClickHouse's Enum16 holds 32767: use str instead")
        # With StringToEnumMixin a record may carry a member's names too (Python's aliases included): aliases of
        # its label (the value); a name that is some member's value means that member, as in the SDK.
        names: dict[str, list[str]] = {}
        if issubclass(t, StringToEnumMixin):
            for name, m in t.__members__.items():
                if name not in values:
                    names.setdefault(m.value, []).append(name)
        return {
            "enumeration": {
                "members": [
                    {"label": m.value, "number": i + 1, **({"aliases": names[m.value]} if m.value in names else {})}
                    for i, m in enumerate(members)
                ]
            }
        }
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if any(not -32768 <= v <= 32767 for v in values):
            raise AnnotationError(f"{where}: enum {t.__name__} has a value outside Int16 (ClickHouse's Enum16): use int instead")
        return {
            "enumeration": {
                "members": [{"label": m.name, "number": m.value} for m in members],
                "numbers": True,
                "labels_too": issubclass(t, StringToEnumMixin),
            }
        }
    raise AnnotationError(f"{where}: enum {t.__name__} must have only string or only integer values")


def model_fields(model: type[BaseModel], depth: int = 0) -> list[dict]:
    """The contract fields of a pydantic model, in declaration order. `depth` > 0: a nested model's (a record's, or
    a JSON column's typed paths), whose fields have no column of their own (no DEFAULT, CODEC, ... nor comment)."""
    hints = typing.get_type_hints(model, include_extras=True)
    out = []
    for name, info in model.model_fields.items():
        where = f"{model.__name__}.{name}"
        ann = hints.get(name)
        if ann is None:  # pydantic keeps an Annotated's metadata on the FieldInfo
            ann = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        ty, nullable, key = field_type(ann, where, depth)
        # pydantic moves Annotated metadata onto FieldInfo; look there for Key too.
        key = key or any(m is _KEY for m in info.metadata)
        wire = _wire_name(model, name, info)
        field = {"name": wire, "type": ty, "nullable": nullable, "key": key}
        field.update(column_options(ann, info, where, key, nested=depth > 0))
        out.append(field)
    return out


def _wire_name(model: type[BaseModel], name: str, info: Any) -> str:
    """The field's name in records: the one pydantic writes with `by_alias=True`. Records are read back by the same
    name, so a model that would write one name and read another is refused."""
    wire = info.serialization_alias or info.alias or name
    va = info.validation_alias
    if va is None:
        readable = {info.alias or name}
    elif isinstance(va, str):
        readable = {va}
    elif isinstance(va, AliasChoices):
        readable = {c for c in va.choices if isinstance(c, str)}
    else:
        readable = set()
    cfg = model.model_config
    if cfg.get("populate_by_name") or cfg.get("validate_by_name"):
        readable.add(name)
    if wire not in readable:
        raise AnnotationError(
            f"{model.__name__}.{name}: records are written with the name {wire!r} but read with {sorted(readable) or 'another'}: "
            f"give the field one name both ways, e.g. Field(alias={wire!r})"
        )
    return wire


_F32_MAX = 3.4028234663852886e38


def _wire_type(ty: dict, where: str) -> Any:
    """The Python type that accepts exactly the JSON the contract allows for a field type where a value could leave
    in a shape the worker refuses: numbers, enum members, IP addresses, FixedString lengths, and those inside
    arrays, maps, records and JSON typed paths (None for the others, whose values pydantic's validation and
    serialisation already keep in shape; a DateTime64's fraction is cut to its precision by its serializer)."""
    if "scalar" in ty:
        s = ty["scalar"]
        if s.lower() in _INT_RANGES:
            lo, hi = _INT_RANGES[s.lower()]
            return Annotated[int, Strict(), _PydanticField(ge=lo, le=hi)]
        if s == "FLOAT32":
            return Annotated[float, _PydanticField(ge=-_F32_MAX, le=_F32_MAX)]
        if s == "FLOAT64":
            return float
        if s == "IPV4":  # text only: pydantic would take a number, which the worker refuses
            return Annotated[ipaddress.IPv4Address, Strict()]
        if s == "IPV6":
            return Annotated[ipaddress.IPv6Address, Strict(), AfterValidator(_no_zone)]
        return None
    if "datetime64" in ty:
        return _datetime64(ty["datetime64"].get("precision", 0))
    if "fixed_string" in ty:
        return _fixed_string(ty["fixed_string"]["size"])
    if "map" in ty:  # JSON object keys are text: an integer key is checked as the number it spells
        key, value = _wire_type(ty["map"]["key"], where + "{key}"), _wire_type(ty["map"]["value"], where + "{}")
        if key is not None and "scalar" in ty["map"]["key"] and ty["map"]["key"]["scalar"].lower() in _INT_RANGES:
            lo, hi = _INT_RANGES[ty["map"]["key"]["scalar"].lower()]
            key = Annotated[int, _PydanticField(ge=lo, le=hi)]
        if key is None and value is None:
            return None
        return dict[key if key is not None else str, value if value is not None else Any]
    if "json" in ty:  # a JSON object (a bare `Any` could hold a number); its typed paths as a record's fields
        return _wire_record(ty["json"].get("typed_paths") or [], where) or dict[str, Any]
    if "optional" in ty:
        inner = _wire_type(ty["optional"], where)
        return Optional[inner] if inner is not None else None
    if "array" in ty:
        inner = _wire_type(ty["array"], where + "[]")
        return list[inner] if inner is not None else None
    if "record" in ty:
        return _wire_record(ty["record"]["fields"], where)
    if "enumeration" in ty:  # an instance can be given any value after validation: only members leave
        e = ty["enumeration"]
        allowed = [m["number"] for m in e["members"]] if e.get("numbers") else [m["label"] for m in e["members"]]
        if e.get("labels_too"):
            allowed += [m["label"] for m in e["members"]]
        return Literal[tuple(allowed)]
    return None


def _wire_record(fields: list[dict], where: str) -> Any:
    # A TypedDict, not a model: validating into dicts costs a third of building model instances. Only the fields
    # that need a check: JSON numbers (NaN and infinity serialise as null; Python ints have no width).
    defs = {}
    for f in fields:
        t = _wire_type(f["type"], f"{where}.{f['name']}")
        if t is not None:
            # MATERIALIZED, ALIAS and DEFAULT fields are None unless given (ClickHouse computes or fills them).
            computed = f.get("materialized") or f.get("alias") or f.get("default_expression")
            defs[f["name"]] = Optional[t] if f.get("nullable") or computed else t
    return TypedDict(f"{where.split('.')[0]}Wire", defs) if defs else None  # type: ignore[operator]


def _no_zone(v: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if v.scope_id is not None:
        raise ValueError(f"{v} has a zone (%{v.scope_id}); ClickHouse's IPv6 holds the address alone: drop the zone")
    return v


# What DateTime64 holds (1900-01-01 to 2299-12-31); DateTime64(9) only to 2262-04-11 23:47:16.854775807 UTC, the
# last nanosecond an Int64 counts (Python's datetimes stop at the microsecond before it).
_DT64_MIN = _dt.datetime(1900, 1, 1, tzinfo=_dt.timezone.utc)
_DT64_MAX = {9: _dt.datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=_dt.timezone.utc)}
_DT64_END = _dt.datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=_dt.timezone.utc)


def _datetime64(precision: int) -> Any:
    last = _DT64_MAX.get(precision, _DT64_END)
    shown = "2262-04-11 23:47:16.854775807" if precision == 9 else "2299-12-31 23:59:59"

    def holds(v: _dt.datetime) -> _dt.datetime:
        t = v if v.tzinfo is not None else v.replace(tzinfo=_dt.timezone.utc)  # no offset: UTC, as the worker reads it
        if not _DT64_MIN <= t <= last:
            raise ValueError(f"{v.isoformat()} is outside what a ClickHouse DateTime64({precision}) holds (1900-01-01 to {shown} UTC)")
        return v

    return Annotated[_dt.datetime, AfterValidator(holds)]


def _fixed_string(size: int) -> Any:
    def fits(v: str) -> str:
        if len(v) * 4 > size and len(v.encode()) > size:  # a character is at most 4 bytes of UTF-8
            raise ValueError(f"{len(v.encode())} bytes do not fit FixedString({size})")
        return v

    return Annotated[str, Strict(), AfterValidator(fits)]


def wire_model(model: type[BaseModel]) -> Any:
    """A TypedDict that validates the numbers of a record's JSON as the contract types them (None: the record has
    no number to check): the check a transform's outputs pass."""
    return _wire_record(model_fields(model), model.__name__)


def key_fields(model: type[BaseModel]) -> list[str]:
    return [f["name"] for f in model_fields(model) if f["key"]]
