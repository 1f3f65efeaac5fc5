"""`stream.send()`: records written from user code, keyed by their Key fields the way workers key outputs (values
joined by `|`, strings by their content), so a key's records share a partition whichever way they came in."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from pydantic import BaseModel

_lock = threading.Lock()
_producer = None


class SendError(Exception):
    """The broker did not take every record; the message says how many and why."""


def brokers() -> str:
    return os.environ.get("MILLRACE_KAFKA_BROKERS", "127.0.0.1:9092")


def _get():
    global _producer
    with _lock:
        if _producer is None:
            from confluent_kafka import Producer

            _producer = Producer({
                "bootstrap.servers": brokers(),
                "enable.idempotence": True,
                "linger.ms": 5,
                "allow.auto.create.topics": False,
            })  # fmt: skip
        return _producer


def topic_of(stream: Any) -> str:
    """The stream's topic, as the control plane provisioned it (it may add a namespace): asked once per stream."""
    cached = getattr(stream, "_physical_topic", None)
    if cached:
        return cached
    import grpc

    from . import endpoints, security
    from .v1 import control_plane_pb2, control_plane_pb2_grpc, resources_pb2

    kind = resources_pb2.DEAD_LETTER_QUEUE if stream._kind == "dead_letter_queue" else resources_pb2.STREAM
    # One address or several, separated by commas: the first that answers.
    address = os.environ.get("MILLRACE_CONTROL_PLANE", endpoints.DEFAULT)
    request = control_plane_pb2.GetResourceRequest(kind=kind, name=stream.name, version=stream.version)
    try:
        got = endpoints.call(
            address,
            lambda channel: control_plane_pb2_grpc.ControlPlaneStub(channel).GetResource(request, timeout=10),
            credential=security.catalog_reader(),
        )
    except endpoints.AddressError as e:
        raise SendError(f"MILLRACE_CONTROL_PLANE: {e}") from None
    except (endpoints.Refused, security.SecurityError) as e:
        raise SendError(f"cannot ask where stream {stream.name!r} lives: {e}") from None
    except endpoints.Unreachable as e:
        raise SendError(
            f"cannot ask the control plane at {e.where} where stream {stream.name!r} lives ({e.detail}); "
            "start it, or set MILLRACE_CONTROL_PLANE (several addresses: separated by commas)"
        ) from None
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            raise SendError(f"stream {stream.name!r} is not declared on the control plane at {address}: apply the app first") from None
        raise SendError(
            f"cannot ask the control plane at {address} where stream {stream.name!r} lives ({e.code().name}: {e.details()}); "
            "start it, or set MILLRACE_CONTROL_PLANE"
        ) from None
    stream._physical_topic = got.resource.physical_name
    return stream._physical_topic


def key_of(record: dict, fields: list[str]) -> bytes | None:
    if not fields:
        return None
    parts = []
    for f in fields:
        v = record.get(f)
        parts.append(v if isinstance(v, str) else json.dumps(v, separators=(",", ":")))
    return "|".join(parts).encode()


def send(stream: Any, values: Any, timeout: float) -> None:
    if values is None:
        return
    items = values if isinstance(values, (list, tuple)) else [values]
    model = stream.model
    keys = [f["name"] for f in stream.fields if f["key"]]
    encoded = []
    for i, v in enumerate(items):
        if not isinstance(v, model):
            v = model.model_validate(v.model_dump() if isinstance(v, BaseModel) else v)
        raw = v.__pydantic_serializer__.to_json(v, by_alias=True)
        encoded.append((raw, key_of(json.loads(raw), keys)))
    topic = topic_of(stream)
    producer = _get()
    failures: list[str] = []

    def report(err, _msg):
        if err is not None:
            failures.append(str(err))

    for raw, key in encoded:
        while True:
            try:
                producer.produce(topic, raw, key, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.1)
    left = producer.flush(timeout)
    if left or failures:
        reason = failures[0] if failures else f"no acknowledgement within {timeout}s"
        raise SendError(
            f"{stream.name}: {len(failures) + left} of {len(encoded)} records were not acknowledged by the broker at "
            f"{brokers()} ({reason}); check that the app was applied and the broker runs, then send them again"
        )
