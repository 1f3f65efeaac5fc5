"""Every field type of the contract walks every place: declared in Python, planned, checked at ingest, made a row,
inserted and read back, on ClickHouse 18.16 (through the stack) and on a modern ClickHouse (chdb behind
chdb_http.py) alike. The types only modern servers have are walked by test_modern_clickhouse.py; a guard below
fails when the contract gains a type or column attribute that no such walk covers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_tables import start_without_sidecar
from millrace import loader
from millrace.plan import build
from millrace.v1 import resources_pb2

APPS = Path(__file__).parent / "apps"

FULL = {
    "id": "a", "s": "it's \"quoted\" \u00e9", "i8": -128, "i16": -32768, "i32": -(2**31), "i64": -(2**63),
    "u8": 255, "u16": 65535, "u32": 2**32 - 1, "u64": 2**64 - 1, "f32": 1.5, "f64": 0.1, "flag": True,
    "at": "2026-11-25T10:00:05Z", "day": "2026-11-25", "amount": "12.25", "plain": 7,
    "uid": "00000000-0000-0000-0000-000000000001", "code": "AB", "colour": "green", "level": 2, "size": "m",
    "tags": ["a", "b"], "maybe_tags": [1, None], "maybe": 5, "point": {"x": 2.5, "label": "p"},
    "items": [{"sku": "x", "qty": 1, "tags": ["t"]}, {"sku": "y", "qty": 2, "tags": []}], "where_": {"x": 1.0, "label": None},
}  # fmt: skip
EMPTY = {
    **FULL, "id": "b", "maybe_tags": None, "maybe": None, "items": [], "where_": None, "point": {"x": 0, "label": None},
}  # fmt: skip

# What each server gives back (JSONEachRow), before `norm`: 64-bit integers are quoted, DateTime has no zone
# marker, FixedString keeps its zero bytes, an enum reads as its label, a Nested column as one array per field.
WANT = [
    {
        "id": "a", "s": FULL["s"], "i8": -128, "i16": -32768, "i32": -(2**31), "i64": -(2**63), "u8": 255, "u16": 65535,
        "u32": 2**32 - 1, "u64": 2**64 - 1, "f32": 1.5, "f64": 0.1, "flag": 1, "at": "2026-11-25 10:00:05",
        "day": "2026-11-25", "amount": 12.25, "plain": 7, "uid": FULL["uid"], "code": "AB\u0000\u0000", "colour": "green",
        "level": "HIGH", "size": "m", "tags": ["a", "b"], "maybe_tags": [1, None], "maybe": 5, "point": [2.5, "p"],
        "items.sku": ["x", "y"], "items.qty": [1, 2], "items.tags": [["t"], []], "where_.x": [1], "where_.label": [None],
    },
    {
        "id": "b", "maybe_tags": [], "maybe": None, "point": [0, None], "items.sku": [], "items.qty": [], "items.tags": [],
        "where_.x": [], "where_.label": [],
    },
]  # fmt: skip


def norm(v):
    """Numbers as their shortest text (servers quote 64-bit integers and some decimals)."""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v
        return norm(f) if "." in v and not v.count("-") else v
    if isinstance(v, list):
        return [norm(x) for x in v]
    return v


@pytest.mark.parametrize("server", ["clickhouse_18_16", "modern_clickhouse"])
def test_every_column_type_round_trips_on_old_and_modern_clickhouse(server, request, tmp_path, monkeypatch):
    stack = request.getfixturevalue("stack" if server == "clickhouse_18_16" else "modern_stack")
    monkeypatch.setenv("MILLRACE_CONTROL_PLANE", stack.control_plane)
    start_without_sidecar(stack, APPS / "every_column.py")
    assert stack.post("/ingest/every", json.dumps([FULL, EMPTY]).encode()) == (200, {"written": 2})
    for bad, field in (({**FULL, "u8": 256}, "u8"), ({**FULL, "code": "TOOLONG"}, "code"), ({**FULL, "level": 3}, "level")):
        status, answer = stack.post("/ingest/every", json.dumps(bad).encode())
        assert status == 400 and answer["errors"][0]["field"] == field, (bad, answer)
    rows = stack.wait_rows("every", 2)
    rows.sort(key=lambda r: r["id"])
    want = [WANT[0], {**WANT[0], **WANT[1]}]
    for got, expect in zip(rows, want):
        assert set(got) == set(expect), sorted(set(got) ^ set(expect))
        for k in expect:
            assert norm(got[k]) == norm(expect[k]), (server, got["id"], k, got[k], expect[k])


def _walked(app: Path) -> tuple[set[str], set[str]]:
    """The type kinds (with scalars by name) and column attributes an app's plan uses."""
    plan = build(loader.load(str(app)))
    kinds, attrs = set(), set()

    def walk(t) -> None:
        kind = t.WhichOneof("kind")
        kinds.add(resources_pb2.ScalarType.Name(t.scalar) if kind == "scalar" else kind)
        if kind in ("array", "optional"):
            walk(getattr(t, kind))
        elif kind == "record":
            for f in t.record.fields:
                field(f)
        elif kind == "map":
            walk(t.map.key)
            walk(t.map.value)

    def field(f) -> None:
        walk(f.type)
        for name in ("low_cardinality", "default_expression", "materialized", "alias", "codec", "ttl", "comment"):
            if getattr(f, name):
                attrs.add(name)
        if f.HasField("aggregate"):
            attrs.add("aggregate simple" if f.aggregate.simple else "aggregate")
        if f.nullable:
            kinds.add("nullable")

    for t in plan.tables:
        for f in t.fields:
            field(f)
    return kinds, attrs


def test_the_round_trip_walks_cover_every_type_and_column_attribute_of_the_contract():
    kinds, attrs = set(), set()
    for app in ("every_column.py", "modern_columns.py"):
        k, a = _walked(APPS / app)
        kinds |= k
        attrs |= a
    scalars = {n for n in resources_pb2.ScalarType.keys() if n != "SCALAR_TYPE_UNSPECIFIED"}
    oneof = {f.name for f in resources_pb2.FieldType.DESCRIPTOR.oneofs_by_name["kind"].fields} - {"scalar"}
    missing = (scalars | oneof | {"nullable"}) - kinds
    assert not missing, f"no round-trip test walks {sorted(missing)}: add them to apps/every_column.py or apps/modern_columns.py"
    field_attrs = {f.name for f in resources_pb2.Field.DESCRIPTOR.fields} - {"name", "type", "nullable", "key", "aggregate"}
    # An AggregateFunction column holds states no stream writes: its refusal is tested in the control plane.
    missing = (field_attrs | {"aggregate simple"}) - attrs
    assert not missing, f"no round-trip test walks the column attributes {sorted(missing)}"
