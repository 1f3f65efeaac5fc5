"""Enums as moose maps them: ClickHouse Enum8/Enum16 columns; a string Enum's records carry its values, an IntEnum's
its numbers (and its names with StringToEnumMixin). Ingest checks membership; rows carry labels; the DDL runs on
ClickHouse 18.16 (through the stack) and on a modern ClickHouse (chdb)."""

from __future__ import annotations

import json

from conftest import write_app
from test_tables import ch, ddl, start_without_sidecar

from millrace import loader
from millrace.plan import build

APP = '''
import enum
from millrace import IngestPipeline, Key, StringToEnumMixin
from pydantic import BaseModel


class Colour(str, enum.Enum):
    RED = "red"
    GREEN = "it's green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 300


class Status(StringToEnumMixin, enum.IntEnum):
    ACTIVE = 1
    GONE = 2


class Row(BaseModel):
    id: Key[str]
    colour: Colour
    level: Level
    status: Status


IngestPipeline[Row]("enums")
'''


def test_enums_become_enum_columns_that_take_their_members_and_refuse_others(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("MILLRACE_CONTROL_PLANE", stack.control_plane)
    app = write_app(tmp_path, APP)
    start_without_sidecar(stack, app)
    good = [
        {"id": "a", "colour": "red", "level": 1, "status": 1},
        {"id": "b", "colour": "it's green", "level": 300, "status": "GONE"},
    ]
    assert stack.post("/ingest/enums", json.dumps(good).encode()) == (200, {"written": 2})
    for bad, field in (
        ({"id": "x", "colour": "blue", "level": 1, "status": 1}, "colour"),
        ({"id": "x", "colour": "RED", "level": 1, "status": 1}, "colour"),
        ({"id": "x", "colour": "red", "level": "LOW", "status": 1}, "level"),
        ({"id": "x", "colour": "red", "level": 2, "status": 1}, "level"),
        ({"id": "x", "colour": "red", "level": 1, "status": "PAUSED"}, "status"),
    ):
        status, answer = stack.post("/ingest/enums", json.dumps(bad).encode())
        assert status == 400 and answer["errors"][0]["field"] == field, (bad, answer)
    rows = stack.wait_rows("enums", 2)
    assert sorted((r["id"], r["colour"], r["level"], r["status"]) for r in rows) == [
        ("a", "red", "LOW", "ACTIVE"),
        ("b", "it's green", "HIGH", "GONE"),
    ]
    columns = {c["name"]: c["type"] for c in ch(f"SELECT name, type FROM system.columns WHERE database = 'py_{stack.id}' AND table = 'enums'")}
    assert columns["colour"] == "Enum8('red' = 1, 'it\\'s green' = 2)", columns
    assert columns["level"] == "Enum16('LOW' = 1, 'HIGH' = 300)", columns


def test_enum_columns_run_on_modern_clickhouse_in_chdb(tmp_path):
    import chdb.session as chdb_session

    registry = loader.load(str(write_app(tmp_path, APP)))
    assert build(registry).tables, "the pipeline has a table"
    rendered = ddl(registry, "--database", "millrace_chdb")
    sess = chdb_session.Session(str(tmp_path / "chdb"))
    try:
        sess.query("CREATE DATABASE IF NOT EXISTS millrace_chdb")
        sess.query(rendered["enums"]["create"])
        sess.query('INSERT INTO millrace_chdb.enums FORMAT JSONEachRow\n{"id":"a","colour":"it\'s green","level":"HIGH","status":"GONE"}')
        answer = str(sess.query("SELECT colour, level, status FROM millrace_chdb.enums", "JSONEachRow"))
        assert json.loads(answer.splitlines()[0]) == {"colour": "it's green", "level": "HIGH", "status": "GONE"}
    finally:
        sess.close()
