"""`moose_lib.dmv2.types`: the names Millrace provides, re-exported. moose_lib names Millrace lacks raise NotProvidedError;
names added to the top-level `millrace` package later are forwarded (see `millrace._surface`)."""

from __future__ import annotations

from .._surface import module_getattr
from ..compat import T, T_none, U, U_none, ZeroOrMany

__all__ = ["T", "T_none", "U", "U_none", "ZeroOrMany"]
__getattr__ = module_getattr(__name__)
