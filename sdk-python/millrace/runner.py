"""Runs one transform or consumer over a whole batch: inputs validated in one pydantic call, the function called per
record, outputs serialised by pydantic's Rust core under the contract's (aliased) names and checked against the
contract's types in one more call. A record that fails validation, whose function raises (any exception, SystemExit
too) or does not return within the call bound, or whose output its columns cannot hold, becomes that record's error;
the rest of the batch goes on."""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
from concurrent import futures
from typing import Any, Callable, Optional, Union

from pydantic import BaseModel, Json, TypeAdapter, ValidationError

from .logs import set_function
from .types import wire_model

# A record's outcome: the JSON outputs (empty for a filtered record or a consumer), or (error type, message).
Outcome = Union[list, tuple]

# Async consumers of one batch awaited at once, at most (one key's records count once: they run one by one).
ASYNC_CONCURRENCY = 256

# How long one call may take: a little less than the worker's sidecar timeout (30 s by default), so that the
# worker hears which record hung rather than timing out the whole batch.
DEFAULT_CALL_TIMEOUT_MS = 25_000


def call_timeout_s() -> float:
    return int(os.environ.get("MILLRACE_CALL_TIMEOUT_MS", DEFAULT_CALL_TIMEOUT_MS)) / 1000


class Stuck(Exception):
    """An async batch made no progress for longer than the call bound (its event loop is blocked): which record is
    to blame cannot be told, so nothing is answered and the process restarts."""


class Abandoned(Exception):
    """The caller stopped waiting for the batch (the worker closed the stream)."""


class _Loop:
    """One event loop per process, on its own thread, that every async consumer runs on: their state (clients,
    sessions) lives as long as the process, as module globals do."""

    _lock = threading.Lock()
    _loop: Optional[asyncio.AbstractEventLoop] = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="millrace-async", daemon=True).start()
                cls._loop = loop
            return cls._loop


_pool_lock = threading.Lock()
_pool: Optional[futures.ThreadPoolExecutor] = None


