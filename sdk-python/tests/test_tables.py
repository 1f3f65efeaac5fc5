"""Table engines and options (OlapConfig): declared in Python, turned into the contract, rendered to DDL by the
control plane, and run on both ClickHouses the project meets: Debian's 18.16 (the stack's server, with the stack's
ZooKeeper: records flow through streams and table sync into every engine and its Replicated form, rows are read back
with FINAL) and a modern one in-process (chdb: every engine/option combination's DDL from `millrace-ddl`, a
JSONEachRow insert, rows read back)."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest
from conftest import BIN, CLICKHOUSE, free_port, wait_until, write_app

from millrace import OlapConfig, loader, plan, resources

# One record model for every table: Key id, a version column, a sign column, a summed column, a delete mark.
MODEL = """
from datetime import datetime
from pydantic import BaseModel
from millrace import *

class Event(BaseModel):
    id: Key[str]
    ts: datetime
    v: UInt64
    sign: Int8
    n: float
    gone: bool
"""

# (table name, OlapConfig arguments, what FINAL keeps of the records below): None, every row; a list, one row per
# id; a dict, {id: n}. Key a: a state, its cancellation, a newer state; key b: one state. Engines that merge keep
# the newest per key (Replacing by v), sum n (Summing), cancel the pair (Collapsing, VersionedCollapsing by v).
ENGINES_ON_18_16 = [
    ("t_merge", "engine=MergeTreeEngine(), order_by_expression='(id, intHash32(v), ts)', primary_key_expression='(id, intHash32(v))', "
     "partition_by='toYYYYMM(ts)', sample_by_expression='intHash32(v)', settings={'index_granularity': '4096'}", None),
    ("t_replacing", "engine=ReplacingMergeTreeEngine(ver='v')", {"a": 5.0, "b": 7.0}),
    ("t_legacy", "engine=ClickHouseEngines.ReplacingMergeTree, order_by_fields=['id']", ["a", "b"]),
    ("t_summing", "engine=SummingMergeTreeEngine(columns=['n'])", {"a": 7.0, "b": 7.0}),
    ("t_aggregating", "engine=AggregatingMergeTreeEngine()", ["a", "b"]),
    ("t_collapsing", "engine=CollapsingMergeTreeEngine(sign='sign')", {"a": 5.0, "b": 7.0}),
    ("t_versioned", "engine=VersionedCollapsingMergeTreeEngine(sign='sign', ver='v')", {"a": 5.0, "b": 7.0}),
]
# What only newer servers have: TTL (19.6), indexes, is_deleted (23.2).
ENGINES_MODERN_ONLY = [
    ("t_ttl_indexes", "ttl='ts + INTERVAL 36500 DAY', indexes=[OlapConfig.TableIndex(name='i_n', expression='n', "
     "type='minmax'), OlapConfig.TableIndex(name='i_id', expression='id', type='bloom_filter', arguments=['0.01'], "
     "granularity=2)], settings={'index_granularity': 1024, 'min_bytes_for_wide_part': 0}", None),
    ("t_deleted", "engine=ReplacingMergeTreeEngine(ver='v', is_deleted='gone')", {"a": 5.0}),
]
REPLICATED = [
    ("t_rep_merge", "engine=ReplicatedMergeTreeEngine()"),
    ("t_rep_replacing", "engine=ReplicatedReplacingMergeTreeEngine(keeper_path='/clickhouse/tables/x/t', replica_name='r1', ver='v')"),
    ("t_rep_summing", "engine=ReplicatedSummingMergeTreeEngine(columns=['n'])"),
    ("t_rep_aggregating", "engine=ReplicatedAggregatingMergeTreeEngine()"),
    ("t_rep_collapsing", "engine=ReplicatedCollapsingMergeTreeEngine(sign='sign')"),
    ("t_rep_versioned", "engine=ReplicatedVersionedCollapsingMergeTreeEngine(sign='sign', ver='v')"),
    ("t_rep_legacy", "engine=ClickHouseEngines.ReplicatedMergeTree"),
]
# What FINAL keeps of each Replicated table: what its non-replicated form keeps (t_rep_legacy is a plain MergeTree).
REPLICATED_KEEPS = {
    "t_rep_merge": None,
    "t_rep_replacing": {"a": 5.0, "b": 7.0},
    "t_rep_summing": {"a": 7.0, "b": 7.0},
    "t_rep_aggregating": ["a", "b"],
    "t_rep_collapsing": {"a": 5.0, "b": 7.0},
    "t_rep_versioned": {"a": 5.0, "b": 7.0},
    "t_rep_legacy": None,
}

RECORDS = [
    {"id": "a", "ts": "2026-01-01T00:00:00Z", "v": 1, "sign": 1, "n": 1.0, "gone": False},
    {"id": "a", "ts": "2026-01-01T00:00:00Z", "v": 1, "sign": -1, "n": 1.0, "gone": False},
    {"id": "a", "ts": "2026-01-02T00:00:00Z", "v": 2, "sign": 1, "n": 5.0, "gone": False},
    {"id": "b", "ts": "2026-01-03T00:00:00Z", "v": 1, "sign": 1, "n": 7.0, "gone": False},
]
# t_deleted: b's delete mark at a higher version removes it.
EXTRA = {"t_deleted": [{**RECORDS[3], "v": 2, "gone": True}]}


def app_source(tables: list[tuple], streams: bool = True) -> str:
    out = [MODEL]
    for name, options, *_ in tables:
        out.append(f"{name} = OlapTable[Event]({name!r}, OlapConfig({options}))")
        if streams:
            out.append(f"{name}_in = Stream[Event]({name + '_in'!r}, StreamConfig(destination={name}))")
    return "\n".join(out) + "\n"


def records_for(table: str) -> list[dict]:
    return RECORDS + EXTRA.get(table, [])


def final(expect) -> str:
    """FINAL where the engine merges (plain MergeTree refuses it)."""
    return "" if expect is None else " FINAL"


def assert_kept(table: str, rows: list[dict], expect) -> None:
    """`rows` (id, n; ordered by id) are what the table's engine keeps of its records."""
    if expect is None:
        assert len(rows) == len(records_for(table)), (table, rows)
    elif isinstance(expect, list):
        assert [r["id"] for r in rows] == expect, (table, rows)
    else:
        assert {r["id"]: float(r["n"]) for r in rows} == expect and len(rows) == len(expect), (table, rows)


