# An ingest pipeline into a ReplacingMergeTree table, with the column types Millrace had before the modern ones
# (test_modern_clickhouse.py runs it on chdb's ClickHouse behind tests/chdb_http.py).
from datetime import date, datetime
from typing import Optional

from pydantic import BaseModel

from millrace import IngestPipeline, IngestPipelineConfig, Key, OlapConfig, ReplacingMergeTreeEngine, UInt64


class Reading(BaseModel):
    id: Key[str]
    v: UInt64
    value: int
    score: float
    ok: bool
    at: datetime
    day: date
    tags: list[str]
    note: Optional[str] = None


readings = IngestPipeline[Reading]("readings", IngestPipelineConfig(
    ingest_api=True,
    stream=True,
    table=OlapConfig(engine=ReplacingMergeTreeEngine(ver="v"), order_by_fields=["id"]),
))  # fmt: skip
