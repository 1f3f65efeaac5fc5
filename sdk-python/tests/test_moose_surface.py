"""moose_lib's Python-only surface: its module paths, one clear error for what Millrace does not provide, Logger and
cli_log, StringToEnumMixin, MooseModel, the registry getters, DeadLetterModel.as_typed() and MooseCache (against the
real Redis that `scripts/stack.sh start` runs)."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from enum import Enum, IntEnum
from pathlib import Path

import pytest
import redis
from pydantic import BaseModel, ValidationError

import millrace
from millrace import (
    CliLogData,
    DeadLetterModel,
    DeadLetterQueue,
    IngestPipeline,
    IngestPipelineConfig,
    Key,
    Logger,
    MooseCache,
    MooseModel,
    OlapConfig,
    OlapTable,
    Stream,
    StringToEnumMixin,
    cli_log,
    loader,
    logs,
    resources,
)
from millrace._surface import MODULES, NOT_PROVIDED, NotProvidedError
from millrace.cache import MooseCacheError
from millrace.runner import Runner

from conftest import LOGS, ROOT, free_port, wait_until

APPS = Path(__file__).parent / "apps"
REDIS_URL = os.environ.get("MOOSE_REDIS_CONFIG__URL", "redis://127.0.0.1:6379")
PREFIX = os.environ.get("MOOSE_REDIS_CONFIG__KEY_PREFIX", "MS") + "::moosecache::"


@pytest.fixture(autouse=True)
def fresh_registry():
    resources.reset_registry()
    yield


# --- import paths ---------------------------------------------------------------------------------------------------

STREAMS = ["Stream", "StreamConfig", "TransformConfig", "ConsumerConfig", "DeadLetterModel", "DeadLetterQueue"]
GETTERS = ["get_stream", "get_streams", "get_table", "get_tables", "get_ingest_api", "get_ingest_apis"]
MIRRORS = {
    "dmv2": [*STREAMS, *GETTERS, "OlapTable", "OlapConfig", "IngestApi", "IngestConfig", "IngestPipeline",
             "IngestPipelineConfig", "LifeCycle", "MooseModel", "T", "U", "ZeroOrMany"],
    "dmv2.stream": STREAMS,
    "dmv2.olap_table": ["OlapTable", "OlapConfig"],
    "dmv2.ingest_api": ["IngestApi", "IngestConfig"],
    "dmv2.ingest_pipeline": ["IngestPipeline", "IngestPipelineConfig"],
    "dmv2.types": ["T", "U", "T_none", "U_none", "ZeroOrMany"],
    "dmv2.life_cycle": ["LifeCycle"],
    "dmv2.registry": GETTERS,
    "dmv2.moose_model": ["MooseModel"],
    "data_models": ["Key", "StringToEnumMixin", "Int8", "UInt64", "Float32", "clickhouse_decimal"],
    "commons": ["Logger", "cli_log", "CliLogData", "EnhancedJSONEncoder"],
    "main": ["StreamingFunction"],
    "clients.redis_client": ["MooseCache"],
}  # fmt: skip


@pytest.mark.parametrize("path", sorted(MIRRORS))
def test_each_moose_module_path_gives_the_top_level_names(path):
    module = importlib.import_module(f"millrace.{path}")
    for name in MIRRORS[path]:
        assert getattr(module, name) is getattr(millrace, name), f"millrace.{path}.{name}"
        assert name in module.__all__, f"`from millrace.{path} import *` gives {name}"


def test_a_name_added_to_the_top_level_package_reaches_the_mirrored_paths(monkeypatch):
    # Helpers add engines and column types to `millrace`; `from millrace.blocks import ...` must see them at once.
    engine = object()
    monkeypatch.setattr(millrace, "SomeNewEngine", engine, raising=False)
    monkeypatch.setattr(millrace, "__all__", [*millrace.__all__, "SomeNewEngine"])
    from millrace.blocks import SomeNewEngine
    from millrace.dmv2.olap_table import SomeNewEngine as again

    assert SomeNewEngine is engine and again is engine


def test_an_app_importing_from_moose_module_paths_loads_and_plans():
    from millrace import plan

    reg = loader.load(str(APPS / "moose_paths.py"))
    assert {r.name for r in reg.of("stream")} == {"readings", "tallies"}
    assert [t.name for t in reg.transforms] == ["readings__tallies"]
    assert [c.source.name for c in reg.consumers] == ["readingsDeadLetterQueue"]
    streams = {s.name: s for s in plan.build(reg).streams}
    assert set(streams) >= {"readings", "tallies"}


# --- what Millrace does not provide ------------------------------------------------------------------------------

REFUSED = [
    ("from millrace import Api", "Api", "query APIs"),
    ("from millrace import MooseClient", "MooseClient", "query APIs"),
    ("from millrace.dmv2 import ApiConfig", "ApiConfig", "query APIs"),
    ("from millrace import MaterializedView", "MaterializedView", "materialized views"),
    ("from millrace.dmv2 import View, SqlResource", "View", "SQL resources"),
    ("from millrace.blocks import create_materialized_view", "create_materialized_view", "materialized views"),
    ("from millrace.dmv2 import Workflow", "Workflow", "workflows"),
    ("from millrace import Task", "Task", "workflows"),
    ("from millrace import WebApp", "WebApp", "web apps"),
    ("from millrace.dmv2.stream import KafkaSchemaConfig", "KafkaSchemaConfig", "schema registry"),
    ("from millrace.dmv2.workflow import Workflow", "millrace.dmv2.workflow", "workflows"),
    ("import millrace.dmv2.consumption", "millrace.dmv2.consumption", "query APIs"),
    ("from millrace.query_builder import col", "millrace.query_builder", "query APIs"),
    ("from millrace import query_builder", "millrace.query_builder", "query APIs"),
]


@pytest.mark.parametrize("statement,named,area", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_name_millrace_does_not_provide_fails_with_one_clear_error(statement, named, area):
    with pytest.raises(NotProvidedError) as e:
        exec(statement, {})
    message = str(e.value)
    assert isinstance(e.value, ImportError)
    assert named in message and area in message, message
    assert "Millrace covers streams, functions (transforms and consumers), ingest APIs and tables" in message


def test_every_refused_name_is_refused_from_the_package_and_from_dmv2():
    for name in NOT_PROVIDED:
        for module in (millrace, millrace.dmv2):
            with pytest.raises(NotProvidedError, match=name):
                getattr(module, name)
    for path in MODULES:
        with pytest.raises(NotProvidedError):
            importlib.import_module(f"millrace.{path}")


def test_the_streaming_and_table_surface_is_never_refused():
    # Other parts of issue #20 add these: they must fail as "not there yet", never as "not provided".
    surface = ["ReplacingMergeTreeEngine", "MergeTreeEngine", "ClickHouseEngines", "EngineConfig", "clickhouse_datetime64",
               "IngestConfigWithDestination", "ClickHouseTTL", "clickhouse_default", "FixedString", "aggregated",
               "simple_aggregated", "OlapTable", "Stream", "IngestPipeline", "Logger", "MooseCache"]  # fmt: skip
    assert not [n for n in surface if n in NOT_PROVIDED]
    assert not [m for m in MODULES if m.split(".")[-1] in {"stream", "olap_table", "ingest_api", "ingest_pipeline", "blocks", "data_models"}]


def test_a_name_moose_lib_never_had_is_a_plain_import_error():
    with pytest.raises(ImportError) as e:
        exec("from millrace import NoSuchThing", {})
    assert not isinstance(e.value, NotProvidedError)


def test_an_app_using_a_query_api_fails_to_load_naming_the_line_and_what_is_missing():
    app = APPS / "moose_query_api.py"
    with pytest.raises(loader.AppError) as e:
        loader.load(str(app))
    message = str(e.value)
    assert message.startswith(f"{app}:6: NotProvidedError: 'Api'"), message
    assert "query APIs" in message and "\n" not in message


# --- Logger, cli_log ---------------------------------------------------------------------------------------------


def log_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"millrace_log"')]


def test_logger_writes_one_line_per_call_with_moose_levels_and_the_function(capsys):
    with logs.function_context("orders__totals"):
        log = Logger(action="BT")
        log.info("i")
        log.success("s")
        log.error("e")
        log.warning("w")
        log.highlight("h")
    out, err = capsys.readouterr()
    assert out == "", "logs go to stderr only"
    lines = log_lines(err)
    assert [(x["level"], x["message_type"], x["message"]) for x in lines] == [
        ("info", "Info", "i"), ("info", "Success", "s"), ("error", "Error", "e"), ("warn", "Warning", "w"),
        ("info", "Highlight", "h"),
    ]  # fmt: skip
    assert {x["function"] for x in lines} == {"orders__totals"} and {x["action"] for x in lines} == {"BT"}
    assert all(x["pid"] == os.getpid() and x["time"].endswith("Z") for x in lines)


def test_cli_log_outside_a_function_has_no_function_and_moose_defaults(capsys):
    cli_log(CliLogData(action="Load", message="multi\nline"))
    Logger().info("plain")
    first, second = log_lines(capsys.readouterr().err)
    assert first == {**first, "function": None, "action": "Load", "message": "multi\nline", "message_type": "Info", "level": "info"}
    assert second["action"] == "Custom" and Logger.default_action == "Custom"
    assert CliLogData("a", "m").message_type == CliLogData.INFO == "Info"


def test_the_function_name_follows_each_thread_and_each_task(capsys):
    def on_thread(name: str) -> None:
        logs.set_function(name)  # as the runner does, once per batch, on the thread that calls the function
        for _ in range(50):
            Logger().info(name)

    threads = [threading.Thread(target=on_thread, args=(f"f{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    async def one(name: str) -> None:
        await asyncio.sleep(0)
        Logger().info(name)

    async def batch(name: str) -> None:
        logs.set_function(name)  # tasks created from here on inherit it
        await asyncio.gather(*(one(name) for _ in range(3)))

    async def both() -> None:
        await asyncio.gather(asyncio.create_task(batch("a1")), asyncio.create_task(batch("a2")))

    asyncio.run(both())
    lines = log_lines(capsys.readouterr().err)
    assert len(lines) == 4 * 50 + 6, "no line lost or interleaved"
    assert all(x["function"] == x["message"] for x in lines)
    assert logs.current_function() is None, "the test's own thread was never marked"


def test_log_lines_reach_the_process_stderr():
    code = "from millrace import Logger; from millrace.logs import function_context\nwith function_context('f'): Logger('A').warning('w')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    (line,) = log_lines(r.stderr)
    assert (line["function"], line["action"], line["level"], line["message"]) == ("f", "A", "warn", "w")


# --- StringToEnumMixin, MooseModel, getters, as_typed ----------------------------------------------------------------


class Color(StringToEnumMixin, IntEnum):
    RED = 1
    GREEN = 2


class Status(StringToEnumMixin, str, Enum):
    ACTIVE = "active"
    GONE = "gone"


class Paint(MooseModel):
    id: Key[str]
    color: Color
    status: Status = Status.ACTIVE


def test_string_to_enum_takes_member_names_and_values_and_writes_values():
    assert Paint(id="a", color="GREEN").color is Color.GREEN
    assert Paint(id="a", color=1).color is Color.RED
    assert Paint.model_validate_json('{"id": "a", "color": "RED", "status": "GONE"}').status is Status.GONE
    # moose_lib takes names only; a string enum's value must read back too, or a stream's records would not.
    assert Paint(id="a", color=2, status="gone").status is Status.GONE
    assert json.loads(Paint(id="a", color="GREEN").model_dump_json()) == {"id": "a", "color": 2, "status": "active"}
    with pytest.raises(ValidationError, match="Invalid enum name: BLUE"):
        Paint(id="a", color="BLUE")


def test_string_to_enum_records_run_through_a_transform():
    r = Runner("paints__paints", lambda p: p, Paint, Paint, consumer=False)
    out = r.run([b'{"id": "a", "color": "GREEN"}', b'{"id": "b", "color": "PURPLE"}'])
    assert json.loads(out[0][0]) == {"id": "a", "color": 2, "status": "active"}
    assert out[1][0] == "ValidationError" and "Invalid enum name: PURPLE" in out[1][1]


def test_moose_model_is_a_pydantic_model_and_says_why_it_has_no_column_objects():
    s = Stream[Paint]("paints")
    assert [f["name"] for f in s.fields] == ["id", "color", "status"]
    assert Paint(id="x", color=1).id == "x"
    with pytest.raises(AttributeError, match="Paint.color: MooseModel's column objects serve MooseStack's query APIs"):
        Paint.color  # noqa: B018
    assert not hasattr(Paint, "cols")


def test_registry_getters_return_what_the_app_declared_keyed_as_moose_keys_them():
    class Order(BaseModel):
        id: Key[str]

    p = IngestPipeline[Order]("orders", IngestPipelineConfig())
    v1 = OlapTable[Order]("archive", OlapConfig(version="1.0"))
    assert millrace.get_streams() == {"orders": p.stream, "ordersDeadLetterQueue": p.dead_letter_queue}
    assert millrace.get_tables() == {"orders": p.table, "archive_1.0": v1}
    assert millrace.get_ingest_apis() == {"orders": p.ingest_api}
    assert millrace.get_stream("orders") is p.stream and millrace.get_table("archive_1.0") is v1
    assert millrace.get_ingest_api("orders") is p.ingest_api
    assert millrace.get_stream("nope") is None and millrace.get_table("archive") is None
    resources.reset_registry()  # loading another app: the getters see the new registry
    assert millrace.get_streams() == {} and millrace.get_stream("orders") is None


def test_a_dead_letter_consumer_gets_records_whose_as_typed_is_the_original_model():
    got = []
    dlq = DeadLetterQueue[Paint]("paints_dlq")
    dlq.add_consumer(lambda dead: got.append((dead.as_typed(), dead.error_type)))
    moose_spelling = {"originalRecord": {"id": "a", "color": "GREEN"}, "errorMessage": "m", "errorType": "E",
                      "failedAt": "2026-11-25T10:00:00Z", "source": "transform"}  # fmt: skip
    ours = {"original_record": {"id": "b", "color": 1}, "error_message": "m", "error_type": "F",
            "failed_at": "2026-11-25T10:00:00Z", "source": "api"}  # fmt: skip
    c = resources.registry.consumers[0]
    out = Runner(c.name, c.fn, dlq.model, None, consumer=True).run([json.dumps(moose_spelling).encode(), json.dumps(ours).encode()])
    assert out == [[], []]
    assert got == [(Paint(id="a", color=Color.GREEN), "E"), (Paint(id="b", color=Color.RED), "F")]
    with pytest.raises(TypeError, match="DeadLetterModel\\[Model\\]"):
        DeadLetterModel.model_validate(moose_spelling).as_typed()


def test_streaming_function_holds_its_function_and_the_encoder_writes_moose_json():
    def fn(x):
        return x

    assert millrace.StreamingFunction(run=fn).run is fn
    naive = dt.datetime(2026, 1, 2, 3, 4, 5)
    text = json.dumps({"at": naive, "p": Paint(id="a", color=1)}, cls=millrace.EnhancedJSONEncoder)
    assert json.loads(text) == {"at": "2026-01-02T03:04:05+00:00", "p": {"id": "a", "color": 1, "status": "active"}}


# --- MooseCache, on the real Redis ------------------------------------------------------------------------------


class Config(BaseModel):
    baz: int
    qux: bool


@pytest.fixture
def cache():
    c = MooseCache()
    try:
        c.get("reachable")
    except MooseCacheError as e:
        pytest.fail(f"{e} (the tests need the stack's Redis)")
    return c


@pytest.fixture
def raw():
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield r
    r.close()


@pytest.fixture
def key():
    k = f"test-{uuid.uuid4().hex}"
    yield k
    MooseCache().clear_keys(k)


def test_importing_millrace_leaves_redis_unloaded_until_the_cache_is_used():
    code = "import sys, millrace\nassert 'redis' not in sys.modules\nfrom millrace import MooseCache\nassert 'redis' in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr


def test_cache_is_one_instance_per_process(cache):
    assert MooseCache() is cache


def test_cache_stores_strings_models_and_lists_under_moose_keys_for_an_hour(cache, raw, key):
    cache.set(key, "bar")
    cache.set(f"{key}:config", Config(baz=123, qux=True))
    cache.set(f"{key}:list", [{"id": 1}, {"id": 2}])
    assert cache.get(key) == "bar"
    assert cache.get(f"{key}:config", Config) == Config(baz=123, qux=True)
    assert cache.get(f"{key}:list", list) == [{"id": 1}, {"id": 2}]
    # moose_lib's layout, so that a MooseStack app sharing the Redis reads the same values.
    assert raw.get(PREFIX + key) == "bar" and raw.get(PREFIX + key + ":__type__") == "str"
    assert raw.get(f"{PREFIX}{key}:config:__type__") == "pydantic:Config"
    assert 3590 <= raw.ttl(PREFIX + key) <= 3600


def test_cache_refuses_a_value_read_as_another_kind_and_bad_arguments(cache, key):
    cache.set(key, "bar")
    with pytest.raises(ValueError, match="stored as string but requested as list"):
        cache.get(key, list)
    with pytest.raises(TypeError, match="Value must be a string, Pydantic model, or list"):
        cache.set(key, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        cache.set(key, "x", ttl_seconds=-1)
    with pytest.raises(TypeError, match="type_hint must be str, list, or a Pydantic model class"):
        cache.get(key, int)


def test_cache_values_expire_after_their_ttl(cache, raw, key):
    cache.set(key, "soon", ttl_seconds=1)
    assert cache.get(key) == "soon" and 0 < raw.pttl(PREFIX + key) <= 1000
    wait_until("the key to expire", lambda: cache.get(key) is None, timeout=10, every=0.1)
    assert raw.exists(PREFIX + key, PREFIX + key + ":__type__") == 0
    cache.set(key, "now", ttl_seconds=0)  # expires at once (Redis itself refuses an expiry of 0)
    assert cache.get(key) is None


def test_cache_delete_clear_keys_and_a_missing_key(cache, key):
    assert cache.get(f"{key}:never") is None
    cache.set(f"{key}:a", "1")
    cache.set(f"{key}:b", "2")
    cache.set(f"{key}-other", "3")
    cache.delete(f"{key}:a")
    assert cache.get(f"{key}:a") is None and cache.get(f"{key}:b") == "2"
    cache.clear_keys(f"{key}:")
    assert cache.get(f"{key}:b") is None and cache.get(f"{key}-other") == "3"
    cache.disconnect()  # idle connections closed; the next call reconnects
    assert cache.get(f"{key}-other") == "3"


def test_cache_from_many_threads_counts_every_call(cache, key):
    def bump(i: int) -> None:
        cache.set(f"{key}:{i}", str(i))

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert [cache.get(f"{key}:{i}") for i in range(32)] == [str(i) for i in range(32)]


def test_an_unreachable_redis_is_one_clear_error_within_seconds():
    url = f"redis://127.0.0.1:{free_port()}"
    code = (
        "import redis\nfrom millrace import MooseCache\nfrom millrace.cache import MooseCacheError\n"
        "try:\n    MooseCache().set('k', 'v')\nexcept MooseCacheError as e:\n"
        "    assert isinstance(e, redis.ConnectionError)\n    print(e)\n    raise SystemExit(3)\n"
    )
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/",
                       env={**os.environ, "MOOSE_REDIS_CONFIG__URL": url})  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert f"MooseCache: setting 'k': cannot reach Redis at {url}" in r.stdout
    assert "scripts/stack.sh start" in r.stdout and "MOOSE_REDIS_CONFIG__URL" in r.stdout
    assert time.monotonic() - started < 20


def test_the_stack_script_shows_redis_and_its_url():
    status = subprocess.run(["bash", str(ROOT / "scripts" / "stack.sh"), "status"], capture_output=True, text=True, timeout=60)
    port = REDIS_URL.rsplit(":", 1)[1]
    assert f"redis      up   127.0.0.1:{port}" in status.stdout, status.stdout
    env = subprocess.run(["bash", str(ROOT / "scripts" / "stack.sh"), "env"], capture_output=True, text=True, timeout=60)
    assert f"export MOOSE_REDIS_CONFIG__URL=redis://127.0.0.1:{port}" in env.stdout


# --- end to end: a moose_lib app through the stack ---------------------------------------------------------------


def test_a_moose_app_runs_with_the_cache_the_logger_enums_and_dead_letters(stack, raw):
    run = uuid.uuid4().hex
    stack.env["MOOSE_TEST_RUN"] = run
    stack.run(APPS / "moose_paths.py")
    body = [
        {"id": "r1", "device": "a", "color": 1, "value": 5},
        {"id": "r2", "device": "b", "color": 2, "value": 6},
        {"id": "r3", "device": "a", "color": 2, "value": 7},
        {"id": "r4", "device": "a", "color": 1, "value": -1},
    ]
    assert stack.post("/ingest/readings", json.dumps(body).encode()) == (200, {"written": 4})
    rows = {r["id"]: r for r in stack.wait_rows("tallies", 3)}
    # int() as ClickHouse quotes 64-bit integers in JSON; the enum column (Enum8, as moose maps it) holds labels.
    assert {i: (r["device"], r["color"], int(r["seen"])) for i, r in rows.items()} == {
        "r1": ("a", "RED", 1), "r2": ("b", "GREEN", 1), "r3": ("a", "GREEN", 2),
    }  # fmt: skip
    assert raw.get(f"{PREFIX}{run}:a") == "2" and raw.get(f"{PREFIX}{run}:b") == "1"
    sidecar_log = LOGS / f"py-{stack.name}-sidecar.log"
    lines: list[dict] = []

    def recovered() -> bool:
        nonlocal lines
        lines = log_lines(sidecar_log.read_text())
        return any(x["action"] == "Recovered" for x in lines)

    wait_until("the dead letter consumer's log line", recovered)
    assert [x["message"] for x in lines if x["action"] == "Recovered"] == ["r4 RED"]
    assert {x["level"] for x in lines if x["action"] == "Recovered"} == {"warn"}
    tally = {x["message"] for x in lines if x["action"] == "Tally"}
    assert {"moose_paths loaded", "reading r1 from a: seen 1", "reading r3 from a: seen 2"} <= tally
    raw.delete(f"{PREFIX}{run}:a", f"{PREFIX}{run}:a:__type__", f"{PREFIX}{run}:b", f"{PREFIX}{run}:b:__type__")
