"""Tokens per role and TLS (issue 22), against real processes: the sidecar (`python -m millrace serve`) refuses a
missing or wrong token and another role's, serves TLS and mutual TLS, and never logs a secret; the SDK's clients
(`apply`, `send()`) send the right role's token to the control plane, speak TLS to https:// addresses, and turn a
refusal into one line naming the variable to set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import grpc
import pytest
import trustme
from conftest import BIN, LOGS, ORDERS_APP as APP, WAIT, free_port, port_open, wait_until, write_app

from millrace import loader, producer
from millrace.v1 import function_runtime_pb2 as fr
from millrace.v1 import function_runtime_pb2_grpc as fr_grpc


SIDECAR_TOKEN = "sidecar-secret-0f3a9c"
WORKER_TOKEN = "worker-secret-77be21"
ADMIN_TOKEN = "admin-secret-c41d08"
INGEST_TOKEN = "ingest-secret-5e92aa"
# Variables a test's processes must not inherit from whoever runs the tests.
CLEAN = {k: None for k in ("MILLRACE_SIDECAR_TOKEN", "MILLRACE_WORKER_TOKEN", "MILLRACE_ADMIN_TOKEN", "MILLRACE_INGEST_TOKEN",
                         "MILLRACE_TLS_CERT", "MILLRACE_TLS_KEY", "MILLRACE_TLS_CLIENT_CA", "MILLRACE_TLS_CA",
                         "MILLRACE_TLS_CLIENT_CERT", "MILLRACE_TLS_CLIENT_KEY")}  # fmt: skip



def clean(env: dict) -> dict:
    return {k: v for k, v in env.items() if k not in CLEAN}


class Certs:
    """A server CA and certificate for 127.0.0.1, and a separate client CA with a client certificate, as files."""

    def __init__(self, d: Path):
        d.mkdir(exist_ok=True)
        ca, client_ca = trustme.CA(), trustme.CA()
        server, client = ca.issue_cert("127.0.0.1", "localhost"), client_ca.issue_cert("worker.millrace.test")
        self.ca, self.client_ca = d / "ca.pem", d / "client-ca.pem"
        self.cert, self.key = d / "server.pem", d / "server.key"
        self.client_cert, self.client_key = d / "client.pem", d / "client.key"
        ca.cert_pem.write_to_path(str(self.ca))
        client_ca.cert_pem.write_to_path(str(self.client_ca))
        for cert, chain, key in ((server, self.cert, self.key), (client, self.client_cert, self.client_key)):
            chain.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
            cert.private_key_pem.write_to_path(str(key))

    def key_body(self, key: Path) -> str:
        """A line of the key's base64, to look for in logs."""
        return key.read_text().splitlines()[2]


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


class Sidecar:
    def __init__(self, tmp: Path, name: str, args: list[str], env: dict, processes: int = 1):
        self.port = free_port(processes)
        self.log_path = LOGS / f"py-security-{name}-sidecar.log"
        LOGS.mkdir(parents=True, exist_ok=True)
        app = write_app(tmp, APP)
        cmd = [sys.executable, "-m", "millrace", "serve", str(app), "--port", str(self.port), "--processes", str(processes), *args]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp,
                                         env={**clean(os.environ), "PYTHONUNBUFFERED": "1", **env}, start_new_session=True)  # fmt: skip
        ports = range(self.port, self.port + processes)
        wait_until("the sidecar processes to listen", lambda: self.proc.poll() is not None or all(port_open(p) for p in ports))
        assert self.proc.poll() is None, f"the sidecar exited: {self.log()}"

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return self.log()


@pytest.fixture
def sidecar(tmp_path, request):
    started: list[Sidecar] = []

    def start(args: list[str] = (), env: Optional[dict] = None, processes: int = 1) -> Sidecar:
        s = Sidecar(tmp_path, f"{request.node.name}-{len(started)}", list(args), env or {}, processes)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def describe(port: int, token: Optional[str] = None, creds: Optional[grpc.ChannelCredentials] = None) -> fr.DescribeResponse:
    target = f"127.0.0.1:{port}"
    channel = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    with channel:
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
        return fr_grpc.FunctionRuntimeStub(channel).Describe(fr.DescribeRequest(), timeout=10, metadata=metadata)


