#!/usr/bin/env bash
# Millrace's main job on this machine: the local stack, the control plane (127.0.0.1:50051), the reference Rust
# sidecar (127.0.0.1:50061) and one worker (metrics on 127.0.0.1:4000), with examples/plan.json applied: the
# reference page's chain raw_data -> x2 -> intermediate_stream -> x2, x3 -> final_stream. With a Python app
# (`bash scripts/run.sh app.py`), the app is applied and served by the Python sidecar instead. Ctrl-C stops what it
# started (the stack keeps running: scripts/stack.sh stop).
set -euo pipefail
APP=${1:+$(cd "$(dirname "$1")" && pwd)/$(basename "$1")}
cd "$(dirname "$0")/.."
bash scripts/stack.sh start
eval "$(bash scripts/stack.sh env)"
CP=${MILLRACE_LISTEN:-127.0.0.1:50051}
SIDECAR=${MILLRACE_SIDECAR_LISTEN:-127.0.0.1:50061}
HTTP=${MILLRACE_HTTP_LISTEN:-127.0.0.1:4000}
echo "== building (release)"
cargo build --release --locked -p millrace-control-plane -p millrace-worker
cargo build --release --locked -p millrace-sdk --example reference
[ -z "$APP" ] || bash scripts/sdk.sh
SDK_PY=${MILLRACE_SDK_VENV:-$HOME/.millrace/sdk-venv}/bin/python

log=${MILLRACE_HOME:-$HOME/.millrace}/run; mkdir -p "$log"
pids=()
# Last started, first stopped: the worker commits and hands over while the control plane still answers.
stop() { for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; wait "${pids[i]}" 2>/dev/null || true; done; }
trap stop EXIT INT TERM
wait_port() { for _ in $(seq 150); do (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0; sleep 0.2; done; echo "$2 did not start: see $log"; exit 1; }

target/release/millrace-control-plane --listen "$CP" >"$log/control-plane.log" 2>&1 & pids+=($!)
if [ -n "$APP" ]; then
  "$SDK_PY" -m millrace serve "$APP" --host "${SIDECAR%:*}" --port "${SIDECAR#*:}" >"$log/sidecar.log" 2>&1 & pids+=($!)
  served="$APP (python -m millrace serve)"
else
  target/release/examples/reference --listen "$SIDECAR" >"$log/sidecar.log" 2>&1 & pids+=($!)
  served=sdk-rust/examples/reference.rs
fi
wait_port "$CP" "the control plane"; wait_port "$SIDECAR" "the sidecar"
target/release/millrace-worker --control-plane "http://$CP" --sidecar "default=http://$SIDECAR" --http-listen "$HTTP" \
  >"$log/worker.log" 2>&1 & pids+=($!)
wait_port "$HTTP" "the worker"

if [ -n "$APP" ]; then
  MILLRACE_CONTROL_PLANE=$CP "$SDK_PY" -m millrace apply "$APP"
else
  "$MILLRACE_GRPCURL" -plaintext -d "{\"client\": \"scripts/run.sh\", \"plan\": $(cat examples/plan.json)}" "$CP" \
    millrace.v1.ControlPlane/ApplyPlan >/dev/null
fi
VENV_PY=$(dirname "$MILLRACE_GRPCURL")/python
cat <<TXT

Millrace is running (logs in $log):
  control plane   grpc://$CP     $MILLRACE_GRPCURL -plaintext $CP list
  ingest API      http://$HTTP/ingest/<name>     (the example: http://$HTTP/ingest/raw_data)
  worker metrics  http://$HTTP/metrics
  sidecar         grpc://$SIDECAR ($served)
  Kafka           $MILLRACE_KAFKA_BROKERS     topics raw_data, intermediate_stream, final_stream, raw_data_dlq
  ClickHouse      $MILLRACE_CLICKHOUSE_URL    table millrace.final_table

Try it, from another terminal:
  curl -s -H 'Content-Type: application/json' -d '[{"id":"a","value":1}]' http://$HTTP/ingest/raw_data
  curl -s $MILLRACE_CLICKHOUSE_URL -d 'SELECT * FROM millrace.final_table FORMAT JSONEachRow'
  $VENV_PY scripts/demo.py send raw_data 100          # records {id, value} into raw_data, from code
  $VENV_PY scripts/demo.py peek final_stream -n 5     # doubled, then doubled and tripled
  $MILLRACE_GRPCURL -plaintext $CP millrace.v1.ControlPlane/ListWorkers
Ctrl-C stops.
TXT
wait
