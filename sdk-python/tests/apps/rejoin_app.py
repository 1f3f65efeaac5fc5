# Which sidecar process runs each record: a transform stamping its process id on every output, over a
# two-partition stream, so a test can see partitions move between processes and come back.
import os

from pydantic import BaseModel

from millrace import Key, Stream, StreamConfig


class Ping(BaseModel):
    key: Key[str]
    round: int


class Stamped(BaseModel):
    key: Key[str]
    round: int
    pid: int


pings = Stream[Ping]("pings", StreamConfig(parallelism=2))
stamped = Stream[Stamped]("stamped", StreamConfig(parallelism=2))


def stamp(p: Ping) -> Stamped:
    return Stamped(key=p.key, round=p.round, pid=os.getpid())


pings.add_transform(stamped, stamp)
