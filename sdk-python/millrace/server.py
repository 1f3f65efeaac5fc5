"""The sidecar: a FunctionRuntime server hosting every transform and consumer of an app. `serve()` starts N
processes, one gRPC server each on consecutive ports, restarting any that dies; each lists all N addresses in
Describe, and the worker spreads batches over them. With a sidecar token (MILLRACE_SIDECAR_TOKEN) every
FunctionRuntime call must carry it; with a certificate and key the processes serve TLS only (millrace.security)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from typing import Iterator, Optional

import grpc

from . import resources, security
from .runner import DEFAULT_CALL_TIMEOUT_MS, Abandoned, Runner, Stuck  # noqa: F401 - the CLI's default
from .v1 import function_runtime_pb2 as fr
from .v1 import function_runtime_pb2_grpc as fr_grpc


MAX_MESSAGE = 64 << 20
RUNTIME = "millrace-python/0.1.0"


# Exit codes of a server process, for its supervisor.
APP_CANNOT_LOAD = 3
CANNOT_LISTEN = 4
RECYCLED = 5


class Health:
    """One process's state: the Process streams open, and whether it is being replaced because a call of user code
    never returned (a thread stuck in user code cannot be stopped; only the process's end frees it)."""

    def __init__(self) -> None:
        self.recycling = threading.Event()
        self._lock = threading.Lock()
        self.streams = 0

    def opened(self, delta: int) -> None:
        with self._lock:
            self.streams += delta


def runners(registry: resources.Registry, health: Optional[Health] = None) -> dict[str, Runner]:
    out = {}
    on_stuck = health.recycling.set if health is not None else None
    for name, f in registry.functions().items():
        multi = getattr(f, "multi", False)
        out_model = None if f.consumer or multi else f.destination.model
        routes = {s.topic: s.model for s in f.routes()} if multi else None
        out[name] = Runner(name, f.fn, f.source.model, out_model, f.consumer, on_stuck=on_stuck, routes=routes)
    return out


def encode_records(batch_id: int, outcomes: list) -> fr.ProcessResponse:
    """A batch's outcomes one message per record, for a worker that does not read packed answers (older than the
    SDK; it says so when it opens the stream)."""
    result = fr.BatchResult(batch_id=batch_id)
    add = result.results.add
    for o in outcomes:
        if type(o) is list:
            out = add().ok
            out.SetInParent()  # a filtered record's empty outputs are still its answer
            for v in o:
                if type(v) is tuple:  # a multi-transform's (stream, JSON)
                    out.routes.append(v[0])
                    v = v[1]
                out.values.append(v)
        else:
            e = add().error
            e.error_type, e.message = o
    return fr.ProcessResponse(result=result)


def encode(batch_id: int, outcomes: list) -> fr.ProcessResponse:
    """A batch's outcomes packed: every output back to back in one buffer, a count per record, and the errors by
    index (a message object per record costs more than the rest of the answer)."""
    flat: list = []
    counts: list[int] = []
    errors = []
    extend, count = flat.extend, counts.append
    for i, o in enumerate(outcomes):
        if type(o) is list:
            extend(o)
            count(len(o))
        else:
            count(0)
            errors.append(fr.IndexedError(index=i, error=fr.RecordError(error_type=o[0], message=o[1])))
    routes: list[str] = []
    value_routes: list[int] = []
    if flat and type(flat[0]) is tuple:  # a multi-transform's (stream, JSON) pairs
        index: dict[str, int] = {}
        for topic, _ in flat:
            value_routes.append(index.setdefault(topic, len(index)))
        routes = list(index)
        flat = [v for _, v in flat]
    packed = fr.PackedResults(
        values=b"".join(flat), value_lengths=[len(v) for v in flat], output_counts=counts, errors=errors, routes=routes, value_routes=value_routes
    )
    return fr.ProcessResponse(result=fr.BatchResult(batch_id=batch_id, packed=packed))


def expired(batch_id: int) -> fr.ProcessResponse:
    return fr.ProcessResponse(result=fr.BatchResult(batch_id=batch_id, expired=True))


class FunctionRuntime(fr_grpc.FunctionRuntimeServicer):
    def __init__(self, functions: dict[str, Runner], endpoints: list[str], health: Optional[Health] = None):
        self.functions, self.endpoints = functions, endpoints
        self.health = health or Health()

    def Describe(self, request, context):
        infos = [fr.FunctionInfo(name=n, consumer=r.consumer) for n, r in sorted(self.functions.items())]
        return fr.DescribeResponse(functions=infos, runtime=RUNTIME, endpoints=self.endpoints)

    def Process(self, request_iterator: Iterator[fr.ProcessRequest], context) -> Iterator[fr.ProcessResponse]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("message") != "open":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of Process must be `open`")
        runner = self.functions.get(first.open.function)
        if runner is None:
            hosted = ", ".join(sorted(self.functions)) or "none"
            context.abort(grpc.StatusCode.NOT_FOUND, f"function {first.open.function!r} is not hosted here (hosted: {hosted}); apply and serve the same app")
        answer = encode if first.open.packed_results else encode_records
        health = self.health
        if health.recycling.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "this sidecar process is restarting (a call did not return): use another")
        # The worker waits for the stream's headers before it sends batches; without this they would come only
        # with the first result.
        context.send_initial_metadata(())
        health.opened(1)
        try:
            # One batch after another: a stream carries one partition, whose records must run in offset order.
            lapsed = False
            for req in request_iterator:
                batch = req.batch
                deadline = batch.deadline_unix_ms
                # Not started: past its deadline (the worker no longer waits for it, or its lease may be gone), or
                # while this process winds down (the worker runs it again elsewhere; nothing is condemned).
                # Once one batch expired, so do all later ones of the stream: running a later batch before the
                # worker runs the expired one again would put the partition's records out of order.
                if lapsed or (deadline and time.time() * 1000 > deadline) or health.recycling.is_set():
                    lapsed = True
                    yield expired(batch.batch_id)
                    continue
                records = batch.records
                try:
                    keys = [r.key for r in records] if runner.is_async else None  # only async calls overlap
                    outcomes = runner.run([r.value for r in records], keys, context.is_active)
                except Abandoned:
                    return
                except Stuck as e:
                    context.abort(grpc.StatusCode.UNAVAILABLE, f"{e}; the sidecar process restarts")
                yield answer(batch.batch_id, outcomes)
        finally:
            health.opened(-1)


