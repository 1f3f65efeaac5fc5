"""What an app says about its resources (moose's `metadata`) is stored, shown by `millrace ls`, and a change to it
shows in the plan and touches nothing else; what its functions log is shown by `millrace logs` with their names."""

from __future__ import annotations

import subprocess

from conftest import BIN, WAIT, write_app

APP = '''
from millrace import IngestPipeline, IngestPipelineConfig, Key, Stream, StreamConfig
from pydantic import BaseModel


class Ev(BaseModel):
    id: Key[str]
    value: int


p = IngestPipeline[Ev]("events", IngestPipelineConfig(metadata={"description": "DESCRIBED"}))
s = Stream[Ev]("audit", StreamConfig(metadata={"owner": "ops", "tier": 2}))
p.get_stream().set_multi_transform(lambda e: [s.routed(e)])
'''


def ls(stack) -> str:
    out = subprocess.run([str(BIN / "millrace"), "ls"], capture_output=True, text=True, env=stack.env, timeout=WAIT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_metadata_is_stored_shown_by_ls_and_its_change_is_planned_as_nothing_physical(stack, tmp_path):
    stack.start_control_plane()
    app = write_app(tmp_path, APP)
    stack.cli("apply", str(app))
    shown = ls(stack)
    assert shown.count("DESCRIBED") == 4, shown  # the pipeline's table, stream, ingest API and dead letter queue
    assert "owner=ops, tier=2" in shown, shown
    assert "events -> [audit] by" in shown, shown
    write_app(tmp_path, APP.replace("DESCRIBED", "REWORDED"))
    planned = stack.cli("plan", str(app)).stdout
    assert "metadata changed (nothing physical)" in planned and "DELETE" not in planned, planned
    stack.cli("apply", str(app))
    assert ls(stack).count("REWORDED") == 4


LOGGING_APP = '''
from millrace import Key, Logger, Stream
from pydantic import BaseModel


class Ev(BaseModel):
    id: Key[str]
    value: int


log = Logger(action="tally")
src, dst = Stream[Ev]("src"), Stream[Ev]("dst")


def tally(e: Ev) -> Ev:
    log.info(f"saw {e.id}")
    return e


src.add_transform(dst, tally)
'''


def test_millrace_logs_shows_what_a_function_logged_with_its_name(stack, tmp_path, monkeypatch):
    from conftest import LOGS, wait_until

    monkeypatch.setenv("MILLRACE_CONTROL_PLANE", stack.control_plane)
    app = write_app(tmp_path, LOGGING_APP)
    stack.run(app)
    from millrace import loader

    reg = loader.load(str(app))
    src = next(r for (k, n, _), r in reg.resources.items() if n == "src" and k == "stream")
    src.send([src.model(id=f"e{i}", value=i) for i in range(3)])
    sidecar_log = LOGS / f"py-{stack.name}-sidecar.log"

    def shown() -> str:
        out = subprocess.run(
            [str(BIN / "millrace"), "logs", "--file", str(sidecar_log), "--function", "src__dst"], capture_output=True, text=True, timeout=WAIT
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    wait_until("three log lines of src__dst", lambda: shown().count("[src__dst] tally: saw e") == 3)
    missing = subprocess.run([str(BIN / "millrace"), "logs", "--file", str(tmp_path / "none.log")], capture_output=True, text=True, timeout=WAIT)
    assert missing.returncode == 1 and "run `millrace dev`" in missing.stderr
