"""`python -m millrace plan|apply|serve`: the diff, idempotent applies, and one clear line for expected failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import free_port, write_app

APPS = Path(__file__).parent / "apps"

APP = """
from pydantic import BaseModel
from millrace import Key, Stream
class Order(BaseModel):
    id: Key[str]
    amount: int
{extra}
orders = Stream[Order]("orders")
totals = Stream[Order]("totals")
orders.add_transform(totals, lambda o: o)
"""


def test_plan_then_apply_then_nothing_to_do(stack, tmp_path):
    stack.start_control_plane()
    app = write_app(tmp_path, APP.format(extra=""))
    first = stack.cli("plan", str(app)).stdout
    assert "+ stream orders: CREATE" in first and "+ transform orders__totals: CREATE" in first
    assert "+ dead_letter_queue millrace_dead_letters: CREATE" in first, "the default dead letter queue is shown"
    applied = stack.cli("apply", str(app)).stdout
    assert "+ stream totals: CREATE" in applied and "applied (apply " in applied
    assert stack.cli("plan", str(app)).stdout.startswith("nothing to do")
    again = stack.cli("apply", str(app)).stdout
    assert again.startswith("nothing to do"), again
    as_json = json.loads(stack.cli("apply", str(app), "--json").stdout)
    assert {c["action"] for c in as_json["changes"]} == {"UNCHANGED"}

    changed = write_app(tmp_path, APP.format(extra="    note: str\n    amount: float"), "changed.py")
    diff = stack.cli("plan", str(changed)).stdout
    assert "~ stream orders: UPDATE (field amount: int64 -> float64; add field note string)" in diff, diff


def test_an_unreachable_control_plane_is_one_line_and_a_failure(tmp_path):
    app = write_app(tmp_path, APP.format(extra=""))
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "millrace", "apply", str(app), "--control-plane", f"127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "cannot be reached" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bad_app_files_are_one_line_each(tmp_path):
    cases = {
        "missing.py": (None, "no such file"),
        "broken.py": ("def (:\n", "broken.py:1: syntax error"),
        "imports.py": ("import not_a_module_anywhere\n", "imports.py:1: ModuleNotFoundError"),
        "raises.py": ("x = 1\nraise RuntimeError('at import')\n", "raises.py:2: RuntimeError: at import"),
        "refused.py": ("from millrace import Stream\nStream('x')\n", "Stream[Model]"),
    }
    for name, (source, words) in cases.items():
        path = tmp_path / name
        if source is not None:
            path.write_text(source)
        for command in ("plan", "apply", "serve"):
            extra = [] if command == "serve" else ["--control-plane", "127.0.0.1:1"]
            r = subprocess.run([sys.executable, "-m", "millrace", command, str(path), *extra],
                               capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
            assert r.returncode != 0, (name, command)
            assert words in r.stderr and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, (name, command, r.stderr)


def test_the_control_plane_refusal_is_shown_with_its_reason(stack, tmp_path):
    stack.start_control_plane()
    app = write_app(tmp_path, APP.format(extra=""))
    stack.cli("apply", str(app))
    # A table column's type cannot change: refused, and said so.
    tables = """
from pydantic import BaseModel
from millrace import Key, OlapTable
class Row(BaseModel):
    id: Key[str]
    n: {t}
rows = OlapTable[Row]("rows")
"""
    stack.cli("apply", str(write_app(tmp_path, tables.format(t="int"), "t1.py")))
    r = stack.cli("apply", str(write_app(tmp_path, tables.format(t="str"), "t2.py")), check=False)
    assert r.returncode == 1 and "FAILED_PRECONDITION" in r.stderr and "column `n` cannot change type" in r.stderr, r.stderr
