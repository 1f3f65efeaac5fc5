"""Several control plane addresses (`MILLRACE_CONTROL_PLANE=a,b`): parsed as the Rust clients parse them, and tried
in order on a refused connection or UNAVAILABLE, by `plan`, `apply` and `send()`."""

from __future__ import annotations

import subprocess
import sys
from concurrent import futures

import grpc
import pytest
from conftest import ORDERS_APP as APP, free_port, write_app

from millrace import endpoints, loader
from millrace.v1 import control_plane_pb2, control_plane_pb2_grpc, resources_pb2



def test_lists_parse_with_or_without_a_scheme():
    assert endpoints.parse(" 127.0.0.1:50051, http://10.0.0.2:7000/ ,grpc://cp.example:1,") == [
        "127.0.0.1:50051",
        "10.0.0.2:7000",
        "cp.example:1",
    ]
    assert endpoints.parse("[::1]:50051") == ["[::1]:50051"]
    # https:// means TLS (millrace.security); the target is the same host:port.
    assert endpoints.parse_tls("https://cp.example:443,cp.example:1") == [("cp.example:443", True), ("cp.example:1", False)]
    assert endpoints.parse(endpoints.DEFAULT) == ["127.0.0.1:50051"]


@pytest.mark.parametrize(
    "text,bad,why",
    [
        ("127.0.0.1:50051,10.0.0.2", "10.0.0.2", "has no port"),
        ("ftp://cp:1", "ftp://cp:1", "scheme"),
        ("cp:1/api", "cp:1/api", "has a path"),
        ("cp:port", "cp:port", "is not a host and port"),
        ("cp:0", "cp:0", "has no port"),
        ("user@cp:1", "user@cp:1", "user name"),
        ("http://:1", "http://:1", "host"),
        ("::1:50051", "::1:50051", "brackets"),
    ],
)
def test_a_bad_address_is_named_with_what_to_write(text, bad, why):
    with pytest.raises(endpoints.AddressError) as e:
        endpoints.parse(text)
    assert repr(bad) in str(e.value) and why in str(e.value), str(e.value)
    assert "write host:port, http://host:port or https://host:port (TLS), several separated by commas" in str(e.value)


def test_an_empty_list_says_what_to_write():
    with pytest.raises(endpoints.AddressError, match="no control plane address given: write host:port"):
        endpoints.parse(" , ")


class _Fake(control_plane_pb2_grpc.ControlPlaneServicer):
    """Answers GetResource with its own name as the topic, or UNAVAILABLE naming the leader."""

    def __init__(self, name: str, unavailable: bool = False):
        self.name, self.unavailable, self.calls = name, unavailable, 0

    def GetResource(self, request, context):
        self.calls += 1
        if self.unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is not the leader")
        return control_plane_pb2.GetResourceResponse(resource=control_plane_pb2.StoredResource(physical_name=self.name))


@pytest.fixture
def fakes():
    servers = []

    def start(name: str, unavailable: bool = False) -> tuple[str, _Fake]:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        fake = _Fake(name, unavailable)
        control_plane_pb2_grpc.add_ControlPlaneServicer_to_server(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", fake

    yield start
    for s in servers:
        s.stop(0)


def _topic(addresses: str) -> str:
    req = control_plane_pb2.GetResourceRequest(kind=resources_pb2.STREAM, name="s")
    got = endpoints.call(addresses, lambda ch: control_plane_pb2_grpc.ControlPlaneStub(ch).GetResource(req, timeout=10))
    return got.resource.physical_name


def test_dead_and_unavailable_addresses_give_way_and_the_one_that_answered_is_kept(fakes):
    dead = f"127.0.0.1:{free_port()}"
    follower_at, follower = fakes("follower", unavailable=True)
    live_at, live = fakes("live")
    addresses = f"http://{dead},{follower_at},{live_at}"
    assert _topic(addresses) == "live"
    assert follower.calls == 1
    assert _topic(addresses) == "live"
    assert (follower.calls, live.calls) == (1, 2), "the next call starts at the address that answered"


def test_nothing_answering_is_unreachable_naming_every_address_and_a_replicas_unavailable_is_kept(fakes):
    dead1, dead2 = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with pytest.raises(endpoints.Unreachable) as e:
        _topic(f"{dead1},{dead2}")
    assert e.value.where == f"{dead1}, {dead2}" and dead1 in e.value.detail and dead2 in e.value.detail
    follower_at, _ = fakes("follower", unavailable=True)
    with pytest.raises(grpc.RpcError) as e:
        _topic(f"{dead1},{follower_at}")
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and e.value.details() == "follower is not the leader"


def test_plan_apply_and_send_with_a_dead_control_plane_first(stack, tmp_path, monkeypatch):
    stack.start_control_plane()
    app = write_app(tmp_path, APP)
    dead = free_port()
    both = {"MILLRACE_CONTROL_PLANE": f"127.0.0.1:{dead},{stack.control_plane}"}
    first = stack.cli("plan", str(app), env=both).stdout
    assert "+ stream orders: CREATE" in first, first
    applied = stack.cli("apply", str(app), env=both).stdout
    assert "applied (apply " in applied, applied
    # The flag takes the list too, with http:// on some addresses.
    again = stack.cli("apply", str(app), "--control-plane", f"http://127.0.0.1:{dead}, http://{stack.control_plane}").stdout
    assert again.startswith("nothing to do"), again

    # send() asks the control plane where the stream lives, through the same list.
    monkeypatch.setenv("MILLRACE_CONTROL_PLANE", both["MILLRACE_CONTROL_PLANE"])
    from millrace import producer

    registry = loader.load(str(app))
    orders = next(r for (kind, n, _), r in registry.resources.items() if n == "orders" and kind == "stream")
    assert producer.topic_of(orders) == stack.topic("orders")


def test_no_control_plane_answering_is_one_line_naming_each_and_a_bad_address_is_named(tmp_path):
    app = write_app(tmp_path, APP)
    dead1, dead2 = free_port(), free_port()
    r = subprocess.run([sys.executable, "-m", "millrace", "apply", str(app), "--control-plane", f"127.0.0.1:{dead1},127.0.0.1:{dead2}"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr
    assert "cannot be reached" in r.stderr and f"127.0.0.1:{dead1}" in r.stderr and f"127.0.0.1:{dead2}" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "millrace", "plan", str(app), "--control-plane", "127.0.0.1:50051,cp.example"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert r.returncode != 0 and "'cp.example' has no port" in r.stderr and "write host:port" in r.stderr, r.stderr
