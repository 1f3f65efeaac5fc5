"""`moose_lib.data_models`: the names Millrace provides, re-exported. moose_lib names Millrace lacks raise NotProvidedError;
names added to the top-level `millrace` package later are forwarded (see `millrace._surface`)."""

from __future__ import annotations

from ._surface import module_getattr
from .columns import *  # noqa: F401,F403
from .columns import __all__ as _columns
from .compat import StringToEnumMixin
from .types import Float32, Float64, Int8, Int16, Int32, Int64, Key, UInt8, UInt16, UInt32, UInt64, clickhouse_decimal

__all__ = [
    "clickhouse_decimal", "Float32", "Float64", "Int16", "Int32", "Int64", "Int8", "Key", "StringToEnumMixin",
    "UInt16", "UInt32", "UInt64", "UInt8", *_columns,
]
__getattr__ = module_getattr(__name__)
