"""moose_lib's column annotations, without a stack: each one's contract field (type and column options), the
refusals, the plan they make, the models' behaviour (MATERIALIZED and ALIAS fields default to None, DateTime64
fractions cut to their precision) and the checks a transform's outputs pass."""

from __future__ import annotations

import datetime as dt
import importlib
import ipaddress
import json
from typing import Annotated, Any, Literal, Optional

import pytest
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field

import millrace
from millrace import (
    AnnotationError,
    ClickHouseAlias,
    ClickHouseCodec,
    ClickHouseJson,
    ClickHouseMaterialized,
    ClickhousePrecision,
    ClickhouseSize,
    ClickHouseTTL,
    FixedString,
    Int32,
    Key,
    OlapConfig,
    OlapTable,
    Stream,
    UInt8,
    UInt64,
    aggregated,
    clickhouse_datetime64,
    clickhouse_default,
    resources,
    simple_aggregated,
)
from millrace import plan as plan_mod
from millrace.runner import Runner
from millrace.types import model_fields
from millrace.v1 import resources_pb2


@pytest.fixture(autouse=True)
def fresh_registry():
    resources.reset_registry()
    yield


class Attrs(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    hits: UInt64


class Item(BaseModel):
    sku: Annotated[str, "LowCardinality"]
    qty: Int32


class Every(BaseModel):
    id: Key[str]
    at: clickhouse_datetime64(3)
    digest: Annotated[str, FixedString(16)]
    raw: Annotated[bytes, FixedString(4)]
    blob: dict[str, Any]
    anything: Any
    tuned: Annotated[dict[str, Any], ClickHouseJson(max_dynamic_paths=10, max_dynamic_types=3, skip_paths=("a.b",), skip_regexps=("^tmp",))]
    attrs: Annotated[Attrs, ClickHouseJson()]
    counts: dict[str, Int32]
    scores: dict[UInt8, Optional[float]]
    ip4: ipaddress.IPv4Address
    ip6: Optional[ipaddress.IPv6Address] = None
    status: Literal["new", "done"]
    region: Annotated[str, "LowCardinality"]
    items: list[Item]
    inner: Item
    retries: Annotated[int, clickhouse_default("3")]
    day: Annotated[dt.date, ClickHouseMaterialized("toDate(at)")]
    shout: Annotated[str, ClickHouseAlias("upper(region)")]
    note: Annotated[str, ClickHouseCodec("ZSTD(3)"), ClickHouseTTL("at + INTERVAL 1 DAY")]
    total: int = Field(description="what was paid")
    uniques: aggregated(UInt64, "uniqExact", [str, Optional[int]])
    running: simple_aggregated("sum", UInt64)
    short_day: Annotated[dt.date, ClickhouseSize(2)]
    small: Annotated[float, ClickhouseSize(4)]


S = lambda name: {"scalar": name}  # noqa: E731
ITEM = {"record": {"fields": [
    {"name": "sku", "type": S("STRING"), "nullable": False, "key": False},
    {"name": "qty", "type": S("INT32"), "nullable": False, "key": False},
]}}  # fmt: skip

EXPECTED = {
    "id": ({"type": S("STRING"), "key": True}),
    "at": {"type": {"datetime64": {"precision": 3}}},
    "digest": {"type": {"fixed_string": {"size": 16}}},
    "raw": {"type": {"fixed_string": {"size": 4}}},
    "blob": {"type": {"json": {}}},
    "anything": {"type": {"json": {}}},
    "tuned": {"type": {"json": {"max_dynamic_paths": 10, "max_dynamic_types": 3, "skip_paths": ["a.b"], "skip_regexps": ["^tmp"]}}},
    "attrs": {"type": {"json": {"typed_paths": [
        {"name": "name", "type": S("STRING"), "nullable": False, "key": False},
        {"name": "hits", "type": S("UINT64"), "nullable": False, "key": False},
    ]}}},
    "counts": {"type": {"map": {"key": S("STRING"), "value": S("INT32")}}},
    "scores": {"type": {"map": {"key": S("UINT8"), "value": {"optional": S("FLOAT64")}}}},
    "ip4": {"type": S("IPV4")},
    "ip6": {"type": S("IPV6"), "nullable": True},
    "status": {"type": S("STRING"), "low_cardinality": True},
    "region": {"type": S("STRING"), "low_cardinality": True},
    "items": {"type": {"array": ITEM}},
    "inner": {"type": ITEM},
    "retries": {"type": S("INT64"), "default_expression": "3"},
    "day": {"type": S("DATE"), "materialized": "toDate(at)"},
    "shout": {"type": S("STRING"), "alias": "upper(region)"},
    "note": {"type": S("STRING"), "codec": "ZSTD(3)", "ttl": "at + INTERVAL 1 DAY"},
    "total": {"type": S("INT64"), "comment": "what was paid"},
    "uniques": {"type": S("UINT64"), "aggregate": {"function": "uniqExact", "arguments": [S("STRING"), {"optional": S("INT64")}]}},
    "running": {"type": S("UINT64"), "aggregate": {"function": "sum", "arguments": [S("UINT64")], "simple": True}},
    "short_day": {"type": S("DATE")},
    "small": {"type": S("FLOAT32")},
}  # fmt: skip


def test_every_column_annotation_maps_to_its_contract_field():
    fields = model_fields(Every)
    assert [f["name"] for f in fields] == list(EXPECTED), "declaration order"
    for f in fields:
        want = {"name": f["name"], "nullable": False, "key": False, **EXPECTED[f["name"]]}
        assert f == want, f["name"]


def test_a_plan_with_every_annotation_is_a_valid_contract_plan():
    Stream[Every]("every")
    OlapTable[Every]("every_table", OlapConfig(order_by_fields=["id"]))
    p = plan_mod.build()
    assert isinstance(p, resources_pb2.Plan)
    again = json_format.ParseDict(json_format.MessageToDict(p, preserving_proto_field_name=True), resources_pb2.Plan())
    assert again == p
    (table,) = p.tables
    f = {x.name: x for x in table.fields}
    assert f["at"].type.datetime64.precision == 3 and f["digest"].type.fixed_string.size == 16
    assert f["ip4"].type.scalar == resources_pb2.IPV4 and f["ip6"].type.scalar == resources_pb2.IPV6
    assert f["scores"].type.map.value.optional.scalar == resources_pb2.FLOAT64
    assert f["tuned"].type.json.max_dynamic_paths == 10 and list(f["tuned"].type.json.skip_paths) == ["a.b"]
    assert [x.name for x in f["attrs"].type.json.typed_paths] == ["name", "hits"]
    assert f["status"].low_cardinality and f["retries"].default_expression == "3"
    assert f["day"].materialized == "toDate(at)" and not f["day"].nullable and f["shout"].alias == "upper(region)"
    assert f["note"].codec == "ZSTD(3)" and f["note"].ttl == "at + INTERVAL 1 DAY" and f["total"].comment == "what was paid"
    assert f["uniques"].HasField("aggregate") and not f["uniques"].aggregate.simple
    assert f["running"].aggregate.simple and f["running"].aggregate.function == "sum"
    assert not f["id"].HasField("aggregate")
    assert [x.name for x in p.streams[0].fields] == list(EXPECTED)


def test_the_names_are_where_moose_lib_has_them():
    names = ["clickhouse_datetime64", "ClickhousePrecision", "ClickhouseSize", "FixedString", "ClickhouseFixedStringSize",
             "clickhouse_default", "ClickhouseDefault", "ClickHouseMaterialized", "ClickHouseAlias", "ClickHouseCodec",
             "ClickHouseTTL", "ClickHouseJson", "aggregated", "AggregateFunction", "simple_aggregated",
             "SimpleAggregateFunction", "Point", "Ring", "LineString", "MultiLineString", "Polygon", "MultiPolygon"]  # fmt: skip
    data_models = importlib.import_module("millrace.data_models")
    for name in names:
        assert name in millrace.__all__ and name in data_models.__all__, name
        assert getattr(data_models, name) is getattr(millrace, name), name
    assert millrace.types.AnnotationError is AnnotationError


# --- the models behave as moose's ----------------------------------------------------------------------------------


class Computed(BaseModel):
    id: Key[str]
    at: dt.datetime
    day: Annotated[dt.date, ClickHouseMaterialized("toDate(at)")]
    label: Annotated[str, ClickHouseAlias("upper(id)")]


def test_materialized_and_alias_fields_are_none_unless_given_but_their_columns_are_not_nullable():
    c = Computed(id="a", at=dt.datetime(2024, 1, 2))
    assert c.day is None and c.label is None
    assert Computed.model_validate_json('{"id":"a","at":"2024-01-02T00:00:00Z","day":null}').day is None
    assert Computed(id="a", at=dt.datetime(2024, 1, 2), day=dt.date(2024, 1, 2)).day == dt.date(2024, 1, 2)
    f = {x["name"]: x for x in model_fields(Computed)}
    assert not f["day"]["nullable"] and not f["label"]["nullable"]
    # A transform's output carries them as null, which the output check lets through.
    out = Runner("f", lambda r: r, Computed, Computed, consumer=False).run([b'{"id":"a","at":"2024-01-02T00:00:00Z"}'])
    assert json.loads(out[0][0]) == {"id": "a", "at": "2024-01-02T00:00:00Z", "day": None, "label": None}


class Times(BaseModel):
    id: Key[str]
    ms: clickhouse_datetime64(3)
    s: clickhouse_datetime64(0)
    us: clickhouse_datetime64(6)
    ns: clickhouse_datetime64(9)
    direct: Annotated[dt.datetime, ClickhousePrecision(1)]
    maybe: Optional[clickhouse_datetime64(2)] = None
    many: list[clickhouse_datetime64(3)] = []
    plain: dt.datetime


def test_datetime64_values_are_written_with_at_most_their_precisions_digits_rounded_down():
    t = dt.datetime(2024, 1, 2, 3, 4, 5, 987654, tzinfo=dt.timezone.utc)
    m = Times(id="a", ms=t, s=t, us=t, ns=t, direct=t, maybe=t, many=[t, t.replace(microsecond=0)], plain=t)
    j = json.loads(m.model_dump_json())
    assert j["ms"] == "2024-01-02T03:04:05.987Z" and j["s"] == "2024-01-02T03:04:05Z"
    assert j["us"] == j["ns"] == j["plain"] == "2024-01-02T03:04:05.987654Z"
    assert j["direct"] == "2024-01-02T03:04:05.9Z" and j["maybe"] == "2024-01-02T03:04:05.98Z"
    assert j["many"] == ["2024-01-02T03:04:05.987Z", "2024-01-02T03:04:05Z"]
    assert m.model_dump()["ms"] == t, "Python values keep their microseconds"
    offset = t.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert json.loads(Times(id="b", ms=offset, s=t, us=t, ns=t, direct=t, plain=t).model_dump_json())["ms"] == "2024-01-02T05:04:05.987+02:00"
    # What a transform writes.
    out = Runner("f", lambda r: r, Times, Times, consumer=False).run([m.model_dump_json().encode()])
    assert json.loads(out[0][0])["ms"] == "2024-01-02T03:04:05.987Z"


# --- refusals --------------------------------------------------------------------------------------------------------


class NoExtra(BaseModel):
    a: int


class InnerDefault(BaseModel):
    a: Annotated[int, clickhouse_default("1")]


class InnerCodec(BaseModel):
    a: Annotated[int, ClickHouseCodec("ZSTD")]


REFUSED = [
    (Annotated[NoExtra, ClickHouseJson()], "extra='allow'"),
    (Annotated[int, clickhouse_default("1"), ClickHouseMaterialized("2")], "only one of DEFAULT, MATERIALIZED or ALIAS"),
    (Annotated[int, ClickHouseMaterialized("1"), ClickHouseAlias("2")], "only one of DEFAULT, MATERIALIZED or ALIAS"),
    (Key[Annotated[str, ClickHouseAlias("x")]], "ALIAS column"),
    (millrace.Point, "Point (a ClickHouse geometry type) is not supported yet"),
    (Optional[millrace.MultiPolygon], "MultiPolygon (a ClickHouse geometry type) is not supported yet"),
    (millrace.Ring, "nested model"),
    (dict[float, int], "a map's keys are"),
    (dict[Optional[str], int], "a map's keys are"),
    (InnerDefault, "InnerDefault.a: DEFAULT on a nested model's field"),
    (list[InnerCodec], "InnerCodec.a: ClickHouseCodec on a nested model's field"),
    (Annotated[dt.datetime, ClickhousePrecision(10)], "0 to 9"),
    (Annotated[dict[str, int], ClickHouseJson()], "ClickHouseJson goes on dict[str, Any] or on a model"),
    (Annotated[dt.date, ClickhouseSize(8)], "2 or 4 bytes"),
    (Annotated[float, ClickhouseSize(2)], "4 or 8 bytes"),
    (bytes, "FixedString"),
    (Annotated[int, clickhouse_default("")], "needs an expression"),
]


@pytest.mark.parametrize("annotation, words", REFUSED, ids=[w for _, w in REFUSED])
def test_annotations_moose_refuses_are_refused_naming_the_model_and_field(annotation, words):
    Order = type("Order", (BaseModel,), {"__annotations__": {"x": annotation}, "__module__": __name__})
    with pytest.raises(AnnotationError) as e:
        model_fields(Order)
    message = str(e.value)
    assert words in message, message
    assert message.startswith(("Order.x", "InnerDefault.a", "InnerCodec.a")), message


def test_refused_when_declaring_a_stream_too():
    class Order(BaseModel):
        id: Key[str]
        both: Annotated[str, ClickHouseAlias("id"), clickhouse_default("'a'")]

    with pytest.raises(AnnotationError, match="Order.both"):
        Stream[Order]("orders")


def test_bad_arguments_are_refused_where_they_are_written():
    for bad in (-1, 10, 2.5, True):
        with pytest.raises(AnnotationError, match="0 to 9"):
            clickhouse_datetime64(bad)
    for bad in (0, 65536):
        with pytest.raises(AnnotationError, match="1 to 65535"):
            FixedString(bad)


# --- what a transform's outputs may carry --------------------------------------------------------------------------


class In(BaseModel):
    id: Key[int]
    v: int


class Out(BaseModel):
    id: Key[int]
    code: Annotated[str, FixedString(4)]
    counts: dict[str, UInt8] = {}
    by_num: dict[UInt8, Optional[float]] = {}
    ip4: Optional[ipaddress.IPv4Address] = None
    ip6: Optional[ipaddress.IPv6Address] = None
    doc: dict[str, Any] = {}
    attrs: Optional[Annotated[Attrs, ClickHouseJson()]] = None


def test_outputs_with_values_their_columns_cannot_hold_are_refused_naming_the_field():
    def fn(r: In):
        o = Out(id=r.id, code="ab")
        if r.v == 1:
            o.code = "abcde"  # assignment is not validated
        elif r.v == 2:
            o.code = "é€"  # 5 bytes of UTF-8
        elif r.v == 3:
            o.counts = {"a": 300}
        elif r.v == 4:
            o.by_num = {300: 1.0}
        elif r.v == 5:
            o.by_num = {7: float("nan")}  # nullable values: NaN becomes null
        elif r.v == 6:
            o.ip4 = ipaddress.IPv6Address("::1")
        elif r.v == 7:
            o.ip6 = 5
        elif r.v == 8:
            o.doc = 5
        elif r.v == 9:
            o.attrs = Attrs(name="n", hits=1, other=[1, 2])
            o.attrs.hits = -1
        elif r.v == 10:
            o.code = "€"  # 3 bytes fit
            o.counts, o.by_num = {"a": 255}, {255: 1.5}
            o.ip4, o.ip6 = ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv6Address("::ffff:10.0.0.1")
            o.doc, o.attrs = {"k": [1, {"x": None}]}, Attrs(name="n", hits=2, more="yes")
        return o

    with pytest.warns(UserWarning):  # pydantic warns when it writes a value of the wrong type
        out = Runner("f", fn, In, Out, consumer=False).run([b'{"id":%d,"v":%d}' % (i, i) for i in range(11)])
    assert json.loads(out[0][0])["code"] == "ab"
    for i, field in [(1, "code"), (2, "code"), (3, "counts"), (4, "by_num"), (6, "ip4"), (7, "ip6"), (8, "doc"), (9, "attrs")]:
        assert isinstance(out[i], tuple), (i, out[i])
        assert out[i][0] == "ValidationError" and field in out[i][1], (i, out[i])
    assert json.loads(out[5][0])["by_num"] == {"7": None}
    last = json.loads(out[10][0])
    assert last["code"] == "€" and last["by_num"] == {"255": 1.5} and last["attrs"] == {"name": "n", "hits": 2, "more": "yes"}


# --- DEFAULT fields, DateTime64 ranges, values the worker refuses --------------------------------------------------


class WithDefault(BaseModel):
    id: Key[str]
    retries: Annotated[int, clickhouse_default("3")]


def test_a_default_field_is_none_unless_given_while_its_column_is_not_nullable():
    assert WithDefault.model_validate_json('{"id":"a"}').retries is None
    assert WithDefault(id="a", retries=2).retries == 2
    (_, retries) = model_fields(WithDefault)
    assert retries == {"name": "retries", "type": S("INT64"), "nullable": False, "key": False, "default_expression": "3"}
    # A transform passes such a record on with the field null (the worker leaves it out of the row).
    out = Runner("f", lambda r: r, WithDefault, WithDefault, consumer=False).run([b'{"id":"a"}', b'{"id":"b","retries":5}'])
    assert [json.loads(o[0]) for o in out] == [{"id": "a", "retries": None}, {"id": "b", "retries": 5}]


class Late(BaseModel):
    id: Key[int]
    ns: clickhouse_datetime64(9)
    ms: clickhouse_datetime64(3)


def test_outputs_with_datetime64_values_beyond_what_the_precision_holds_are_refused():
    utc = dt.timezone.utc
    last_ns = dt.datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=utc)
    cases = [
        (last_ns, dt.datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=utc)),  # the last each holds
        (dt.datetime(2262, 4, 11, 23, 47, 17, tzinfo=utc), dt.datetime(2026, 1, 1, tzinfo=utc)),
        (dt.datetime(2026, 1, 1, tzinfo=utc), dt.datetime(2300, 1, 1, tzinfo=utc)),
        (dt.datetime(2026, 1, 1, tzinfo=utc), dt.datetime(1899, 12, 31, 23, tzinfo=utc)),
        (dt.datetime(2262, 4, 12, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))), dt.datetime(2026, 1, 1)),  # 23:00 UTC
    ]

    def fn(r: In):
        ns, ms = cases[r.id]
        return Late(id=r.id, ns=ns, ms=ms)

    out = Runner("f", fn, In, Late, consumer=False).run([b'{"id":%d,"v":0}' % i for i in range(len(cases))])
    assert json.loads(out[0][0])["ns"] == "2262-04-11T23:47:16.854775Z" and json.loads(out[4][0])["id"] == 4
    for i, field in [(1, "ns"), (2, "ms"), (3, "ms")]:
        assert isinstance(out[i], tuple) and out[i][0] == "ValidationError" and field in out[i][1], (i, out[i])
    assert "DateTime64(9) holds" in out[1][1] and "2262-04-11 23:47:16.854775807" in out[1][1], out[1]


