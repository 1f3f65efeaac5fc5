"""`moose_lib.dmv2.registry`: the names Millrace provides, re-exported. moose_lib names Millrace lacks raise NotProvidedError;
names added to the top-level `millrace` package later are forwarded (see `millrace._surface`)."""

from __future__ import annotations

from .._surface import module_getattr
from ..compat import get_ingest_api, get_ingest_apis, get_stream, get_streams, get_table, get_tables

__all__ = ["get_ingest_api", "get_ingest_apis", "get_stream", "get_streams", "get_table", "get_tables"]
__getattr__ = module_getattr(__name__)
