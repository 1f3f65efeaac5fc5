"""Which streams a multi-transform routes to, read from its bytecode: every `<stream>.routed` it names, where the
stream is a global, a closure variable or an attribute of one, in the function itself and in every function of the
app's own code it calls (its modules, not libraries). When the code does not say for sure (a stream picked at run
time, a call it cannot follow), the answer is None and the caller falls back to a wider set. The plan lists the
routes, so provisioning, deletion checks, the cycle check and the pipeline's graph know them."""

from __future__ import annotations

import dis
import sysconfig
import types
from pathlib import Path
from typing import Any, Callable, Optional

_LOADS = {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_FAST", "LOAD_CLOSURE"}
_ATTRS = {"LOAD_ATTR", "LOAD_METHOD"}
_UNKNOWN = object()
_DEPTH = 4
# Where Python's own and installed packages' code lives: never the app's.
_LIBRARIES = tuple(
    str(Path(p).resolve()) for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")} if p
)


def routed_streams(fn: Callable) -> Optional[list]:
    """The streams `fn` routes to, or None when the code does not say for sure."""
    from .resources import Stream

    found: list = []
    ok = _scan(fn, Stream, found, set(), 0)
    return found if ok and found else None


def _is_app_code(fn: types.FunctionType) -> bool:
    try:
        file = str(Path(fn.__code__.co_filename).resolve())
    except (OSError, ValueError):
        return False
    return not file.startswith(_LIBRARIES) and "/millrace/" not in file and not file.startswith("<")


def _function_of(value: Any) -> Optional[types.FunctionType]:
    """The Python function a called value runs: a function, a bound method, or an object's __call__."""
    value = getattr(value, "__func__", value)
    if isinstance(value, types.FunctionType):
        return value
    call = getattr(type(value), "__call__", None)
    return call if isinstance(call, types.FunctionType) else None


def _scan(fn: Any, stream_type: type, found: list, seen: set, depth: int) -> bool:
    f = _function_of(fn)
    if f is None or id(f) in seen:
        return True
    seen.add(id(f))
    names: dict[str, Any] = dict(f.__globals__)
    if f.__closure__:
        for var, cell in zip(f.__code__.co_freevars, f.__closure__):
            try:
                names[var] = cell.cell_contents
            except ValueError:  # an empty cell
                names[var] = _UNKNOWN
    return _scan_code(f.__code__, names, stream_type, found, seen, depth)


def _follow(value: Any, stream_type: type, found: list, seen: set, depth: int) -> bool:
    """Looks inside a function of the app's own code that the scanned code names; False when it cannot."""
    f = _function_of(value)
    if f is None or not _is_app_code(f):
        return True  # a library's or a builtin: it does not route
    if depth >= _DEPTH:
        return False
    return _scan(value, stream_type, found, seen, depth + 1)


_CALLS = {"PRECALL", "CALL", "CALL_FUNCTION", "CALL_METHOD", "PUSH_NULL", "KW_NAMES"}


def _scan_code(code: types.CodeType, names: dict, stream_type: type, found: list, seen: set, depth: int) -> bool:
    ok = True
    value: Any = _UNKNOWN
    getter: Any = _UNKNOWN  # `pipeline.get_stream()`: the stream it gives, kept through the call's opcodes
    for ins in dis.get_instructions(code):
        # Where branches meet, the value in hand may come from another branch (`(a if c else b).routed(...)`):
        # unknown, so that a `.routed` on it makes the answer unsure rather than wrong.
        if ins.is_jump_target and ins.opname not in _LOADS:
            value = getter = _UNKNOWN
        if getter is not _UNKNOWN and ins.opname in _CALLS and not ins.arg:
            value = getter
            continue
        getter = _UNKNOWN
        if ins.opname in _ATTRS and ins.argval == "get_stream" and hasattr(value, "stream") and isinstance(getattr(value, "stream", None), stream_type):
            getter = value.stream
            continue
        if ins.opname in _LOADS:
            value = names.get(ins.argval, _UNKNOWN) if ins.opname != "LOAD_FAST" else _UNKNOWN
            ok &= _follow(value, stream_type, found, seen, depth)
        elif ins.opname in _ATTRS:
            if ins.argval == "routed":
                if isinstance(value, stream_type):
                    found.append(value)
                else:
                    ok = False
                value = _UNKNOWN
            elif value is not _UNKNOWN:
                value = getattr(value, ins.argval, _UNKNOWN)
                ok &= _follow(value, stream_type, found, seen, depth)
        else:
            value = _UNKNOWN
    for const in code.co_consts:  # nested functions, lambdas and comprehensions
        if isinstance(const, types.CodeType):
            # Their own free variables are the enclosing function's locals: unknown, unless global.
            inner = {k: v for k, v in names.items() if k not in const.co_freevars}
            ok &= _scan_code(const, inner, stream_type, found, seen, depth)
    return ok
