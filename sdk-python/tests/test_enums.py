"""Enums as moose maps them: ClickHouse Enum8/Enum16 columns; a string Enum's records carry its values, an IntEnum's
its numbers (and its names with StringToEnumMixin). Ingest checks membership; rows carry labels; the DDL runs on
ClickHouse 18.16 (through the stack) and on a modern ClickHouse (chdb)."""

from __future__ import annotations

import json

from conftest import write_app
from test_tables import ch, ddl, start_without_sidecar

import enum

from pydantic import BaseModel

from millrace import Key, loader
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


class Shade(StringToEnumMixin, str, enum.Enum):
    LIGHT = "light grey"
    DARK = "dark"


class Row(BaseModel):
    id: Key[str]
    colour: Colour
    level: Level
    status: Status
    shade: Shade


IngestPipeline[Row]("enums")
'''


def test_enums_become_enum_columns_that_take_their_members_and_refuse_others(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("MILLRACE_CONTROL_PLANE", stack.control_plane)
    app = write_app(tmp_path, APP)
    start_without_sidecar(stack, app)
    good = [
        {"id": "a", "colour": "red", "level": 1, "status": 1, "shade": "light grey"},
        # With StringToEnumMixin a string Enum's member names are taken too, and stored as their values.
        {"id": "b", "colour": "it's green", "level": 300, "status": "GONE", "shade": "LIGHT"},
    ]
    assert stack.post("/ingest/enums", json.dumps(good).encode()) == (200, {"written": 2})
    for bad, field in (
        ({"id": "x", "colour": "blue", "level": 1, "status": 1, "shade": "dark"}, "colour"),
        ({"id": "x", "colour": "RED", "level": 1, "status": 1, "shade": "dark"}, "colour"),
        ({"id": "x", "colour": "red", "level": "LOW", "status": 1, "shade": "dark"}, "level"),
        ({"id": "x", "colour": "red", "level": 2, "status": 1, "shade": "dark"}, "level"),
        ({"id": "x", "colour": "red", "level": 1, "status": "PAUSED", "shade": "dark"}, "status"),
        ({"id": "x", "colour": "red", "level": 1, "status": 1, "shade": "MEDIUM"}, "shade"),
    ):
        status, answer = stack.post("/ingest/enums", json.dumps(bad).encode())
        assert status == 400 and answer["errors"][0]["field"] == field, (bad, answer)
    rows = stack.wait_rows("enums", 2)
    assert sorted((r["id"], r["colour"], r["level"], r["status"], r["shade"]) for r in rows) == [
        ("a", "red", "LOW", "ACTIVE", "light grey"),
        ("b", "it's green", "HIGH", "GONE", "light grey"),
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


class PaintColour(str, enum.Enum):
    RED = "red"


class PaintRow(BaseModel):
    id: Key[str]
    colour: PaintColour


def test_an_output_whose_enum_was_set_to_a_non_member_is_refused_by_the_sidecar(tmp_path):
    from millrace.runner import Runner


    def paint(r: PaintRow) -> PaintRow:
        r.colour = "blue"  # pydantic does not check assignments
        return r

    out = Runner("paint", paint, PaintRow, PaintRow, False).run([b'{"id": "a", "colour": "red"}'])
    assert out[0][0] == "ValidationError" and "colour" in out[0][1], out


def test_an_enum_may_be_a_key_and_a_flag_stays_an_integer(tmp_path):
    registry = loader.load(
        str(
            write_app(
                tmp_path,
                "import enum\nfrom millrace import Key, OlapTable\nfrom pydantic import BaseModel\n\n\n"
                "class C(str, enum.Enum):\n    A = 'a'\n\n\nclass F(enum.IntFlag):\n    X = 1\n    Y = 2\n\n\n"
                "class R(BaseModel):\n    c: Key[C]\n    f: F\n\n\nOlapTable[R]('keyed')\n",
            )
        )
    )
    d = ddl(registry)["keyed"]
    assert d["refused"] is None and "ORDER BY" in d["create"] and "`c`" in d["create"].split("ORDER BY")[1], d
    fields = {f.name: f.type for f in build(registry).tables[0].fields}
    assert fields["f"].WhichOneof("kind") == "scalar" and fields["c"].WhichOneof("kind") == "enumeration"


def test_a_string_enums_names_are_aliases_read_the_way_the_ingest_api_reads_them():
    from millrace import StringToEnumMixin
    from millrace.types import field_type

    class Sz(StringToEnumMixin, str, enum.Enum):
        S = "M"  # its name is no other member's value: an alias
        M = "L"  # its name is member S's value: "M" means S, in the SDK as at ingest

    class Paint(StringToEnumMixin, str, enum.Enum):
        RED = "red"
        CRIMSON = "red"  # Python's alias of RED

    ty, _, _ = field_type(Sz, "Row.sz")
    assert ty["enumeration"]["members"] == [{"label": "M", "number": 1, "aliases": ["S"]}, {"label": "L", "number": 2}]
    ty, _, _ = field_type(Paint, "Row.paint")
    assert ty["enumeration"]["members"] == [{"label": "red", "number": 1, "aliases": ["RED", "CRIMSON"]}]

    class Row(BaseModel):
        sz: Sz
        paint: Paint

    row = Row.model_validate({"sz": "M", "paint": "CRIMSON"})
    assert row.sz is Sz.S and row.paint is Paint.RED, "a value first, then a name"
    assert Row.model_validate({"sz": "S", "paint": "red"}).sz is Sz.S
    assert json.loads(row.model_dump_json()) == {"sz": "M", "paint": "red"}
