# Every column annotation of moose_lib's that needs a modern ClickHouse, with moose_lib's names (`from moose_lib`
# -> `from millrace`), in one ingest pipeline's table. test_modern_clickhouse.py posts records to it and reads the
# rows back from chdb's ClickHouse (26.x) behind tests/chdb_http.py. The column each field should become is noted.
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from millrace import (
    ClickHouseAlias,
    ClickHouseCodec,
    ClickHouseJson,
    ClickHouseMaterialized,
    ClickHouseTTL,
    FixedString,
    IngestPipeline,
    IngestPipelineConfig,
    Key,
    UInt64,
    clickhouse_datetime64,
    clickhouse_default,
    simple_aggregated,
)


class LineItem(BaseModel):
    sku: str
    qty: int


class Modern(BaseModel):
    id: Key[str]
    at: clickhouse_datetime64(3)  # DateTime64(3)
    at_us: clickhouse_datetime64(6)  # DateTime64(6)
    labels: dict[str, str]  # Map(String, String)
    counts: dict[str, int]  # Map(String, Int64)
    payload: Annotated[dict[str, Any], ClickHouseJson()]  # JSON
    extra: dict[str, Any]  # JSON too (moose_lib: dict[str, Any] is JSON)
    ip4: IPv4Address  # IPv4
    ip6: IPv6Address  # IPv6
    code: Annotated[str, FixedString(3)]  # FixedString(3)
    country: Annotated[str, "LowCardinality"]  # LowCardinality(String)
    level: Literal["debug", "info", "warn"]  # LowCardinality(String), as moose_lib renders a Literal of strings
    items: list[LineItem]  # Nested(sku String, qty Int64)
    region: Annotated[str, clickhouse_default("'eu'")]  # String DEFAULT 'eu': a record may leave it out
    id_hash: Annotated[UInt64, ClickHouseMaterialized("cityHash64(id)")]  # UInt64 MATERIALIZED: never posted
    id_upper: Annotated[str, ClickHouseAlias("upper(id)")]  # String ALIAS: never posted, never stored
    body: Annotated[str, ClickHouseCodec("ZSTD(3)")]  # String CODEC(ZSTD(3))
    scratch: Annotated[str, ClickHouseTTL("toDateTime(at) + INTERVAL 50 YEAR")]  # String TTL ...
    total: simple_aggregated("sum", int)  # SimpleAggregateFunction(sum, Int64)
    described: str = Field(description="what the reader sees in system.columns")  # String COMMENT '...'


modern = IngestPipeline[Modern]("modern", IngestPipelineConfig(ingest_api=True, stream=True, table=True))
