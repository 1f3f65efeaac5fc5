#!/usr/bin/env python3
"""The fault harness (issue #21): records flow through the ingest API, a Python transform and table sync (real
processes: millrace-control-plane, millrace-worker, the Python sidecar as `millrace dev` starts them, a Tansu broker
of the harness's own (memory:// storage; sqlite:// for broker-restart), the machine's Postgres and ClickHouse) while one fault is injected; then it
counts records in (ids answered 200), lost (acknowledged ids missing from the table), duplicated (rows beyond the
distinct ids) and how long until every unit commits again and the table catches up. One scenario per fault, each
with its own broker, Postgres database, ClickHouse database and topic namespace, started from nothing.

Run it through bench/faults.sh (which builds the binaries and starts the stack); `--help` lists the options.
Exit status: 0 when no record was lost and duplicates stayed within the bound, 1 otherwise, 2 when the harness
itself could not run a scenario (a dependency that does not answer, a process that does not start).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
MILLRACE_HOME = Path(os.environ.get("MILLRACE_HOME", str(Path.home() / ".millrace")))
PG_HOST = os.environ.get("MILLRACE_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MILLRACE_PG_PORT", "5432"))
CH_URL = f"http://127.0.0.1:{os.environ.get('MILLRACE_CH_HTTP_PORT', '8123')}"
TANSU = os.environ.get("MILLRACE_TANSU_BIN") or str(MILLRACE_HOME / "tools/tansu-0.6.0/bin/tansu")
BATCH = 500  # records per POST

# Every fault the harness knows, in the order a full run takes them, with what is done.
FAULTS = {
    "none": "no fault (the baseline)",
    "worker-kill": "kill -9 of the only worker; started again 0.5 s later (as `millrace dev` does)",
    "worker-takeover": "two workers; kill -9 of one, not restarted: the other takes its units",
    "sidecar-process": "kill -9 of one of the sidecar's 2 processes (its supervisor restarts it)",
    "sidecar-all": "kill -9 of the whole sidecar (supervisor and processes); started again 0.5 s later",
    "cp-kill": "kill -9 of the control plane (single replica); started again 0.5 s later",
    "cp-down": "kill -9 of the control plane (single replica), left down {hold:g} s, then started again",
    "broker-restart": "restart (SIGTERM, start) of the harness's Tansu on sqlite:// storage",
    "clickhouse-restart": "restart of the machine's ClickHouse (scripts/stack.sh stop clickhouse; start)",
    "postgres-restart": "restart of the machine's Postgres (pg_ctlcluster restart -m fast)",
    "postgres-down": "the machine's Postgres stopped for {hold:g} s, then started again",
    "cp-leader": "two control planes (the workers get both addresses); kill -9 of the leader, not restarted: the other takes office",
}
# Cheap and safe for CI: only the harness's own processes are touched. Not broker-restart: Tansu 0.6.0's sqlite://
# engine, the only durable one, fails under Millrace's idempotent producers (RELIABILITY.md), and a memory:// broker
# forgets every topic when it restarts.
CI_FAULTS = ["none", "worker-kill", "worker-takeover", "sidecar-process", "sidecar-all", "cp-kill", "cp-leader"]
# Faults that touch the machine's shared services (never in CI).
SHARED = {"clickhouse-restart", "postgres-restart", "postgres-down"}


class HarnessError(Exception):
    """The harness could not run a scenario (not a finding about Millrace)."""


def log(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> int:
    """A first port with n consecutive free ports after it (the sidecar listens on port + i)."""
    for _ in range(200):
        base = random.randint(20000, 40000)
        try:
            socks = []
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise HarnessError("no run of free ports found")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def child_env(extra: Optional[dict] = None) -> dict:
    """The environment of the processes the harness starts: every MILLRACE_* setting of ours left out, so that
    only the flags given (as `millrace dev` gives them) apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")}
    env.update(extra or {})
    return env


class Proc:
    """A process the harness started, in a process group of its own (with whatever it starts)."""

    live: list["Proc"] = []

    def __init__(self, name: str, cmd: list[str], log_path: Path, cwd: Path, env: Optional[dict] = None):
        self.name, self.cmd, self.log_path, self.cwd, self.env = name, cmd, log_path, cwd, env or child_env()
        self.p: Optional[subprocess.Popen] = None

    def start(self) -> "Proc":
        f = open(self.log_path, "ab")
        f.write(f"\n==== {time.strftime('%H:%M:%S')} starting: {' '.join(self.cmd)}\n".encode())
        f.flush()
        self.p = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True)
        f.close()
        if self not in Proc.live:
            Proc.live.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def kill9(self, group: bool = False) -> None:
        if not self.alive():
            raise HarnessError(f"{self.name} was not running when the fault was due (its log: {self.log_path})")
        if group:
            os.killpg(self.pid, signal.SIGKILL)
        else:
            os.kill(self.pid, signal.SIGKILL)
        self.p.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to its group, SIGKILL after `timeout`; only this process's own group."""
        if self.p is None:
            return
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # what it started may outlive it (the sidecar's processes); the group goes too
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self in Proc.live:
            Proc.live.remove(self)

    def children(self) -> list[int]:
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                    out.append(int(d.name))
        return sorted(out)


