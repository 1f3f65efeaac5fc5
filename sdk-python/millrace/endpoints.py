"""Control plane addresses: one, or several separated by commas (`10.0.0.1:50051,10.0.0.2:50051`, each with or
without `http://`; `https://` for TLS, see millrace.security), as every Millrace client takes them
(`--control-plane`, `MILLRACE_CONTROL_PLANE`). A call goes to the address that last answered, and to the next one
when it cannot connect or answers UNAVAILABLE (a replica that cannot serve the call now), as the Rust clients do
(`millrace_proto::endpoints`). A refused token ends the call: another replica would refuse it too."""

from __future__ import annotations

import threading
from typing import Callable, Optional, TypeVar

import grpc

from . import security

DEFAULT = "127.0.0.1:50051"
HOW = "write host:port, http://host:port or https://host:port (TLS), several separated by commas (for example 127.0.0.1:50051,10.0.0.2:50051)"
# Per address: a host that does not answer (rather than refusing) costs this much, then the next is tried.
CONNECT_TIMEOUT = 5.0

T = TypeVar("T")


class AddressError(ValueError):
    """An address list that cannot be used; the message names the bad address and says what to write."""


class Unreachable(Exception):
    """No address could be connected to; `detail` says why for each."""

    def __init__(self, addresses: list[str], detail: str):
        super().__init__(detail)
        self.addresses = addresses
        self.detail = detail

    @property
    def where(self) -> str:
        return ", ".join(self.addresses)


def _one(address: str) -> tuple[str, bool]:
    """(the target grpc takes, whether to speak TLS)."""

    def bad(why: str) -> AddressError:
        return AddressError(f"control plane address {address!r} {why}: {HOW}")

    rest, tls = address, False
    if "://" in address:
        scheme, rest = address.split("://", 1)
        if scheme not in ("http", "grpc", "https"):
            raise bad(f"has the scheme {scheme!r}")
        tls = scheme == "https"
    if rest.endswith("/"):
        rest = rest[:-1]
    if "/" in rest:
        raise bad("has a path")
    if "@" in rest:
        raise bad("has a user name")
    if rest.startswith("["):  # [v6]:port
        host, sep, port = rest[1:].partition("]:")
        host = f"[{host}]" if sep else ""
    else:
        host, sep, port = rest.rpartition(":")
        if ":" in host:
            raise bad("is not a host and port (an IPv6 address goes in brackets: [::1]:50051)")
    if not host and not sep:
        raise bad("has no port")
    if not host:
        raise bad("has no host")
    if not port.isdigit():
        raise bad("has no port" if not port else "is not a host and port")
    if not 0 < int(port) < 65536:
        raise bad("has no port" if int(port) == 0 else "is not a host and port (the port is above 65535)")
    return f"{host}:{int(port)}", tls


def parse_tls(text: str) -> list[tuple[str, bool]]:
    """The addresses of a list, each as (`host:port`, TLS or not); blanks and empty items are ignored."""
    found = [_one(a) for a in (a.strip() for a in (text or "").split(",")) if a]
    if not found:
        raise AddressError(f"no control plane address given: {HOW}")
    return found


def parse(text: str) -> list[str]:
    """The addresses of a list, each as `host:port` (the target grpc takes)."""
    return [target for target, _ in parse_tls(text)]


# The address that last answered, per list: later calls of this process start there.
_current: dict[tuple[str, ...], int] = {}
_lock = threading.Lock()


class Refused(Exception):
    """The control plane refused the call's token (UNAUTHENTICATED or PERMISSION_DENIED); the message says which
    environment variable to set. `code` is the gRPC code."""

    def __init__(self, message: str, code: grpc.StatusCode):
        super().__init__(message)
        self.code = code


def _connect(channel: grpc.Channel, timeout: float) -> Optional[str]:
    """None once the channel is connected; else why not (a refusal is seen at once, a silent host after `timeout`)."""
    done = threading.Event()
    seen: list[grpc.ChannelConnectivity] = []

    def watch(state: grpc.ChannelConnectivity) -> None:
        seen.append(state)
        if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            done.set()

    channel.subscribe(watch, try_to_connect=True)
    try:
        done.wait(timeout)
    finally:
        channel.unsubscribe(watch)
    if seen and seen[-1] == grpc.ChannelConnectivity.READY:
        return None
    if not done.is_set():
        return f"no connection within {timeout:g}s"
    return "the connection was refused or failed"


def call(
    addresses: str,
    fn: Callable[[grpc.Channel], T],
    connect_timeout: float = CONNECT_TIMEOUT,
    credential: Optional[security.Credential] = None,
) -> T:
    """`fn(channel)` on the first address that connects and does not answer UNAVAILABLE, starting from the one that
    last answered; the channel speaks TLS to https:// addresses and sends `credential`'s token. Raises AddressError
    for a bad list, security.SecurityError for unusable TLS settings, Refused for a refused token, the last
    UNAVAILABLE (grpc.RpcError) when every address that connected answered so, Unreachable when none connected, and
    any other grpc.RpcError as it comes."""
    parsed = parse_tls(addresses)
    targets = [t for t, _ in parsed]
    key = tuple(f"{t}{' tls' if tls else ''}" for t, tls in parsed)
    with _lock:
        start = _current.get(key, 0)
    misses: list[str] = []
    last_unavailable: Optional[grpc.RpcError] = None
    for k in range(len(targets)):
        i = (start + k) % len(targets)
        tls = parsed[i][1]
        with security.open_channel(targets[i], tls) as channel:
            why = _connect(channel, connect_timeout)
            if why is None:
                try:
                    result = fn(security.with_token(channel, credential.secret if credential else None))
                except grpc.RpcError as e:
                    if credential is not None and e.code() in security.AUTH_CODES:
                        where = f"the control plane at {targets[i]}"
                        raise Refused(credential.refusal(e.code(), where, e.details()), e.code()) from None
                    if e.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    last_unavailable = e
                    why = f"UNAVAILABLE: {e.details()}"
                else:
                    with _lock:
                        _current[key] = i
                    return result
            elif tls:
                why += " (over TLS: check that it serves TLS, with a certificate for this host that MILLRACE_TLS_CA, else the system roots, trusts)"
            else:
                why += " (if it serves TLS, write https://)"
        misses.append(f"{targets[i]}: {why}")
        with _lock:
            if _current.get(key, 0) == i:
                _current[key] = (i + 1) % len(targets)
    if last_unavailable is not None:
        raise last_unavailable
    raise Unreachable(targets, "; ".join(misses))