# -- declarations, no stack --------------------------------------------------------------------------------------


def declare(tmp_path: Path, source: str) -> resources.Registry:
    return loader.load(str(write_app(tmp_path, textwrap.dedent(source))))


def test_every_merge_tree_engine_and_option_reaches_the_contract(tmp_path):
    registry = declare(tmp_path, app_source(ENGINES_ON_18_16 + ENGINES_MODERN_ONLY + [(n, o) for n, o in REPLICATED], streams=False))
    tables = {t.name: t for t in plan.build(registry).tables}
    m = tables["t_merge"]
    assert (m.order_by_expression, m.primary_key, m.partition_by, m.sample_by) == ("(id, intHash32(v), ts)", "(id, intHash32(v))", "toYYYYMM(ts)", "intHash32(v)")
    assert dict(m.settings) == {"index_granularity": "4096"}
    assert m.engine.kind == plan.resources_pb2.MERGE_TREE
    r = tables["t_replacing"].engine
    assert (r.kind, r.ver, r.HasField("is_deleted")) == (plan.resources_pb2.REPLACING_MERGE_TREE, "v", False)
    assert list(tables["t_summing"].engine.columns) == ["n"]
    assert tables["t_collapsing"].engine.sign == "sign"
    assert (tables["t_versioned"].engine.sign, tables["t_versioned"].engine.ver) == ("sign", "v")
    assert tables["t_legacy"].engine.kind == plan.resources_pb2.REPLACING_MERGE_TREE
    ti = tables["t_ttl_indexes"]
    assert ti.ttl == "ts + INTERVAL 36500 DAY"
    assert dict(ti.settings) == {"index_granularity": "1024", "min_bytes_for_wide_part": "0"}
    assert [(i.name, i.type, list(i.arguments), i.granularity) for i in ti.indexes] == [("i_n", "minmax", [], 1), ("i_id", "bloom_filter", ["0.01"], 2)]
    rr = tables["t_rep_replacing"].engine
    assert (rr.replicated, rr.keeper_path, rr.replica_name, rr.ver) == (True, "/clickhouse/tables/x/t", "r1", "v")
    assert tables["t_rep_legacy"].engine.replicated and not tables["t_rep_merge"].engine.HasField("keeper_path")
    # Every engine 18.16 has, in its Replicated form too.
    kinds = lambda names: {tables[n].engine.kind for n in names}  # noqa: E731
    assert kinds(n for n, _ in REPLICATED) == kinds(n for n, _, _ in ENGINES_ON_18_16)
    assert set(REPLICATED_KEEPS) == {n for n, _ in REPLICATED}


