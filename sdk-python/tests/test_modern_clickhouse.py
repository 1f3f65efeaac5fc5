"""Millrace end to end on a modern ClickHouse (chdb's 26.x behind tests/chdb_http.py, the `modern_clickhouse`
fixture), while the stack's own server is 18.16: the control plane provisions the tables there, the worker syncs
records into them, and the rows are read back and compared value by value.

    (cd /tmp && ~/.millrace/sdk-venv/bin/pytest -q -p no:cacheprovider /work/main/sdk-python/tests/test_modern_clickhouse.py)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import wait_until

from millrace import loader

APPS = Path(__file__).parent / "apps"
# Every read-back: 64-bit integers as JSON numbers (ClickHouse quotes them by default), a per-query setting the
# shim applies as ClickHouse does.
NUMBERS = {"output_format_json_quote_64bit_integers": "0"}


def rows_become(stack, what: str, sql: str, want: list[dict], timeout: float = 60.0) -> None:
    """Waits (bounded) until `sql` answers exactly `want`, then asserts it (the last answer shows on a timeout)."""
    got: list[dict] = []

    def same() -> bool:
        nonlocal got
        got = stack.clickhouse(sql, **NUMBERS)
        return got == want

    try:
        wait_until(what, same, timeout=timeout, every=0.2)
    except AssertionError:
        pass
    assert got == want, f"{what}: the table holds\n{json.dumps(got, indent=1)}\nnot\n{json.dumps(want, indent=1)}"


def columns(stack, table: str) -> dict[str, dict]:
    """system.columns of one of the test's tables, by column name."""
    sql = (
        "SELECT name, type, default_kind, default_expression, compression_codec, comment FROM system.columns "
        f"WHERE database = '{{db}}' AND table = '{table}' ORDER BY position"
    )  # `{db}`: Stack.clickhouse puts the test's database there
    return {c["name"]: c for c in stack.clickhouse(sql)}


def on_modern_clickhouse(stack) -> str:
    version = stack.clickhouse("SELECT version() AS v")[0]["v"]
    assert int(version.split(".")[0]) >= 24, f"expected chdb's modern ClickHouse, got {version}"
    return version


# -- the shim, with what Millrace has today ------------------------------------------------------------------------


def test_an_ingest_pipeline_syncs_into_a_replacing_merge_tree_on_modern_clickhouse(modern_stack):
    stack = modern_stack
    stack.run(APPS / "modern_ingest.py")
    on_modern_clickhouse(stack)
    first = [
        {"id": f"r{i:02d}", "v": 1, "value": -(2**62) + i, "score": i / 4, "ok": i % 2 == 0, "at": f"2026-11-25T10:00:{i:02d}Z",
         "day": "2026-11-25", "tags": ["a", str(i)], **({"note": f"n{i}"} if i % 3 == 0 else {})}
        for i in range(20)
    ]  # fmt: skip
    # Newer versions of five keys: ReplacingMergeTree keeps them (ver `v`), FINAL shows only them.
    newer = [{**r, "v": 2, "value": 1000 + i, "note": None, "tags": []} for i, r in enumerate(first[:5])]
    assert stack.post("/ingest/readings", json.dumps(first).encode()) == (200, {"written": 20})
    assert stack.post("/ingest/readings", "\n".join(map(json.dumps, newer)).encode(), "application/x-ndjson") == (200, {"written": 5})
    status, answer = stack.post("/ingest/readings", b'{"id": "bad", "v": 1}')
    assert status == 400, answer

    # As the table holds them: ClickHouse's renderings (DateTime('UTC') seconds, a Bool as true/false, NULL as null).
    def row(r: dict) -> dict:
        return {**r, "ok": bool(r["ok"]), "at": r["at"].replace("T", " ").removesuffix("Z"), "note": r.get("note")}

    want = [row(r) for r in newer] + [row(r) for r in first[5:]]
    rows_become(stack, "the newest version of every key", "SELECT * FROM {db}.readings FINAL ORDER BY id", want)
    everything = stack.clickhouse("SELECT count() AS c FROM {db}.readings", **NUMBERS)[0]["c"]
    assert everything in (20, 25), "25 rows until a merge, 20 after: none lost, none more"
    engine = stack.clickhouse("SELECT engine FROM system.tables WHERE database = '{db}' AND name = 'readings'")
    assert engine == [{"engine": "ReplacingMergeTree"}]
    types = {n: c["type"] for n, c in columns(stack, "readings").items()}
    assert types == {
        "id": "String", "v": "UInt64", "value": "Int64", "score": "Float64", "ok": "Bool", "at": "DateTime('UTC')",
        "day": "Date", "tags": "Array(String)", "note": "Nullable(String)",
    }  # fmt: skip


