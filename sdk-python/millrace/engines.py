"""Table engines, with the reference product's class names, parameters and defaults (moose_lib.blocks): the
MergeTree family and its Replicated forms, as configuration classes and as the legacy `ClickHouseEngines` enum.

Millrace fills tables from streams with plain inserts, so it offers the MergeTree family only. The other engines
the reference product has (S3Queue, S3, Buffer, Distributed, IcebergS3, Kafka, Merge) exist here so that an app
importing them loads, and are refused when a table declares one, naming it."""

from __future__ import annotations

import warnings
from abc import ABC
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional


class ClickHouseEngines(Enum):
    MergeTree = "MergeTree"
    ReplacingMergeTree = "ReplacingMergeTree"
    SummingMergeTree = "SummingMergeTree"
    AggregatingMergeTree = "AggregatingMergeTree"
    CollapsingMergeTree = "CollapsingMergeTree"
    VersionedCollapsingMergeTree = "VersionedCollapsingMergeTree"
    GraphiteMergeTree = "GraphiteMergeTree"
    S3Queue = "S3Queue"
    S3 = "S3"
    Buffer = "Buffer"
    Distributed = "Distributed"
    IcebergS3 = "IcebergS3"
    Kafka = "Kafka"
    Merge = "Merge"
    ReplicatedMergeTree = "ReplicatedMergeTree"
    ReplicatedReplacingMergeTree = "ReplicatedReplacingMergeTree"
    ReplicatedAggregatingMergeTree = "ReplicatedAggregatingMergeTree"
    ReplicatedSummingMergeTree = "ReplicatedSummingMergeTree"
    ReplicatedCollapsingMergeTree = "ReplicatedCollapsingMergeTree"
    ReplicatedVersionedCollapsingMergeTree = "ReplicatedVersionedCollapsingMergeTree"


@dataclass
class EngineConfig(ABC):
    """Base class of the engine configurations."""


def _replication(self: Any) -> None:
    if (self.keeper_path is None) != (self.replica_name is None):
        raise ValueError("keeper_path and replica_name must both be provided or both be None")


def _deleted_needs_ver(self: Any) -> None:
    if self.is_deleted and not self.ver:
        raise ValueError("is_deleted requires ver to be specified")


def _required(self: Any, engine: str, *names: str) -> None:
    for n in names:
        if not getattr(self, n):
            raise ValueError(f"{n} column is required for {engine}")


@dataclass
class MergeTreeEngine(EngineConfig):
    pass


@dataclass
class ReplacingMergeTreeEngine(EngineConfig):
    """Keeps the last row per ORDER BY key: the highest `ver`, if given; `is_deleted` (needs `ver`, ClickHouse
    23.2) marks rows deleted."""

    ver: Optional[str] = None
    is_deleted: Optional[str] = None

    def __post_init__(self) -> None:
        _deleted_needs_ver(self)


@dataclass
class AggregatingMergeTreeEngine(EngineConfig):
    pass


@dataclass
class SummingMergeTreeEngine(EngineConfig):
    """Sums `columns` (default: every numeric column outside the ORDER BY) of rows with the same key."""

    columns: Optional[List[str]] = None


@dataclass
class CollapsingMergeTreeEngine(EngineConfig):
    """`sign`: an Int8 column, 1 for a state row and -1 for its cancellation."""

    sign: str

    def __post_init__(self) -> None:
        _required(self, "CollapsingMergeTree", "sign")


@dataclass
class VersionedCollapsingMergeTreeEngine(EngineConfig):
    sign: str
    ver: str

    def __post_init__(self) -> None:
        _required(self, "VersionedCollapsingMergeTree", "sign", "ver")


@dataclass
class ReplicatedMergeTreeEngine(EngineConfig):
    """Replicated engines need ZooKeeper or ClickHouse Keeper on the server. Without `keeper_path` and
    `replica_name`, Millrace uses '/clickhouse/tables/<database>/{shard}/<table>' and '{replica}'."""

    keeper_path: Optional[str] = None
    replica_name: Optional[str] = None

    def __post_init__(self) -> None:
        _replication(self)