def refused(port: int, token: Optional[str] = None, creds=None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        describe(port, token, creds)
    return e.value


def test_the_sidecar_takes_its_own_token_only(sidecar):
    s = sidecar(env={"MILLRACE_SIDECAR_TOKEN": SIDECAR_TOKEN, "MILLRACE_WORKER_TOKEN": WORKER_TOKEN, "MILLRACE_ADMIN_TOKEN": ADMIN_TOKEN,
                     "MILLRACE_INGEST_TOKEN": INGEST_TOKEN})
    e = refused(s.port)
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
    assert "send `authorization: Bearer <token>` with the sidecar token (MILLRACE_SIDECAR_TOKEN)" in e.details(), e.details()
    e = refused(s.port, "not-a-token-of-anyone")
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED and "not-a-token-of-anyone" not in e.details(), e.details()
    # The sidecar drops the admin and worker tokens from its environment (the app's code runs there): they are
    # unknown to it. The ingest token, which it keeps (send() in a function), is another role's.
    for other in (WORKER_TOKEN, ADMIN_TOKEN):
        e = refused(s.port, other)
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED and other not in e.details(), e.details()
    e = refused(s.port, INGEST_TOKEN)
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e
    assert "MILLRACE_INGEST_TOKEN" in e.details() and "MILLRACE_SIDECAR_TOKEN" in e.details() and INGEST_TOKEN not in e.details(), e.details()
    got = describe(s.port, SIDECAR_TOKEN)
    assert [f.name for f in got.functions] and got.endpoints == [f"http://127.0.0.1:{s.port}"]

    # Process (a stream both ways) is guarded too: refused before any batch runs.
    with grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
        opened = fr.ProcessRequest(open=fr.OpenFunction(function=got.functions[0].name))
        with pytest.raises(grpc.RpcError) as e:
            list(fr_grpc.FunctionRuntimeStub(ch).Process(iter([opened]), timeout=10, metadata=(("authorization", f"Bearer {INGEST_TOKEN}"),)))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value

    out = s.stop()
    assert "calls need the sidecar token (MILLRACE_SIDECAR_TOKEN)" in out, out
    for secret in (SIDECAR_TOKEN, WORKER_TOKEN, ADMIN_TOKEN, INGEST_TOKEN, "not-a-token-of-anyone"):
        assert secret not in out, f"a token is in the sidecar's log: {out}"


def test_the_token_flag_reaches_every_process_but_not_their_command_lines(sidecar):
    s = sidecar(args=["--token", SIDECAR_TOKEN], processes=2)
    for port in (s.port, s.port + 1):
        assert refused(port).code() == grpc.StatusCode.UNAUTHENTICATED
        assert describe(port, SIDECAR_TOKEN).functions
    children = subprocess.run(["pgrep", "-a", "-P", str(s.proc.pid)], capture_output=True, text=True).stdout
    assert children.count("--child") == 2 and SIDECAR_TOKEN not in children, children
    assert SIDECAR_TOKEN not in s.stop()


def test_without_a_token_the_sidecar_is_open(sidecar):
    s = sidecar(env={"MILLRACE_WORKER_TOKEN": WORKER_TOKEN})
    assert describe(s.port).functions
    assert describe(s.port, WORKER_TOKEN).functions  # the sidecar role is open: any caller


def test_tls_serves_tls_only_and_lists_https_addresses(sidecar, certs):
    s = sidecar(args=["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)], env={"MILLRACE_SIDECAR_TOKEN": SIDECAR_TOKEN}, processes=2)
    e = refused(s.port, SIDECAR_TOKEN)
    assert e.code() == grpc.StatusCode.UNAVAILABLE, e  # plaintext to a TLS listener: no connection
    trusting = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    got = describe(s.port, SIDECAR_TOKEN, trusting)
    assert list(got.endpoints) == [f"https://127.0.0.1:{s.port}", f"https://127.0.0.1:{s.port + 1}"]
    assert describe(s.port + 1, SIDECAR_TOKEN, trusting).functions
    assert refused(s.port, None, trusting).code() == grpc.StatusCode.UNAUTHENTICATED  # TLS is no token
    # A client that does not trust the CA (the system roots only) is refused in the handshake.
    assert refused(s.port, SIDECAR_TOKEN, grpc.ssl_channel_credentials()).code() == grpc.StatusCode.UNAVAILABLE
    out = s.stop()
    assert f"on https://127.0.0.1:{s.port}" in out and "(TLS;" in out, out
    assert certs.key_body(certs.key) not in out and SIDECAR_TOKEN not in out, out


def test_mutual_tls_needs_a_client_certificate_signed_by_the_client_ca(sidecar, certs):
    env = {"MILLRACE_TLS_CERT": str(certs.cert), "MILLRACE_TLS_KEY": str(certs.key), "MILLRACE_TLS_CLIENT_CA": str(certs.client_ca)}
    s = sidecar(env=env)
    ca = certs.ca.read_bytes()
    without = grpc.ssl_channel_credentials(root_certificates=ca)
    assert refused(s.port, None, without).code() == grpc.StatusCode.UNAVAILABLE
    # A certificate the client CA did not sign (the server's own) is refused too.
    foreign = grpc.ssl_channel_credentials(root_certificates=ca, private_key=certs.key.read_bytes(), certificate_chain=certs.cert.read_bytes())
    assert refused(s.port, None, foreign).code() == grpc.StatusCode.UNAVAILABLE
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=certs.client_key.read_bytes(), certificate_chain=certs.client_cert.read_bytes()
    )
    assert describe(s.port, None, with_cert).functions
    out = s.stop()
    assert "(mutual TLS;" in out, out
    assert certs.key_body(certs.key) not in out and certs.key_body(certs.client_key) not in out, out


@pytest.mark.parametrize(
    "args,says",
    [
        (["--tls-cert", "{cert}"], "needs both a certificate and its key"),
        (["--tls-client-ca", "{ca}"], "needs TLS: give --tls-cert and --tls-key too"),
        (["--tls-cert", "{cert}", "--tls-key", "/nonexistent/server.key"], "cannot read the TLS key (--tls-key, MILLRACE_TLS_KEY) '/nonexistent/server.key'"),
        (["--tls-cert", "{ca}", "--tls-key", "{key}"], "are not a PEM certificate and its matching private key"),
    ],
)
def test_tls_settings_that_cannot_work_stop_the_start_naming_them(tmp_path, certs, args, says):
    app = write_app(tmp_path, APP)
    args = [a.format(cert=certs.cert, key=certs.key, ca=certs.ca) for a in args]
    r = subprocess.run([sys.executable, "-m", "millrace", "serve", str(app), "--port", str(free_port()), "--processes", "1", *args],
                       capture_output=True, text=True, timeout=WAIT, cwd=tmp_path, env=clean(os.environ))  # fmt: skip
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "PRIVATE KEY" not in r.stderr and certs.key_body(certs.key) not in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------------------------
# The control plane's clients: `apply` with the admin token, `send()` with the ingest token, https:// with the CA.
# Against the real control plane (tokens and TLS flags of its own).


def _control_plane_knows_tokens() -> bool:
    binary = BIN / "millrace-control-plane"
    if not binary.exists():
        return False
    return "--admin-token" in subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30).stdout


needs_tokens = pytest.mark.skipif(not _control_plane_knows_tokens(), reason="target/debug/millrace-control-plane has no --admin-token: build it")


def _orders(app: Path):
    registry = loader.load(str(app))
    return next(r for (kind, n, _), r in registry.resources.items() if n == "orders" and kind == "stream")


@needs_tokens
def test_apply_sends_the_admin_token_and_send_the_ingest_token(stack, tmp_path, monkeypatch):
    stack.env = clean(stack.env)
    stack.start_control_plane("--admin-token", ADMIN_TOKEN, "--ingest-token", INGEST_TOKEN, "--worker-token", WORKER_TOKEN)
    app = write_app(tmp_path, APP)
    r = stack.cli("apply", str(app), check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "UNAUTHENTICATED" in r.stderr and "set MILLRACE_ADMIN_TOKEN to the admin token" in r.stderr, r.stderr
    r = stack.cli("apply", str(app), check=False, env={"MILLRACE_ADMIN_TOKEN": INGEST_TOKEN})
    assert r.returncode == 1 and "PERMISSION_DENIED" in r.stderr and "MILLRACE_ADMIN_TOKEN" in r.stderr, r.stderr
    assert INGEST_TOKEN not in r.stderr, r.stderr
    r = stack.cli("apply", str(app), env={"MILLRACE_ADMIN_TOKEN": ADMIN_TOKEN})
    assert "applied (apply " in r.stdout, r.stdout

    monkeypatch.setenv("MILLRACE_CONTROL_PLANE", stack.control_plane)
    for var in CLEAN:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(producer.SendError, match=r"set MILLRACE_INGEST_TOKEN \(or MILLRACE_ADMIN_TOKEN\)"):
        producer.topic_of(_orders(app))
    monkeypatch.setenv("MILLRACE_INGEST_TOKEN", INGEST_TOKEN)
    assert producer.topic_of(_orders(app)) == stack.topic("orders")
    log = (LOGS / f"py-{stack.name}-control-plane.log").read_text()
    assert not [t for t in (ADMIN_TOKEN, INGEST_TOKEN, WORKER_TOKEN) if t in log], "a token is in the control plane's log"


@needs_tokens
def test_apply_over_tls_and_mutual_tls(stack, tmp_path, certs):
    stack.env = clean(stack.env)
    stack.start_control_plane("--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--tls-client-ca", str(certs.client_ca))
    app = write_app(tmp_path, APP)
    https = {"MILLRACE_CONTROL_PLANE": f"https://{stack.control_plane}", "MILLRACE_TLS_CA": str(certs.ca)}
    client = {"MILLRACE_TLS_CLIENT_CERT": str(certs.client_cert), "MILLRACE_TLS_CLIENT_KEY": str(certs.client_key)}
    r = stack.cli("apply", str(app), env={**https, **client})
    assert "applied (apply " in r.stdout, r.stdout
    r = stack.cli("plan", str(app), check=False, env=https)  # no client certificate
    assert r.returncode == 1 and "cannot be reached" in r.stderr and "over TLS" in r.stderr, r.stderr
    r = stack.cli("plan", str(app), check=False, env={**client})  # plaintext to a TLS listener
    assert r.returncode == 1 and "if it serves TLS, write https://" in r.stderr, r.stderr
    r = stack.cli("plan", str(app), check=False, env={**https, "MILLRACE_TLS_CLIENT_CERT": str(certs.client_cert)})
    assert r.returncode == 1 and "needs both MILLRACE_TLS_CLIENT_CERT and MILLRACE_TLS_CLIENT_KEY" in r.stderr, r.stderr
