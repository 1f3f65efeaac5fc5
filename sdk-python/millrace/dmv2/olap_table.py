"""`moose_lib.dmv2.olap_table`: the names Millrace provides, re-exported. moose_lib names Millrace lacks raise NotProvidedError;
names added to the top-level `millrace` package later are forwarded (see `millrace._surface`)."""

from __future__ import annotations

from .._surface import module_getattr
from ..resources import OlapConfig, OlapTable

__all__ = ["OlapConfig", "OlapTable"]
__getattr__ = module_getattr(__name__)
