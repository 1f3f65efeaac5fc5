"""Issue #19's promises on the Python side, through the real control plane, worker and sidecar: aliased fields reach
their columns, one key's records run in offset order, misbehaving functions condemn only their own record, and
the sidecar's supervisor keeps the other processes up and brings a failing one back."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import port_open, wait_until

from millrace import loader

APPS = Path(__file__).parent / "apps"


def declared(app: Path, name: str):
    registry = loader.load(str(app))
    return next(r for (kind, n, _), r in registry.resources.items() if n == name and kind == "stream")


@pytest.fixture(autouse=True)
def point_at(stack, monkeypatch, tmp_path):
    monkeypatch.setenv("MILLRACE_CONTROL_PLANE", stack.control_plane)
    stack.env["MILLRACE_TEST_OUT"] = str(tmp_path)


def test_aliased_fields_reach_their_table_and_consumers(stack, tmp_path):
    app = APPS / "promises_app.py"
    stack.run(app)
    people = declared(app, "people")
    n = 50
    people.send([people.model(personId=i, userName=f"user{i}") for i in range(n)])
    rows = stack.wait_rows("greetings", n)
    assert {int(r["personId"]): r["greetingText"] for r in rows} == {i: f"hello user{i}" for i in range(n)}
    seen = tmp_path / "people.txt"
    wait_until("the consumer to see every person", lambda: seen.exists() and len(seen.read_text().splitlines()) >= n)
    assert set(seen.read_text().splitlines()) == {f"{i} user{i}" for i in range(n)}


def test_each_keys_records_run_in_offset_order_across_processes_and_partitions(stack, tmp_path):
    app = APPS / "promises_app.py"
    stack.run(app, processes=3)
    ticks = declared(app, "ticks")
    keys, per_key = 20, 400
    for seq in range(0, per_key, 50):
        ticks.send([ticks.model(key=f"k{k}", seq=s) for s in range(seq, seq + 50) for k in range(keys)])
    out = stack.read("counted", keys * per_key, timeout=120)
    wrong = [r for r in out if r["count"] != r["seq"] + 1]
    assert len(out) == keys * per_key, f"{len(out)} outputs"
    assert not wrong, f"{len(wrong)} of {len(out)} outputs counted out of order, e.g. {wrong[:3]}"
    log = tmp_path / "ticks.txt"
    wait_until("the async consumer to see every tick", lambda: log.exists() and len(log.read_text().splitlines()) >= keys * per_key, timeout=120)
    order: dict[str, list[int]] = defaultdict(list)
    for line in log.read_text().splitlines():
        k, s = line.split()
        order[k].append(int(s))
    assert {k: v == list(range(per_key)) for k, v in order.items()} == {f"k{k}": True for k in range(keys)}


def test_hung_exiting_and_ill_typed_functions_condemn_only_their_record(stack, tmp_path):
    stack.env["MILLRACE_CALL_TIMEOUT_MS"] = "2000"
    app = APPS / "promises_app.py"
    stack.run(app, processes=2)
    pids = sidecar_pids(stack)
    jobs = declared(app, "jobs")
    bad = {7: "hang", 13: "exit", 21: "nan", 34: "huge"}
    n = 200
    jobs.send([jobs.model(id=i, kind=bad.get(i, "coroutine" if i % 5 == 0 else "ok")) for i in range(n)])
    dead = stack.read("jobs_dlq", len(bad), timeout=90, settle=2.0)
    assert sorted(d["originalRecord"]["id"] for d in dead) == sorted(bad), [(d["originalRecord"], d["errorType"]) for d in dead]
    by_id = {d["originalRecord"]["id"]: d for d in dead}
    assert by_id[7]["errorType"] == "FunctionTimeout"
    assert by_id[13]["errorType"] == "SystemExit"
    assert by_id[21]["errorType"] == "ValidationError" and "value" in by_id[21]["errorMessage"]
    assert by_id[34]["errorType"] == "ValidationError" and "big" in by_id[34]["errorMessage"]
    out = stack.read("results", n - len(bad), timeout=60, settle=1.0)
    assert {r["id"] for r in out} == set(range(n)) - set(bad)
    assert all(r["value"] == (2.0 if r["id"] % 5 == 0 else 1.0) for r in out), "coroutines returned are awaited"
    wait_until("the process with the stuck call to be replaced", lambda: sidecar_pids(stack) != pids and len(sidecar_pids(stack)) == 2)
    assert stack.sidecar.poll() is None


def sidecar_pids(stack) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(stack.sidecar.pid)], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def test_a_process_that_fails_to_restart_is_retried_and_the_others_keep_running(stack, tmp_path):
    app = APPS / "flaky_import.py"
    stack.start_control_plane()
    stack.cli("apply", str(app))
    stack.start_sidecar(app, processes=2)
    first, second = stack.sidecar_port, stack.sidecar_port + 1
    survivor = {p for p in sidecar_pids(stack) if f"--child 0" in Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")}
    (tmp_path / "broken").write_text("")
    stack.signal_sidecar_process(1, signal.SIGKILL)
    wait_until("process 1 to be down", lambda: not port_open(second))
    log = Path(os.environ.get("MILLRACE_TEST_LOGS", "/tmp/millrace-test-logs")) / f"py-{stack.name}-sidecar.log"
    wait_until("two failed restarts", lambda: log.read_text().count("broken on purpose") >= 2, timeout=30)
    assert stack.sidecar.poll() is None, "the supervisor keeps running"
    assert port_open(first) and survivor <= sidecar_pids(stack), "the other process is untouched"
    (tmp_path / "broken").unlink()
    wait_until("process 1 to come back", lambda: port_open(second), timeout=60)
    assert stack.sidecar.poll() is None


def test_a_partition_moved_off_a_dead_process_goes_back_to_it_once_it_is_up(stack):
    app = APPS / "rejoin_app.py"
    stack.run(app, processes=2)
    pings = declared(app, "pings")
    keys = [f"k{k}" for k in range(20)]

    def send(r: int) -> None:
        pings.send([pings.model(key=k, round=r) for k in keys])

    send(0)
    first = stack.read("stamped", len(keys))
    assert len({o["pid"] for o in first}) == 2, "the two partitions run on the two processes"
    killed = stack.signal_sidecar_process(0)
    # While process 0 restarts, its partition runs on process 1; within seconds of its return it goes back.
    rounds = 40
    for r in range(1, rounds + 1):
        send(r)
        time.sleep(0.5)
    out = stack.read("stamped", len(keys) * (rounds + 1), timeout=120)
    late = {o["pid"] for o in out if o["round"] > rounds - 6}
    assert killed not in late
    assert len(late) == 2, f"the last rounds ran on {late}: a partition stayed on the other process"
