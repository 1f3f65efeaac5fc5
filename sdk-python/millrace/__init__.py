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
