"""Millrace's Python SDK: the reference product's streaming API (`from millrace import ...` in place of
`from moose_lib import ...`), run on Millrace's workers by `python -m millrace serve app.py`."""

from .resources import (
    ConsumerConfig,
    DeadLetterModel,
    DeadLetterQueue,
    DeclarationError,
    IngestApi,
    IngestConfig,
    IngestPipeline,
    IngestPipelineConfig,
    LifeCycle,
    OlapConfig,
    OlapTable,
    Stream,
    StreamConfig,
    TransformConfig,
)
from .types import (
    AnnotationError,
    Float32,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    Key,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    clickhouse_decimal,
)

__all__ = [
    "AnnotationError", "ConsumerConfig", "DeadLetterModel", "DeadLetterQueue", "DeclarationError", "Float32", "Float64",
    "IngestApi", "IngestConfig", "IngestPipeline", "IngestPipelineConfig", "Int8", "Int16", "Int32", "Int64", "Key",
    "LifeCycle", "OlapConfig", "OlapTable", "Stream", "StreamConfig", "TransformConfig", "UInt8", "UInt16", "UInt32",
    "UInt64", "clickhouse_decimal",
]  # fmt: skip

# moose_lib's Python-only surface: logging, the cache, enums, the registry getters (docs/python-sdk.md).
from ._surface import NotProvidedError, install_finder, module_getattr
from .compat import (
    EnhancedJSONEncoder, MooseModel, StreamingFunction, StringToEnumMixin, T, T_none, U, U_none, ZeroOrMany,
    get_ingest_api, get_ingest_apis, get_stream, get_streams, get_table, get_tables,
)
from .logs import CliLogData, Logger, cli_log

__all__ += [
    "CliLogData", "EnhancedJSONEncoder", "Logger", "MooseCache", "MooseModel", "NotProvidedError", "StreamingFunction",
    "StringToEnumMixin", "T", "T_none", "U", "U_none", "ZeroOrMany", "cli_log", "get_ingest_api", "get_ingest_apis",
    "get_stream", "get_streams", "get_table", "get_tables",
]  # fmt: skip

# Table engines (moose_lib.blocks' names) and OlapConfig's nested classes; docs/python-sdk.md, "Tables".
from . import engines as _engines
from .engines import *  # noqa: F401,F403
from .resources import SeedFilter, TableConstraint, TableIndex, TableProjection

__all__ += [*_engines.__all__, "SeedFilter", "TableConstraint", "TableIndex", "TableProjection"]

# moose_lib's column annotations (docs/python-sdk.md, "Types").
from . import columns as _columns
from .columns import *  # noqa: F401,F403

__all__ += _columns.__all__

# Multi-transforms' routed records, and the standalone ingest API's config.
from .resources import IngestConfigWithDestination, RoutedMessage, _RoutedMessage  # noqa: F401

__all__ += ["IngestConfigWithDestination", "RoutedMessage"]

# moose_lib names and modules Millrace does not provide fail with one clear NotProvidedError (an ImportError);
# MooseCache is imported on first use (see _surface.LAZY).
__getattr__ = module_getattr(__name__)
install_finder()
