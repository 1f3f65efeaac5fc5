"""Multi-transforms run for real: a function routing each record to several streams, one, or none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from millrace import Key, Stream, loader, resources
from millrace.plan import build
from millrace.routes import routed_streams

APPS = Path(__file__).parent / "apps"


def test_a_multi_transform_routes_each_record_to_several_streams_one_or_none(stack, monkeypatch):
    monkeypatch.setenv("MILLRACE_CONTROL_PLANE", stack.control_plane)
    app = APPS / "multi_app.py"
    stack.run(app)
    records = (
        [{"id": f"b{i}", "kind": "plain", "amount": 100 + i} for i in range(50)]
        + [{"id": f"s{i}", "kind": "plain", "amount": i} for i in range(50)]
        + [{"id": f"x{i}", "kind": "skip", "amount": 1000} for i in range(20)]
        + [{"id": f"d{i}", "kind": "both", "amount": 7} for i in range(10)]
    )
    status, answer = stack.post("/ingest/orders", json.dumps(records).encode())
    assert (status, answer) == (200, {"written": len(records)})
    big = stack.wait_rows("big_orders", 60)
    small = stack.wait_rows("small_orders", 60)
    assert sorted(r["id"] for r in big) == sorted([f"b{i}" for i in range(50)] + [f"d{i}" for i in range(10)])
    assert sorted(r["id"] for r in small) == sorted([f"s{i}" for i in range(50)] + [f"d{i}" for i in range(10)])
    assert {int(r["amount"]) for r in big if r["id"].startswith("b")} == {100 + i for i in range(50)}
    notes = stack.read("order_audit", 20, settle=1.0)
    assert sorted((n["id"], n["note"]) for n in notes) == sorted((f"d{i}", note) for i in range(10) for note in ("first", "second"))
    assert stack.clickhouse("SELECT count() AS n FROM {db}.`big_orders` WHERE id LIKE 'x%'") == [{"n": "0"}]


def test_a_multi_transforms_routes_are_the_streams_its_code_names():
    resources.reset_registry()
    registry = loader.load(str(APPS / "multi_app.py"))
    (t,) = [f for f in registry.transforms if f.multi]
    assert [s.topic for s in t.routes()] == ["big_orders", "order_audit", "small_orders"]
    plan = build(registry)
    (pt,) = plan.transforms
    assert [r.name for r in pt.routes] == ["big_orders", "order_audit", "small_orders"] and not pt.HasField("destination")


def test_routes_it_cannot_read_from_the_code_are_every_other_stream():
    from pydantic import BaseModel

    resources.reset_registry()

    class R(BaseModel):
        id: Key[str]

    a, b, c = Stream[R]("a"), Stream[R]("b"), Stream[R]("c")
    by_name = {"b": b, "c": c}
    a.set_multi_transform(lambda r: by_name[r.id].routed(r))
    assert routed_streams(a.transformations[0].fn) is None
    assert [s.name for s in a.transformations[0].routes()] == ["b", "c"]
    with pytest.raises(resources.DeclarationError, match="already has a multi-transform"):
        a.set_multi_transform(lambda r: None)


def test_a_record_routed_outside_its_routes_or_not_routed_fails_alone():
    from pydantic import BaseModel

    from millrace.runner import Runner
    from millrace.server import encode

    resources.reset_registry()

    class R(BaseModel):
        id: Key[str]
        n: int

    b, c = Stream[R]("b"), Stream[R]("c")

    class Note(BaseModel):
        text: str

    notes = Stream[Note]("notes")

    def fn(r):
        extra = [notes.routed({"text": "seen"})] if r.n == 0 else []
        return extra + [{0: b.routed(r), 1: c.routed(r), 2: r, 3: b.routed({"id": r.id, "n": "x"})}.get(r.n % 4)]

    runner = Runner("m", fn, R, None, False, routes={"b": R, "notes": Note})
    out = runner.run([json.dumps({"id": str(i), "n": i}).encode() for i in range(4)])
    assert out[0] == [("notes", b'{"text":"seen"}'), ("b", b'{"id":"0","n":0}')]
    assert out[1][0] == "ValueError" and "not among this multi-transform's routes (b, notes)" in out[1][1]
    assert out[2][0] == "TypeError" and "stream.routed(record)" in out[2][1], out[2]
    assert out[3][0] == "ValidationError"
    packed = encode(1, out).result.packed
    assert (list(packed.routes), list(packed.value_routes), list(packed.output_counts)) == (["notes", "b"], [0, 1], [2, 0, 0, 0])


def test_routes_follow_the_apps_own_helpers_in_other_modules_and_fall_back_past_the_upstream(tmp_path):
    import sys

    from conftest import write_app

    resources.reset_registry()
    write_app(tmp_path, "target = None\n\n\ndef send(x):\n    return target.routed(x)\n", "helper_mod.py")
    sys.path.insert(0, str(tmp_path))
    try:
        import helper_mod
        from pydantic import BaseModel

        class R(BaseModel):
            id: Key[str]

        up, a, b, c = Stream[R]("up"), Stream[R]("a"), Stream[R]("b"), Stream[R]("c")
        up.add_transform(a, lambda r: r)
        helper_mod.target = b
        a.set_multi_transform(lambda r: helper_mod.send(r))
        assert [s.name for s in a.transformations[0].routes()] == ["b"], "read through the helper in another module"

        class Router:
            def go(self, r):
                return by_name[r.id].routed(r)

        by_name = {"b": b, "c": c}
        router = Router()
        c.set_multi_transform(lambda r: router.go(r))
        # Unknown (a stream picked at run time): every stream but the source and what feeds it.
        assert routed_streams(c.transformations[0].fn) is None
        assert [s.name for s in c.transformations[0].routes()] == ["a", "b", "up"]
        # Branches meeting before `.routed`: unsure, not wrong.
        up.set_multi_transform(lambda r: (b if r.id else c).routed(r))
        assert routed_streams(up.transformations[-1].fn) is None
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("helper_mod", None)
