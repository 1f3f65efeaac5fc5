"""Fixtures for tests against the real stack (`scripts/stack.sh start`): each test gets its own control plane (its
own Postgres database, ClickHouse database and topic namespace), a worker and the app's Python sidecar, all real
processes. Waits are bounded, so a hung dependency fails a test instead of stalling it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("MILLRACE_BIN_DIR", ROOT / "target" / "debug"))
BROKERS = os.environ.get("MILLRACE_KAFKA_BROKERS", "127.0.0.1:9092")
POSTGRES = os.environ.get("MILLRACE_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432")
CLICKHOUSE = os.environ.get("MILLRACE_CLICKHOUSE_URL", "http://127.0.0.1:8123")
LOGS = Path(os.environ.get("MILLRACE_TEST_LOGS", "/tmp/millrace-test-logs"))
WAIT = 60.0

# A stream, a second one and a transform between them: the smallest app the client tests apply.
ORDERS_APP = """
from pydantic import BaseModel
from millrace import Key, Stream
class Order(BaseModel):
    id: Key[str]
    amount: int
orders = Stream[Order]("orders")
totals = Stream[Order]("totals")
orders.add_transform(totals, lambda o: o)
"""


def free_port(count: int = 1) -> int:
    """The first of `count` consecutive free ports."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count >= 65535:
            continue
        ok = True
        for p in range(base, base + count):
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free ports")


def wait_until(what: str, ok: Callable[[], bool], timeout: float = WAIT, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Stack:
    """One test's control plane, worker and sidecar, on the ClickHouse at `clickhouse` (its HTTP interface: the
    stack's server by default, or `modern_clickhouse`'s)."""

    def __init__(self, tmp: Path, name: str, clickhouse: str = CLICKHOUSE):
        self.id = uuid.uuid4().hex[:10]
        self.tmp, self.name = tmp, name
        self.clickhouse_url = clickhouse
        self.namespace = f"py{self.id}_"
        self.cp_port = free_port()
        self.control_plane = f"127.0.0.1:{self.cp_port}"
        self.procs: list[subprocess.Popen] = []
        self.sidecar: Optional[subprocess.Popen] = None
        self.worker: Optional[subprocess.Popen] = None
        self.env = {
            **os.environ,
            "MILLRACE_CONTROL_PLANE": self.control_plane,
            "MILLRACE_KAFKA_BROKERS": BROKERS,
            "PYTHONUNBUFFERED": "1",
        }
        LOGS.mkdir(parents=True, exist_ok=True)

    def _spawn(self, label: str, cmd: list[str], **kw) -> subprocess.Popen:
        log = open(LOGS / f"py-{self.name}-{label}.log", "w")
        # cwd: not the SDK's source directory, whose `millrace` (without generated stubs) would shadow the installed one.
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, cwd=self.tmp, **kw)
        self.procs.append(p)
        return p

    def start_control_plane(self, *extra: str) -> None:
        """`extra`: more flags (tokens, TLS)."""
        cmd = [
            str(BIN / "millrace-control-plane"),
            "--listen", self.control_plane,
            "--database-url", f"{POSTGRES}/millrace_py_{self.id}",
            "--kafka-brokers", BROKERS,
            "--clickhouse-url", self.clickhouse_url,
            "--clickhouse-database", f"py_{self.id}",
            "--topic-namespace", self.namespace,
            *extra,
        ]  # fmt: skip
        p = self._spawn("control-plane", cmd)
        wait_until("the control plane to listen", lambda: p.poll() is not None or port_open(self.cp_port))
        assert p.poll() is None, f"the control plane exited; see {LOGS}/py-{self.name}-control-plane.log"

    def start_sidecar(self, app: Path, processes: int = 2) -> None:
        self.sidecar_port = free_port(processes)
        cmd = [sys.executable, "-m", "millrace", "serve", str(app), "--port", str(self.sidecar_port), "--processes", str(processes)]
        self.sidecar = self._spawn("sidecar", cmd, start_new_session=True)
        ports = range(self.sidecar_port, self.sidecar_port + processes)
        wait_until("the sidecar processes to listen", lambda: self.sidecar.poll() is not None or all(port_open(p) for p in ports))
        assert self.sidecar.poll() is None, f"the sidecar exited; see {LOGS}/py-{self.name}-sidecar.log"

    def start_worker(self) -> None:
        self.http_port = free_port()
        cmd = [
            str(BIN / "millrace-worker"),
            "--control-plane", f"http://{self.control_plane}",
            "--kafka-brokers", BROKERS,
            "--sidecar", f"default=http://127.0.0.1:{self.sidecar_port}",
            "--http-listen", f"127.0.0.1:{self.http_port}",
            # Table sync inserts there: the worker has its own flag (worker/src/config.rs), not the control plane's.
            "--clickhouse-url", self.clickhouse_url,
            "--name", f"py-{self.id}",
            "--batch-linger-ms", "10",
            "--progress-interval-ms", "100",
        ]  # fmt: skip
        self.worker = self._spawn("worker", cmd)

    def cli(self, *args: str, check: bool = True, env: Optional[dict] = None) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [sys.executable, "-m", "millrace", *args],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            cwd=self.tmp,
            timeout=WAIT,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"millrace {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def run(self, app: Path, processes: int = 2) -> None:
        """Everything up, the app applied."""
        self.start_control_plane()
        self.cli("apply", str(app))
        self.start_sidecar(app, processes)
        self.start_worker()

    def post(self, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
        """POSTs to the worker's HTTP listener (the ingest API); (status, JSON answer)."""
        import urllib.error
        import urllib.request

        wait_until("the worker's HTTP listener", lambda: port_open(self.http_port))
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=WAIT) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def clickhouse(self, sql: str, **settings: str) -> list[dict]:
        """Rows of a query on the test's ClickHouse database (`settings`: ClickHouse settings for this query)."""
        import urllib.parse
        import urllib.request

        sql = sql.replace("{db}", f"py_{self.id}") + " FORMAT JSONEachRow"
        url = self.clickhouse_url + ("/?" + urllib.parse.urlencode(settings) if settings else "")
        with urllib.request.urlopen(url, data=sql.encode(), timeout=WAIT) as r:
            return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]

    def wait_rows(self, table: str, count: int) -> list[dict]:
        rows: list[dict] = []

        def enough() -> bool:
            nonlocal rows
            rows = self.clickhouse(f"SELECT * FROM {{db}}.`{table}`")
            return len(rows) >= count

        wait_until(f"{count} rows in table {table}", enough)
        return rows

    def topic(self, name: str) -> str:
        return self.namespace + name

    def read(self, name: str, count: int, timeout: float = WAIT, settle: float = 0.0) -> list[dict]:
        """At least `count` records of a stream, read from its beginning (then `settle` seconds more)."""
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": BROKERS, "group.id": f"t{uuid.uuid4().hex}", "enable.auto.commit": False})
        try:
            md = c.list_topics(self.topic(name), timeout=10)
            parts = md.topics[self.topic(name)].partitions
            c.assign([TopicPartition(self.topic(name), p, 0) for p in parts])
            out: list[dict] = []
            deadline = time.monotonic() + timeout
            settle_until = None
            while time.monotonic() < deadline:
                if len(out) >= count and settle_until is None:
                    settle_until = time.monotonic() + settle
                if settle_until is not None and time.monotonic() >= settle_until:
                    break
                for m in c.consume(1000, 0.2):
                    if m.error() is None:
                        out.append(json.loads(m.value()))
            return out
        finally:
            c.close()

    def signal_sidecar_process(self, index: int, sig: int = signal.SIGKILL) -> int:
        """Kills one of the sidecar's server processes; returns its pid."""
        out = subprocess.run(["pgrep", "-P", str(self.sidecar.pid), "-f", "--", f"--child {index}$"], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        assert pids, f"no sidecar process {index} found"
        os.kill(pids[0], sig)
        return pids[0]

    def stop(self) -> None:
        # The worker first, so that it commits and deregisters while the control plane still answers.
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._drop()

    def _drop(self) -> None:
        drop_state(self.namespace, f"millrace_py_{self.id}", f"py_{self.id}", self.clickhouse_url)


def drop_state(topic_prefix: str, postgres_db: str, clickhouse_db: str, clickhouse: str = CLICKHOUSE) -> None:
    """Forget what a test made: its topics (by prefix), its Postgres and ClickHouse databases."""
    try:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": BROKERS})
        mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(topic_prefix)]
        if mine:
            for f in admin.delete_topics(mine, operation_timeout=10).values():
                f.result(10)
    except Exception:
        pass
    subprocess.run(["psql", POSTGRES + "/postgres", "-qc", f'DROP DATABASE IF EXISTS "{postgres_db}" WITH (FORCE)'], capture_output=True, timeout=30)
    try:
        import urllib.request

        urllib.request.urlopen(clickhouse, data=f"DROP DATABASE IF EXISTS `{clickhouse_db}`".encode(), timeout=10).read()
    except Exception:
        pass


