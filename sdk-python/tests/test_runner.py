"""The batch runner and the sidecar's servicer without a stack: aliases on the wire, misbehaving functions (hung,
exiting, returning coroutines, values their columns cannot hold), per-key order of async consumers, expired
batches, and function names."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Optional

import grpc
import pytest
from conftest import free_port
from pydantic import BaseModel, Field

import millrace
from millrace import ConsumerConfig, Key, Stream, TransformConfig, resources
from millrace.runner import Runner


@pytest.fixture(autouse=True)
def fresh_registry():
    resources.reset_registry()
    yield


class In(BaseModel):
    id: Key[int]
    v: int


class Aliased(BaseModel):
    id: Key[int] = Field(alias="recordId")
    user_name: str = Field(alias="userName")


def test_aliased_outputs_are_written_under_the_names_the_contract_gives_them():
    s = Stream[Aliased]("aliased")
    assert [f["name"] for f in s.fields] == ["recordId", "userName"], "the contract uses the aliases"
    runner = Runner("f", lambda r: Aliased(recordId=r.id, userName=f"u{r.v}"), In, Aliased, consumer=False)
    out = runner.run([b'{"id":1,"v":7}'])
    assert [json.loads(v) for v in out[0]] == [{"recordId": 1, "userName": "u7"}]
    # A dict or another model given back is read by alias or by field name, and written by alias.
    runner = Runner("g", lambda r: {"id": r.id, "user_name": "x"} if r.v else {"recordId": r.id, "userName": "y"}, In, Aliased, consumer=False)
    out = runner.run([b'{"id":1,"v":1}', b'{"id":2,"v":0}'])
    assert [json.loads(o[0]) for o in out] == [{"recordId": 1, "userName": "x"}, {"recordId": 2, "userName": "y"}]


def test_aliased_inputs_are_read_by_alias():
    seen = []
    runner = Runner("c", lambda r: seen.append((r.id, r.user_name)), Aliased, None, consumer=True)
    assert runner.run([b'{"recordId":3,"userName":"ann"}']) == [[]]
    assert seen == [(3, "ann")]


def test_a_serialisation_alias_that_inputs_cannot_be_read_by_is_refused_at_declaration():
    class Odd(BaseModel):
        id: Key[int]
        name: str = Field(serialization_alias="fullName")

    with pytest.raises(millrace.AnnotationError, match="Odd.name"):
        Stream[Odd]("odd")


def test_system_exit_and_keyboard_interrupt_are_the_records_errors():
    def fn(r: In):
        if r.v == 1:
            sys.exit(2)
        if r.v == 2:
            raise KeyboardInterrupt()
        return In(id=r.id, v=r.v)

    out = Runner("f", fn, In, In, consumer=False).run([b'{"id":1,"v":1}', b'{"id":2,"v":2}', b'{"id":3,"v":3}'])
    assert out[0][0] == "SystemExit" and out[1][0] == "KeyboardInterrupt"
    assert json.loads(out[2][0]) == {"id": 3, "v": 3}


def test_a_plain_function_returning_a_coroutine_is_awaited():
    seen = []

    async def handle(r: In):
        await asyncio.sleep(0.001)
        seen.append(r.id)
        return In(id=r.id, v=r.v * 10)

    consumer = Runner("c", lambda r: handle(r), In, None, consumer=True)
    assert consumer.run([b'{"id":1,"v":1}', b'{"id":2,"v":2}']) == [[], []]
    assert sorted(seen) == [1, 2]
    transform = Runner("t", lambda r: handle(r), In, In, consumer=False)
    out = transform.run([b'{"id":3,"v":3}'])
    assert json.loads(out[0][0]) == {"id": 3, "v": 30}


class Numbers(BaseModel):
    id: Key[int]
    small: millrace.Int8
    plain: int
    f: float
    maybe: Optional[float] = None
    f32: millrace.Float32 = 0.0
    tags: list[millrace.UInt8] = []


def test_outputs_that_do_not_fit_their_declared_types_are_refused_naming_the_field():
    def fn(r: In):
        o = Numbers(id=r.id, small=1, plain=1, f=1.0)
        if r.v == 1:
            o.f = float("nan")
        elif r.v == 2:
            o.plain = 2**70
        elif r.v == 3:
            o.small = 300  # assignment is not validated
        elif r.v == 4:
            o.f = float("inf")
        elif r.v == 5:
            o.f32 = 1e300
        elif r.v == 6:
            o.tags = [1, 256]
        elif r.v == 7:
            o.maybe = float("nan")  # nullable: NaN becomes null
        return o

    out = Runner("f", fn, In, Numbers, consumer=False).run([b'{"id":%d,"v":%d}' % (i, i) for i in range(8)])
    assert json.loads(out[0][0])["f"] == 1.0
    for i, field in [(1, "f"), (2, "plain"), (3, "small"), (4, "f"), (5, "f32"), (6, "tags")]:
        assert isinstance(out[i], tuple), (i, out[i])
        assert out[i][0] == "ValidationError" and field in out[i][1] and "Numbers" in out[i][1], (i, out[i])
    assert "NaN" in out[1][1]
    assert json.loads(out[7][0])["maybe"] is None


def test_a_call_that_does_not_return_in_time_is_that_records_timeout_and_the_rest_run(monkeypatch):
    release = threading.Event()
    recycled = []

    def fn(r: In):
        if r.v == 2:
            release.wait(30)
        return In(id=r.id, v=r.v)

    runner = Runner("f", fn, In, In, consumer=False, call_timeout=0.5, on_stuck=lambda: recycled.append(True))
    started = time.monotonic()
    out = runner.run([b'{"id":%d,"v":%d}' % (i, i) for i in range(5)])
    took = time.monotonic() - started
    release.set()
    assert 0.5 <= took < 3, took
    assert out[2][0] == "FunctionTimeout" and "0.5" in out[2][1], out[2]
    assert [json.loads(out[i][0])["id"] for i in (0, 1, 3, 4)] == [0, 1, 3, 4]
    assert recycled == [True], "the process is told to restart: a stuck thread cannot be stopped"


def test_a_hung_async_call_is_that_records_timeout():
    async def fn(r: In):
        if r.v == 1:
            await asyncio.sleep(60)

    out = Runner("c", fn, In, None, consumer=True, call_timeout=0.3).run([b'{"id":0,"v":0}', b'{"id":1,"v":1}'])
    assert out[0] == [] and out[1][0] == "FunctionTimeout"


def test_async_consumers_see_each_keys_records_in_order():
    seen: dict[int, list[int]] = {}

    async def fn(r: In):
        # Later records of a key sleep less: run at once, they would finish first.
        await asyncio.sleep(0.02 * (1 - r.v / 50))
        seen.setdefault(r.id, []).append(r.v)

    runner = Runner("c", fn, In, None, consumer=True)
    values = [b'{"id":%d,"v":%d}' % (k, v) for v in range(50) for k in range(10)]
    keys = [b"%d" % (k,) for v in range(50) for k in range(10)]
    started = time.monotonic()
    assert runner.run(values, keys) == [[]] * 500
    assert time.monotonic() - started < 1.5 * 50 * 0.02, "different keys still run concurrently"
    assert seen == {k: list(range(50)) for k in range(10)}


# The servicer, served for real on a local port.


def serve(fns: dict, **kw):
    from millrace import server

    port = free_port()
    reg = resources.Registry()
    srv = server.serve_one(reg, "127.0.0.1", port, [f"http://127.0.0.1:{port}"], runners_=fns, **kw)
    return srv, port


def process(port: int, function: str, batches: list):
    from millrace.v1 import function_runtime_pb2 as fr
    from millrace.v1 import function_runtime_pb2_grpc as fr_grpc

    reqs = [fr.ProcessRequest(open=fr.OpenFunction(function=function))]
    reqs += [fr.ProcessRequest(batch=b) for b in batches]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return list(fr_grpc.FunctionRuntimeStub(ch).Process(iter(reqs), timeout=20))


def test_a_batch_past_its_deadline_is_answered_expired_and_not_run():
    from millrace.v1 import function_runtime_pb2 as fr

    ran = []
    runner = Runner("c", lambda r: ran.append(r.id), In, None, consumer=True)
    srv, port = serve({"c": runner})
    try:
        now = int(time.time() * 1000)
        rec = lambda i: fr.InputRecord(value=b'{"id":%d,"v":0}' % i, key=b"%d" % i, offset=i)  # noqa: E731
        batches = [
            fr.RecordBatch(batch_id=1, records=[rec(1)], deadline_unix_ms=now + 60_000),
            fr.RecordBatch(batch_id=2, records=[rec(2)], deadline_unix_ms=now - 1000),
            # Later batches of the stream expire with it: run before batch 2 is sent again, they would be out of order.
            fr.RecordBatch(batch_id=3, records=[rec(3)], deadline_unix_ms=now + 60_000),
            fr.RecordBatch(batch_id=4, records=[rec(4)]),
        ]
        got = process(port, "c", batches)
    finally:
        srv.stop(0)
    assert [(r.result.batch_id, r.result.expired, len(r.result.results)) for r in got] == [(1, False, 1), (2, True, 0), (3, True, 0), (4, True, 0)]
    assert ran == [1]


# Names.


def test_consumers_cannot_collide_with_transforms_and_lambdas_keep_their_names_when_others_are_added():
    class M(BaseModel):
        id: Key[str]

    raw, audit = Stream[M]("raw"), Stream[M]("audit")
    raw.add_transform(audit, lambda r: r)

    def audit_fn(r):
        pass

    audit_fn.__name__ = "audit"
    raw.add_consumer(audit_fn)
    raw.add_consumer(lambda r: print("first", r))
    names = sorted(resources.registry.functions())
    assert "raw__audit" in names and len(names) == 3, names
    first = {n for n in names if not n.endswith("audit")}
    assert len(first) == 1, names

    resources.reset_registry()
    raw, audit = Stream[M]("raw"), Stream[M]("audit")
    raw.add_transform(audit, lambda r: r)
    raw.add_consumer(lambda r: print("inserted", r))  # inserted before the others
    raw.add_consumer(audit_fn)
    raw.add_consumer(lambda r: print("first", r))
    again = sorted(resources.registry.functions())
    assert first <= set(again) and len(again) == 4, f"the lambda kept its name: {first} in {again}"


def test_identical_lambda_consumers_are_refused_with_the_way_out():
    class M(BaseModel):
        id: Key[str]

    raw = Stream[M]("raw")
    for _ in range(2):
        if _ == 0:
            raw.add_consumer(lambda r: None)
        else:
            with pytest.raises(millrace.DeclarationError, match="ConsumerConfig\\(version=...\\)"):
                raw.add_consumer(lambda r: None)
    raw.add_consumer(lambda r: None, ConsumerConfig(version="2"))


def test_a_function_name_used_twice_in_an_app_is_refused():
    class M(BaseModel):
        id: Key[str]

    a = Stream[M]("a")
    b = Stream[M]("b__x")
    c = Stream[M]("a__b")
    a.add_transform(b, lambda r: r, TransformConfig(version="1"))
    with pytest.raises(millrace.DeclarationError, match="a__b__x__1"):
        c.add_transform(Stream[M]("x"), lambda r: r, TransformConfig(version="1"))


def test_a_batch_answer_packs_each_records_outputs_and_errors_by_index():
    from millrace.server import encode

    p = encode(7, [[b'{"a":1}'], [], ("ValueError", "bad"), [b"x", b"yz"]]).result
    assert p.batch_id == 7 and not p.results
    assert (p.packed.values, list(p.packed.value_lengths), list(p.packed.output_counts)) == (b'{"a":1}xyz', [7, 1, 2], [1, 0, 0, 2])
    assert [(e.index, e.error.error_type, e.error.message) for e in p.packed.errors] == [(2, "ValueError", "bad")]


def test_a_worker_that_does_not_read_packed_answers_gets_one_result_per_record():
    from millrace.server import encode_records

    p = encode_records(7, [[b'{"a":1}'], [], ("ValueError", "bad"), [("s", b"x"), ("t", b"yz")]]).result
    assert not p.HasField("packed") and len(p.results) == 4
    assert [r.WhichOneof("result") for r in p.results] == ["ok", "ok", "error", "ok"], "a filtered record is answered too"
    assert list(p.results[0].ok.values) == [b'{"a":1}'] and list(p.results[1].ok.values) == []
    assert (p.results[2].error.error_type, p.results[2].error.message) == ("ValueError", "bad")
    assert (list(p.results[3].ok.routes), list(p.results[3].ok.values)) == (["s", "t"], [b"x", b"yz"])
