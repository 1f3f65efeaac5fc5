"""MooseStack's official templates (templates/, see its README) run with `millrace dev` from their project
directories, their only change the import: records POSTed to their ingest APIs as the templates' own code sends
them land in their tables, the transform's cache, the consumers' output and the dead letter queue."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Optional

import pytest

from conftest import BIN, BROKERS, CLICKHOUSE, LOGS, drop_state, free_port, wait_until

TEMPLATES = Path(__file__).parent / "templates"
# `millrace dev` installs the SDK and starts the stack before anything else: minutes on a cold machine.
UP = 300.0


class Dev:
    """`millrace dev [app]` run from a copy of a template's project directory, on free ports; its output collected.
    Stopped with Ctrl-C at the end, and the state it made (named after the app's directory) dropped."""

    def __init__(self, project: Path, name: str, app: Optional[str]):
        self.project = project
        self.http = f"127.0.0.1:{free_port()}"
        cp, sidecar = free_port(), free_port()
        cmd = [str(BIN / "millrace"), "--control-plane", f"http://127.0.0.1:{cp}", "dev", *([app] if app else []),
               "--http-listen", self.http, "--sidecar-port", str(sidecar)]  # fmt: skip
        env = {**os.environ, "MILLRACE_BIN_DIR": str(BIN), "MILLRACE_SIDECAR_PROCESSES": "1"}
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log = open(LOGS / f"py-{name}-dev.log", "w")
        self.lines: list[str] = []
        self.p = subprocess.Popen(cmd, cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._collect, daemon=True).start()
        self.state: Optional[tuple[str, str, str]] = None
        try:
            self.wait_for("the state line", lambda out: "state of this app:" in out, 30)
            self.state = self._state()
            self.wait_for("millrace dev to be up", lambda out: "watching " in out, UP)
        except BaseException:
            self.stop()
            raise

    def _collect(self) -> None:
        for line in self.p.stdout:
            self.lines.append(line)
            self.log.write(line)
            self.log.flush()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, what: str, ok, timeout: float = 60.0) -> None:
        def done() -> bool:
            assert self.p.poll() is None or ok(self.output), f"millrace dev exited ({self.p.returncode}):\n{self.output}"
            return ok(self.output)

        try:
            wait_until(what, done, timeout, every=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- millrace dev's output:\n{self.output}") from None

    def _state(self) -> tuple[str, str, str]:
        """(Postgres database, ClickHouse database, topic prefix), as `millrace dev` printed them."""
        line = next(l for l in self.lines if l.startswith("state of this app:"))
        word = lambda after: line.split(after, 1)[1].split()[0].rstrip(",")  # noqa: E731
        return word("Postgres database "), word("ClickHouse database "), word("topics prefixed ")

    def post(self, path: str, record: dict) -> tuple[int, dict]:
        """One record per request, as the templates' generators send them."""
        req = urllib.request.Request(f"http://{self.http}{path}", data=json.dumps(record).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def rows(self, table: str, where: str = "1") -> list[dict]:
        sql = f"SELECT * FROM `{self.state[1]}`.`{table}` WHERE {where} FORMAT JSONEachRow"
        with urllib.request.urlopen(CLICKHOUSE, data=sql.encode(), timeout=30) as r:
            return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]

    def wait_rows(self, table: str, count: int, where: str = "1") -> list[dict]:
        found: list[dict] = []

        def enough() -> bool:
            nonlocal found
            found = self.rows(table, where)
            return len(found) >= count

        try:
            wait_until(f"{count} rows in {table} where {where}", enough, 60, every=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e} (found {found})\n--- millrace dev's output:\n{self.output}") from None
        return found

    def read(self, stream: str, count: int) -> list[dict]:
        """At least `count` records of a stream, from its beginning."""
        from confluent_kafka import Consumer, TopicPartition

        topic = self.state[2] + stream
        c = Consumer({"bootstrap.servers": BROKERS, "group.id": f"t{uuid.uuid4().hex}", "enable.auto.commit": False})
        try:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            c.assign([TopicPartition(topic, p, 0) for p in parts])
            out: list[dict] = []
            deadline = time.monotonic() + 60
            while len(out) < count and time.monotonic() < deadline:
                out += [json.loads(m.value()) for m in c.consume(100, 0.2) if m.error() is None]
            return out
        finally:
            c.close()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()
        if self.state:
            _drop(*self.state)


def _drop(postgres: str, clickhouse: str, prefix: str) -> None:
    drop_state(prefix, postgres, clickhouse)


@pytest.fixture
def dev(tmp_path, request):
    """Starts `millrace dev` in a copy of a template (so its names and __pycache__ are the test's own)."""
    started: list[Dev] = []

    def start(template: str, app: Optional[str]) -> Dev:
        project = tmp_path / template
        shutil.copytree(TEMPLATES / template, project)
        d = Dev(project, request.node.name, app)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


MODELS = """
from pydantic import BaseModel
from millrace import Key, Stream
class Order(BaseModel):
    id: Key[str]
orders = Stream[Order]("orders")
"""


def test_an_app_in_a_package_is_imported_from_its_project_directory_by_its_dotted_name(tmp_path, monkeypatch):
    from millrace import loader

    project = tmp_path / "shop"
    (project / "app" / "ingest").mkdir(parents=True)
    (project / "app" / "ingest" / "models.py").write_text(MODELS)
    (project / "app" / "ingest" / "helpers.py").write_text("def name():\n    return 'totals'\n")
    # Absolute and relative package imports, as a MooseStack project writes them; no app/__init__.py (moose needs none).
    (project / "app" / "main.py").write_text(
        "from app.ingest.models import orders, Order\nfrom .ingest import helpers\nfrom millrace import Stream\n"
        "totals = Stream[Order](helpers.name())\norders.add_transform(totals, lambda o: o)\n"
    )
    monkeypatch.chdir(tmp_path)
    assert loader.project_of(project / "app" / "main.py") == (project.resolve(), "app.main")
    for _ in range(2):  # loading again (a second project of the same layout, say) declares everything again
        registry = loader.load(str(project / "app" / "main.py"))
        assert sorted(registry.functions()) == ["orders__totals"]
    (project / "app" / "ingest" / "helpers.py").write_text("def name():\n    raise RuntimeError('no name')\n")
    with pytest.raises(loader.AppError) as e:
        loader.load(str(project / "app" / "main.py"))
    assert str(e.value) == "shop/app/ingest/helpers.py:2: RuntimeError: no name", "the line of the project's file that failed"


def test_the_templates_load_with_their_data_file_read_from_beside_the_app(tmp_path, monkeypatch):
    from millrace import loader

    shutil.copytree(TEMPLATES, tmp_path / "t")
    monkeypatch.chdir("/")  # the JSON file is found from the code's own path, wherever the SDK runs from
    python = loader.load(str(tmp_path / "t" / "python" / "app" / "main.py"))
    assert sorted(python.functions()) == ["FooDeadLetterQueue__consumer__print_messages", "Foo__Bar", "Foo__consumer__print_foo_event"]
    heart = loader.load(str(tmp_path / "t" / "live-heartrate-leaderboard" / "app" / "main.py"))
    assert sorted(heart.functions()) == [
        "bluetooth_hr_packet__unified_hr_packet", "processed_ant_hr_packet__unified_hr_packet", "raw_ant_hr_packet__processed_ant_hr_packet",
    ]  # fmt: skip


def test_the_python_template_runs_its_transform_cache_consumer_and_dead_letter_consumer(dev):
    d = dev("python", "app/main.py")
    assert d.state[2].startswith("app_"), "the state is named after the app's directory, as before projects (its hash tells projects apart)"
    run = uuid.uuid4().hex[:8]
    a, b, bad = f"a-{run}", f"b-{run}", f"bad-{run}"
    try:
        # As the template's generator posts: Foo(...).model_dump_json(), one record per request, to /ingest/Foo.
        for foo in ({"primary_key": a, "timestamp": 1700000000.0, "baz": 1, "optional_text": "hello"},
                    {"primary_key": b, "timestamp": 1700000001.5, "baz": 2, "optional_text": None},
                    {"primary_key": bad, "timestamp": 1728000000.0, "baz": 1, "optional_text": None}):  # fmt: skip
            assert d.post("/ingest/Foo", foo) == (200, {"written": 1})
        rows = {r["primary_key"]: r for r in d.wait_rows("Bar", 2)}
        # `baz` is an IntEnum: an Enum8 column (as moose maps it), holding the members' names.
        as_bar = lambda ts: datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")  # noqa: E731: the transform's own
        assert rows[a] == {"primary_key": a, "utc_timestamp": as_bar(1700000000.0), "baz": "QUX", "has_text": 1, "text_length": "5"}, rows
        assert rows[b] == {"primary_key": b, "utc_timestamp": as_bar(1700000001.5), "baz": "QUUX", "has_text": 0, "text_length": "0"}, rows

        # MooseCache in the transform: a second Foo with a's key gets a's cached Bar, whatever its text.
        assert d.post("/ingest/Foo", {"primary_key": a, "timestamp": 1700000000.0, "baz": 2, "optional_text": "a much longer text"})[0] == 200
        again = d.wait_rows("Bar", 2, f"primary_key = '{a}'")
        assert [(r["baz"], r["text_length"]) for r in again] == [("QUX", "5"), ("QUX", "5")], again
        import redis

        cached = redis.Redis.from_url(os.environ.get("MOOSE_REDIS_CONFIG__URL", "redis://127.0.0.1:6379")).get(f"MS::moosecache::foo_to_bar:{a}")
        assert cached is not None and json.loads(cached)["text_length"] == 5, cached

        # The magic timestamp fails the transform: the record is in the dead letter queue, and its consumer saw it.
        dead = [r for r in d.read("FooDeadLetterQueue", 1) if bad in json.dumps(r)]
        assert len(dead) == 1, dead
        assert dead[0].get("errorMessage", dead[0].get("error_message")) == "blah", dead
        assert not d.rows("Bar", f"primary_key = '{bad}'")
        d.wait_for("the dead letter consumer's print", lambda out: f"foo in dead letter: primary_key='{bad}'" in out)
        # The consumer on Foo printed every record.
        for key in (a, b, bad):
            d.wait_for(f"the consumer's print of {key}", lambda out, key=key: f"  Primary Key: {key}" in out)
    finally:
        import redis

        redis.Redis.from_url(os.environ.get("MOOSE_REDIS_CONFIG__URL", "redis://127.0.0.1:6379")).delete(
            f"MS::moosecache::foo_to_bar:{a}", f"MS::moosecache::foo_to_bar:{a}:__type__", f"MS::moosecache::foo_to_bar:{b}",
            f"MS::moosecache::foo_to_bar:{b}:__type__",
        )  # fmt: skip


def ant_packet(device_id: int, count: int, previous: int, last: int, beats: int, hr: int) -> dict:
    """The generator's ANT+ packet (app/scripts/generate_mock_ant_hr_data.py): beat times in 1/1024 s, LSB first."""
    payload = [0x04, 0xFF, previous & 0xFF, (previous >> 8) & 0xFF, last & 0xFF, (last >> 8) & 0xFF, beats, hr]
    return {"device_id": device_id, "packet_count": count, "ant_hr_packet": payload}


def test_the_heart_rate_template_runs_with_no_app_argument_reading_its_json_and_keeping_device_state(dev):
    d = dev("live-heartrate-leaderboard", None)
    assert "the project's app/main.py" in d.output
    assert d.state[2].startswith("app_"), d.state
    # Joj (device 12345) and Tim (12346) wear ANT+ monitors (mock-user-db.json). A beat count beyond 256 bumps the
    # device's rollover in the function's module dict, so Joj's next count is 256 more; Tim's device has its own.
    for packet in (ant_packet(12345, 0, 1024, 2048, 300, 70), ant_packet(12345, 1, 2048, 3072, 10, 72), ant_packet(12346, 0, 1024, 2048, 10, 80)):
        assert d.post("/ingest/raw_ant_hr_packet", packet) == (200, {"written": 1})
    # David's device 1111 is the live Bluetooth one.
    bt = {"device_id": 1111, "timestamp_ns": 1.7e18, "heart_rate": 90, "rr_interval_ms": 600}
    assert d.post("/ingest/bluetooth_hr_packet", bt) == (200, {"written": 1})

    raw = d.wait_rows("raw_ant_hr_packet", 3)
    assert sorted(r["ant_hr_packet"][6] for r in raw) == ["10", "10", "300"], raw
    processed = d.wait_rows("processed_ant_hr_packet", 3)
    seen = sorted((r["device_id"], r["heart_beat_count"], r["previous_beat_time"], r["last_beat_time"], r["calculated_heart_rate"]) for r in processed)
    assert seen == [("12345", "266", 2, 3, 72), ("12345", "300", 1, 2, 70), ("12346", "10", 1, 2, 80)], seen
    unified = d.wait_rows("unified_hr_packet", 4)
    people = sorted((r["user_id"], r["user_name"], r["device_id"], r["hr_value"], r["rr_interval_ms"]) for r in unified)
    assert people == [("0", "Joj", "12345", 70, 1000), ("0", "Joj", "12345", 72, 1000), ("1", "David", "1111", 90, 600), ("2", "Tim", "12346", 80, 1000)], people
    assert d.wait_rows("bluetooth_hr_packet", 1)[0]["heart_rate"] == "90"
    # The functions' Logger lines, shown by millrace dev with the function's name.
    line = "info [processed_ant_hr_packet__unified_hr_packet] SF: Device ID: 12345, User ID: 0, User Name: Joj"
    d.wait_for("the transform's log line", lambda out: line in out)
    assert "loading mock user db from " + str(d.project / "mock-user-db.json") in d.output

    # An edit in a subpackage is seen: the project is watched recursively, and applied again.
    with open(d.project / "app" / "functions" / "raw_ant_to_processed_ant_packet.py", "a") as f:
        f.write("# edited\n")
    d.wait_for("the edit to be applied", lambda out: "app/functions/raw_ant_to_processed_ant_packet.py changed" in out and "the sidecar serves the new version" in out)