@pytest.fixture
def stack(tmp_path, request):
    s = Stack(tmp_path, request.node.name.replace("[", "_").replace("]", ""))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def modern_clickhouse(tmp_path):
    """A modern ClickHouse (chdb's, 26.x) behind ClickHouse's HTTP interface (tests/chdb_http.py), on a free port
    with its own data directory, for this test alone; its URL. The log is in MILLRACE_TEST_LOGS."""
    import urllib.request

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"chdb-http-{port}.log"
    log = open(log_path, "w")
    # TZ=UTC: DateTime values are rendered and parsed in the server's time zone, as on the stack's server.
    p = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("chdb_http.py")), "--port", str(port), "--path", str(tmp_path / "chdb")],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, "TZ": "UTC"}, cwd=tmp_path,
    )  # fmt: skip

    def ready() -> bool:
        if p.poll() is not None:
            return True
        try:
            with urllib.request.urlopen(url + "/ping", timeout=1) as r:
                return r.read() == b"Ok.\n"
        except OSError:
            return False

    try:
        wait_until("the chdb HTTP shim to answer /ping", ready)  # chdb loads in a few seconds
        assert p.poll() is None, f"the chdb HTTP shim exited ({p.returncode}): {log_path.read_text()[-2000:]}"
        yield url
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # it closes the chdb session and exits
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()


@pytest.fixture
def modern_stack(tmp_path, request, modern_clickhouse):
    """A `stack` whose control plane and worker use `modern_clickhouse` (torn down before it)."""
    s = Stack(tmp_path, request.node.name.replace("[", "_").replace("]", ""), clickhouse=modern_clickhouse)
    try:
        yield s
    finally:
        s.stop()


def write_app(tmp: Path, source: str, name: str = "app.py") -> Path:
    path = tmp / name
    path.write_text(source)
    return path