# -- the new column types --------------------------------------------------------------------------------------------

# What each column of apps/modern_columns.py must be in system.columns (a regex for the type where ClickHouse
# leaves Millrace a choice: DateTime64 with or without its time zone; Nested as one column or, flattened, two).
MODERN_COLUMNS = {
    "id": ("String", "", ""),
    "at": (r"DateTime64\(3(, 'UTC')?\)", "", ""),
    "at_us": (r"DateTime64\(6(, 'UTC')?\)", "", ""),
    "labels": (r"Map\(String, String\)", "", ""),
    "counts": (r"Map\(String, Int64\)", "", ""),
    "payload": ("JSON", "", ""),
    "extra": ("JSON", "", ""),
    "ip4": ("IPv4", "", ""),
    "ip6": ("IPv6", "", ""),
    "code": (r"FixedString\(3\)", "", ""),
    "country": (r"LowCardinality\(String\)", "", ""),
    "level": (r"LowCardinality\(String\)", "", ""),
    "items": (r"Nested\(sku String, qty Int64\)", "", ""),
    "region": ("String", "DEFAULT", "'eu'"),
    "id_hash": ("UInt64", "MATERIALIZED", "cityHash64(id)"),
    "id_upper": ("String", "ALIAS", "upper(id)"),
    "body": ("String", "", ""),
    "scratch": ("String", "", ""),
    "total": (r"SimpleAggregateFunction\(sum, Int64\)", "", ""),
    "described": ("String", "", ""),
}
FLATTENED_ITEMS = {"items.sku": "Array(String)", "items.qty": "Array(Int64)"}

MODERN_RECORDS = [
    {
        "id": "m1", "at": "2026-11-25T10:00:00.123Z", "at_us": "2026-11-25T10:00:00.123456Z",
        "labels": {"a": "x", "b": "y"}, "counts": {"a": 1, "b": -2},
        "payload": {"n": 1, "f": 1.5, "s": "str", "nested": {"deep": [1, 2, 3]}, "ok": True}, "extra": {"k": "v"},
        "ip4": "10.0.0.1", "ip6": "2001:db8::1", "code": "abc", "country": "NL", "level": "info",
        "items": [{"sku": "s1", "qty": 2}, {"sku": "s2", "qty": 3}], "region": "us", "body": "z" * 100,
        "scratch": "tmp", "total": 5, "described": "d",
    },
    # `region` left out: its DEFAULT fills it. Empty maps, JSON, nested; the largest IPv4, an IPv4-mapped IPv6.
    {
        "id": "m2", "at": "2026-11-25T10:00:00Z", "at_us": "2026-11-25T10:00:00.000001Z", "labels": {}, "counts": {},
        "payload": {}, "extra": {}, "ip4": "255.255.255.255", "ip6": "::ffff:1.2.3.4", "code": "xyz", "country": "DE",
        "level": "warn", "items": [], "body": "", "scratch": "", "total": -1, "described": "",
    },
    {
        "id": "m3", "at": "2026-11-25T11:00:00.5+01:00", "at_us": "1970-01-01T00:00:00Z", "labels": {"é": "ü"},
        "counts": {"big": 2**62}, "payload": {"list": ["a", "b"], "obj": {"x": {"y": "z"}}}, "extra": {"n": -7},
        "ip4": "0.0.0.0", "ip6": "fe80::1", "code": "123", "country": "NL", "level": "debug",
        "items": [{"sku": "only", "qty": -1}], "region": "ap", "body": "b", "scratch": "s", "total": 2**40,
        "described": "x",
    },
]  # fmt: skip