@pytest.mark.parametrize(
    "options, words",
    [
        ("engine=KafkaEngine(broker_list='k', topic_list='t', group_name='g', format='JSONEachRow')", ["Kafka", "MergeTree-family"]),
        ("engine=MergeEngine(source_database='d', tables_regexp='x')", ["Merge", "not offered"]),
        ("engine=ClickHouseEngines.S3Queue", ["S3Queue", "not offered"]),
        ("engine=ClickHouseEngines.CollapsingMergeTree", ["CollapsingMergeTreeEngine(sign=...)"]),
        ("cluster='prod'", ["cluster", "ON CLUSTER"]),
        ("projections=[OlapConfig.TableProjection(name='p', body='SELECT *')]", ["projections"]),
        ("constraints=[OlapConfig.TableConstraint(name='c', expression='v > 0', type='CHECK')]", ["constraints"]),
    ],
)
def test_an_engine_or_option_millrace_lacks_is_refused_at_declaration_naming_it(tmp_path, options, words):
    with pytest.raises(loader.AppError) as e:
        declare(tmp_path, app_source([("t", options)], streams=False))
    for w in words:
        assert w in str(e.value), str(e.value)


def test_order_by_fields_and_expression_together_are_refused_as_the_reference_product_does():
    with pytest.raises(ValueError, match="either order_by_fields or order_by_expression"):
        OlapConfig(order_by_fields=["id"], order_by_expression="(id)")


def test_engine_classes_check_their_parameters_as_the_reference_products_do():
    from millrace import CollapsingMergeTreeEngine, ReplacingMergeTreeEngine, ReplicatedMergeTreeEngine

    with pytest.raises(ValueError, match="is_deleted requires ver"):
        ReplacingMergeTreeEngine(is_deleted="gone")
    with pytest.raises(ValueError, match="keeper_path and replica_name"):
        ReplicatedMergeTreeEngine(keeper_path="/p")
    with pytest.raises(ValueError, match="sign column is required"):
        CollapsingMergeTreeEngine(sign="")


# -- modern ClickHouse, in-process ---------------------------------------------------------------------------------


def ddl(registry: resources.Registry, *args: str) -> dict[str, dict]:
    """`millrace-ddl`'s answer for the registry's plan, by table name."""
    out = subprocess.run(
        [str(BIN / "millrace-ddl"), *args], input=plan.build(registry).SerializeToString(), capture_output=True, timeout=60
    )
    assert out.returncode == 0, out.stderr.decode()
    return {d["table"]: d for d in map(json.loads, out.stdout.decode().splitlines())}


def ch_row(r: dict) -> str:
    """A record as table sync writes it (worker/src/rows.rs): date-times as 'YYYY-MM-DD hh:mm:ss', bools 0/1."""
    return json.dumps({**r, "ts": r["ts"].replace("T", " ").removesuffix("Z"), "gone": int(r["gone"])})


