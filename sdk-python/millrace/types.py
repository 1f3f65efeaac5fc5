"""Field annotations users write (`Key[str]`, `Int32`, `clickhouse_decimal(10, 2)`, ...) and their mapping to the
contract's field types. The mapping table is in docs/python-sdk.md."""

from __future__ import annotations

import datetime as _dt
import enum
import types as _types
import typing
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel, Strict
from pydantic import Field as _PydanticField
from typing_extensions import TypedDict


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


class AnnotationError(TypeError):
    """An annotation that has no contract type; the message names the model and the field."""


def _scalar(name: str) -> dict:
    return {"scalar": name}


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _is_union(origin: Any) -> bool:
    return origin is Union or origin is _types.UnionType


def _strip_annotated(t: Any) -> tuple[Any, list]:
    """The bare type and the metadata of any `Annotated` layers around it."""
    meta: list = []
    while get_origin(t) is Annotated:
        args = get_args(t)
        t, meta = args[0], meta + list(args[1:])
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
        inner, _, inner_key = field_type(args[0], where, depth + 1)
        return inner, True, key or inner_key
    for m in meta:
        if isinstance(m, _DecimalMarker):
            return {"decimal": {"precision": m.precision, "scale": m.scale}}, False, key
        if isinstance(m, str) and m.lower() in _SCALAR_NAMES:
            return _scalar(_SCALAR_NAMES[m.lower()]), False, key
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
            return _scalar("STRING"), False, key
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
    raise AnnotationError(
        f"{where}: type {shown} has no column type; use str, int (or Int8..UInt64), float, bool, datetime, date, "
        "Decimal, UUID, list[T], Optional[T], an Enum, a Literal or a nested model"
    )


def _enum(t: type, where: str) -> dict:
    """An Enum as moose maps it (ClickHouse Enum8/Enum16): a string Enum's records carry its values, numbered in
    order; an IntEnum's carry its numbers, labelled by member name (and, with StringToEnumMixin, the names too)."""
    from .compat import StringToEnumMixin

    members = list(t)
    values = [m.value for m in members]
    if values and all(isinstance(v, str) for v in values):
        if len(values) > 32767:
            raise AnnotationError(f"{where}: enum {t.__name__} has {len(values)} members; ClickHouse's Enum16 holds 32767: use str instead")
        return {"enumeration": {"members": [{"label": v, "number": i + 1} for i, v in enumerate(values)]}}
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
    """The contract fields of a pydantic model, in declaration order."""
    hints = typing.get_type_hints(model, include_extras=True)
    out = []
    for name, info in model.model_fields.items():
        where = f"{model.__name__}.{name}"
        ann = hints.get(name, info.annotation)
        ty, nullable, key = field_type(ann, where, depth)
        # pydantic moves Annotated metadata onto FieldInfo; look there for Key too.
        key = key or any(m is _KEY for m in info.metadata)
        wire = _wire_name(model, name, info)
        out.append({"name": wire, "type": ty, "nullable": nullable, "key": key})
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
    """The Python type that accepts exactly the JSON the contract allows for a numeric field type (None for the
    others, whose values pydantic's validation and serialisation already keep in shape)."""
    if "scalar" in ty:
        s = ty["scalar"]
        if s.lower() in _INT_RANGES:
            lo, hi = _INT_RANGES[s.lower()]
            return Annotated[int, Strict(), _PydanticField(ge=lo, le=hi)]
        if s == "FLOAT32":
            return Annotated[float, _PydanticField(ge=-_F32_MAX, le=_F32_MAX)]
        if s == "FLOAT64":
            return float
        return None
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
            defs[f["name"]] = Optional[t] if f.get("nullable") else t
    return TypedDict(f"{where.split('.')[0]}Wire", defs) if defs else None  # type: ignore[operator]


def wire_model(model: type[BaseModel]) -> Any:
    """A TypedDict that validates the numbers of a record's JSON as the contract types them (None: the record has
    no number to check): the check a transform's outputs pass."""
    return _wire_record(model_fields(model), model.__name__)


def key_fields(model: type[BaseModel]) -> list[str]:
    return [f["name"] for f in model_fields(model) if f["key"]]
