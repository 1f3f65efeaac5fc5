"""`python -m millrace plan|apply|serve app.py`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from google.protobuf import json_format

from . import loader, plan, security, server


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m millrace", description="Millrace's Python SDK: show, apply and serve an app.")
    sub = p.add_subparsers(dest="command", required=True)
    cp = dict(default=os.environ.get("MILLRACE_CONTROL_PLANE", plan.DEFAULT_CONTROL_PLANE),
              help="the control plane's gRPC address host:port, or several separated by commas: the first that answers "
                   "(env MILLRACE_CONTROL_PLANE; default %(default)s). https://host:port speaks TLS, verifying the server "
                   "with the CA in MILLRACE_TLS_CA (else the system roots) and presenting MILLRACE_TLS_CLIENT_CERT and "
                   "MILLRACE_TLS_CLIENT_KEY when set; the call carries the admin token of MILLRACE_ADMIN_TOKEN when set")  # fmt: skip
    for name, what in (("plan", "print the changes applying the app would make"), ("apply", "apply the app")):
        s = sub.add_parser(name, help=what)
        s.add_argument("app", help="the Python file declaring streams, tables, transforms and consumers")
        s.add_argument("--control-plane", **cp)
        s.add_argument("--json", action="store_true", help="print the control plane's answer as JSON")
    s = sub.add_parser("serve", help="serve the app's transforms and consumers to workers (the sidecar)")
    s.add_argument("app")
    s.add_argument("--host", default=os.environ.get("MILLRACE_SIDECAR_HOST", "127.0.0.1"), help="listen address (env MILLRACE_SIDECAR_HOST)")
    s.add_argument("--port", type=int, default=int(os.environ.get("MILLRACE_SIDECAR_PORT", "50061")),
                   help="first port; process i listens on port + i (env MILLRACE_SIDECAR_PORT; default %(default)s)")  # fmt: skip
    s.add_argument("--processes", type=int, default=int(os.environ.get("MILLRACE_SIDECAR_PROCESSES", "0")) or server.default_processes(),
                   help="server processes (env MILLRACE_SIDECAR_PROCESSES; default: the cores this process may use)")  # fmt: skip
    s.add_argument("--advertise", default=os.environ.get("MILLRACE_SIDECAR_ADVERTISE"),
                   help="host workers reach the processes at (env MILLRACE_SIDECAR_ADVERTISE; default: --host, or 127.0.0.1 for 0.0.0.0)")  # fmt: skip
    s.add_argument("--call-timeout-ms", type=int, default=int(os.environ.get("MILLRACE_CALL_TIMEOUT_MS", "0")) or server.DEFAULT_CALL_TIMEOUT_MS,
                   help="longest one call of a function may take before its record fails with FunctionTimeout and its process is "
                        "replaced; keep it below the worker's --sidecar-timeout-ms (env MILLRACE_CALL_TIMEOUT_MS; default %(default)s)")  # fmt: skip
    s.add_argument("--tls-cert", default=os.environ.get("MILLRACE_TLS_CERT"),
                   help="PEM certificate (chain): with --tls-key, the processes serve TLS only and Describe lists https:// "
                        "addresses (env MILLRACE_TLS_CERT)")  # fmt: skip
    s.add_argument("--tls-key", default=os.environ.get("MILLRACE_TLS_KEY"), help="PEM private key of --tls-cert (env MILLRACE_TLS_KEY)")
    s.add_argument("--tls-client-ca", default=os.environ.get("MILLRACE_TLS_CLIENT_CA"),
                   help="PEM CA: callers must present a client certificate it signed (mutual TLS; env MILLRACE_TLS_CLIENT_CA)")  # fmt: skip
    s.add_argument("--token", default=os.environ.get("MILLRACE_SIDECAR_TOKEN"),
                   help="the sidecar token every Describe and Process call must carry (`authorization: Bearer <token>`); "
                        "prefer the env MILLRACE_SIDECAR_TOKEN, which other users of the host cannot read from the process "
                        "list; the admin, worker and ingest tokens set in the environment are refused with PERMISSION_DENIED "
                        "(default: none, any caller)")  # fmt: skip
    s.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        # The app's code runs here and in the server processes: it must not be able to read the admin or worker
        # token (apply, delete; the coordinator). The ingest token stays, for send() in a function.
        for var in ("MILLRACE_ADMIN_TOKEN", "MILLRACE_WORKER_TOKEN"):
            os.environ.pop(var, None)
    try:
        registry = loader.load(args.app)
    except loader.AppError as e:
        print(f"millrace: cannot load the app: {e}", file=sys.stderr)
        return 3
    except ValueError as e:
        print(f"millrace: {e}", file=sys.stderr)
        return 3
    if args.command == "serve":
        if args.processes < 1:
            print("millrace: --processes must be at least 1", file=sys.stderr)
            return 2
        if args.call_timeout_ms < 1:
            print("millrace: --call-timeout-ms must be at least 1", file=sys.stderr)
            return 2
        # The server processes (and their runners) read these from the environment they inherit: no secret goes on
        # their command lines.
        os.environ["MILLRACE_CALL_TIMEOUT_MS"] = str(args.call_timeout_ms)
        for var, value in (("MILLRACE_TLS_CERT", args.tls_cert), ("MILLRACE_TLS_KEY", args.tls_key),
                           ("MILLRACE_TLS_CLIENT_CA", args.tls_client_ca), ("MILLRACE_SIDECAR_TOKEN", args.token)):  # fmt: skip
            if value:
                os.environ[var] = value
            else:
                os.environ.pop(var, None)
        settings = server.Settings()
        try:
            settings.credentials()  # checked once here, so that a wrong file stops the start with its name
        except security.SecurityError as e:
            print(f"millrace: {e}", file=sys.stderr)
            return 2
        advertise = args.advertise or ("127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host)
        if args.child is not None:
            return server.run_child(registry, args.host, advertise, args.port, args.processes, args.child)
        if not registry.functions():
            print(f"millrace: {args.app} declares no transform or consumer: there is nothing to serve", file=sys.stderr)
        return server.Supervisor(args.app, args.host, advertise, args.port, args.processes, settings).run()
    try:
        p = plan.build(registry)
        response = plan.apply(p, args.control_plane, dry_run=args.command == "plan")
    except plan.ControlPlaneError as e:
        print(f"millrace: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(json_format.MessageToDict(response), indent=2))
    else:
        for line in plan.describe(response):
            print(line)
        if args.command == "apply":
            print(f"applied (apply {response.apply_id})" if response.apply_id else "applied: nothing changed")
    return 0
