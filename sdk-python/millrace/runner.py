"""Runs one transform or consumer over a whole batch: inputs validated in one pydantic call, the function called per
record, outputs serialised by pydantic's Rust core. A record that fails validation or whose function raises becomes
that record's error; the rest of the batch goes on."""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any, Callable, Optional, Union

from pydantic import BaseModel, Json, TypeAdapter, ValidationError

# A record's outcome: the JSON outputs (empty for a filtered record or a consumer), or (error type, message).
Outcome = Union[list, tuple]

# Async consumers of one batch awaited at once, at most.
ASYNC_CONCURRENCY = 256


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


def _error(e: BaseException) -> tuple:
    return (type(e).__name__, str(e) or repr(e))


class Runner:
    def __init__(self, name: str, fn: Callable, in_model: type, out_model: Optional[type], consumer: bool):
        self.name, self.fn, self.consumer = name, fn, consumer
        self.in_model, self.out_model = in_model, out_model
        # Json[Model] parses and validates each record apart (a malformed record cannot bleed into its neighbours),
        # all in one call into pydantic's core.
        self.inputs = TypeAdapter(list[Json[in_model]])
        self.out_adapter = TypeAdapter(out_model) if out_model is not None else None
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

    def run(self, values: list[bytes]) -> list[Outcome]:
        records, errors = self.validate(values)
        if self.is_async:
            return self._run_async(records, errors)
        out: list[Outcome] = [None] * len(records)  # type: ignore[list-item]
        fn, serialise, consumer = self.fn, self._serialise, self.consumer
        for i, r in enumerate(records):
            if i in errors:
                out[i] = errors[i]
                continue
            try:
                result = fn(r)
                out[i] = [] if consumer else serialise(result)
            except Exception as e:  # the user's function failed on this record: it goes to the dead letter queue
                out[i] = _error(e)
        return out

    def _run_async(self, records: list[Any], errors: dict[int, tuple]) -> list[Outcome]:
        async def all_of() -> list:
            gate = asyncio.Semaphore(ASYNC_CONCURRENCY)

            async def one(r: Any) -> Any:
                async with gate:
                    return await self.fn(r)

            todo = [one(r) for i, r in enumerate(records) if i not in errors]
            return await asyncio.gather(*todo, return_exceptions=True)

        results = iter(asyncio.run_coroutine_threadsafe(all_of(), _Loop.get()).result())
        out: list[Outcome] = []
        for i in range(len(records)):
            if i in errors:
                out.append(errors[i])
                continue
            r = next(results)
            if isinstance(r, BaseException):
                out.append(_error(r))
            else:
                try:
                    out.append([] if self.consumer else self._serialise(r))
                except Exception as e:
                    out.append(_error(e))
        return out

    def _serialise(self, result: Any) -> list[bytes]:
        """A transform's return value as JSON records: None filters, a list fans out."""
        if result is None:
            return []
        items = result if isinstance(result, (list, tuple)) else (result,)
        out_model, out = self.out_model, []
        for item in items:
            if item is None:
                continue
            if type(item) is not out_model:
                # Another model or a dict: it must still fit the destination stream.
                item = self.out_adapter.validate_python(item.model_dump() if isinstance(item, BaseModel) else item)
            out.append(item.__pydantic_serializer__.to_json(item))
        return out
