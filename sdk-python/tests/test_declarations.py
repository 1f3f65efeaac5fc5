"""Declarations and their plan, without a stack: the type mapping, refusals, dead letters, the batch runner."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Optional

import pytest
from google.protobuf import json_format
from pydantic import BaseModel

import millrace
from millrace import (
    DeadLetterModel,
    DeadLetterQueue,
    IngestPipeline,
    IngestPipelineConfig,
    Key,
    Stream,
    StreamConfig,
    TransformConfig,
    resources,
)
from millrace import loader, plan
from millrace.runner import Runner

APPS = Path(__file__).parent / "apps"


@pytest.fixture(autouse=True)
def fresh_registry():
    resources.reset_registry()
    yield


def plan_dict(registry=None) -> dict:
    return json_format.MessageToDict(plan.build(registry), preserving_proto_field_name=True)


def fields_of(stream_name: str, p: dict) -> dict:
    (s,) = [s for s in p["streams"] if s["name"] == stream_name]
    return {f["name"]: f for f in s["fields"]}


def test_every_annotation_maps_to_its_contract_type():
    p = plan_dict(loader.load(str(APPS / "types_app.py")))
    f = fields_of("everything", p)
    scalar = lambda name: {"scalar": name}  # noqa: E731
    expected = {
        "id": scalar("STRING"),
        "i8": scalar("INT8"),
        "i16": scalar("INT16"),
        "i32": scalar("INT32"),
        "i64": scalar("INT64"),
        "u8": scalar("UINT8"),
        "u16": scalar("UINT16"),
        "u32": scalar("UINT32"),
        "u64": scalar("UINT64"),
        "f32": scalar("FLOAT32"),
        "f64": scalar("FLOAT64"),
        "flag": scalar("BOOL"),
        "at": scalar("DATETIME"),
        "day": scalar("DATE"),
        "amount": {"decimal": {"precision": 10, "scale": 2}},
        "plain_decimal": {"decimal": {"precision": 10}},
        "uid": scalar("UUID"),
        "tags": {"array": scalar("STRING")},
        "maybe_tags": {"array": scalar("STRING")},
        "maybe": scalar("INT64"),
        "point": {
            "record": {
                "fields": [
                    {"name": "x", "type": scalar("FLOAT64")},
                    {"name": "y", "type": scalar("FLOAT32")},
                    {"name": "label", "type": scalar("STRING"), "nullable": True},
                ]
            }
        },
        "points": {"array": {"record": {"fields": [
            {"name": "x", "type": scalar("FLOAT64")},
            {"name": "y", "type": scalar("FLOAT32")},
            {"name": "label", "type": scalar("STRING"), "nullable": True},
        ]}}},  # fmt: skip
        "colour": {"enumeration": {"members": [{"label": "red", "number": 1}, {"label": "green", "number": 2}]}},
        "size": scalar("STRING"),
    }
    assert {k: v["type"] for k, v in f.items()} == expected
    assert list(f) == list(expected), "fields keep declaration order"
    assert f["id"].get("key") is True and not any(v.get("key") for k, v in f.items() if k != "id")
    assert {k for k, v in f.items() if v.get("nullable")} == {"maybe_tags", "maybe"}


@pytest.mark.parametrize(
    "annotation, words",
    [
        ("dict", "type dict"),  # dict[K, V] is a Map and dict[str, Any] JSON (test_column_types.py)
        ("int | str", "unions other than Optional"),
        ("set[int]", "type set"),
        ("bytes", "type bytes"),
    ],
)
def test_an_unsupported_annotation_names_the_model_and_the_field(tmp_path, annotation, words):
    app = tmp_path / "bad.py"
    app.write_text(
        "from pydantic import BaseModel\nfrom millrace import Stream, Key\n"
        f"class Order(BaseModel):\n    id: Key[str]\n    extra: {annotation}\n"
        "orders = Stream[Order]('orders')\n"
    )
    with pytest.raises(loader.AppError) as e:
        loader.load(str(app))
    msg = str(e.value)
    assert "Order.extra" in msg and words in msg and "bad.py:6" in msg, msg


def test_key_works_as_a_subscript_and_marks_the_key():
    class M(BaseModel):
        a: Key[str]
        b: Key[int]
        c: int

    s = Stream[M]("m")
    assert [f["name"] for f in s.fields if f["key"]] == ["a", "b"]
    assert M(a="x", b=1, c=2).a == "x"


def test_sized_ints_refuse_values_out_of_range():
    class M(BaseModel):
        id: Key[str]
        small: millrace.Int8
        unsigned: millrace.UInt8

    M(id="a", small=127, unsigned=255)
    with pytest.raises(ValueError):
        M(id="a", small=300, unsigned=1)
    with pytest.raises(ValueError):
        M(id="a", small=1, unsigned=-1)


def test_an_ingest_api_without_a_stream_is_refused_with_the_reason():
    class M(BaseModel):
        id: Key[str]

    with pytest.raises(millrace.DeclarationError, match="needs stream=True"):
        IngestPipeline[M]("p", IngestPipelineConfig(ingest_api=True, stream=False, table=True))


def test_an_ingest_pipeline_declares_table_stream_api_and_dead_letter_queue():
    class M(BaseModel):
        id: Key[str]
        v: int

    p = IngestPipeline[M]("orders", IngestPipelineConfig(version="1.2"))
    assert p.get_stream().config.destination is p.get_table()
    assert p.get_stream().config.default_dead_letter_queue is p.get_dead_letter_queue()
    assert p.get_ingest_api().destination is p.get_stream()
    d = plan_dict()
    assert d["streams"][0]["version"] == "1.2" and d["streams"][0]["destination"] == {"name": "orders", "version": "1.2"}
    assert d["ingest_apis"][0]["dead_letter_queue"]["name"] == "ordersDeadLetterQueue"
    only_stream = IngestPipeline[M]("s", IngestPipelineConfig(ingest_api=False, table=False, dead_letter_queue=False))
    with pytest.raises(millrace.DeclarationError, match="no table"):
        only_stream.get_table()


def test_stream_config_defaults_are_the_reference_products():
    c = StreamConfig()
    assert (c.parallelism, c.retention_period, c.destination, c.version, c.life_cycle) == (1, 604800, None, None, None)
    assert c.default_dead_letter_queue is None and c.metadata is None
    ipc = IngestPipelineConfig()
    assert (ipc.ingest_api, ipc.stream, ipc.table, ipc.dead_letter_queue) == (True, True, True, True)


def test_functions_are_named_from_source_destination_and_version():
    class M(BaseModel):
        id: Key[str]

    a, b = Stream[M]("a"), Stream[M]("b", StreamConfig(version="2.0"))
    a.add_transform(b, lambda r: r)
    a.add_transform(b, lambda r: r, TransformConfig(version="1.1"))

    def audit(r):
        pass

    a.add_consumer(audit)
    a.add_consumer(lambda r: None)
    names = sorted(resources.registry.functions())
    assert names[:3] == ["a__b_2_0", "a__b_2_0__1_1", "a__consumer__audit"]
    assert len(names) == 4 and names[3].startswith("a__consumer__lambda_") and len(names[3]) == len("a__consumer__lambda_") + 8
    with pytest.raises(millrace.DeclarationError, match="TransformConfig\\(version=...\\)"):
        a.add_transform(b, lambda r: r)


def test_a_stream_without_a_model_or_with_a_bad_name_is_refused():
    with pytest.raises(millrace.DeclarationError, match="Stream\\[Model\\]"):
        Stream("plain")

    class M(BaseModel):
        id: Key[str]

    with pytest.raises(millrace.DeclarationError, match="letters, digits"):
        Stream[M]("drop table;")


def test_dead_letters_parse_both_spellings_and_give_back_the_typed_record():
    class M(BaseModel):
        id: Key[str]
        v: int

    ours = {"original_record": {"id": "a", "v": 1}, "error_message": "boom", "error_type": "ValueError",
            "failed_at": "2026-11-25T10:00:00Z", "source": "transform", "function": "f", "topic": "t", "partition": 0, "offset": 7}  # fmt: skip
    theirs = {"originalRecord": {"id": "b", "v": 2}, "errorMessage": "x", "errorType": "E", "failedAt": "2026-11-25T10:00:00Z", "source": "api"}
    a = DeadLetterModel[M].model_validate(ours)
    b = DeadLetterModel[M].model_validate(theirs)
    assert a.as_typed() == M(id="a", v=1) and a.offset == 7
    assert b.as_typed() == M(id="b", v=2) and b.partition == -1
    assert DeadLetterQueue[M]("dlq").model is DeadLetterModel[M]


class In(BaseModel):
    id: Key[int]
    v: int


class Out(BaseModel):
    id: Key[int]
    w: int
    at: Optional[dt.datetime] = None


def test_runner_gives_each_bad_record_its_own_error_and_runs_the_rest():
    def fn(r: In):
        if r.v == 3:
            raise KeyError("three")
        if r.v == 4:
            return None
        if r.v == 5:
            return [Out(id=r.id, w=1), Out(id=r.id, w=2)]
        if r.v == 6:
            return {"id": r.id, "w": "not a number"}
        return Out(id=r.id, w=r.v * 2)

    runner = Runner("f", fn, In, Out, consumer=False)
    values = [b'{"id":1,"v":1}', b'{"id":2,"v":"x"}', b"not json", b'{"id":3,"v":3}', b'{"id":4,"v":4}',
              b'{"id":5,"v":5}', b'{"id":6,"v":6}', b'{"id":7,"v":7}', b'{"id":8}']  # fmt: skip
    out = runner.run(values)
    assert [json.loads(v) for v in out[0]] == [{"id": 1, "w": 2, "at": None}]
    assert out[1][0] == "ValidationError" and "v" in out[1][1]
    assert out[2][0] == "ValidationError" and "JSON" in out[2][1]
    assert out[3] == ("KeyError", "'three'")
    assert out[4] == []
    assert [json.loads(v)["w"] for v in out[5]] == [1, 2]
    assert out[6][0] == "ValidationError"
    assert json.loads(out[7][0])["w"] == 14
    assert out[8][0] == "ValidationError" and "v" in out[8][1]


def test_records_that_only_parse_together_are_still_refused_apart():
    runner = Runner("f", lambda r: Out(id=r.id, w=r.v), In, Out, consumer=False)
    out = runner.run([b'{"id":1,"v":1},{"id":2,"v":2}', b'{"id": 3, "v": "}', b'{"id":4,"v":4}'])
    assert out[0][0] == "ValidationError" and out[1][0] == "ValidationError"
    assert json.loads(out[2][0])["w"] == 4


def test_async_functions_are_awaited_concurrently():
    import asyncio
    import time

    async def slow(r: In):
        await asyncio.sleep(0.2)
        if r.v == 2:
            raise RuntimeError("two")

    runner = Runner("c", slow, In, None, consumer=True)
    started = time.monotonic()
    out = runner.run([b'{"id":%d,"v":%d}' % (i, i % 5) for i in range(100)])
    assert time.monotonic() - started < 2, "100 awaits of 0.2 s run concurrently"
    assert out[2] == ("RuntimeError", "two") and out[0] == [] and len(out) == 100