def wait_until(what: str, check: Callable[[], bool], timeout: float, log_path: Optional[Path] = None, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    extra = f"\n--- last lines of {log_path}:\n{tail(log_path)}" if log_path else ""
    raise HarnessError(f"{what} did not happen within {timeout:g} s{extra}")


# --- the machine's services ------------------------------------------------------------------------------------


def psql(sql: str, db: str = "postgres", timeout: float = 5.0) -> Optional[str]:
    """One statement, its rows as tab-separated lines; None when Postgres does not answer in time."""
    env = dict(os.environ, PGCONNECT_TIMEOUT="3")
    try:
        out = subprocess.run(
            ["psql", "-X", "-q", "-h", PG_HOST, "-p", str(PG_PORT), "-U", "postgres", "-d", db, "-At", "-F", "\t", "-c", sql],
            capture_output=True, text=True, timeout=timeout, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    return out.stdout if out.returncode == 0 else None


def pg_ready() -> bool:
    try:
        return subprocess.run(["pg_isready", "-q", "-h", PG_HOST, "-p", str(PG_PORT)], timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def pg_version() -> str:
    vers = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(x) for x in re.findall(r"\d+", v)])
    if not vers:
        raise HarnessError("no Postgres cluster in /etc/postgresql: the postgres faults need the machine's cluster")
    return vers[-1]


def pg_ctl(action: str, *extra: str) -> None:
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", pg_version(), "main", action, *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    if r.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")


