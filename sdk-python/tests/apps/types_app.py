# One field of every supported annotation, passed through a transform unchanged.
import enum
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Literal, Optional

from pydantic import BaseModel

from millrace import Float32, Int8, Int16, Int32, Key, Stream, UInt8, UInt16, UInt32, UInt64, clickhouse_decimal


class Colour(str, enum.Enum):
    RED = "red"
    GREEN = "green"


class Point(BaseModel):
    x: float
    y: Float32
    label: Optional[str] = None


class Everything(BaseModel):
    id: Key[str]
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
    plain_decimal: Decimal
    uid: uuid.UUID
    tags: list[str]
    maybe_tags: Optional[list[str]] = None
    maybe: Optional[int] = None
    point: Point
    points: list[Point]
    colour: Colour
    size: Literal["s", "m", "l"]


everything = Stream[Everything]("everything")
copied = Stream[Everything]("copied")
everything.add_transform(copied, lambda r: r)