def test_every_engine_and_option_runs_on_modern_clickhouse_in_chdb(tmp_path):
    import chdb.session as chdb_session  # scripts/sdk.sh installs it

    tables = ENGINES_ON_18_16 + ENGINES_MODERN_ONLY
    registry = declare(tmp_path, app_source(tables + [(n, o) for n, o in REPLICATED], streams=False))
    rendered = ddl(registry, "--database", "millrace_chdb")
    sess = chdb_session.Session(str(tmp_path / "chdb"))
    try:
        sess.query("CREATE DATABASE IF NOT EXISTS millrace_chdb")
        print(sess.query("SELECT version()", "CSV"))
        for name, _, expect in tables:
            d = rendered[name]
            assert d["refused"] is None, d
            sess.query(d["create"])
            body = "\n".join(ch_row(r) for r in records_for(name))
            sess.query(f"INSERT INTO millrace_chdb.`{name}` FORMAT JSONEachRow\n{body}")
            answer = str(sess.query(f"SELECT id, n FROM millrace_chdb.`{name}`{final(expect)} ORDER BY id", "JSONEachRow"))
            rows = [json.loads(line) for line in answer.splitlines() if line.strip()]
            assert_kept(name, rows, expect)
        for name, _ in REPLICATED:
            # chdb has neither a keeper nor macros: with the default path's macros filled in, the statement must
            # parse, its engine arguments included, and get as far as needing a keeper.
            create = rendered[name]["create"]
            assert "'{replica}'" in create or "'r1'" in create, create
            with pytest.raises(Exception) as e:
                sess.query(create.replace("{shard}", "s1").replace("{replica}", "r1"))
            assert "without ZooKeeper" in str(e.value), (name, create, str(e.value))
    finally:
        sess.close()


def test_ttl_settings_and_index_changes_alter_the_table_in_place_on_modern_clickhouse(tmp_path):
    import chdb.session as chdb_session

    before = "ttl='ts + INTERVAL 36500 DAY', settings={'merge_with_ttl_timeout': '7200'}, indexes=[OlapConfig.TableIndex(name='i_n', expression='n', type='minmax')]"
    after = (
        "ttl='ts + INTERVAL 365000 DAY', settings={'merge_with_ttl_timeout': '3600', 'max_parts_in_total': 50000}, "
        "indexes=[OlapConfig.TableIndex(name='i_v', expression='v', type='set', arguments=['100'])]"
    )
    old = tmp_path / "old.pb"
    old.write_bytes(plan.build(declare(tmp_path, app_source([("t", before)], streams=False))).SerializeToString())
    first = ddl(declare(tmp_path, app_source([("t", before)], streams=False)), "--database", "db")["t"]
    changed = ddl(declare(tmp_path, app_source([("t", after)], streams=False)), "--database", "db", "--stored", str(old))["t"]
    assert changed["alter_refused"] is None and len(changed["alter"]) == 4, changed
    sess = chdb_session.Session(str(tmp_path / "chdb"))
    try:
        sess.query("CREATE DATABASE db")
        sess.query(first["create"])
        sess.query("INSERT INTO db.t FORMAT JSONEachRow\n" + "\n".join(ch_row(r) for r in RECORDS))
        for sql in changed["alter"]:
            sess.query(sql)
        shown = str(sess.query("SHOW CREATE TABLE db.t", "TSVRaw"))
        for part in ("toIntervalDay(365000)", "merge_with_ttl_timeout = 3600", "max_parts_in_total = 50000", "INDEX i_v (v) TYPE set(100)"):
            assert part in shown, shown
        assert "i_n" not in shown, shown
        assert str(sess.query("SELECT count() FROM db.t", "CSV")).strip() == str(len(RECORDS))
    finally:
        sess.close()
    # What ClickHouse cannot alter is refused, as the control plane refuses it.
    moved = ddl(declare(tmp_path, app_source([("t", before + ", partition_by='toYYYYMM(ts)'")], streams=False)), "--stored", str(old))["t"]
    assert "PARTITION BY cannot change" in moved["alter_refused"], moved


