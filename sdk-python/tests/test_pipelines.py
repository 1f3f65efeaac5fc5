"""Apps run for real: the control plane provisions them, a worker reads the topics, the Python sidecar runs the
functions. Records go in with `send()`; every destination record is checked by id and value."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_until

from millrace import loader

APPS = Path(__file__).parent / "apps"
# The chained example is also what `millrace dev` runs without an app.
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def declared(app: Path, name: str):
    """The app's resource `name`, as the app's own module declares it (for send())."""
    registry = loader.load(str(app))
    return next(r for (kind, n, _), r in registry.resources.items() if n == name and kind == "stream")


@pytest.fixture(autouse=True)
def point_at(stack, monkeypatch):
    monkeypatch.setenv("MILLRACE_CONTROL_PLANE", stack.control_plane)


def test_reference_ingestion_example_takes_posts_and_sends_into_its_stream_and_table(stack):
    app = APPS / "reference_ingestion.py"
    stack.run(app)
    raw = declared(app, "raw_data")
    raw.send([raw.model(id=f"r{i}", value=i) for i in range(500)])
    raw.send(raw.model(id="single", value=-1))
    status, answer = stack.post("/ingest/raw_data", json.dumps([{"id": f"h{i}", "value": i} for i in range(100)]).encode())
    assert (status, answer) == (200, {"written": 100})
    status, answer = stack.post("/ingest/raw_data", b'{"id": "bad", "value": "x"}')
    assert status == 400 and answer["errors"][0]["field"] == "value", answer
    want = {**{f"r{i}": i for i in range(500)}, "single": -1, **{f"h{i}": i for i in range(100)}}
    got = {r["id"]: r["value"] for r in stack.read("raw_data", len(want))}
    assert got == want
    rows = stack.wait_rows("raw_data", len(want))
    assert {r["id"]: int(r["value"]) for r in rows} == want, "the pipeline's table holds every record once"
    dead = stack.read("raw_dataDeadLetterQueue", 1)
    assert dead[0]["originalRecord"] == {"id": "bad", "value": "x"} and dead[0]["source"] == "api"


def test_reference_transform_example_doubles_every_value(stack):
    app = APPS / "reference_transform.py"
    stack.run(app)
    raw = declared(app, "raw_data")
    n = 2000
    raw.send([{"id": f"t{i}", "value": i} for i in range(n)])
    out = stack.read("transformed_data", n)
    assert len(out) >= n
    assert {r["id"]: r["transformedValue"] for r in out} == {f"t{i}": 2 * i for i in range(n)}
    assert all(r["transformedAt"] for r in out)
    rows = stack.wait_rows("transformed_data", n)
    assert {r["id"]: int(r["transformedValue"]) for r in rows} == {f"t{i}": 2 * i for i in range(n)}


def test_reference_chained_example_runs_both_transforms(stack):
    app = EXAMPLES / "reference_chained.py"
    stack.run(app)
    raw = declared(app, "raw_data")
    n = 2000
    raw.send([{"id": f"c{i}", "value": i} for i in range(n)])
    middle = stack.read("intermediate_stream", n)
    final = stack.read("final_stream", n)
    assert {r["id"]: r["transformedValue"] for r in middle} == {f"c{i}": 2 * i for i in range(n)}
    assert {r["id"]: (r["transformedValue"], r["anotherTransformedValue"]) for r in final} == {
        f"c{i}": (4 * i, 6 * i) for i in range(n)
    }
    rows = stack.wait_rows("final_stream", n)
    assert {r["id"]: (int(r["transformedValue"]), int(r["anotherTransformedValue"])) for r in rows} == {
        f"c{i}": (4 * i, 6 * i) for i in range(n)
    }, "the final stream lands in its table"
    assert all(len(r["transformedAt"]) == 19 for r in rows), "date-times arrive as ClickHouse DateTime"


def test_filter_fan_out_chain_consumers_and_dead_letters(stack, tmp_path):
    stack.env["MILLRACE_TEST_OUT"] = str(tmp_path)
    app = APPS / "behaviours.py"
    stack.run(app)
    events = declared(app, "events")
    n = 1000
    events.send([{"id": i, "value": i + 1} for i in range(n)])

    evens = stack.read("evens", n // 2)
    assert {r["id"]: r["doubled"] for r in evens} == {i: 2 * (i + 1) for i in range(0, n, 2)}, "the filter drops odd ids"
    quadrupled = stack.read("quadrupled", n // 2)
    assert {r["id"]: r["doubled"] for r in quadrupled} == {i: 4 * (i + 1) for i in range(0, n, 2)}, "chained"
    parts = stack.read("parts", 2 * n)
    assert {r["id"] for r in parts} == {f"{i}-{p}" for i in range(n) for p in (0, 1)}, "each record fans out to two"

    raising = {i for i in range(n) if i % 10 == 3}
    checked = stack.read("checked", n - len(raising))
    assert {r["id"] for r in checked} == set(range(n)) - raising
    dead = stack.read("events_dlq", len(raising), settle=1.0)
    assert sorted(d["originalRecord"]["id"] for d in dead) == sorted(raising), "exactly the raising records"
    for d in dead:
        assert d["errorType"] == "ValueError" and "ends in 3" in d["errorMessage"]
        assert d["source"] == "transform" and d["function"] == "events__checked__1_0"
        assert d["originalRecord"]["value"] == d["originalRecord"]["id"] + 1

    sync_seen = tmp_path / "sync.txt"
    async_seen = tmp_path / "async.txt"
    wait_until("the sync consumer to see every part", lambda: sync_seen.exists() and len(set(sync_seen.read_text().split())) == 2 * n)
    wait_until("the async consumer to see every record", lambda: async_seen.exists() and len(set(async_seen.read_text().split())) == n // 2)
    recovered = tmp_path / "recovered.txt"
    wait_until("the dead letter consumer to see every dead letter", lambda: recovered.exists() and len(set(recovered.read_text().splitlines())) == len(raising))
    assert set(recovered.read_text().splitlines()) == {f"{i} ValueError" for i in raising}


def test_every_type_survives_a_python_transform(stack):
    app = APPS / "types_app.py"
    stack.run(app)
    everything = declared(app, "everything")
    model = everything.model
    records = [
        model(
            id=f"e{i}", i8=-128, i16=-32768, i32=-(2**31), i64=-(2**63), u8=255, u16=65535, u32=2**32 - 1, u64=2**64 - 1,
            f32=1.5, f64=0.1 * i, flag=i % 2 == 0, at=f"2026-11-25T10:00:{i % 60:02d}Z", day="2026-11-25",
            amount=f"{i}.25", plain_decimal=i, uid=f"00000000-0000-0000-0000-{i:012d}", tags=["a", str(i)],
            maybe_tags=None if i % 2 else ["x"], maybe=None if i % 3 else i,
            point={"x": i, "y": 2.5, "label": None}, points=[{"x": 1, "y": 2}], colour="green", size="m",
        )  # fmt: skip
        for i in range(50)
    ]
    everything.send(records)
    got = {r["id"]: r for r in stack.read("copied", len(records))}
    assert set(got) == {r.id for r in records}
    for r in records:
        assert model.model_validate(got[r.id]) == r, r.id


def test_killing_one_sidecar_process_mid_stream_loses_nothing(stack):
    app = APPS / "reference_transform.py"
    stack.run(app, processes=2)
    raw = declared(app, "raw_data")
    n, chunk = 40000, 500
    sent = threading.Event()

    def send_all():
        for start in range(0, n, chunk):
            raw.send([{"id": f"k{i}", "value": i} for i in range(start, start + chunk)])
            time.sleep(0.05)
        sent.set()

    sender = threading.Thread(target=send_all)
    sender.start()
    wait_until("some records transformed", lambda: len(stack.read("transformed_data", 1, timeout=2)) > 0)
    stack.signal_sidecar_process(1)
    assert not sent.is_set(), "the kill came mid-stream"
    sender.join(60)
    assert sent.is_set()
    out = stack.read("transformed_data", n, timeout=90)
    values = {r["id"]: r["transformedValue"] for r in out}
    missing = n - len(values)
    assert missing == 0, f"{missing} records lost"
    assert values == {f"k{i}": 2 * i for i in range(n)}
    print(f"duplicates after the kill: {len(out) - n}")
    assert stack.sidecar.poll() is None, "the supervisor keeps running"
    assert os.path.exists(f"/proc/{stack.sidecar.pid}")
