"""`moose_lib.dmv2`: the names Millrace provides, re-exported. moose_lib names Millrace lacks raise NotProvidedError;
names added to the top-level `millrace` package later are forwarded (see `millrace._surface`)."""

from __future__ import annotations

from .._surface import module_getattr
from ..compat import (
    MooseModel, T, T_none, U, U_none, ZeroOrMany, get_ingest_api, get_ingest_apis, get_stream, get_streams,
    get_table, get_tables,
)
from ..resources import (
    ConsumerConfig, DeadLetterModel, DeadLetterQueue, Stream, StreamConfig, TransformConfig, IngestApi,
    IngestConfig, IngestPipeline, IngestPipelineConfig, LifeCycle, OlapConfig, OlapTable,
)

__all__ = [
    "ConsumerConfig", "DeadLetterModel", "DeadLetterQueue", "get_ingest_api", "get_ingest_apis", "get_stream",
    "get_streams", "get_table", "get_tables", "IngestApi", "IngestConfig", "IngestPipeline", "IngestPipelineConfig",
    "LifeCycle", "MooseModel", "OlapConfig", "OlapTable", "Stream", "StreamConfig", "T", "T_none",
    "TransformConfig", "U", "U_none", "ZeroOrMany",
]
__getattr__ = module_getattr(__name__)