@dataclass
class ReplicatedReplacingMergeTreeEngine(EngineConfig):
    keeper_path: Optional[str] = None
    replica_name: Optional[str] = None
    ver: Optional[str] = None
    is_deleted: Optional[str] = None

    def __post_init__(self) -> None:
        _replication(self)
        _deleted_needs_ver(self)


@dataclass
class ReplicatedAggregatingMergeTreeEngine(EngineConfig):
    keeper_path: Optional[str] = None
    replica_name: Optional[str] = None

    def __post_init__(self) -> None:
        _replication(self)


@dataclass
class ReplicatedSummingMergeTreeEngine(EngineConfig):
    keeper_path: Optional[str] = None
    replica_name: Optional[str] = None
    columns: Optional[List[str]] = None

    def __post_init__(self) -> None:
        _replication(self)


@dataclass
class ReplicatedCollapsingMergeTreeEngine(EngineConfig):
    keeper_path: Optional[str] = None
    replica_name: Optional[str] = None
    sign: str = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _replication(self)
        _required(self, "ReplicatedCollapsingMergeTree", "sign")


@dataclass
class ReplicatedVersionedCollapsingMergeTreeEngine(EngineConfig):
    keeper_path: Optional[str] = None
    replica_name: Optional[str] = None
    sign: str = field(default=None)  # type: ignore[assignment]
    ver: str = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _replication(self)
        _required(self, "ReplicatedVersionedCollapsingMergeTree", "sign", "ver")


# The reference product's engines that do not hold what a stream syncs: declared here so that apps importing them
# load; a table declaring one is refused.


@dataclass
class S3QueueEngine(EngineConfig):
    s3_path: str
    format: str
    aws_access_key_id: Optional[str] = None
    aws_secret_access_key: Optional[str] = None
    compression: Optional[str] = None
    headers: Optional[Dict[str, str]] = None


@dataclass
class S3Engine(EngineConfig):
    path: str
    format: str
    aws_access_key_id: Optional[str] = None
    aws_secret_access_key: Optional[str] = None
    compression: Optional[str] = None
    partition_strategy: Optional[str] = None
    partition_columns_in_data_file: Optional[str] = None


@dataclass
class BufferEngine(EngineConfig):
    target_database: str
    target_table: str
    num_layers: int
    min_time: int
    max_time: int
    min_rows: int
    max_rows: int
    min_bytes: int
    max_bytes: int
    flush_time: Optional[int] = None
    flush_rows: Optional[int] = None
    flush_bytes: Optional[int] = None


@dataclass
class DistributedEngine(EngineConfig):
    cluster: str
    target_database: str
    target_table: str
    sharding_key: Optional[str] = None
    policy_name: Optional[str] = None


@dataclass
class IcebergS3Engine(EngineConfig):
    path: str
    format: str
    aws_access_key_id: Optional[str] = None
    aws_secret_access_key: Optional[str] = None
    compression: Optional[str] = None


@dataclass
class KafkaEngine(EngineConfig):
    broker_list: str
    topic_list: str
    group_name: str
    format: str


@dataclass
class MergeEngine(EngineConfig):
    source_database: str
    tables_regexp: str


# Class -> (contract kind, replicated).
_FAMILY: dict[type, tuple[str, bool]] = {
    MergeTreeEngine: ("MERGE_TREE", False),
    ReplacingMergeTreeEngine: ("REPLACING_MERGE_TREE", False),
    SummingMergeTreeEngine: ("SUMMING_MERGE_TREE", False),
    AggregatingMergeTreeEngine: ("AGGREGATING_MERGE_TREE", False),
    CollapsingMergeTreeEngine: ("COLLAPSING_MERGE_TREE", False),
    VersionedCollapsingMergeTreeEngine: ("VERSIONED_COLLAPSING_MERGE_TREE", False),
    ReplicatedMergeTreeEngine: ("MERGE_TREE", True),
    ReplicatedReplacingMergeTreeEngine: ("REPLACING_MERGE_TREE", True),
    ReplicatedSummingMergeTreeEngine: ("SUMMING_MERGE_TREE", True),
    ReplicatedAggregatingMergeTreeEngine: ("AGGREGATING_MERGE_TREE", True),
    ReplicatedCollapsingMergeTreeEngine: ("COLLAPSING_MERGE_TREE", True),
    ReplicatedVersionedCollapsingMergeTreeEngine: ("VERSIONED_COLLAPSING_MERGE_TREE", True),
}

