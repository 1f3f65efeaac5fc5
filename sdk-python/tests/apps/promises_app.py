# What issue #19 promises of the Python side: aliased fields reach their columns and consumers; one key's records
# are seen in offset order (a transform counting each key's records in a module-level dict, an async consumer
# logging the order it sees); hung and misbehaving functions condemn only their record. Consumers write what they
# saw under $MILLRACE_TEST_OUT.
import asyncio
import os
import random
import threading

from pydantic import BaseModel, Field

from millrace import DeadLetterQueue, Key, OlapTable, Stream, StreamConfig

OUT = os.environ.get("MILLRACE_TEST_OUT", "/tmp")


class Person(BaseModel):
    id: Key[int] = Field(alias="personId")
    user_name: str = Field(alias="userName")


class Greeting(BaseModel):
    id: Key[int] = Field(alias="personId")
    greeting_text: str = Field(alias="greetingText")


people = Stream[Person]("people")
greetings_table = OlapTable[Greeting]("greetings")
greetings = Stream[Greeting]("greetings", StreamConfig(destination=greetings_table))
people.add_transform(greetings, lambda p: Greeting(personId=p.id, greetingText=f"hello {p.user_name}"))


def people_seen(p: Person) -> None:
    with open(os.path.join(OUT, "people.txt"), "a") as f:
        f.write(f"{p.id} {p.user_name}\n")


people.add_consumer(people_seen)


class Tick(BaseModel):
    key: Key[str]
    seq: int


class Counted(BaseModel):
    key: Key[str]
    seq: int
    count: int


ticks = Stream[Tick]("ticks", StreamConfig(parallelism=4))
counted = Stream[Counted]("counted", StreamConfig(parallelism=4))
counts: dict = {}  # per process: a key's records must all come here, in order


def count(t: Tick) -> Counted:
    counts[t.key] = counts.get(t.key, 0) + 1
    return Counted(key=t.key, seq=t.seq, count=counts[t.key])


ticks.add_transform(counted, count)


async def log_ticks(t: Tick) -> None:
    await asyncio.sleep(random.random() * 0.002)
    with open(os.path.join(OUT, "ticks.txt"), "a") as f:
        f.write(f"{t.key} {t.seq}\n")


ticks.add_consumer(log_ticks)


class Job(BaseModel):
    id: Key[int]
    kind: str


class Result(BaseModel):
    id: Key[int]
    value: float
    big: int


jobs_dlq = DeadLetterQueue[Job]("jobs_dlq")
jobs = Stream[Job]("jobs", StreamConfig(parallelism=2, default_dead_letter_queue=jobs_dlq))
results = Stream[Result]("results", StreamConfig(parallelism=2))
never = threading.Event()


def run_job(j: Job):
    if j.kind == "hang":
        never.wait()
    if j.kind == "exit":
        raise SystemExit(1)
    if j.kind == "nan":
        return Result(id=j.id, value=float("nan"), big=0)
    if j.kind == "huge":
        return Result(id=j.id, value=1.0, big=2**64)
    if j.kind == "coroutine":
        return asyncio.sleep(0, Result(id=j.id, value=2.0, big=j.id))
    return Result(id=j.id, value=1.0, big=j.id)


jobs.add_transform(results, run_job)
