"""moose_lib's `Logger`, `cli_log` and `CliLogData`, writing to the sidecar's stderr (which `millrace dev` shows).

Each call writes one JSON line, so that a reader (`millrace dev`, `millrace logs`) can tell these lines from any
other output and show them as `time level [function] action: message`:

    {"millrace_log": 1, "time": "2026-12-01T07:00:00.123Z", "level": "info", "message_type": "Info",
     "function": "raw_data__final_stream", "action": "Custom", "message": "...", "pid": 1234}

`function` is the name (as the plan gives it) of the transform or consumer being run on this thread or task, set by
the runner with `set_function(name)` or `with function_context(name):`; null outside a function (at import)."""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json
import os
import sys
import threading
from typing import Iterator, Literal, Optional

# A ContextVar rather than a thread-local: sync calls run on pool threads (each has its own context) and async ones
# as tasks (each copies the context of the code that created it), and both see the name set for them.
_function: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("millrace_function", default=None)
_write_lock = threading.Lock()


def set_function(name: Optional[str]) -> contextvars.Token:
    """Marks what runs next on this thread (or in tasks created from here) as the function `name`. The runner calls
    it once per batch; it stays set until the next call."""
    return _function.set(name)


@contextlib.contextmanager
def function_context(name: Optional[str]) -> Iterator[None]:
    """Within the block, log lines carry `name` as their function."""
    token = _function.set(name)
    try:
        yield
    finally:
        _function.reset(token)


def current_function() -> Optional[str]:
    return _function.get()


class CliLogData:
    INFO = "Info"
    SUCCESS = "Success"
    ERROR = "Error"
    WARNING = "Warning"
    HIGHLIGHT = "Highlight"

    def __init__(
        self,
        action: str,
        message: str,
        message_type: Optional[Literal["Info", "Success", "Error", "Warning", "Highlight"]] = INFO,
    ):
        self.message_type = message_type
        self.action = action
        self.message = message


def _level(message_type: Optional[str]) -> str:
    # moose_lib's mapping: Error is an error, Warning a warning, the rest (Highlight and Success too) info.
    return {CliLogData.ERROR: "error", CliLogData.WARNING: "warn"}.get(message_type or "", "info")


def cli_log(log: CliLogData) -> None:
    """One line on stderr with the log's action, message and type, and the function being run."""
    now = _dt.datetime.now(_dt.timezone.utc)
    line = json.dumps(
        {
            "millrace_log": 1,
            "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": _level(log.message_type),
            "message_type": log.message_type or CliLogData.INFO,
            "function": _function.get(),
            "action": log.action,
            "message": str(log.message),
            "pid": os.getpid(),
        },
        ensure_ascii=False,
        default=str,
    )
    err = sys.stderr
    if err is None:  # pythonw, or stderr closed: nowhere to write
        return
    # One write per line under a lock: lines from concurrent calls never interleave.
    with _write_lock:
        err.write(line + "\n")
        err.flush()


class Logger:
    """`Logger(action="BT").info("...")`: cli_log with the logger's action. `is_moose_task` is accepted for moose_lib
    compatibility (its workflow tasks); Millrace has no workflows, so every line goes the same way."""

    default_action = "Custom"

    def __init__(self, action: Optional[str] = None, is_moose_task: bool = False):
        self.action = action or Logger.default_action
        self._is_moose_task = is_moose_task

    def _log(self, message: str, message_type: str) -> None:
        cli_log(CliLogData(action=self.action, message=message, message_type=message_type))

    def info(self, message: str) -> None:
        self._log(message, CliLogData.INFO)

    def success(self, message: str) -> None:
        self._log(message, CliLogData.SUCCESS)

    def error(self, message: str) -> None:
        self._log(message, CliLogData.ERROR)

    def warning(self, message: str) -> None:
        self._log(message, CliLogData.WARNING)

    def highlight(self, message: str) -> None:
        self._log(message, CliLogData.HIGHLIGHT)