# Each open Process stream holds a thread for as long as its unit runs (one per unit and process), so this bounds
# the units one sidecar serves; idle threads cost little.
THREADS = int(os.environ.get("MILLRACE_SIDECAR_THREADS", "1024"))


def serve_one(
    registry: resources.Registry,
    host: str,
    port: int,
    endpoints: list[str],
    threads: int = THREADS,
    health: Optional[Health] = None,
    runners_: Optional[dict[str, Runner]] = None,
    credentials: Optional[grpc.ServerCredentials] = None,
    tokens: Optional[dict[str, Optional[str]]] = None,
) -> grpc.Server:
    """One server process's gRPC server, started; TLS only with `credentials`; with `tokens` (role -> token, see
    millrace.security) and a sidecar token among them, FunctionRuntime calls need that token."""
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.so_reuseport", 0),
        # Workers send HTTP/2 keepalive pings every 5 s to notice a silent peer; gRPC's defaults would answer
        # them with "too many pings" and close the connection.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
        ("grpc.http2.min_ping_interval_without_data_ms", 1000),
        ("grpc.http2.max_ping_strikes", 0),
    ]
    guarded = tokens and tokens.get("sidecar")
    interceptors = [security.TokenInterceptor("sidecar", tokens, ("/millrace.v1.FunctionRuntime/",))] if guarded else []
    pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="millrace")
    server = grpc.server(pool, options=options, interceptors=interceptors)
    health = health or Health()
    functions = runners_ if runners_ is not None else runners(registry, health)
    fr_grpc.add_FunctionRuntimeServicer_to_server(FunctionRuntime(functions, endpoints, health), server)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}: is another sidecar running there? Pick another --port")
    server.start()
    return server


def endpoints_for(advertise: str, port: int, processes: int, tls: bool = False) -> list[str]:
    """The addresses Describe lists: https:// with TLS, so that the worker connects to each with TLS."""
    scheme = "https" if tls else "http"
    return [f"{scheme}://{advertise}:{port + i}" for i in range(processes)]


class Settings:
    """The TLS and token settings of the server processes, from the environment the supervisor sets for them (so
    that no secret goes on a command line)."""

    def __init__(self, env: Optional[dict] = None):
        e = env if env is not None else os.environ
        self.cert, self.key, self.client_ca = (e.get(k) or None for k in ("MILLRACE_TLS_CERT", "MILLRACE_TLS_KEY", "MILLRACE_TLS_CLIENT_CA"))
        self.tokens = {role: security.token(role, e) for role in security.ROLES}

    @property
    def tls(self) -> bool:
        return bool(self.cert)

    def credentials(self) -> Optional[grpc.ServerCredentials]:
        """Raises security.SecurityError, naming the setting, when they cannot work."""
        return security.server_credentials(self.cert, self.key, self.client_ca)

    def describe(self) -> str:
        """For the start line: what callers need, never a secret."""
        parts = [("mutual TLS" if self.client_ca else "TLS") if self.tls else "plaintext"]
        parts.append(f"calls need the sidecar token ({security.ROLES['sidecar']})" if self.tokens.get("sidecar") else "no token required")
        return "; ".join(parts)


