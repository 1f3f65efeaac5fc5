"""`moose_lib.blocks`: table engines (`ClickHouseEngines`, `ReplacingMergeTreeEngine`, ...) are forwarded from the
top-level `millrace` package; its SQL helpers (Blocks, create_materialized_view, ...) raise NotProvidedError."""

from __future__ import annotations

from ._surface import module_getattr

__all__: list[str] = []
__getattr__ = module_getattr(__name__)