def as_stored(r: dict) -> dict:
    """A posted record as its row reads back (SELECT below): date-times in UTC as ClickHouse writes DateTime64,
    the DEFAULT where the record left `region` out, the MATERIALIZED and ALIAS values computed by ClickHouse."""
    from datetime import datetime, timezone

    def dt64(s: str, digits: int) -> str:
        t = datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(timezone.utc)
        return t.strftime("%Y-%m-%d %H:%M:%S.%f")[: 20 + digits]

    out = {k: v for k, v in r.items() if k != "items"}
    out.update(at=dt64(r["at"], 3), at_us=dt64(r["at_us"], 6), region=r.get("region", "eu"))
    out.update({"items.sku": [i["sku"] for i in r["items"]], "items.qty": [i["qty"] for i in r["items"]]})
    out.update(id_upper=r["id"].upper())
    return out


def test_every_moose_column_type_round_trips_on_modern_clickhouse(modern_stack):
    app = APPS / "modern_columns.py"
    # The app imports moose_lib's names from millrace; until the SDK has them this is where the test stops.
    loader.load(str(app))
    stack = modern_stack
    stack.run(app)
    on_modern_clickhouse(stack)

    # The table, as system.columns shows it: every type, DEFAULT, MATERIALIZED, ALIAS, CODEC and COMMENT.
    cols = columns(stack, "modern")
    if "items" not in cols and all(cols.get(n, {}).get("type") == t for n, t in FLATTENED_ITEMS.items()):
        # Flattened (the contract's choice): items.sku, items.qty, in place of one Nested column.
        nested = {**cols["items.sku"], "name": "items", "type": "Nested(sku String, qty Int64)"}
        cols = {("items" if n == "items.sku" else n): (nested if n == "items.sku" else c) for n, c in cols.items() if n != "items.qty"}
    assert list(cols) == list(MODERN_COLUMNS), f"columns: {list(cols)}"
    for name, (ty, kind, expr) in MODERN_COLUMNS.items():
        c = cols[name]
        # The control plane may parenthesise an expression (`DEFAULT ('eu')`); ClickHouse keeps the parentheses.
        shown = re.sub(r"^\((.*)\)$", r"\1", c["default_expression"])
        assert re.fullmatch(ty, c["type"]) and (c["default_kind"], shown) == (kind, expr), c
    assert cols["body"]["compression_codec"] == "CODEC(ZSTD(3))", cols["body"]
    assert cols["described"]["comment"] == "what the reader sees in system.columns", cols["described"]
    created = stack.clickhouse("SHOW CREATE TABLE {db}.modern")[0]["statement"]
    assert re.search(r"`scratch` String TTL \(?toDateTime\(at\) \+ toIntervalYear\(50\)\)?,", created), created

    status, answer = stack.post("/ingest/modern", json.dumps(MODERN_RECORDS).encode())
    assert (status, answer) == (200, {"written": len(MODERN_RECORDS)})

    # Every value, exactly; the MATERIALIZED column beside the server's own cityHash64 of the id.
    listed = [n for n in MODERN_COLUMNS if n != "items"]
    sql = (
        f"SELECT {', '.join(listed)}, items.sku, items.qty, cityHash64(id) AS want_hash "
        "FROM {db}.modern ORDER BY id"
    )
    got: list[dict] = []

    def arrived() -> bool:
        nonlocal got
        got = stack.clickhouse(sql, **NUMBERS)
        return len(got) >= len(MODERN_RECORDS)

    wait_until(f"{len(MODERN_RECORDS)} rows in table modern", arrived, every=0.2)
    for row in got:
        assert row.pop("id_hash") == row.pop("want_hash"), f"{row['id']}: MATERIALIZED cityHash64(id) computed"
    want = [{k: v for k, v in as_stored(r).items() if k != "id_hash"} for r in MODERN_RECORDS]
    for g, w in zip(got, want):
        for k in w:
            assert g.get(k) == w[k], f"{w['id']}.{k}: read back {g.get(k)!r}, posted {w[k]!r}"
    assert got == want