def _calls() -> futures.ThreadPoolExecutor:
    """The threads user code runs on: the gRPC thread of a stream only waits, so it can answer for a call that
    hangs. One batch at a time per stream; a thread stuck in a call is left behind (and the process restarts)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = futures.ThreadPoolExecutor(int(os.environ.get("MILLRACE_SIDECAR_THREADS", "1024")), thread_name_prefix="millrace-call")
        return _pool


def _error(e: BaseException) -> tuple:
    return (type(e).__name__, str(e) or repr(e))


async def _awaited(a: Any) -> Any:
    return await a


class _Job:
    """A sync batch's progress, shared by the thread running it and the one watching it: the index of the record in
    hand. Each record's answer is claimed once, by the running thread when its call returns or by the watcher when
    the call outlives its bound (`dict.setdefault` is atomic): no lock per record, and a record the watcher answered
    is neither overwritten nor followed by another call on that thread."""

    __slots__ = ("records", "errors", "out", "i", "answered")

    def __init__(self, records: list, errors: dict, out: list, start: int):
        self.records, self.errors, self.out, self.i, self.answered = records, errors, out, start, {}


_RUNNER, _WATCHER = object(), object()


class Runner:
    def __init__(
        self,
        name: str,
        fn: Callable,
        in_model: type,
        out_model: Optional[type],
        consumer: bool,
        call_timeout: Optional[float] = None,
        on_stuck: Optional[Callable[[], None]] = None,
        routes: Optional[dict[str, type]] = None,
    ):
        self.name, self.fn, self.consumer = name, fn, consumer
        # A multi-transform's streams (physical name to model): each output is a (stream, JSON) pair.
        self.routes = routes
        self._route_adapters: dict[str, tuple[TypeAdapter, Optional[TypeAdapter]]] = {}
        self.in_model, self.out_model = in_model, out_model
        self.call_timeout = call_timeout if call_timeout is not None else call_timeout_s()
        self.on_stuck = on_stuck
        # Json[Model] parses and validates each record apart (a malformed record cannot bleed into its neighbours),
        # all in one call into pydantic's core.
        self.inputs = TypeAdapter(list[Json[in_model]])
        self.out_adapter = TypeAdapter(out_model) if out_model is not None else None
        # What the contract says the outputs' JSON holds (widths, finite numbers, no null where not nullable):
        # checked once per batch, since a model's instances can be changed after validation.
        wire = wire_model(out_model) if out_model is not None else None
        self.wire = TypeAdapter(list[Json[wire]]) if wire is not None else None
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))

    def validate(self, values: list[bytes]) -> tuple[list[Any], dict[int, tuple]]:
        """The parsed records (None where invalid) and the errors by index."""
        try:
            return self.inputs.validate_python(values), {}
        except ValidationError as e:
            bad: dict[int, list[str]] = {}
            for err in e.errors(include_url=False):
                loc = err.get("loc") or ()
                if loc and isinstance(loc[0], int):
                    where = ".".join(str(p) for p in loc[1:] if p != "function-after[...]")
                    bad.setdefault(loc[0], []).append(f"{where}: {err['msg']}" if where else err["msg"])
        if not bad:  # an error not tied to one record: validate one by one to be sure
            return self._one_by_one(values)
        good_idx = [i for i in range(len(values)) if i not in bad]
        parsed: list[Any] = [None] * len(values)
        errors = {i: ("ValidationError", f"{self.in_model.__name__}: " + "; ".join(msgs)) for i, msgs in bad.items()}
        if good_idx:
            try:
                for i, m in zip(good_idx, self.inputs.validate_python([values[i] for i in good_idx])):
                    parsed[i] = m
            except ValidationError:
                return self._one_by_one(values)
        return parsed, errors

    def _one_by_one(self, values: list[bytes]) -> tuple[list[Any], dict[int, tuple]]:
        parsed: list[Any] = [None] * len(values)
        errors = {}
        for i, v in enumerate(values):
            try:
                parsed[i] = self.in_model.model_validate_json(v)
            except ValidationError as e:
                errors[i] = ("ValidationError", f"{self.in_model.__name__}: {e}")
        return parsed, errors

    def run(self, values: list[bytes], keys: Optional[list[bytes]] = None, alive: Optional[Callable[[], bool]] = None) -> list[Outcome]:
        """One outcome per value. `keys` (the records' Kafka keys) keep an async function's calls for one key in
        order; `alive` says whether anyone still waits for the answer."""
        records, errors = self.validate(values)
        if self.is_async:
            out = self._run_async(records, errors, keys, alive)
        else:
            out = self._run_sync(records, errors, alive)
        if self.wire is not None:
            self._check(out)
        elif self.routes is not None:
            self._check_routed(out)
        return out

    # Sync functions: called one after another on a thread of the pool, watched from the caller's thread.

    def _run_sync(self, records: list, errors: dict, alive: Optional[Callable[[], bool]]) -> list[Outcome]:
        out: list[Outcome] = [None] * len(records)  # type: ignore[list-item]
        start = 0
        while start < len(records):
            job = _Job(records, errors, out, start)
            stuck = self._watch(_calls().submit(self._call_all, job), job, alive)
            if stuck is None:
                break
            out[stuck] = (
                "FunctionTimeout",
                f"{self.name} did not return within {self.call_timeout:g} s on this record "
                "(set MILLRACE_CALL_TIMEOUT_MS to allow longer); the sidecar process restarts to free the stuck call",
            )
            if self.on_stuck is not None:
                self.on_stuck()
            start = stuck + 1  # the rest of the batch runs on another thread
        return out

    def _call_all(self, job: _Job) -> None:
        set_function(self.name)  # log lines of user code name their function (this pool thread runs it now)
        fn, finish, out, errors, records, claim = self.fn, self._finish, job.out, job.errors, job.records, job.answered.setdefault
        # The common cases inline (an instance of the destination's model; a consumer's None): a call less per record.
        out_model, consumer = self.out_model, self.consumer
        to_json = out_model.__pydantic_serializer__.to_json if out_model is not None else None
        for i in range(job.i, len(records)):
            job.i = i
            if i in errors:
                outcome = errors[i]
            else:
                try:
                    result = fn(records[i])
                    if type(result) is out_model:
                        outcome = [to_json(result, by_alias=True)]
                    elif consumer and result is None:
                        outcome = []
                    else:
                        outcome = finish(result)
                except BaseException as e:  # SystemExit too: the record's error, not the process's
                    outcome = _error(e)
            if claim(i, _RUNNER) is not _RUNNER:
                return  # the watcher answered for it: stop
            out[i] = outcome

    def _watch(self, fut: futures.Future, job: _Job, alive: Optional[Callable[[], bool]]) -> Optional[int]:
        """None once the job is done; the index of the record whose call outlived the bound otherwise (within one
        tick: the watcher notes when it first saw each record in hand, so the running thread reads no clock)."""
        tick = min(0.5, self.call_timeout / 5)
        seen, since = job.i, time.monotonic()
        while True:
            try:
                fut.result(timeout=tick)
                return None
            except futures.TimeoutError:
                pass
            i, now = job.i, time.monotonic()
            if i != seen:
                seen, since = i, now
            elif now - since > self.call_timeout and job.answered.setdefault(i, _WATCHER) is _WATCHER:
                return i
            if alive is not None and not alive() and job.answered.setdefault(job.i, _WATCHER) is _WATCHER:
                raise Abandoned()

    def _finish(self, result: Any) -> list:
        if self.consumer:
            if result is not None and inspect.isawaitable(result):
                self._await(result)
            return []
        return self._serialise(result)

    def _await(self, awaitable: Any) -> Any:
        """A plain function gave back a coroutine: await it, and treat the function as async from now on."""
        self.is_async = True
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), _Loop.get()).result()

    # Async functions: one coroutine per key on the process's event loop, a key's records awaited in order.

    def _run_async(self, records: list, errors: dict, keys: Optional[list[bytes]], alive: Optional[Callable[[], bool]]) -> list[Outcome]:
        n = len(records)
        out: list[Outcome] = [None] * n  # type: ignore[list-item]
        lanes: dict[Any, list[int]] = {}
        for i in range(n):
            if i in errors:
                out[i] = errors[i]
            else:
                # Keyless records have no order to keep: each is a lane of its own.
                k = keys[i] if keys is not None and keys[i] else i
                lanes.setdefault(k, []).append(i)
        bound, fn, progress = self.call_timeout, self.fn, [time.monotonic()]
        finish = self._finish_async

        async def one(i: int) -> None:
            try:
                result = fn(records[i])
                if inspect.isawaitable(result):
                    result = await _bounded(result, bound)
                out[i] = finish(result)
            except _CallTimeout:
                out[i] = ("FunctionTimeout", f"{self.name} did not return within {bound:g} s on this record (set MILLRACE_CALL_TIMEOUT_MS to allow longer)")
            except asyncio.CancelledError:
                # The batch was given up (the worker went away, or the loop is stuck): stop its lanes, so that
                # no record of it runs after the worker sends the batch again.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                out[i] = ("CancelledError", f"{self.name} was cancelled on this record")
            except BaseException as e:  # noqa: B036 - SystemExit too: the record's error
                out[i] = _error(e)
            progress[0] = time.monotonic()

        async def all_of() -> None:
            set_function(self.name)  # copied into the tasks gather makes
            gate = asyncio.Semaphore(ASYNC_CONCURRENCY)

            async def lane(idx: list[int]) -> None:
                async with gate:
                    for i in idx:
                        await one(i)

            await asyncio.gather(*(lane(idx) for idx in lanes.values()))

        fut = asyncio.run_coroutine_threadsafe(all_of(), _Loop.get())
        tick = min(0.5, bound / 5)
        while True:
            try:
                fut.result(timeout=tick)
                return out
            except futures.TimeoutError:
                pass
            if time.monotonic() - progress[0] > bound + 2.0:
                fut.cancel()
                if self.on_stuck is not None:
                    self.on_stuck()
                raise Stuck(f"{self.name}: no record of the batch finished within {bound:g} s: the event loop is blocked")
            if alive is not None and not alive():
                fut.cancel()
                raise Abandoned()

    def _finish_async(self, result: Any) -> list:
        return [] if self.consumer else self._serialise(result)

    def _serialise(self, result: Any) -> list:
        """A transform's return value as JSON records under the contract's names: None filters, a list fans out."""
        if self.routes is not None:
            return self._route(result)
        out_model = self.out_model
        if type(result) is out_model:
            return [result.__pydantic_serializer__.to_json(result, by_alias=True)]
        if result is None:
            return []
        if not isinstance(result, (list, tuple)) and inspect.isawaitable(result):
            return self._serialise(self._await(result))
        items = result if isinstance(result, (list, tuple)) else (result,)
        out = []
        for item in items:
            if item is None:
                continue
            if type(item) is not out_model:
                # Another model or a dict: it must still fit the destination stream (by alias or by field name).
                data = item.model_dump(by_alias=True) if isinstance(item, BaseModel) else item
                item = self.out_adapter.validate_python(data, by_alias=True, by_name=True)
            out.append(item.__pydantic_serializer__.to_json(item, by_alias=True))
        return out

    def _adapters(self, topic: str) -> tuple[TypeAdapter, Optional[TypeAdapter]]:
        """A route's model, and what its JSON must hold (None: nothing to check), as adapters made once per stream."""
        a = self._route_adapters.get(topic)
        if a is None:
            model = self.routes[topic]
            wire = wire_model(model)
            a = self._route_adapters[topic] = (TypeAdapter(model), TypeAdapter(list[Json[wire]]) if wire is not None else None)
        return a

    def _route(self, result: Any) -> list[tuple[str, bytes]]:
        """A multi-transform's return value (`stream.routed(...)` values: one, a list, or None) as (stream, JSON)
        pairs, each record fitted to its stream's model."""
        from .resources import RoutedMessage

        if result is None:
            return []
        if not isinstance(result, (list, tuple)) and inspect.isawaitable(result):
            return self._route(self._await(result))
        out = []
        for msg in result if isinstance(result, (list, tuple)) else (result,):
            if msg is None:
                continue
            if not isinstance(msg, RoutedMessage):
                raise TypeError(f"a multi-transform returns `stream.routed(record)` values (or a list of them), not {type(msg).__name__}")
            topic = msg.destination.topic
            if topic not in self.routes:
                known = ", ".join(sorted(self.routes)) or "none"
                raise ValueError(f"routed to stream {topic!r}, which is not among this multi-transform's routes ({known}): declare it in the app")
            model, adapter = msg.destination.model, self._adapters(topic)[0]
            values = msg.values
            for item in values if isinstance(values, (list, tuple)) else (values,):
                if item is None:
                    continue
                if type(item) is not model:
                    data = item.model_dump(by_alias=True) if isinstance(item, BaseModel) else item
                    item = adapter.validate_python(data, by_alias=True, by_name=True)
                out.append((topic, item.__pydantic_serializer__.to_json(item, by_alias=True)))
        return out

    def _check_routed(self, out: list[Outcome]) -> None:
        """`_check` for a multi-transform: each output against its own stream's types."""
        by_topic: dict[str, list[tuple[int, bytes]]] = {}
        for i, o in enumerate(out):
            if type(o) is list:
                for topic, value in o:
                    by_topic.setdefault(topic, []).append((i, value))
        for topic, items in by_topic.items():
            wire = self._adapters(topic)[1]
            if wire is None:
                continue
            for j, msgs in _wire_problems(wire, [v for _, v in items]).items():
                out[items[j][0]] = ("ValidationError", f"an output routed to {topic!r} does not fit its stream: " + "; ".join(msgs))

    def _check(self, out: list[Outcome]) -> None:
        """Refuses, as its record's error, every output whose JSON the destination's columns cannot hold."""
        flat: list[bytes] = []
        owner: list[int] = []
        for i, o in enumerate(out):
            if type(o) is list and o:
                flat.extend(o)
                owner.extend([i] * len(o))
        if not flat:
            return
        problems: dict[int, list[str]] = {}
        for j, msgs in _wire_problems(self.wire, flat).items():
            problems.setdefault(owner[j], []).extend(msgs)
        for i, msgs in problems.items():
            out[i] = ("ValidationError", f"an output does not fit {self.out_model.__name__}: " + "; ".join(msgs))


def _wire_problems(wire: Any, values: list) -> dict[int, list[str]]:
    """What is wrong with each of `values` (by index) that `wire` refuses; one validation call for the batch."""
    try:
        wire.validate_python(values)
        return {}
    except ValidationError as e:
        problems: dict[int, list[str]] = {}
        for err in e.errors(include_url=False):
            loc = err.get("loc") or ()
            if not loc or not isinstance(loc[0], int):
                continue
            where = ".".join(str(p) for p in loc[1:] if not str(p).endswith("]"))
            msg = err["msg"]
            if err.get("input") is None and err["type"] in ("float_type", "float_parsing"):
                msg = "NaN or infinity (JSON has no such number; it would arrive as null)"
            problems.setdefault(loc[0], []).append(f"{where}: {msg}")
        return problems


class _CallTimeout(Exception):
    pass


_timeout_cm = getattr(asyncio, "timeout", None)


async def _bounded(awaitable: Any, bound: float) -> Any:
    if _timeout_cm is not None:  # Python 3.11+: no extra task per call
        cm = _timeout_cm(bound)
        try:
            async with cm:
                return await awaitable
        except TimeoutError:
            if cm.expired():
                raise _CallTimeout() from None
            raise  # the function's own TimeoutError
    try:
        return await asyncio.wait_for(awaitable, bound)
    except asyncio.TimeoutError:
        raise _CallTimeout() from None