# The legacy enum's values that need no parameter, as the reference product maps them.
_FROM_ENUM: dict[ClickHouseEngines, type] = {
    ClickHouseEngines.MergeTree: MergeTreeEngine,
    ClickHouseEngines.ReplacingMergeTree: ReplacingMergeTreeEngine,
    ClickHouseEngines.SummingMergeTree: SummingMergeTreeEngine,
    ClickHouseEngines.AggregatingMergeTree: AggregatingMergeTreeEngine,
    ClickHouseEngines.ReplicatedMergeTree: ReplicatedMergeTreeEngine,
    ClickHouseEngines.ReplicatedReplacingMergeTree: ReplicatedReplacingMergeTreeEngine,
    ClickHouseEngines.ReplicatedSummingMergeTree: ReplicatedSummingMergeTreeEngine,
    ClickHouseEngines.ReplicatedAggregatingMergeTree: ReplicatedAggregatingMergeTreeEngine,
}

_SUPPORTED = "MergeTree, ReplacingMergeTree, SummingMergeTree, AggregatingMergeTree, CollapsingMergeTree, VersionedCollapsingMergeTree and their Replicated forms"


def engine_config(engine: Any, table: str) -> Optional[EngineConfig]:
    """The engine configuration a table's `engine=` stands for (None: MergeTree); raises ValueError naming an
    engine Millrace does not offer."""
    if engine is None:
        return None
    if isinstance(engine, ClickHouseEngines):
        warnings.warn(
            f"Table {table!r} uses the deprecated ClickHouseEngines enum: use {engine.value}Engine() instead",
            DeprecationWarning,
            stacklevel=3,
        )
        if engine in _FROM_ENUM:
            return _FROM_ENUM[engine]()
        if "Collapsing" in engine.value:
            raise ValueError(
                f"ClickHouseEngines.{engine.value} has no sign column: use {engine.value}Engine(sign=...) instead"
            )
        engine = engine.value
    if isinstance(engine, EngineConfig) and type(engine) in _FAMILY:
        return engine
    name = type(engine).__name__.removesuffix("Engine") if isinstance(engine, EngineConfig) else str(engine)
    raise ValueError(
        f"engine {name} is not offered: Millrace syncs streams into MergeTree-family tables only ({_SUPPORTED})"
    )


def to_contract(engine: Optional[EngineConfig]) -> Optional[dict]:
    """The contract's TableEngine for an engine configuration (from `engine_config`)."""
    if engine is None:
        return None
    kind, replicated = _FAMILY[type(engine)]
    out: dict[str, Any] = {"kind": kind, "replicated": replicated}
    for name in ("keeper_path", "replica_name", "ver", "is_deleted", "sign"):
        value = getattr(engine, name, None)
        if value is not None:
            out[name] = value
    columns = getattr(engine, "columns", None)
    if columns:
        out["columns"] = list(columns)
    return out


__all__ = [
    "AggregatingMergeTreeEngine", "BufferEngine", "ClickHouseEngines", "CollapsingMergeTreeEngine", "DistributedEngine",
    "EngineConfig", "IcebergS3Engine", "KafkaEngine", "MergeEngine", "MergeTreeEngine", "ReplacingMergeTreeEngine",
    "ReplicatedAggregatingMergeTreeEngine", "ReplicatedCollapsingMergeTreeEngine", "ReplicatedMergeTreeEngine",
    "ReplicatedReplacingMergeTreeEngine", "ReplicatedSummingMergeTreeEngine", "ReplicatedVersionedCollapsingMergeTreeEngine",
    "S3Engine", "S3QueueEngine", "SummingMergeTreeEngine", "VersionedCollapsingMergeTreeEngine",
]  # fmt: skip