class Supervisor:
    """Runs the N server processes and restarts any that exits, each on its own backoff, never giving up on one nor
    stopping the others; stops them all on SIGINT/SIGTERM. Only a first start that cannot load the app ends it."""

    BACKOFF_FIRST, BACKOFF_CAP = 0.5, 30.0
    # A process that ran this long before exiting is restarted at once: its next failure starts the backoff again.
    STEADY = 30.0

    def __init__(self, app: str, host: str, advertise: str, port: int, processes: int, settings: Optional[Settings] = None):
        self.app, self.host, self.advertise, self.port, self.n = app, host, advertise, port, processes
        self.settings = settings or Settings()
        self.children: list[Optional[subprocess.Popen]] = [None] * processes
        self.stopping = threading.Event()

    def _start(self, i: int) -> subprocess.Popen:
        cmd = [
            sys.executable, "-m", "millrace", "serve", self.app,
            "--host", self.host, "--advertise", self.advertise, "--port", str(self.port),
            "--processes", str(self.n), "--child", str(i),
        ]  # fmt: skip
        return subprocess.Popen(cmd)

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        now = time.monotonic()
        started = [now] * self.n
        delay = [0.0] * self.n
        restart_at: list[Optional[float]] = [None] * self.n
        first = [True] * self.n
        for i in range(self.n):
            self.children[i] = self._start(i)
        listed = ", ".join(endpoints_for(self.advertise, self.port, self.n, self.settings.tls))
        print(f"millrace sidecar: {self.n} process(es) on {listed} ({self.settings.describe()})", flush=True)
        while not self.stopping.wait(0.1):
            now = time.monotonic()
            for i, child in enumerate(self.children):
                if child is None:
                    if restart_at[i] is not None and now >= restart_at[i]:
                        self.children[i], started[i], restart_at[i] = self._start(i), now, None
                    continue
                code = child.poll()
                if code is None:
                    continue
                if code == APP_CANNOT_LOAD and first[i]:  # the app cannot be loaded: restarting cannot help
                    self.stop()
                    return 1
                first[i] = False
                if code == RECYCLED or now - started[i] >= self.STEADY:
                    delay[i] = 0.0
                else:  # it died soon after starting: back off, doubling up to the cap
                    delay[i] = min(self.BACKOFF_CAP, max(self.BACKOFF_FIRST, delay[i] * 2))
                why = "replaced after a call that did not return" if code == RECYCLED else f"exited ({code})"
                print(f"millrace sidecar: process {i} {why}; restarting it in {delay[i]:g} s", file=sys.stderr, flush=True)
                self.children[i], restart_at[i] = None, now + delay[i]
        self.stop()
        return 0

    def stop(self) -> None:
        for c in self.children:
            if c and c.poll() is None:
                c.terminate()
        deadline = time.monotonic() + 5
        for c in self.children:
            if c:
                try:
                    c.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    c.kill()


# How long a process being replaced waits for its streams to end (the workers move them elsewhere as they reach
# their next batch) before it exits anyway.
RECYCLE_GRACE_S = 5.0


def run_child(registry: resources.Registry, host: str, advertise: str, port: int, processes: int, index: int) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()
    health = Health()

    def orphaned() -> None:
        # A supervisor killed outright cannot stop its processes: they stop themselves.
        while not stop.wait(1.0):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=orphaned, daemon=True).start()
    settings = Settings()
    try:
        listed = endpoints_for(advertise, port, processes, settings.tls)
        server = serve_one(registry, host, port + index, listed, health=health, credentials=settings.credentials(), tokens=settings.tokens)
    except (OSError, security.SecurityError) as e:
        print(f"millrace: {e}", file=sys.stderr, flush=True)
        return CANNOT_LISTEN
    code = 0
    while not stop.wait(0.1):
        if health.recycling.is_set():
            print(f"millrace sidecar: process {index}: a call did not return; restarting the process", file=sys.stderr, flush=True)
            grace = time.monotonic() + RECYCLE_GRACE_S
            while health.streams > 0 and time.monotonic() < grace and not stop.is_set():
                time.sleep(0.05)
            code = RECYCLED
            break
    server.stop(grace=2).wait()
    sys.stdout.flush()
    sys.stderr.flush()
    # Without waiting for the threads of user code: one may be stuck in a call for good.
    os._exit(code)


def default_processes() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
