"""Loads an app file and collects what it declares. Failures a user can expect (no such file, a syntax or import
error, a declaration Millrace refuses) become one line naming the file and line."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

from . import resources


class AppError(Exception):
    """The app cannot be loaded; the message is one line for a person."""


def load(path: str) -> resources.Registry:
    file = Path(path)
    if not file.is_file():
        raise AppError(f"{path}: no such file: give the path of the Python file that declares your streams")
    registry = resources.reset_registry()
    module_name = file.stem if file.stem.isidentifier() else "millrace_app"
    sys.path.insert(0, str(file.resolve().parent))
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise AppError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        raise AppError(f"{_where(e, file)}: {type(e).__name__}: {e}") from None
    return registry


def _where(e: BaseException, file: Path) -> str:
    """The deepest line of the app file in the traceback: where the user should look."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == file.resolve()]
    return f"{file}:{frames[-1].lineno}" if frames else str(file)
