"""Ingest APIs declared the ways moose_lib allows: standalone with IngestConfigWithDestination, custom paths, the
deprecated `ingest=` flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from millrace import IngestApi, IngestConfigWithDestination, Key, Stream, loader, resources

APPS = Path(__file__).parent / "apps"


def test_ingest_apis_are_served_at_their_own_paths(stack, monkeypatch):
    monkeypatch.setenv("MILLRACE_CONTROL_PLANE", stack.control_plane)
    stack.run(APPS / "ingest_paths_app.py")
    body = lambda p: json.dumps([{"id": f"{p}{i}", "value": i} for i in range(5)]).encode()  # noqa: E731
    assert stack.post("/ingest/v2/events", body("e")) == (200, {"written": 5})
    assert stack.post("/ingest/custom/clicks", body("c")) == (200, {"written": 5})
    assert stack.post("/ingest/legacy", body("l")) == (200, {"written": 5})
    # An API with its own path is served there only; a pipeline with ingest=False has none.
    for path in ("/ingest/events_api", "/ingest/clicks", "/ingest/quiet", "/ingest/v2/events/extra"):
        status, answer = stack.post(path, body("x"))
        assert status == 404 and "v2/events" in answer["error"], (path, answer)
    for stream, prefix in (("events", "e"), ("clicks", "c"), ("legacy", "l")):
        assert sorted(r["id"] for r in stack.read(stream, 5)) == [f"{prefix}{i}" for i in range(5)]


def test_a_bad_or_shared_path_is_refused_before_anything_runs(tmp_path):
    from pydantic import BaseModel

    resources.reset_registry()

    class E(BaseModel):
        id: Key[str]

    s = Stream[E]("s")
    with pytest.raises(resources.DeclarationError, match="path"):
        IngestApi[E]("a", IngestConfigWithDestination(destination=s, path="../etc"))
    registry = loader.load(str(APPS / "ingest_paths_app.py"))
    from millrace.plan import build

    apis = {a.name: a.path for a in build(registry).ingest_apis}
    assert apis == {"events_api": "v2/events", "clicks": "custom/clicks", "legacy": ""}


def test_names_with_hyphens_reach_their_topics_tables_and_routes_and_two_transforms_between_two_streams_both_run(stack, monkeypatch):
    monkeypatch.setenv("MILLRACE_CONTROL_PLANE", stack.control_plane)
    stack.run(APPS / "hyphen_app.py")
    body = json.dumps([{"id": f"v{i}", "value": i} for i in range(10)]).encode()
    assert stack.post("/ingest/page-views", body) == (200, {"written": 10})
    rows = stack.wait_rows("page-views", 10)
    assert sorted((r["id"], int(r["value"])) for r in rows) == sorted((f"v{i}", i) for i in range(10))
    out = {r["id"]: r["value"] for r in stack.read("page-views-doubled", 20)}
    assert out == {**{f"v{i}": 2 * i for i in range(10)}, **{f"v{i}-t": 3 * i for i in range(10)}}, "both transforms ran"
    status, answer = stack.post("/ingest/page-views", b'{"id": "bad", "value": "x"}')
    assert status == 400
    assert stack.read("page-viewsDeadLetterQueue", 1)[0]["originalRecord"] == {"id": "bad", "value": "x"}
