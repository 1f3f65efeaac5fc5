"""The sidecar: a FunctionRuntime server hosting every transform and consumer of an app. `serve()` starts N
processes, one gRPC server each on consecutive ports, restarting any that dies; each lists all N addresses in
Describe, and the worker spreads batches over them."""

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

from . import resources
from .runner import Runner
from .v1 import function_runtime_pb2 as fr
from .v1 import function_runtime_pb2_grpc as fr_grpc


MAX_MESSAGE = 64 << 20
RUNTIME = "millrace-python/0.1.0"


def runners(registry: resources.Registry) -> dict[str, Runner]:
    out = {}
    for name, f in registry.functions().items():
        out_model = None if f.consumer else f.destination.model
        out[name] = Runner(name, f.fn, f.source.model, out_model, f.consumer)
    return out


def encode(batch_id: int, outcomes: list) -> fr.ProcessResponse:
    result = fr.BatchResult(batch_id=batch_id)
    add = result.results.add
    for o in outcomes:
        if type(o) is list:
            add().ok.values.extend(o)
        else:
            e = add().error
            e.error_type, e.message = o
    return fr.ProcessResponse(result=result)


class FunctionRuntime(fr_grpc.FunctionRuntimeServicer):
    def __init__(self, functions: dict[str, Runner], endpoints: list[str]):
        self.functions, self.endpoints = functions, endpoints

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
        # The worker waits for the stream's headers before it sends batches; without this they would come only
        # with the first result.
        context.send_initial_metadata(())
        for req in request_iterator:
            batch = req.batch
            values = [r.value for r in batch.records]
            yield encode(batch.batch_id, runner.run(values))


# Each open Process stream holds a thread for as long as its unit runs (one per unit and process), so this bounds
# the units one sidecar serves; idle threads cost little.
THREADS = int(os.environ.get("MILLRACE_SIDECAR_THREADS", "1024"))


def serve_one(registry: resources.Registry, host: str, port: int, endpoints: list[str], threads: int = THREADS) -> grpc.Server:
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
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="millrace"), options=options)
    fr_grpc.add_FunctionRuntimeServicer_to_server(FunctionRuntime(runners(registry), endpoints), server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen on {host}:{port}: is another sidecar running there? Pick another --port")
    server.start()
    return server


def endpoints_for(advertise: str, port: int, processes: int) -> list[str]:
    return [f"http://{advertise}:{port + i}" for i in range(processes)]


class Supervisor:
    """Runs the N server processes and restarts any that exits; stops them all on SIGINT/SIGTERM."""

    def __init__(self, app: str, host: str, advertise: str, port: int, processes: int):
        self.app, self.host, self.advertise, self.port, self.n = app, host, advertise, port, processes
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
        for i in range(self.n):
            self.children[i] = self._start(i)
        print(f"millrace sidecar: {self.n} process(es) on {', '.join(endpoints_for(self.advertise, self.port, self.n))}", flush=True)
        restarts = [0.0] * self.n
        while not self.stopping.wait(0.1):
            for i, child in enumerate(self.children):
                code = child.poll() if child else None
                if code is None:
                    continue
                if code == 3:  # the app cannot be loaded: restarting cannot help
                    self.stop()
                    return 1
                # Back off a little when a process dies again at once (a crash at start-up).
                if time.monotonic() - restarts[i] < 1.0:
                    time.sleep(0.5)
                print(f"millrace sidecar: process {i} exited ({code}); restarting it", file=sys.stderr, flush=True)
                restarts[i] = time.monotonic()
                self.children[i] = self._start(i)
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


def run_child(registry: resources.Registry, host: str, advertise: str, port: int, processes: int, index: int) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()

    def orphaned() -> None:
        # A supervisor killed outright cannot stop its processes: they stop themselves.
        while not stop.wait(1.0):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=orphaned, daemon=True).start()
    server = serve_one(registry, host, port + index, endpoints_for(advertise, port, processes))
    stop.wait()
    server.stop(grace=2).wait()
    return 0


def default_processes() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