def test_an_option_older_servers_lack_is_refused_naming_the_version_that_has_it(tmp_path):
    registry = declare(tmp_path, app_source(ENGINES_MODERN_ONLY + [REPLICATED[0]], streams=False))
    old = ddl(registry, "--server-version", "18.16", "--no-keeper")
    assert "19.6" in old["t_ttl_indexes"]["refused"] and "18.16" in old["t_ttl_indexes"]["refused"]
    assert "23.2" in old["t_deleted"]["refused"]
    assert "ZooKeeper" in old["t_rep_merge"]["refused"]
    mid = ddl(registry, "--server-version", "19.16")
    assert mid["t_ttl_indexes"]["query_settings"] == {"allow_experimental_data_skipping_indices": "1"}


# -- ClickHouse 18.16, through the stack ---------------------------------------------------------------------------


def start_without_sidecar(stack, app: Path) -> None:
    """Control plane, apply, and a worker for table sync (no function needs a sidecar)."""
    stack.start_control_plane()
    stack.cli("apply", str(app))
    stack.sidecar_port = free_port()
    stack.start_worker()


def ch(sql: str, rows: bool = True) -> list[dict]:
    """A query on the stack's ClickHouse (18.16); its rows."""
    import urllib.request

    body = sql + (" FORMAT JSONEachRow" if rows else "")
    with urllib.request.urlopen(CLICKHOUSE, data=body.encode(), timeout=30) as r:
        return [json.loads(line) for line in r.read().decode().splitlines() if line.strip() and rows]


def test_every_engine_syncs_records_and_reads_back_with_final_on_clickhouse_18_16(stack, tmp_path, monkeypatch):
    """Every engine and its Replicated form (on the stack's ZooKeeper, with the server's shard and replica macros)."""
    keeper = ch("SELECT count() AS c FROM system.tables WHERE database = 'system' AND name = 'zookeeper'")[0]["c"]
    assert keeper in (1, "1"), "the stack's ClickHouse has no ZooKeeper configured: run `bash scripts/stack.sh start`"
    monkeypatch.setenv("MILLRACE_CONTROL_PLANE", stack.control_plane)
    other_db = f"py_{stack.id}_other"
    # The explicit keeper_path and replica_name: a path of this run's own (the declared one would be every run's)
    # and a replica name other than the server's {replica} macro, so that the explicit one is seen to be used.
    explicit = {"t_rep_replacing": (f"/millrace_tests/{stack.id}/t_rep_replacing", "r_explicit")}
    replicated = []
    for name, options in REPLICATED:
        if name in explicit:
            path, replica = explicit[name]
            options = options.replace("keeper_path='/clickhouse/tables/x/t', replica_name='r1'", f"keeper_path={path!r}, replica_name={replica!r}")
            assert path in options, options
        replicated.append((name, options, REPLICATED_KEEPS[name]))
    tables = [(n, o + (f", database={other_db!r}" if n == "t_merge" else ""), e) for n, o, e in ENGINES_ON_18_16] + replicated
    app = write_app(tmp_path, app_source(tables))
    try:
        start_without_sidecar(stack, app)
        registry = loader.load(str(app))
        streams = {s.name: s for s in registry.of("stream")}
        for name, _, _ in tables:
            streams[name + "_in"].send(records_for(name))
        for name, _, expect in tables:
            db = other_db if name == "t_merge" else f"py_{stack.id}"
            want = len(records_for(name))
            wait_until(f"{want} rows in {name}", lambda: ch(f"SELECT count() AS c FROM `{db}`.`{name}`")[0]["c"] in (want, str(want)))
            rows = ch(f"SELECT id, n FROM `{db}`.`{name}`{final(expect)} ORDER BY id")
            assert_kept(name, rows, expect)
        created = ch(f"SHOW CREATE TABLE `{other_db}`.`t_merge`")[0]["statement"]
        for part in ("PARTITION BY", "PRIMARY KEY", "SAMPLE BY", "index_granularity = 4096"):
            assert part in created, created
        # The Replicated tables: their engine, and each one's replica registered in the keeper, at the default path
        # (/clickhouse/tables/<database>/{shard}/<table>, {replica}) or at the explicit one.
        db = f"py_{stack.id}"
        engines = {r["name"]: r["engine"] for r in ch(f"SELECT name, engine FROM system.tables WHERE database = '{db}'")}
        replicas = {r["table"]: r for r in ch(f"SELECT table, engine, zookeeper_path, replica_name, is_readonly FROM system.replicas WHERE database = '{db}'")}
        assert set(replicas) == {n for n, _ in REPLICATED}, replicas
        for name, options in REPLICATED:
            engine = re.search(r"Replicated\w*MergeTree", options).group(0)
            path, replica = explicit.get(name, (f"/clickhouse/tables/{db}/01/{name}", "r1"))
            r = replicas[name]
            assert (engines[name], r["engine"]) == (engine, engine), (name, engines[name], r)
            assert (r["zookeeper_path"], r["replica_name"], int(r["is_readonly"])) == (path, replica, 0), (name, r)
    finally:
        ch(f"DROP DATABASE IF EXISTS `{other_db}`", rows=False)


