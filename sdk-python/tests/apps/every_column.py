# Every field type of the contract that ClickHouse 18.16 has, in one ingest pipeline's table:
# test_every_column.py posts records and reads them back from ClickHouse 18.16 and from a modern ClickHouse (chdb).
import enum
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal, Optional

from pydantic import BaseModel

from millrace import (
    FixedString,
    Float32,
    IngestPipeline,
    IngestPipelineConfig,
    Int8,
    Int16,
    Int32,
    Key,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    clickhouse_decimal,
)


class Colour(str, enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Point(BaseModel):
    x: float
    label: Optional[str] = None


class Item(BaseModel):
    sku: str
    qty: int
    tags: list[str]


class Every(BaseModel):
    id: Key[str]
    s: str
    i8: Int8
    i16: Int16
    i32: Int32
    i64: int
    u8: UInt8
    u16: UInt16
    u32: UInt32
    u64: UInt64
    f32: Float32
    f64: float
    flag: bool
    at: datetime
    day: date
    amount: clickhouse_decimal(10, 2)
    plain: Decimal
    uid: uuid.UUID
    code: Annotated[str, FixedString(4)]
    colour: Colour
    level: Level
    size: Literal["s", "m"]
    tags: list[str]
    maybe_tags: Optional[list[Optional[int]]] = None
    maybe: Optional[int] = None
    point: Point
    items: list[Item]
    where_: Optional[Point] = None


every = IngestPipeline[Every]("every", IngestPipelineConfig(ingest_api=True, stream=True, table=True))