class Odd(BaseModel):
    id: Key[int]
    ip6: Optional[ipaddress.IPv6Address] = None
    digest: Optional[Annotated[bytes, FixedString(16)]] = None


def test_outputs_the_worker_would_refuse_are_refused_with_a_clear_message():
    def fn(r: In):
        if r.v == 1:
            return Odd(id=r.id, ip6=ipaddress.IPv6Address("fe80::1%eth0"))
        if r.v == 2:
            o = Odd(id=r.id)
            o.digest = bytes(range(240, 256))  # an MD5 digest's bytes: not UTF-8 (assignment is not validated)
            return o
        return Odd(id=r.id, ip6=ipaddress.IPv6Address("fe80::1"), digest=b"0123456789abcdef")

    out = Runner("f", fn, In, Odd, consumer=False).run([b'{"id":%d,"v":%d}' % (i, i) for i in range(3)])
    assert isinstance(out[1], tuple) and "ip6" in out[1][1] and "zone" in out[1][1], out[1]
    assert isinstance(out[2], tuple) and "not UTF-8" in out[2][1] and "hex" in out[2][1], out[2]
    assert json.loads(out[0][0]) == {"id": 0, "ip6": "fe80::1", "digest": "0123456789abcdef"}
    with pytest.raises(ValueError, match="not UTF-8"):
        Odd(id=1, digest=bytes(range(240, 256)))