def test_clickhouse_18_16_refuses_what_it_lacks_at_apply_naming_the_version(stack, tmp_path):
    stack.start_control_plane()
    # (The stack's server has a keeper, so Replicated engines are not refused here: their refusal on a server
    # without one is checked by features.rs's tests and by the --no-keeper case above.)
    for tables, words in [
        ([ENGINES_MODERN_ONLY[0]], ["TTL", "19.6", "18.16"]),
        ([ENGINES_MODERN_ONLY[1]], ["is_deleted", "23.2"]),
    ]:
        app = write_app(tmp_path, app_source(tables, streams=False), f"app_{uuid.uuid4().hex[:6]}.py")
        shown = stack.cli("plan", str(app)).stdout
        assert "REFUSED" in shown and all(w in shown for w in words), shown
        r = stack.cli("apply", str(app), check=False)
        assert r.returncode != 0 and all(w in r.stderr for w in words), r.stderr
    assert ch(f"SELECT count() AS c FROM system.tables WHERE database = 'py_{stack.id}'")[0]["c"] in (0, "0"), "nothing was created"


def test_option_changes_show_in_the_plan_and_what_clickhouse_cannot_alter_is_refused(stack, tmp_path):
    stack.start_control_plane()
    base = "engine=ReplacingMergeTreeEngine(ver='v'), partition_by='toYYYYMM(ts)', settings={'index_granularity': '8192'}"
    first = write_app(tmp_path, app_source([("t", base)], streams=False), "first.py")
    stack.cli("apply", str(first))
    for options, words in [
        (base.replace("toYYYYMM(ts)", "toDate(ts)"), ["PARTITION BY cannot change", "declare a new version"]),
        (base.replace("ver='v'", ""), ["the engine cannot change", "declare a new version"]),
        (base + ", order_by_fields=['id', 'v']", ["ORDER BY cannot change"]),
        (base.replace("'8192'}", "'8192', 'merge_with_ttl_timeout': '3600'}"), ["19.14"]),  # MODIFY SETTING
        (base.replace(", settings={'index_granularity': '8192'}", ""), ["cannot be removed"]),
    ]:
        changed = write_app(tmp_path, app_source([("t", options)], streams=False), f"changed_{uuid.uuid4().hex[:6]}.py")
        shown = stack.cli("plan", str(changed)).stdout
        assert "x table t: REFUSED" in shown and all(w in shown for w in words), shown
    same = stack.cli("plan", str(first)).stdout
    assert "nothing to do" in same, "an unchanged table with options compares equal to what was stored"


def test_a_refused_expression_names_the_option_and_what_is_wrong(stack, tmp_path):
    stack.start_control_plane()
    app = write_app(tmp_path, app_source([("t", "partition_by='toYYYYMM(ts); DROP TABLE x'")], streams=False))
    r = stack.cli("plan", str(app), check=False)
    assert r.returncode != 0 and "partition_by" in r.stderr and ";" in r.stderr, r.stderr
