"""Loads an app file and collects what it declares. Failures a user can expect (no such file, a syntax or import
error, a declaration Millrace refuses) become one line naming the file and line.

An app inside a package is imported as MooseStack imports a project's `app/main.py`: its project directory (the
first directory up that is not a package) goes first on `sys.path` and the module is imported by its dotted name
(`app.main`), so `from app.ingest.models import ...` and relative imports work. `<dir>/app/main.py` is such an app
even without `app/__init__.py` (a namespace package, as moose imports it). A lone file is imported from its own
directory, as before."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

from . import resources


class AppError(Exception):
    """The app cannot be loaded; the message is one line for a person."""


def project_of(file: Path) -> tuple[Path, str]:
    """(the directory the app's imports resolve from, the app's module name)."""
    file = file.resolve()
    parts = [file.stem]
    directory = file.parent
    while (directory / "__init__.py").is_file() and directory.name.isidentifier() and directory.parent != directory:
        parts.insert(0, directory.name)
        directory = directory.parent
    if len(parts) == 1 and file.name == "main.py" and file.parent.name == "app":
        return file.parent.parent, "app.main"
    if not all(p.isidentifier() for p in parts):
        return file.parent, "millrace_app"
    return directory, ".".join(parts)


# The directories `load` put on sys.path.
_added: list[str] = []


def load(path: str) -> resources.Registry:
    file = Path(path)
    if not file.is_file():
        raise AppError(f"{path}: no such file: give the path of the Python file that declares your streams")
    registry = resources.reset_registry()
    root, module_name = project_of(file)
    # Only this app's directory: one an earlier load added (in this process) could hold a module that shadows a
    # namespace package of this app (its `app.py` before this project's `app/`).
    for earlier in _added:
        while earlier in sys.path:
            sys.path.remove(earlier)
    _added[:] = [str(root)]
    sys.path.insert(0, str(root))
    try:
        if "." in module_name:
            _forget_package(module_name.split(".")[0], root)
            importlib.import_module(module_name)
        else:
            spec = importlib.util.spec_from_file_location(module_name, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
    except AppError:
        raise
    except SyntaxError as e:
        where = _shown(Path(e.filename), file) if e.filename else path
        raise AppError(f"{where}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        raise AppError(f"{_where(e, file, root)}: {type(e).__name__}: {e}") from None
    return registry


def _forget_package(top: str, root: Path) -> None:
    """Drops an earlier import of the app's package (an earlier load in this process), so that loading again runs
    its declarations again. A package named like Python's own or Millrace's cannot be the app's."""
    if top in sys.stdlib_module_names or top == "millrace":
        raise AppError(f"{root / top}: the package name {top!r} is taken by {'Python' if top != 'millrace' else 'Millrace'}: rename the app's package")
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]


def _shown(file: Path, app: Path) -> str:
    """The app's file as it was given; another of its project's files from the current directory when below it,
    else in full."""
    if file.resolve() == app.resolve():
        return str(app)
    try:
        return str(file.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(file)


def _where(e: BaseException, file: Path, root: Path) -> str:
    """The deepest line of the app's own code in the traceback (its file, or a file of its project outside a
    virtualenv, site-packages or dot-directory): where the user should look."""
    app = file.resolve()

    def own(name: str) -> bool:
        p = Path(name).resolve()
        if p == app:
            return True
        if root not in p.parents:
            return False
        parts = p.relative_to(root).parts[:-1]
        return not any(x in ("site-packages", "dist-packages") or x.startswith(".") or (root.joinpath(*parts[: i + 1]) / "pyvenv.cfg").is_file() for i, x in enumerate(parts))

    frames = [f for f in traceback.extract_tb(e.__traceback__) if own(f.filename)]
    return f"{_shown(Path(frames[-1].filename), file)}:{frames[-1].lineno}" if frames else str(file)