def ch(sql: str, timeout: float = 10.0, db: Optional[str] = None) -> str:
    url = CH_URL + "/" + (f"?database={urllib.parse.quote(db)}" if db else "")
    req = urllib.request.Request(url, data=sql.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


def ch_ready() -> bool:
    try:
        return urllib.request.urlopen(CH_URL + "/ping", timeout=2).status == 200
    except OSError:
        return False


def stack(*args: str, timeout: float = 180) -> None:
    r = subprocess.run(["bash", str(REPO / "scripts/stack.sh"), *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise HarnessError(f"scripts/stack.sh {' '.join(args)} failed: {r.stderr.strip()[-800:]}")


# What a scenario stopped of the machine's services: brought back on every exit, failures included.
STOPPED: set[str] = set()


def restore_services() -> None:
    if "postgres" in STOPPED:
        log("bringing the machine's Postgres back")
        try:
            if not pg_ready():
                pg_ctl("start")
            wait_until("Postgres answering", pg_ready, 60)
            STOPPED.discard("postgres")
        except Exception as e:  # noqa: BLE001 - say it, loudly, and go on restoring the rest
            log(f"!!! could not start Postgres again: {e}; start it: pg_ctlcluster {pg_version()} main start")
    if "clickhouse" in STOPPED:
        log("bringing the machine's ClickHouse back")
        try:
            if not ch_ready():
                stack("start")
            wait_until("ClickHouse answering", ch_ready, 60)
            STOPPED.discard("clickhouse")
        except Exception as e:  # noqa: BLE001
            log(f"!!! could not start ClickHouse again: {e}; start it: bash scripts/stack.sh start")


# --- one scenario -----------------------------------------------------------------------------------------------


class Scenario:
    def __init__(self, fault: str, opts: argparse.Namespace, run_id: str):
        self.fault, self.o = fault, opts
        self.tag = f"faults_{run_id}_{fault.replace('-', '_')}"
        self.db = f"millrace_{self.tag}"
        self.namespace = f"{self.tag}_"
        self.dir = Path(opts.out) / fault
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.bin = Path(opts.bin_dir)
        self.sdkpy = opts.python
        self.app_env = {"FAULTS_HOPS": str(opts.hops), "FAULTS_PARTITIONS": str(opts.partitions), "PYTHONUNBUFFERED": "1"}
        self.table = "fault_out"
        self.units = opts.partitions * (opts.hops + 1)  # transform units, plus the table sync's
        # Posting
        self.acked: set[int] = set()  # batch numbers answered 200
        self.maybe_partial: set[int] = set()  # batches answered 503 or timed out (some of it may be in) before their 200
        self.failed: set[int] = set()  # batches never answered 200 (given up)
        self.answers: dict[str, int] = {}
        self.ok_times: list[float] = []  # when each 200 came
        self.endpoints: list[str] = []
        self.lock = threading.Lock()
        # Observations: (t, {unit: (worker, epoch, offset)}) and (t, worker, out, inserted)
        self.assignments: list[tuple[float, dict]] = []
        self.metrics: list[tuple[float, str, float, float]] = []
        self.rows: list[tuple[float, int]] = []
        self.dropped: dict[str, float] = {}  # worker:pid -> last millrace_duplicates_dropped_total seen (re-emits dropped)
        self.stop_poll = threading.Event()
        self.notes: list[str] = []
        self.workers: list[Proc] = []
        self.cp2: Optional[Proc] = None
        self.leader_failover_s: Optional[float] = None  # cp-leader: from the kill until another control plane leads

    # -- processes, as `millrace dev` starts them (cli/src/dev.rs) --

    def start_broker(self) -> None:
        self.broker_port = free_port()
        # sqlite:// survives a restart (and is what broker-restart needs); memory:// is several times faster
        self.storage = "sqlite://tansu.db" if self.fault == "broker-restart" or self.o.storage == "sqlite" else "memory://tansu/"
        addr = f"127.0.0.1:{self.broker_port}"
        if not Path(TANSU).exists():
            raise HarnessError(f"no Tansu at {TANSU}: run `bash scripts/stack.sh start` once (it builds it)")
        self.broker = Proc(
            "broker",
            [TANSU, "broker", "--listener-url", f"tcp://{addr}", "--advertised-listener-url", f"tcp://{addr}", "--storage-engine", self.storage],
            self.dir / "tansu.log", self.dir,
        ).start()  # fmt: skip
        wait_until(f"the broker listening on {addr}", lambda: port_open(self.broker_port), 30, self.broker.log_path)

    def cp_proc(self, name: str, port: int) -> Proc:
        return Proc(
            name,
            [str(self.bin / "millrace-control-plane"), "--listen", f"127.0.0.1:{port}", "--advertise", f"127.0.0.1:{port}",
             "--database-url", f"postgres://postgres@{PG_HOST}:{PG_PORT}/{self.db}", "--kafka-brokers", f"127.0.0.1:{self.broker_port}",
             "--clickhouse-database", self.db, "--topic-namespace", self.namespace],
            self.dir / f"{name}.log", self.dir,
        )  # fmt: skip

    def start_cp(self) -> None:
        self.cp_port = free_port()
        self.cp = self.cp_proc("control-plane", self.cp_port).start()
        self.cp_ports = [self.cp_port]
        wait_until(f"the control plane listening on 127.0.0.1:{self.cp_port}", lambda: port_open(self.cp_port), 60, self.cp.log_path)

    def start_sidecar(self) -> None:
        self.sidecar_port = free_ports(self.o.sidecar_processes)
        app = str(BENCH / "faults_app.py")
        self.sidecar = Proc(
            "sidecar", [self.sdkpy, "-m", "millrace", "serve", app, "--port", str(self.sidecar_port), "--processes", str(self.o.sidecar_processes)],
            self.dir / "sidecar.log", BENCH, child_env(self.app_env),
        ).start()  # fmt: skip
        ports = [self.sidecar_port + i for i in range(self.o.sidecar_processes)]
        wait_until(f"the sidecar listening on {ports}", lambda: all(port_open(p) for p in ports), 60, self.sidecar.log_path)

    def start_worker(self, i: int) -> Proc:
        port = free_port()
        w = Proc(
            f"worker{i}",
            [str(self.bin / "millrace-worker"), "--control-plane", ",".join(f"http://127.0.0.1:{p}" for p in self.cp_ports), "--kafka-brokers", f"127.0.0.1:{self.broker_port}",
             "--sidecar", f"default=http://127.0.0.1:{self.sidecar_port}", "--http-listen", f"127.0.0.1:{port}"],
            self.dir / f"worker{i}.log", self.dir,
        ).start()  # fmt: skip
        w.port = port  # type: ignore[attr-defined]
        wait_until(f"worker{i} listening on 127.0.0.1:{port}", lambda: port_open(port), 30, w.log_path)
        self.workers.append(w)
        return w

    def restart(self, p: Proc, port: int, delay: float = 0.5) -> None:
        time.sleep(delay)
        p.start()
        wait_until(f"{p.name} listening again on 127.0.0.1:{port}", lambda: port_open(port), 60, p.log_path)

    def apply(self) -> None:
        r = subprocess.run(
            [self.sdkpy, "-m", "millrace", "apply", str(BENCH / "faults_app.py"), "--control-plane", f"127.0.0.1:{self.cp_port}"],
            cwd=BENCH, env=child_env(self.app_env), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        (self.dir / "apply.log").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise HarnessError(f"applying bench/faults_app.py failed: {r.stderr.strip()[-1500:]}")

    def setup(self) -> None:
        psql(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        ch(f"DROP DATABASE IF EXISTS `{self.db}`")
        self.start_broker()
        self.start_cp()
        if self.fault == "cp-leader":
            cp_leader_setup(self)  # before the workers: they get both addresses
        self.start_sidecar()
        workers = 2 if self.fault in ("worker-takeover",) else 1
        for i in range(workers):
            self.start_worker(i)
        self.endpoints = [f"127.0.0.1:{w.port}" for w in self.workers]  # type: ignore[attr-defined]
        self.apply()
        # Every unit placed, and a first batch all the way into the table: the pipeline runs.
        wait_until(f"{self.units} units placed on workers", lambda: self.placed() >= self.units, 60, self.cp.log_path, 0.5)

    def placed(self) -> int:
        out = psql("SELECT count(*) FROM assignments WHERE worker_id IS NOT NULL", self.db)
        return int(out.strip()) if out and out.strip().isdigit() else 0

    # -- observing --

    def poll(self, t0: float) -> None:
        while not self.stop_poll.wait(0.5):
            t = time.monotonic() - t0
            out = psql("SELECT unit_id, coalesce(worker_id, ''), epoch, committed_offset FROM assignments", self.db, timeout=3)
            if out is not None:
                snap = {}
                for line in out.splitlines():
                    u, w, e, off = line.split("\t")
                    snap[u] = (w, int(e), int(off))
                self.assignments.append((t, snap))
            try:
                self.rows.append((t, int(ch(f"SELECT count() FROM `{self.db}`.`{self.table}`", timeout=2).strip())))
            except (OSError, ValueError, http.client.HTTPException):
                pass
            for w in list(self.workers):
                if not w.alive():
                    continue
                try:
                    text = urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics", timeout=2).read().decode()  # type: ignore[attr-defined]
                except (OSError, http.client.HTTPException):
                    continue
                out_, ins, dropped = 0.0, 0.0, 0.0
                for line in text.splitlines():
                    if line.startswith("millrace_records_out_total"):
                        out_ += float(line.rsplit(" ", 1)[1])
                    elif line.startswith("millrace_duplicates_dropped_total"):
                        dropped += float(line.rsplit(" ", 1)[1])
                    elif line.startswith("millrace_table_rows_inserted_total"):
                        ins += float(line.rsplit(" ", 1)[1])
                self.metrics.append((t, f"{w.name}:{w.pid}", out_, ins))
                self.dropped[f"{w.name}:{w.pid}"] = dropped

    # -- posting --

    def ids(self, batch: int) -> list[str]:
        return [f"{self.tag}-{batch * BATCH + j}" for j in range(BATCH)]

    def post(self, batch: int, give_up_s: float) -> None:
        body = json.dumps([{"id": i, "seq": batch * BATCH + j, "value": batch * BATCH + j} for j, i in enumerate(self.ids(batch))]).encode()
        deadline = time.monotonic() + give_up_s
        attempt, backoff = 0, 0.1
        while time.monotonic() < deadline:
            ep = self.endpoints[(batch + attempt) % len(self.endpoints)]
            attempt += 1
            host, port = ep.split(":")
            code, retry_after = None, None
            try:
                c = http.client.HTTPConnection(host, int(port), timeout=20)
                c.request("POST", "/ingest/fault_in", body, {"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                code, retry_after = r.status, r.getheader("Retry-After")
                c.close()
            except ConnectionRefusedError:
                code = "refused"
            except (OSError, http.client.HTTPException):
                code = "error"  # sent, maybe in part taken: a retry may duplicate
            with self.lock:
                self.answers[str(code)] = self.answers.get(str(code), 0) + 1
                if code == 200:
                    self.acked.add(batch)
                    self.ok_times.append(time.monotonic())
                    return
                if code in (503, "error"):
                    self.maybe_partial.add(batch)
            if isinstance(code, int) and code not in (503, 429):
                with self.lock:
                    self.failed.add(batch)
                self.notes.append(f"batch {batch} answered {code}: not retried")
                return
            wait = min(1.0, float(retry_after)) if retry_after and retry_after.isdigit() else backoff
            backoff = min(1.0, backoff * 2)
            time.sleep(wait * random.uniform(0.8, 1.2))
        with self.lock:
            self.failed.add(batch)

    def flow(self, first: int, batches: int, rate: float, t0: float, threads: int = 6) -> threading.Thread:
        """Posts batches first..first+batches-1 at `rate` records/s from t0, several requests at a time (a slow
        answer does not hold the schedule back)."""
        nxt = iter(range(first, first + batches))
        lk = threading.Lock()

        def runner() -> None:
            while True:
                with lk:
                    b = next(nxt, None)
                if b is None:
                    return
                due = t0 + (b - first) * BATCH / rate
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                self.post(b, self.o.give_up_s)

        ts = [threading.Thread(target=runner, daemon=True) for _ in range(threads)]
        for t in ts:
            t.start()

        def joiner() -> None:
            for t in ts:
                t.join()

        j = threading.Thread(target=joiner, daemon=True)
        j.start()
        return j

    # -- the faults --

    def inject(self) -> tuple[float, Optional[float]]:
        """Injects the fault; returns when it started and, for an outage, when the dependency came back (seconds
        since t0). Runs in the main thread while the flow goes on."""
        f, hold = self.fault, self.o.hold
        now = lambda: time.monotonic() - self.t0  # noqa: E731
        if f == "none":
            return now(), None
        if f == "worker-kill":
            w = self.workers[0]
            t = now()
            w.kill9()
            self.restart(w, w.port)  # type: ignore[attr-defined]
            return t, now()
        if f == "worker-takeover":
            w = self.workers[0]
            t = now()
            w.kill9()
            self.workers.remove(w)
            with self.lock:
                self.endpoints = [e for e in self.endpoints if not e.endswith(f":{w.port}")]  # type: ignore[attr-defined]
            return t, None
        if f == "sidecar-process":
            kids = self.sidecar.children()
            if not kids:
                raise HarnessError("the sidecar has no child processes to kill")
            t = now()
            os.kill(kids[0], signal.SIGKILL)
            self.notes.append(f"killed sidecar process pid {kids[0]} (of {len(kids)})")
            return t, None
        if f == "sidecar-all":
            t = now()
            self.sidecar.kill9(group=True)
            self.restart(self.sidecar, self.sidecar_port)
            return t, now()
        if f == "cp-kill":
            t = now()
            self.cp.kill9()
            self.restart(self.cp, self.cp_port)
            return t, now()
        if f == "cp-down":
            t = now()
            self.cp.kill9()
            time.sleep(hold)
            self.restart(self.cp, self.cp_port, delay=0)
            return t, now()
        if f == "broker-restart":
            t = now()
            self.broker.stop(timeout=15)
            self.broker.start()
            wait_until("the broker listening again", lambda: port_open(self.broker_port), 60, self.broker.log_path)
            return t, now()
        if f == "clickhouse-restart":
            pidf = MILLRACE_HOME / "run/clickhouse.pid"
            if not pidf.exists():
                raise HarnessError("the ClickHouse on 8123 was not started by scripts/stack.sh (no run/clickhouse.pid): not restarting it")
            t = now()
            STOPPED.add("clickhouse")
            stack("stop", "clickhouse", timeout=60)
            stack("start", timeout=180)
            wait_until("ClickHouse answering again", ch_ready, 60)
            STOPPED.discard("clickhouse")
            return t, now()
        if f == "postgres-restart":
            t = now()
            STOPPED.add("postgres")
            pg_ctl("restart")  # fast mode: sessions are ended
            wait_until("Postgres answering again", pg_ready, 60)
            STOPPED.discard("postgres")
            return t, now()
        if f == "postgres-down":
            t = now()
            STOPPED.add("postgres")
            pg_ctl("stop")
            time.sleep(hold)
            pg_ctl("start")
            wait_until("Postgres answering again", pg_ready, 60)
            STOPPED.discard("postgres")
            return t, now()
        if f == "cp-leader":
            return cp_leader_fault(self)
        raise HarnessError(f"unknown fault {f}")

    # -- one run --

    def run(self) -> dict:
        started = time.monotonic()
        n_batches = max(1, self.o.records // BATCH)
        rate = self.o.records / self.o.flow_s
        log(f"{self.fault}: starting broker, control plane, sidecar, worker(s) ({self.dir})")
        self.setup()
        self.t0 = time.monotonic()
        poller = threading.Thread(target=self.poll, args=(self.t0,), daemon=True)
        poller.start()
        # A first batch all the way into the table before the flow: the pipeline runs.
        self.post(0, 60)
        wait_until("the first batch in the table", lambda: self.distinct() >= BATCH, 90, self.workers[0].log_path, 0.5)
        flow_t0 = time.monotonic()
        log(f"{self.fault}: posting {self.o.records} records at {rate:.0f}/s ({BATCH} a POST) for {self.o.flow_s:g} s")
        poster = self.flow(1, n_batches - 1 if n_batches > 1 else 0, rate, flow_t0)
        time.sleep(max(0.0, flow_t0 + self.o.fault_at * self.o.flow_s - time.monotonic()))
        log(f"{self.fault}: injecting: {describe(self.fault, self.o)}")
        t_fault, t_back = self.inject()
        deadline = time.monotonic() + self.o.flow_s * 3 + self.o.give_up_s
        while poster.is_alive():
            poster.join(1)
            with self.lock:
                last_ok = self.ok_times[-1] if self.ok_times else flow_t0
                answers = dict(self.answers)
            if time.monotonic() - last_ok > self.o.stall_s:
                raise HarnessError(f"no ingest request answered 200 for {self.o.stall_s:g} s (answers so far: {answers}); see {self.dir}/worker0.log and tansu.log")
            if time.monotonic() > deadline:
                raise HarnessError(f"posting did not finish (answers so far: {answers})")
        t_posted = time.monotonic() - self.t0
        with self.lock:
            acked_ids = {i for b in self.acked for i in self.ids(b)}
        log(f"{self.fault}: {len(acked_ids)} records acknowledged; waiting for the table (at most {self.o.catchup_s:g} s)")
        caught = self.catch_up(acked_ids, t_posted)
        self.settle()
        self.stop_poll.set()
        poller.join(5)
        present = self.table_ids()
        total = sum(present.values())
        lost = acked_ids - present.keys()
        dup_ids = {i: c for i, c in present.items() if c > 1}
        partial_ids = {i for b in self.maybe_partial for i in self.ids(b)}
        topics = {}
        if self.o.count_topics:
            for stream in ("fault_in", "fault_mid", "fault_out") if self.o.hops >= 2 else ("fault_in", "fault_out"):
                tc = self.topic_counts(stream)
                if tc is not None:
                    topics[stream] = {"records": tc[0], "distinct": tc[1], "duplicated": tc[0] - tc[1]}
        for w in {p.log_path for p in self.workers} | {self.dir / "worker0.log"}:
            text = w.read_text(errors="replace") if w.exists() else ""
            events = {k: text.count(k) for k in ("lease ran out without a successful heartbeat", "lease lost", "registered")}
            events = {k: v for k, v in events.items() if v}
            if events:
                self.notes.append(f"{w.name}: " + ", ".join(f"'{k}' ×{v}" for k, v in events.items()))
        res = {
            "fault": self.fault,
            "what": describe(self.fault, self.o),
            "in": len(acked_ids),
            "lost": len(lost),
            "lost_sample": sorted(lost)[:20],
            "rows": total,
            "distinct": len(present),
            "duplicated": total - len(present),
            "dup_after_ingest_retry": sum(c - 1 for i, c in dup_ids.items() if i in partial_ids),
            "max_copies": max(dup_ids.values(), default=1),
            "unacked_present": len(present.keys() - acked_ids),
            "failed_batches": len(self.failed),
            "answers": dict(sorted(self.answers.items())),
            "t_fault": round(t_fault, 2),
            "t_back": None if t_back is None else round(t_back, 2),
            "recover_s": self.recovery(t_fault, t_posted),
            "catchup_s": None if caught is None else round(caught - t_posted, 1),
            "posted_s": round(t_posted - (flow_t0 - self.t0), 1),
            "leader_failover_s": self.leader_failover_s,
            # re-emits the units dropped by provenance (every worker process's last /metrics; a process killed
            # between two polls may have dropped a few more)
            "dropped": int(sum(self.dropped.values())),
            "went_on_s": self.went_on(t_fault, t_back) if self.fault in ("cp-down", "postgres-down") else None,
            "ingest_200_during_outage": self.ok_during(t_fault, t_back) if self.fault in ("cp-down", "postgres-down", "cp-kill", "postgres-restart", "clickhouse-restart") else None,
            "topics": topics,
            "notes": self.notes,
            "wall_s": round(time.monotonic() - started, 1),
            "dir": str(self.dir),
        }
        (self.dir / "result.json").write_text(json.dumps(res, indent=1))
        (self.dir / "series.json").write_text(json.dumps({"rows": self.rows, "metrics": self.metrics, "assignments": self.assignments}))
        return res

    def topic_counts(self, stream: str) -> Optional[tuple[int, int]]:
        """Records and distinct ids in one of the app's streams, read from the broker (each partition to its end,
        as fetch responses tell it: Tansu's ListOffsets undercounts); None when it could not be read."""
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        topic = f"{self.namespace}{stream}"
        c = Consumer({"bootstrap.servers": f"127.0.0.1:{self.broker_port}", "group.id": f"faults-count-{self.tag}",
                      "enable.auto.commit": False, "enable.partition.eof": True, "log_level": 3})  # fmt: skip
        try:
            c.assign([TopicPartition(topic, p, 0) for p in range(self.o.partitions)])
            n, ids, eof = 0, set(), set()
            deadline = time.monotonic() + 120
            while len(eof) < self.o.partitions:
                if time.monotonic() > deadline:
                    return None
                for m in c.consume(10000, 1.0):
                    if m.error():
                        if m.error().code() == KafkaError._PARTITION_EOF:
                            eof.add(m.partition())
                        continue
                    n += 1
                    ids.add(json.loads(m.value())["id"])
            return n, len(ids)
        except Exception as e:  # noqa: BLE001 - an extra; the table's counts are the result
            self.notes.append(f"could not count {topic}: {e}")
            return None
        finally:
            c.close()

    def distinct(self) -> int:
        try:
            return int(ch(f"SELECT uniqExact(id) FROM `{self.db}`.`{self.table}`", timeout=5).strip())
        except (OSError, ValueError, http.client.HTTPException):
            return -1

    def table_ids(self) -> dict[str, int]:
        deadline = time.monotonic() + 60
        while True:
            try:
                text = ch(f"SELECT id, count() FROM `{self.db}`.`{self.table}` GROUP BY id FORMAT TabSeparated", timeout=60)
                return {i: int(c) for i, c in (line.split("\t") for line in text.splitlines() if line)}
            except (OSError, http.client.HTTPException) as e:
                if time.monotonic() > deadline:
                    raise HarnessError(f"reading the table's ids from ClickHouse failed: {e}")
                time.sleep(1)

    def catch_up(self, acked_ids: set[str], t_posted: float) -> Optional[float]:
        deadline = time.monotonic() + self.o.catchup_s
        while time.monotonic() < deadline:
            if self.distinct() >= len(acked_ids):
                try:
                    if not (acked_ids - self.table_ids().keys()):
                        return time.monotonic() - self.t0
                except HarnessError:
                    pass
            time.sleep(0.5)
        return None

    def settle(self) -> None:
        """Until nothing moves for 3 s (committed offsets and rows), at most 60 s: late duplicates are counted too."""
        deadline, last, since = time.monotonic() + 60, None, time.monotonic()
        while time.monotonic() < deadline:
            out = psql("SELECT string_agg(unit_id || '=' || committed_offset, ',' ORDER BY unit_id) FROM assignments", self.db, timeout=3)
            try:
                rows = ch(f"SELECT count() FROM `{self.db}`.`{self.table}`", timeout=3).strip()
            except (OSError, http.client.HTTPException):
                rows = None
            now = (out, rows)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= 3:
                return
            time.sleep(0.5)

    def recovery(self, t_fault: float, t_posted: float) -> Optional[float]:
        """Time until every unit commits again: for each unit, the longest pause between two advances of its
        committed offset (from Postgres, every 0.5 s) that ends after the fault, counted from the fault; the worst
        unit's. A pause that starts once posting ended and the unit has caught up does not count. None if a unit
        never committed again after the fault."""
        series: dict[str, list[tuple[float, int]]] = {}
        for t, snap in self.assignments:
            for u, (_, _, off) in snap.items():
                series.setdefault(u, []).append((t, off))
        if not series:
            return None
        worst, stuck = 0.0, []
        for u, pts in series.items():
            advances = [t for (t, off), (_, prev) in zip(pts[1:], pts) if off > prev]
            before = [t for t in advances if t <= t_fault]
            after = [t for t in advances if t > t_fault]
            if not after:
                stuck.append(u)
                continue
            start = max(before[-1] if before else t_fault, t_fault)
            for t in after:
                if start > t_posted:
                    break
                worst = max(worst, t - max(start, t_fault))
                start = t
        if stuck:
            self.notes.append(f"units that never committed again after the fault: {sorted(stuck)}")
            return None
        return round(worst, 1)

    def went_on(self, t_fault: float, t_back: Optional[float]) -> Optional[float]:
        """How long after the fault workers still produced outputs or inserted rows (from their /metrics, every
        0.5 s): the last increase before the first 3 s in which nothing increased."""
        return went_on(self.metrics, t_fault)

    def ok_during(self, t_fault: float, t_back: Optional[float]) -> int:
        end = (t_back if t_back is not None else t_fault) + self.t0
        start = t_fault + self.t0
        return sum(1 for t in self.ok_times if start <= t <= end) * BATCH

    def teardown(self, keep: bool) -> None:
        for p in [*self.workers, getattr(self, "sidecar", None), getattr(self, "cp", None), self.cp2, getattr(self, "broker", None)]:
            if p is not None:
                p.stop(timeout=5)
        if not keep:
            psql(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)', timeout=30)
            try:
                ch(f"DROP DATABASE IF EXISTS `{self.db}`", timeout=30)
            except OSError:
                pass
            (self.dir / "tansu.db").unlink(missing_ok=True)


def went_on(metrics: list, t_fault: float, quiet: float = 3.0) -> Optional[float]:
    last_seen: dict[str, tuple[float, float]] = {}
    last_move = t_fault
    for t, w, out_, ins in metrics:
        prev = last_seen.get(w)
        last_seen[w] = (out_, ins)
        if t <= t_fault or prev is None:
            continue
        if out_ > prev[0] or ins > prev[1]:
            if t - last_move >= quiet:
                break
            last_move = t
        elif t - last_move >= quiet:
            break
    return round(last_move - t_fault, 1)


# --- the leader of two control planes ---------------------------------------------------------------------------
# Control-plane replicas share the database and elect a leader through migration 0007's one-row table `leader`
# (holder, term, address, expires_at): `address` is the leader's --advertise. The workers get every replica's address
# (`--control-plane http://A,http://B`) and move to the next when one stops answering. The fault kills -9 the leader
# and measures, besides the usual figures, the time until another control plane leads (the row's holder changes and
# its term grows, with a lease not yet run out).


def leader_row(s: Scenario) -> Optional[tuple[str, int, str, bool, float]]:
    """(holder, term, address, live, seconds of lease left) of the `leader` row; None when it cannot be read."""
    out = psql("SELECT holder, term, address, expires_at > clock_timestamp(), "
               "greatest(-1e6, extract(epoch FROM expires_at - clock_timestamp())) FROM leader", s.db, timeout=3)  # fmt: skip
    if not out or not out.strip():
        return None
    holder, term, address, live, left = out.strip().splitlines()[0].split("\t")
    return holder, int(term), address, live == "t", float(left)


def cp_leader_setup(s: Scenario) -> None:
    """A second control plane on the same database, with its own --listen and --advertise; then waits until one
    of the two leads (the workers, started after this, get both addresses)."""
    port = free_port()
    s.cp2 = s.cp_proc("control-plane-2", port).start()
    s.cp2_port = port  # type: ignore[attr-defined]
    s.cp_ports = [s.cp_port, port]
    wait_until("the second control plane listening", lambda: port_open(port), 60, s.cp2.log_path)
    mine = {f"127.0.0.1:{p}" for p in s.cp_ports}

    def leads() -> bool:
        r = leader_row(s)
        return r is not None and r[3] and r[2] in mine

    wait_until("one of the two control planes leading (table leader)", leads, 30, s.cp.log_path, 0.2)
    # The leader's address first: the workers talk to it, so the kill also takes their control plane away and they
    # must move to the other (a kill of a follower they do not talk to would test less).
    r = leader_row(s)
    assert r is not None
    s.cp_ports.sort(key=lambda p: f"127.0.0.1:{p}" != r[2])


def cp_leader_fault(s: Scenario) -> tuple[float, Optional[float]]:
    before = leader_row(s)
    if before is None or not before[3]:
        raise HarnessError(f"no live leader in table leader of {s.db}: {before}")
    holder, term, address, _, left = before
    if address == f"127.0.0.1:{s.cp_port}":
        victim = s.cp
    elif s.cp2 is not None and address == f"127.0.0.1:{s.cp2_port}":  # type: ignore[attr-defined]
        victim = s.cp2
    else:
        raise HarnessError(f"the leader's address {address!r} is neither control plane's")
    t_kill = time.monotonic()
    t = t_kill - s.t0
    victim.kill9()
    s.notes.append(f"killed the leader {victim.name} ({address}, term {term}, {left:.1f} s of its lease left)")
    deadline = t_kill + 60
    while time.monotonic() < deadline:
        r = leader_row(s)
        if r is not None and r[3] and r[0] != holder and r[1] > term:
            s.leader_failover_s = round(time.monotonic() - t_kill, 2)
            s.notes.append(f"another control plane led after {s.leader_failover_s} s: {r[2]}, term {r[1]}")
            break
        time.sleep(0.05)
    else:
        s.notes.append("no other control plane led within 60 s of the kill")
    return t, None


# --- the report -------------------------------------------------------------------------------------------------


def describe(fault: str, o: argparse.Namespace) -> str:
    return FAULTS[fault].format(hold=o.hold)


def fmt(v, suffix: str = "") -> str:
    return "–" if v is None else f"{v:,}{suffix}" if isinstance(v, int) else f"{v}{suffix}"


def line(r: dict) -> str:
    if r.get("skipped"):
        return f"{r['fault']:<18} skipped: {r['skipped']}"
    return (
        f"{r['fault']:<18} in={r['in']} lost={r['lost']} dup={r['duplicated']} (after 503 retry {r['dup_after_ingest_retry']}, max copies {r['max_copies']})"
        f" recover={fmt(r['recover_s'], 's')} catchup={fmt(r['catchup_s'], 's')}"
        + (f" went_on={fmt(r['went_on_s'], 's')}" if r.get("went_on_s") is not None else "")
        + (f" leader_failover={fmt(r['leader_failover_s'], 's')}" if r["fault"] == "cp-leader" else "")
        + (f" dropped={r['dropped']}" if r.get("dropped") else "")
        + f" answers={r['answers']} wall={r['wall_s']}s"
    )


def markdown(results: list[dict]) -> str:
    out = [
        "| fault | what was done | records in | lost | duplicated (rows) | of which from ingest retries | every unit commits again | table caught up, after the last POST | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.get("skipped"):
            out.append(f"| {r['fault']} | {r['what']} | – | – | – | – | – | – | skipped: {r['skipped']} |")
            continue
        notes = []
        if r.get("leader_failover_s") is not None:
            notes.append(f"another control plane led {r['leader_failover_s']} s after the kill")
        if r.get("dropped"):
            notes.append(f"{r['dropped']:,} re-emits dropped by provenance")
        if r.get("went_on_s") is not None:
            notes.append(f"workers went on producing for {r['went_on_s']} s")
        if r.get("ingest_200_during_outage") is not None:
            notes.append(f"{r['ingest_200_during_outage']:,} records answered 200 during the fault")
        if r["t_back"] is not None and r["fault"] not in ("none",):
            notes.append(f"back after {round(r['t_back'] - r['t_fault'], 1)} s")
        if r["max_copies"] > 1:
            notes.append(f"at most {r['max_copies']} copies of a record")
        non200 = {k: v for k, v in r["answers"].items() if k != "200"}
        if non200:
            notes.append("ingest answers besides 200: " + ", ".join(f"{k}×{v}" for k, v in non200.items()))
        if r["unacked_present"]:
            notes.append(f"{r['unacked_present']} rows of requests never answered 200")
        out.append(
            f"| {r['fault']} | {r['what']} | {r['in']:,} | {r['lost']} | {r['duplicated']:,} | {r['dup_after_ingest_retry']:,} "
            f"| {fmt(r['recover_s'], ' s')} | {fmt(r['catchup_s'], ' s')} | {'; '.join(notes)} |"
        )
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", nargs="?", type=int, default=200_000, help="records per fault (default 200000)")
    ap.add_argument("faults", nargs="?", default="all", help=f"comma-separated, or all, or ci ({','.join(CI_FAULTS)}); known: {','.join(FAULTS)}")
    ap.add_argument("--bin-dir", default=str(REPO / "target/release"), help="where millrace-control-plane and millrace-worker are")
    ap.add_argument("--python", default=str(MILLRACE_HOME / "sdk-venv/bin/python"), help="the SDK's Python (serves the sidecar)")
    ap.add_argument("--out", default="/tmp/millrace-faults", help="logs, results and the table")
    ap.add_argument("--flow-s", type=float, default=60.0, help="seconds over which the records are posted (the rate follows)")
    ap.add_argument("--fault-at", type=float, default=0.3, help="when the fault lands, as a fraction of the flow")
    ap.add_argument("--hold", type=float, default=25.0, help="seconds a dependency stays down (cp-down, postgres-down)")
    ap.add_argument("--catchup-s", type=float, default=300.0, help="longest wait for the table to hold every acknowledged id")
    ap.add_argument("--give-up-s", type=float, default=180.0, help="a POST retried for this long is given up (its ids do not count as in)")
    ap.add_argument("--stall-s", type=float, default=60.0, help="a scenario in which no POST is answered 200 for this long fails")
    ap.add_argument("--storage", default="memory", choices=["memory", "sqlite"],
                    help="the broker's storage for every fault but broker-restart, which always runs on sqlite:// (default memory)")  # fmt: skip
    ap.add_argument("--count-topics", action="store_true", help="also count records and distinct ids in each stream (which hop duplicated)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--hops", type=int, default=1, help="Python transforms in a row (1 or 2)")
    ap.add_argument("--sidecar-processes", type=int, default=2)
    ap.add_argument("--max-dup-fraction", type=float, default=None,
                    help="fail when a fault duplicates more than this fraction of its records in (default: no bound)")  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep every scenario's databases (they are kept anyway after a loss)")
    ap.add_argument("--markdown", default=None, help="write the table here too")
    o = ap.parse_args()

    if o.faults == "all":
        faults = list(FAULTS)
    elif o.faults == "ci":
        faults = list(CI_FAULTS)
    else:
        faults = [f.strip() for f in o.faults.split(",") if f.strip()]
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        ap.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    for exe in ("millrace-control-plane", "millrace-worker"):
        if not (Path(o.bin_dir) / exe).exists():
            ap.error(f"no {exe} in {o.bin_dir}: build it (bench/faults.sh does)")
    if not Path(o.python).exists():
        ap.error(f"no Python at {o.python}: run bash scripts/sdk.sh")
    if not pg_ready():
        ap.error(f"Postgres does not answer on {PG_HOST}:{PG_PORT}: bash scripts/stack.sh start")
    if not ch_ready():
        ap.error(f"ClickHouse does not answer on {CH_URL}: bash scripts/stack.sh start")

    def on_signal(sig, _frame):
        raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    Path(o.out).mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%H%M%S") + f"{random.randint(0, 99):02d}"
    results: list[dict] = []
    status = 0
    try:
        for f in faults:
            s = Scenario(f, o, run_id)
            r = None
            try:
                r = s.run()
            except HarnessError as e:
                log(f"{f}: the harness could not run it: {e}")
                results.append({"fault": f, "what": describe(f, o), "skipped": f"harness error: {str(e).splitlines()[0]}"})
                print(line(results[-1]), flush=True)
                status = max(status, 2)
                continue
            finally:
                restore_services()
                try:  # kept for inspection after a loss or a harness error
                    s.teardown(keep=o.keep or r is None or bool(r["lost"]))
                except Exception as e:  # noqa: BLE001
                    log(f"{f}: teardown: {e}")
            bad = []
            if r["lost"]:
                bad.append(f"LOST {r['lost']} acknowledged records (e.g. {r['lost_sample'][:5]}); kept for inspection: {r['dir']}, database {s.db}")
            if o.max_dup_fraction is not None and r["duplicated"] > o.max_dup_fraction * max(1, r["in"]):
                bad.append(f"{r['duplicated']} duplicates, over the bound of {o.max_dup_fraction:.0%} of {r['in']} records in")
            if r["recover_s"] is None:
                bad.append("some unit never committed again")
            if f == "cp-leader" and r["leader_failover_s"] is None:
                bad.append("no other control plane took office after the leader was killed")
            r["failed"] = bad
            results.append(r)
            print(line(r), flush=True)
            for stream, tc in r.get("topics", {}).items():
                print(f"  stream {stream}: {tc['records']} records, {tc['distinct']} distinct ids, {tc['duplicated']} duplicated", flush=True)
            for n in r["notes"]:
                print(f"  note: {n}", flush=True)
            for b in bad:
                print(f"  FAIL {f}: {b}", flush=True)
                status = max(status, 1)
    finally:
        restore_services()
        for p in list(Proc.live):
            p.stop(timeout=5)
        md = markdown(results)
        (Path(o.out) / "faults.md").write_text(md)
        (Path(o.out) / "faults.json").write_text(json.dumps(results, indent=1))
        if o.markdown:
            Path(o.markdown).write_text(md)
        print()
        print(md)
    return status


if __name__ == "__main__":
    sys.exit(main())
