"""Which streams a multi-transform routes to, read from its bytecode: every `<stream>.routed` it (or a function of
its own module it calls) names, where the stream is a global, a closure variable or an attribute of one. The plan
lists them as the transform's routes, so provisioning, deletion checks and the pipeline's graph know them."""

from __future__ import annotations

import dis
import types
from typing import Any, Callable, Optional

_LOADS = {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_FAST", "LOAD_CLOSURE"}
_ATTRS = {"LOAD_ATTR", "LOAD_METHOD"}
_UNKNOWN = object()
_DEPTH = 3


def routed_streams(fn: Callable) -> Optional[list]:
    """The streams `fn` routes to, or None when it calls `.routed` on something not named in its code (a local
    variable, a value from a dict) or calls it nowhere it can see (in a function of another module, say)."""
    from .resources import Stream

    found: list = []
    ok = _scan(fn, Stream, found, set(), 0)
    return found if ok and found else None


def _scan(fn: Any, stream_type: type, found: list, seen: set, depth: int) -> bool:
    fn = getattr(fn, "__func__", fn)  # bound methods
    if not isinstance(fn, types.FunctionType):
        call = getattr(type(fn), "__call__", None)
        if not isinstance(call, types.FunctionType):
            return True
        fn = call
    if id(fn) in seen:
        return True
    seen.add(id(fn))
    names: dict[str, Any] = dict(fn.__globals__)
    if fn.__closure__:
        for var, cell in zip(fn.__code__.co_freevars, fn.__closure__):
            try:
                names[var] = cell.cell_contents
            except ValueError:  # an empty cell
                names[var] = _UNKNOWN
    return _scan_code(fn.__code__, names, fn.__module__, stream_type, found, seen, depth)


def _scan_code(code: types.CodeType, names: dict, module: str, stream_type: type, found: list, seen: set, depth: int) -> bool:
    ok = True
    value: Any = _UNKNOWN
    for ins in dis.get_instructions(code):
        if ins.opname in _LOADS:
            name = ins.argval
            value = names.get(name, _UNKNOWN) if ins.opname != "LOAD_FAST" else _UNKNOWN
            # A function of the app's own module it calls: look inside it too.
            if isinstance(value, types.FunctionType) and value.__module__ == module and depth < _DEPTH:
                ok &= _scan(value, stream_type, found, seen, depth + 1)
        elif ins.opname in _ATTRS:
            if ins.argval == "routed":
                if isinstance(value, stream_type):
                    found.append(value)
                else:
                    ok = False
                value = _UNKNOWN
            elif value is not _UNKNOWN:
                value = getattr(value, ins.argval, _UNKNOWN)
        else:
            value = _UNKNOWN
    for const in code.co_consts:  # nested functions, lambdas and comprehensions
        if isinstance(const, types.CodeType):
            # Their own free variables are the enclosing function's locals: unknown, unless global.
            ok &= _scan_code(const, {k: v for k, v in names.items() if k not in const.co_freevars}, module, stream_type, found, seen, depth)
    return ok
