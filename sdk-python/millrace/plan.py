"""The app's declarations as the contract's `Plan`, and the calls that show and apply it."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import grpc
from google.protobuf import json_format

from . import endpoints, resources, security
from .v1 import control_plane_pb2, control_plane_pb2_grpc, resources_pb2

DEFAULT_CONTROL_PLANE = endpoints.DEFAULT


def runtime_name() -> str:
    """The sidecar name the worker routes this app's functions to (its `--sidecar NAME=URL`)."""
    return os.environ.get("MILLRACE_RUNTIME", "default")


def _ref(r: Any) -> Optional[dict]:
    return None if r is None else {"name": r.name, "version": r.version}


def _metadata(cfg: Any) -> Optional[dict]:
    """moose's `metadata` dict as the contract's string map (values that are not strings as JSON)."""
    m = getattr(cfg, "metadata", None)
    if not m:
        return None
    return {str(k): v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True) for k, v in m.items()}


def _life_cycle(cfg: Any) -> str:
    lc = getattr(cfg, "life_cycle", None)
    return lc.value if lc is not None else "LIFE_CYCLE_UNSPECIFIED"


def build(registry: Optional[resources.Registry] = None) -> resources_pb2.Plan:
    """Every declaration of the registry as one Plan."""
    reg = registry or resources.registry
    plan: dict = {"streams": [], "tables": [], "transforms": [], "consumers": [], "ingest_apis": [], "dead_letter_queues": []}
    for s in reg.of("stream"):
        plan["streams"].append(
            {
                "name": s.name,
                "version": s.version,
                "fields": s.fields,
                "parallelism": s.config.parallelism,
                "retention_seconds": s.config.retention_period,
                "life_cycle": _life_cycle(s.config),
                "destination": _ref(s.config.destination),
                "dead_letter_queue": _ref(s.config.default_dead_letter_queue),
                "allow_extra_fields": s.config.allow_extra_fields,
                "metadata": _metadata(s.config),
            }
        )
    for t in reg.of("table"):
        plan["tables"].append({**_table(t), "metadata": _metadata(t.config)})
    for d in reg.of("dead_letter_queue"):
        plan["dead_letter_queues"].append(
            {
                "name": d.name,
                "version": d.version,
                "parallelism": d.config.parallelism,
                "retention_seconds": d.config.retention_period,
                "life_cycle": _life_cycle(d.config),
                "metadata": _metadata(d.config),
            }
        )
    for a in reg.of("ingest_api"):
        plan["ingest_apis"].append(
            {
                "name": a.name,
                "version": a.version,
                "destination": _ref(a.destination),
                "dead_letter_queue": _ref(a.dead_letter_queue),
                "path": a.path or None,
                "metadata": _metadata(a.config),
            }
        )
    function = lambda f: {"name": f.name, "runtime": runtime_name()}  # noqa: E731
    for t in reg.transforms:
        plan["transforms"].append(
            {
                "name": t.name,
                "source": _ref(t.source),
                "destination": _ref(t.destination),
                "routes": [_ref(r) for r in t.routes()] if t.multi else None,
                "function": function(t),
                "dead_letter_queue": _ref(t.dead_letter_queue),
                "metadata": _metadata(t.config),
            }
        )
    for c in reg.consumers:
        plan["consumers"].append(
            {"name": c.name, "source": _ref(c.source), "function": function(c), "dead_letter_queue": _ref(c.dead_letter_queue)}
        )
    return json_format.ParseDict(_drop_none(plan), resources_pb2.Plan())


def _setting(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _table(t: Any) -> dict:
    """A table's contract: columns, engine and options (validated and rendered by the control plane)."""
    from .engines import to_contract

    c = t.config
    return {
        "name": t.name,
        "version": t.version,
        "fields": t.fields,
        "order_by": list(c.order_by_fields),
        "order_by_expression": c.order_by_expression,
        "partition_by": c.partition_by,
        "sample_by": c.sample_by_expression,
        "primary_key": c.primary_key_expression,
        "ttl": c.ttl,
        "settings": {k: _setting(v) for k, v in (c.settings or {}).items()},
        "database": c.database,
        "indexes": [
            {"name": i.name, "expression": i.expression, "type": i.type, "arguments": list(i.arguments), "granularity": i.granularity}
            for i in c.indexes
        ],
        "engine": to_contract(t.engine),
        "life_cycle": _life_cycle(c),
        "sync_max_rows": c.sync_max_rows,
        "sync_max_bytes": c.sync_max_bytes,
        "sync_max_delay_ms": c.sync_max_delay_ms,
    }


def _drop_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _drop_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_drop_none(x) for x in v]
    return v


class ControlPlaneError(Exception):
    """The control plane refused the plan or could not be reached; the message says what to do."""


def apply(plan: resources_pb2.Plan, address: str, dry_run: bool, client: str = "millrace-python", timeout: float = 60.0):
    """ApplyPlan on the control plane at `address` (one, or several separated by commas: the first that answers);
    returns the response or raises ControlPlaneError with a message for a person."""
    request = control_plane_pb2.ApplyPlanRequest(plan=plan, dry_run=dry_run, client=client)
    apply_plan = lambda channel: control_plane_pb2_grpc.ControlPlaneStub(channel).ApplyPlan(request, timeout=timeout)  # noqa: E731
    try:
        # A dry run is the same call: the control plane answers it to the admin token too.
        return endpoints.call(address, apply_plan, credential=security.admin())
    except (endpoints.AddressError, endpoints.Refused, security.SecurityError) as e:
        raise ControlPlaneError(str(e)) from None
    except endpoints.Unreachable as e:
        raise ControlPlaneError(
            f"the control plane at {e.where} cannot be reached ({e.detail}): start it, or point --control-plane "
            "(MILLRACE_CONTROL_PLANE) at it (several addresses: separated by commas)"
        ) from None
    except grpc.RpcError as e:
        code = e.code().name if e.code() else "UNKNOWN"
        raise ControlPlaneError(f"the control plane refused the plan ({code}): {e.details()}") from None


ACTIONS = {
    control_plane_pb2.CREATE: "+",
    control_plane_pb2.UPDATE: "~",
    control_plane_pb2.DELETE: "-",
    control_plane_pb2.BLOCKED: "!",
    control_plane_pb2.REFUSED: "x",
}


def describe(response: Any) -> list[str]:
    """The diff as lines for a person: one per resource that changes, or one saying there is nothing to do."""
    lines = []
    unchanged = 0
    for c in response.changes:
        if c.action == control_plane_pb2.UNCHANGED:
            unchanged += 1
            continue
        kind = resources_pb2.ResourceKind.Name(c.kind).lower()
        name = c.name + (f"@{c.version}" if c.version else "")
        action = control_plane_pb2.ChangeAction.Name(c.action)
        line = f"{ACTIONS.get(c.action, '?')} {kind} {name}: {action}"
        if c.reason:
            line += f" ({c.reason})"
        lines.append(line)
    if not lines:
        lines.append(f"nothing to do: {unchanged} resources unchanged")
    return lines
