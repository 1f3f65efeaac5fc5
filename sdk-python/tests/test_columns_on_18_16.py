"""moose's column types and attributes on ClickHouse 18.16, through the stack: what 18.16 has round-trips exactly
(FixedString, list[Model] as Nested, an optional record as Nested, optional lists, MATERIALIZED and ALIAS computed
by ClickHouse, comments, Literal without LowCardinality), and what it lacks is refused at apply naming the field
and the version. The same app on a modern ClickHouse is test_modern_clickhouse.py."""

from __future__ import annotations

import json
import uuid

from conftest import wait_until, write_app
from test_tables import ch, start_without_sidecar

APP = '''
from typing import Annotated, Literal, Optional
from millrace import ClickHouseAlias, ClickHouseMaterialized, FixedString, IngestPipeline, IngestPipelineConfig, Key
from pydantic import BaseModel, Field


class Item(BaseModel):
    sku: str
    qty: int
    tags: list[str]


class Address(BaseModel):
    city: str
    zip: Optional[str] = None


class Order(BaseModel):
    id: Key[str]
    code: Annotated[str, FixedString(4)]
    status: Literal["new", "paid"]
    items: list[Item]
    ship_to: Optional[Address] = None
    notes: Optional[list[str]] = None
    total: float = Field(description="what was paid, it's in EUR")
    doubled: Annotated[float, ClickHouseMaterialized("total * 2")]
    shown: Annotated[str, ClickHouseAlias("concat(id, '-', status)")]


IngestPipeline[Order]("orders", IngestPipelineConfig(ingest_api=True, stream=True, table=True))
'''

LACKING = '''
from typing import Any, Annotated
from ipaddress import IPv4Address
from millrace import IngestPipeline, IngestPipelineConfig, Key, clickhouse_datetime64, clickhouse_default, simple_aggregated, ClickHouseCodec
from pydantic import BaseModel


class Row(BaseModel):
    id: Key[str]
    {field}


IngestPipeline[Row]("lacking", IngestPipelineConfig(ingest_api=True, stream=True, table=True))
'''


def test_what_clickhouse_18_16_has_round_trips_exactly(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("MILLRACE_CONTROL_PLANE", stack.control_plane)
    start_without_sidecar(stack, write_app(tmp_path, APP))
    records = [
        {
            "id": "a",
            "code": "AB12",
            "status": "new",
            "items": [{"sku": "x", "qty": 1, "tags": ["t1", "t2"]}, {"sku": "y", "qty": 2, "tags": []}],
            "ship_to": {"city": "Oslo", "zip": None},
            "notes": ["fragile"],
            "total": 2.5,
        },
        # Optional composites left out or null: an empty list, no Nested element; computed fields may be null.
        {"id": "b", "code": "Z", "status": "paid", "items": [], "ship_to": None, "notes": None, "total": 1.0, "doubled": None},
    ]
    assert stack.post("/ingest/orders", json.dumps(records).encode()) == (200, {"written": 2})
    for bad, field in (
        ({**records[0], "id": "c", "code": "TOOLONG"}, "code"),
        ({**records[0], "id": "c", "items": [{"sku": "x", "qty": "one", "tags": []}]}, "items"),
    ):
        status, answer = stack.post("/ingest/orders", json.dumps(bad).encode())
        assert status == 400 and answer["errors"][0]["field"].startswith(field), (bad, answer)
    db = f"py_{stack.id}"
    wait_until("2 rows in orders", lambda: ch(f"SELECT count() AS c FROM `{db}`.orders")[0]["c"] in (2, "2"))
    rows = ch(
        f"SELECT id, code, status, items.sku, items.qty, items.tags, ship_to.city, ship_to.zip, notes, total, doubled, shown "
        f"FROM `{db}`.orders ORDER BY id"
    )
    assert rows == [
        {
            "id": "a", "code": "AB12", "status": "new",
            "items.sku": ["x", "y"], "items.qty": ["1", "2"], "items.tags": [["t1", "t2"], []],
            "ship_to.city": ["Oslo"], "ship_to.zip": [None], "notes": ["fragile"],
            "total": 2.5, "doubled": 5, "shown": "a-new",
        },
        {
            "id": "b", "code": "Z\u0000\u0000\u0000", "status": "paid",
            "items.sku": [], "items.qty": [], "items.tags": [],
            "ship_to.city": [], "ship_to.zip": [], "notes": [],
            "total": 1, "doubled": 2, "shown": "b-paid",
        },
    ], rows  # fmt: skip
    columns = {c["name"]: c for c in ch(f"SELECT name, type, default_kind, comment FROM system.columns WHERE database = '{db}' AND table = 'orders'")}
    assert columns["code"]["type"] == "FixedString(4)"
    assert columns["status"]["type"] == "String", "18.16 gets the plain column for LowCardinality"
    assert columns["items.qty"]["type"] == "Array(Int64)" and columns["ship_to.zip"]["type"] == "Array(Nullable(String))"
    assert columns["doubled"]["default_kind"] == "MATERIALIZED" and columns["shown"]["default_kind"] == "ALIAS"
    assert columns["total"]["comment"] == "what was paid, it's in EUR"
    # A changed comment is altered in place, and shows in the plan.
    changed = write_app(tmp_path, APP.replace("it's in EUR", "in euros"), "changed.py")
    assert 'column total: comment "what was paid, it\'s in EUR" -> "what was paid, in euros"' in stack.cli("plan", str(changed)).stdout
    stack.cli("apply", str(changed))
    comment = ch(f"SELECT comment FROM system.columns WHERE database = '{db}' AND table = 'orders' AND name = 'total'")
    assert comment == [{"comment": "what was paid, in euros"}]


def test_clickhouse_18_16_refuses_a_column_type_it_lacks_naming_the_field_and_version(stack, tmp_path):
    stack.start_control_plane()
    for field, words in [
        ("at: clickhouse_datetime64(3)", ["at", "DateTime64", "20.1"]),
        ("props: dict[str, Any]", ["props", "JSON", "24.8"]),
        ("counts: dict[str, int]", ["counts", "Map", "21.8"]),
        ("ip: IPv4Address", ["ip", "IPv4", "19.3"]),
        ('n: Annotated[int, clickhouse_default("7")]', ["n", "DEFAULT", "19.12"]),
        ("s: simple_aggregated('sum', int)", ["s", "SimpleAggregateFunction", "19.8"]),
        ('c: Annotated[str, ClickHouseCodec("ZSTD(3)")]', ["c", "codec", "19.1"]),
    ]:
        app = write_app(tmp_path, LACKING.format(field=field), f"app_{uuid.uuid4().hex[:6]}.py")
        r = stack.cli("apply", str(app), check=False)
        assert r.returncode != 0 and all(w in r.stderr for w in words + ["18.16"]), (field, r.stderr)
    assert ch(f"SELECT count() AS c FROM system.tables WHERE database = 'py_{stack.id}'")[0]["c"] in (0, "0"), "nothing was created"
