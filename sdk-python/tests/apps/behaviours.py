# Filter, fan-out, two transforms on one stream, chaining, a sync and an async consumer, a stream's default dead
# letter queue, and a transform that raises on chosen records. Consumers write what they saw to files under
# $MILLRACE_TEST_OUT, which the test reads.
import asyncio
import os
from datetime import datetime
from typing import Optional

from pydantic import BaseModel

from millrace import DeadLetterQueue, Key, Stream, StreamConfig, TransformConfig

OUT = os.environ.get("MILLRACE_TEST_OUT", "/tmp")


class Event(BaseModel):
    id: Key[int]
    value: int
    note: Optional[str] = None


class Doubled(BaseModel):
    id: Key[int]
    doubled: int
    at: datetime


class Part(BaseModel):
    id: Key[str]
    source_id: int
    part: int


events_dlq = DeadLetterQueue[Event]("events_dlq")
events = Stream[Event]("events", StreamConfig(parallelism=2, default_dead_letter_queue=events_dlq))
evens = Stream[Doubled]("evens")
quadrupled = Stream[Doubled]("quadrupled")
parts = Stream[Part]("parts", StreamConfig(parallelism=3))
checked = Stream[Event]("checked")

calls = 0  # module state lives as long as the sidecar process


def evens_only(e: Event) -> Optional[Doubled]:
    global calls
    calls += 1
    return Doubled(id=e.id, doubled=e.value * 2, at=datetime.now()) if e.id % 2 == 0 else None


def check(e: Event) -> Event:
    if e.id % 10 == 3:
        raise ValueError(f"record {e.id} ends in 3")
    return e


events.add_transform(evens, evens_only)  # filter
events.add_transform(parts, lambda e: [Part(id=f"{e.id}-{i}", source_id=e.id, part=i) for i in range(2)])  # fan-out
evens.add_transform(quadrupled, lambda d: Doubled(id=d.id, doubled=d.doubled * 2, at=d.at))  # chained
events.add_transform(checked, check, TransformConfig(version="1.0"))  # raises on chosen records


def seen(part: Part) -> None:
    with open(os.path.join(OUT, "sync.txt"), "a") as f:
        f.write(f"{part.id}\n")


async def seen_async(d: Doubled) -> None:
    await asyncio.sleep(0.001)
    with open(os.path.join(OUT, "async.txt"), "a") as f:
        f.write(f"{d.id}\n")


def recover(dead) -> None:
    original = dead.as_typed()
    with open(os.path.join(OUT, "recovered.txt"), "a") as f:
        f.write(f"{original.id} {dead.error_type}\n")


parts.add_consumer(seen)
quadrupled.add_consumer(seen_async)
events_dlq.add_consumer(recover)  # a dead letter queue's records, typed again
