"""moose_lib's `MooseCache`: a Redis-backed key-value cache with a time to live, for functions to keep state across
records and processes. Same class, methods, arguments, defaults, environment variables and key layout as moose_lib
(`<prefix>::moosecache::<key>` and its `:__type__` companion), so a cache shared with a MooseStack app reads the same.

    MOOSE_REDIS_CONFIG__URL           default redis://127.0.0.1:6379 (`scripts/stack.sh start` runs one there)
    MOOSE_REDIS_CONFIG__KEY_PREFIX    default MS
    MOOSE_REDIS_CONFIG__IDLE_TIMEOUT  seconds without a call before idle connections are closed, default 30
"""

from __future__ import annotations

import json
import os
import threading
import time
from urllib.parse import urlsplit, urlunsplit
from typing import Any, List, Optional, Type, TypeVar, Union

import redis
from pydantic import BaseModel

T = TypeVar("T")
SupportedValue = Union[str, BaseModel, List[Any]]

_DEFAULT_TTL = 3600
# Bounds on a call, so that a Redis that stalls fails the record rather than hanging the function.
_SOCKET_TIMEOUT = 5.0


class MooseCacheError(redis.exceptions.ConnectionError):
    """Redis could not be reached or did not answer; the message says where and what to do."""


class MooseCache:
    """The process's one cache client: `MooseCache()` always returns the same instance."""

    _instance: Optional["MooseCache"] = None
    _lock = threading.Lock()
    _client: Optional[redis.Redis] = None

    def __new__(cls) -> "MooseCache":
        with cls._lock:
            if cls._instance is None:
                cls._instance = super().__new__(cls)
            return cls._instance

    def __init__(self) -> None:
        with self._lock:
            if self._client is None:
                self._setup()

    def _setup(self) -> None:
        self._redis_url = os.getenv("MOOSE_REDIS_CONFIG__URL", "redis://127.0.0.1:6379")
        prefix = os.getenv("MOOSE_REDIS_CONFIG__KEY_PREFIX", "MS")
        self._idle_timeout = int(os.getenv("MOOSE_REDIS_CONFIG__IDLE_TIMEOUT", "30"))
        self._key_prefix = f"{prefix}::moosecache::"
        self._last_used = time.monotonic()
        self._timer: Optional[threading.Timer] = None
        self._timer_pid = 0
        # Connects lazily, on the first call; the pool is thread-safe and reconnects after a fork or a close.
        self._client = redis.Redis.from_url(
            self._redis_url,
            decode_responses=True,
            socket_connect_timeout=_SOCKET_TIMEOUT,
            socket_timeout=_SOCKET_TIMEOUT,
        )

    # --- moose_lib's API ------------------------------------------------------------------------------------------

    def set(self, key: str, value: SupportedValue, ttl_seconds: Optional[int] = None) -> None:
        """Stores a string, a pydantic model or a list (as JSON) under `key` for `ttl_seconds` (default an hour);
        0 expires it at once."""
        if not isinstance(value, (str, BaseModel, list)):
            raise TypeError(f"Value must be a string, Pydantic model, or list. Got {type(value).__name__}")
        if ttl_seconds is not None and ttl_seconds < 0:
            raise ValueError("ttl_seconds must be a non-negative number")
        if isinstance(value, str):
            text, kind = value, "str"
        elif isinstance(value, BaseModel):
            text, kind = value.model_dump_json(), f"pydantic:{type(value).__name__}"
        else:
            text, kind = json.dumps(value), "list"
        ttl = _DEFAULT_TTL if ttl_seconds is None else ttl_seconds
        k = self._key(key)
        if ttl == 0:
            # Redis refuses an expiry of 0 (moose_lib fails there); expiring at once is deleting.
            self._run("setting", key, lambda p: p.delete(k, f"{k}:__type__"))
            return
        self._run("setting", key, lambda p: (p.set(k, text, ex=ttl), p.set(f"{k}:__type__", kind, ex=ttl)))

    def get(self, key: str, type_hint: Type[T] = str) -> Optional[T]:
        """The value under `key` parsed as `type_hint` (str, list or a pydantic model class), or None when absent or
        expired. A value stored as one kind and asked for as another raises ValueError."""
        if not isinstance(type_hint, type):
            raise TypeError("type_hint must be a type")
        if not (type_hint is str or type_hint is list or issubclass(type_hint, BaseModel)):
            raise TypeError(f"type_hint must be str, list, or a Pydantic model class. Got {type_hint.__name__}")
        k = self._key(key)
        value, stored = self._run("getting", key, lambda p: (p.get(k), p.get(f"{k}:__type__")))
        if value is None:
            return None
        asked = "string" if type_hint is str else "list" if type_hint is list else type_hint.__name__
        if stored == "str" and type_hint is not str:
            raise ValueError(f"Value was stored as string but requested as {asked}")
        if stored == "list" and type_hint is not list:
            raise ValueError(f"Value was stored as list but requested as {asked}")
        if stored and stored.startswith("pydantic:") and type_hint in (str, list):
            raise ValueError(f"Value was stored as Pydantic model but requested as {asked}")
        if type_hint is str:
            return value  # type: ignore[return-value]
        try:
            parsed = json.loads(value)
            return parsed if type_hint is list else type_hint.model_validate(parsed)  # type: ignore[return-value]
        except (ValueError, TypeError) as e:
            raise ValueError(f"Failed to parse cached value {key!r} as {asked}: {e}") from e

    def delete(self, key: str) -> None:
        k = self._key(key)
        self._run("deleting", key, lambda p: p.delete(k, f"{k}:__type__"))

    def clear_keys(self, key_prefix: str) -> None:
        """Deletes every key starting with `key_prefix`."""
        self._delete_matching(self._key(key_prefix), key_prefix)

    def clear(self) -> None:
        """Deletes every key of this cache (of its prefix)."""
        self._delete_matching(self._key_prefix, "")

    def disconnect(self) -> None:
        """Closes the idle connections; the next call reconnects."""
        if self._client is not None:
            # Idle ones only: a call in flight on another thread keeps its connection.
            self._client.connection_pool.disconnect(inuse_connections=False)

    # --- internals ------------------------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return f"{self._key_prefix}{key}"

    def _delete_matching(self, prefix: str, shown: str) -> None:
        pattern = _glob_escape(prefix) + "*"

        def run(client: redis.Redis) -> None:
            # SCAN, not KEYS: it does not block the server on a large keyspace.
            batch: list[str] = []
            for k in client.scan_iter(match=pattern, count=1000):
                batch.append(k)
                if len(batch) >= 1000:
                    client.delete(*batch)
                    batch.clear()
            if batch:
                client.delete(*batch)

        self._call("clearing", shown + "*", run)

    def _run(self, doing: str, key: str, queue: Any) -> Any:
        """Queues commands on a pipeline (one round trip) and returns their results."""

        def run(client: redis.Redis) -> Any:
            pipe = client.pipeline(transaction=False)
            queue(pipe)
            return pipe.execute()

        return self._call(doing, key, run)

    def _call(self, doing: str, key: str, fn: Any) -> Any:
        self._touch()
        try:
            return fn(self._client)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            raise MooseCacheError(
                f"MooseCache: {doing} {key!r}: cannot reach Redis at {_shown(self._redis_url)} ({e}). Start it with "
                "`bash scripts/stack.sh start`, or point MOOSE_REDIS_CONFIG__URL at yours."
            ) from e

    def _touch(self) -> None:
        """Notes a call and keeps one idle timer armed (moose_lib closes the connection after the idle timeout)."""
        self._last_used = time.monotonic()
        # A forked process has no timer thread: it arms its own.
        if (self._timer is None or self._timer_pid != os.getpid()) and self._idle_timeout > 0:
            with self._lock:
                if self._timer is None or self._timer_pid != os.getpid():
                    self._arm(self._idle_timeout)

    def _arm(self, delay: float) -> None:
        self._timer, self._timer_pid = threading.Timer(delay, self._on_idle), os.getpid()
        self._timer.daemon = True
        self._timer.start()

    def _on_idle(self) -> None:
        with self._lock:
            left = self._idle_timeout - (time.monotonic() - self._last_used)
            if left > 0:
                self._arm(left)  # used since: look again when it may have gone idle
                return
            self._timer = None
        self.disconnect()


def _shown(url: str) -> str:
    """The URL without its password: error messages end up in dead letter queues."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)
