#!/usr/bin/env bash
# The Python SDK benchmark, in one sitting on one dedicated Tansu broker (memory engine): the reference page's
# value x 2 transform on a 4-partition topic, run by
#   - `limit-json-par`, `quix` and `moose-py` from ../shared/peer-bench (moose-py on NMOOSE records: it is slow);
#   - Millrace with the same function in Rust (`millrace-rust`, the reference sidecar);
#   - Millrace with peer-bench's own moose_app.py, its import changed to `from millrace` (`millrace-py`), served by
#     `python -m millrace serve` with the default process count (the cores);
# ROUNDS times, interleaved; then millrace-py with 1, 2 and 4 sidecar processes. CPU seconds per million records
# are the runner's own (for Millrace: worker + every sidecar process). BENCHMARKS.md keeps the figures.
#
#   bash bench/python.sh [N] [ROUNDS]        (defaults 1000000 and 3; NMOOSE defaults to 200000)
#
# RUNNERS picks the runners of each round (default: all five) and PROCS the process counts tried afterwards
# (default "1 2 4"; "" for none); SDKPY runs the Python sidecar with another interpreter (say a venv holding an
# earlier SDK, to compare two versions in one sitting); BENCH_BIN_DIR runs the control plane and worker of another
# build (a directory holding millrace-control-plane and millrace-worker, say an earlier commit's), built by nobody.
# BENCH_TLS=1 runs every Millrace runner with TLS and the sidecar token between the worker and its sidecars.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000} ROUNDS=${2:-3} NMOOSE=${NMOOSE:-200000}
PEER=$(cd ../shared/peer-bench && pwd)
export PEER_BENCH_ENV=${PEER_BENCH_ENV:-$HOME/.millrace/peer-bench-env}
out=${BENCH_OUT:-/tmp/millrace-bench-py}; mkdir -p "$out"

bash scripts/stack.sh start
eval "$(bash scripts/stack.sh env)"
bash scripts/sdk.sh
echo "== building (release)"
[ -n "${BENCH_BIN_DIR:-}" ] || cargo build --release --locked -p millrace-control-plane -p millrace-worker
bin=${BENCH_BIN_DIR:-target/release}
cargo build --release --locked -p millrace-sdk --example reference
bash "$PEER/setup.sh" >"$out/peer-setup.log" 2>&1 || { cat "$out/peer-setup.log"; exit 1; }
py=$PEER_BENCH_ENV/py/bin/python
sdkpy=${SDKPY:-$HOME/.millrace/sdk-venv/bin/python}
# shellcheck source=bench/common.sh
source bench/common.sh

start_broker

# BENCH_TLS=1: the worker calls both sidecars over TLS (a self-signed certificate for 127.0.0.1) with a sidecar token.
scheme=http sidecar_env=() tls_flags=()
if [ "${BENCH_TLS:-0}" = 1 ]; then
  make_certs "$out"
  scheme=https
  sidecar_env=(MILLRACE_TLS_CERT="$out/tls.pem" MILLRACE_TLS_KEY="$out/tls.key" MILLRACE_SIDECAR_TOKEN=bench-sidecar-token)
  tls_flags=(--tls-ca "$out/ca.pem" --sidecar-token bench-sidecar-token)
fi

cport=$(free_port) rport=$(free_port) hport=$(free_port)
pyport=$(( ($(free_port) % 20000) + 30000 ))   # room for 4 consecutive ports
db=postgres://postgres@127.0.0.1:${MILLRACE_PG_PORT:-5432}/millrace_bench_py
psql -q -h 127.0.0.1 -p "${MILLRACE_PG_PORT:-5432}" -U postgres -c 'DROP DATABASE IF EXISTS millrace_bench_py WITH (FORCE)' postgres
RUST_LOG=warn "$bin"/millrace-control-plane --listen 127.0.0.1:$cport --database-url "$db" \
  --kafka-brokers "$BROKER" --clickhouse-database millrace_bench_py >"$out/control-plane.log" 2>&1 & pids+=($!)
env "${sidecar_env[@]}" RUST_LOG=warn target/release/examples/reference --listen 127.0.0.1:$rport >"$out/rust-sidecar.log" 2>&1 & pids+=($!)
rust_pid=$!
wait_port "$cport"; wait_port "$rport"
RUST_LOG=warn "$bin"/millrace-worker --control-plane http://127.0.0.1:$cport --kafka-brokers "$BROKER" \
  --sidecar "default=$scheme://127.0.0.1:$pyport,rust=$scheme://127.0.0.1:$rport" --http-listen 127.0.0.1:$hport \
  "${tls_flags[@]}" >"$out/worker.log" 2>&1 & pids+=($!)
worker_pid=$!
wait_port "$hport"
export MILLRACE_CONTROL_PLANE=127.0.0.1:$cport MILLRACE_KAFKA_BROKERS=$BROKER

# CPU seconds (user + system) of processes, from /proc.
cpu_s() { for p in "$@"; do cat "/proc/$p/stat" 2>/dev/null; done | awk -v t="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); s += $12 + $13 } END { printf "%.3f", s / t }'; }
G=$MILLRACE_GRPCURL
apply_json() { "$G" -plaintext -max-time 60 -d "$1" 127.0.0.1:$cport millrace.v1.ControlPlane/ApplyPlan >/dev/null; }

# Millrace through the Rust sidecar (the seeded topics declared externally managed).
millrace_rust() {
  local tag src dst fields plan started result
  tag=$(date +%s%N); src=pb_src_$tag; dst=pb_dst_$tag
  "$py" "$PEER/seed.py" "$BROKER" "$src" "$dst" "$N"
  fields='[{"name":"id","type":{"scalar":"STRING"},"key":true},{"name":"value","type":{"scalar":"INT64"}}]'
  plan="{\"streams\":[{\"name\":\"$src\",\"fields\":$fields,\"parallelism\":4,\"lifeCycle\":\"EXTERNALLY_MANAGED\"},
    {\"name\":\"$dst\",\"fields\":$fields,\"parallelism\":4,\"lifeCycle\":\"EXTERNALLY_MANAGED\"}],
    \"transforms\":[{\"name\":\"bench\",\"source\":{\"name\":\"$src\"},\"destination\":{\"name\":\"$dst\"},\"function\":{\"name\":\"bench_value_x2\",\"runtime\":\"rust\"}}]}"
  started=$(date +%s.%N)
  c0=$(cpu_s "$worker_pid" "$rust_pid")
  apply_json "{\"plan\": $plan}"
  result=$("$py" "$PEER/measure.py" "$BROKER" "$dst" "$N" 600 "$started")
  cpu=$(awk -v a="$c0" -v b="$(cpu_s "$worker_pid" "$rust_pid")" -v n="$N" 'BEGIN { printf "%.2f", (b - a) * 1e6 / n }')
  apply_json '{"plan": {}}'
  echo "RUNNER=millrace-rust N=$N $result cpu_s_per_M=$cpu"
}

# Millrace through the Python sidecar: peer-bench's moose_app.py with its import changed and its streams declared
# as seed.py made them (4 partitions, externally managed, as the Rust run declares them), served by P processes.
millrace_py() {
  local procs=$1 tag src dst app started result sidecar children
  tag=$(date +%s%N); src=pb_src_$tag; dst=pb_dst_$tag
  "$py" "$PEER/seed.py" "$BROKER" "$src" "$dst" "$N"
  mkdir -p "$out/app"; app=$out/app/bench_$tag.py
  local cfg="StreamConfig(parallelism=4, life_cycle=LifeCycle.EXTERNALLY_MANAGED)"
  sed -e "s/\"@SRC@\")/\"$src\", $cfg)/; s/\"@DST@\")/\"$dst\", $cfg)/" \
    -e "s/from moose_lib import Key, Stream/from millrace import Key, LifeCycle, Stream, StreamConfig/" "$PEER/moose_app.py" >"$app"
  grep -q 'from millrace import' "$app" || { echo "could not rewrite $PEER/moose_app.py"; exit 1; }
  env "${sidecar_env[@]}" "$sdkpy" -m millrace serve "$app" --port "$pyport" --processes "$procs" >"$out/py-sidecar.log" 2>&1 &
  sidecar=$!
  pids+=("$sidecar")   # stopped on exit even when a step fails
  for i in $(seq 0 $((procs - 1))); do wait_port $((pyport + i)); done
  children=$(pgrep -P "$sidecar" | tr '\n' ' ')
  started=$(date +%s.%N)
  # shellcheck disable=SC2086
  c0=$(cpu_s "$worker_pid" $children) w0=$(cpu_s "$worker_pid")
  "$sdkpy" -m millrace apply "$app" >/dev/null
  result=$("$py" "$PEER/measure.py" "$BROKER" "$dst" "$N" 600 "$started")
  # shellcheck disable=SC2086
  cpu=$(awk -v a="$c0" -v b="$(cpu_s "$worker_pid" $children)" -v w0="$w0" -v w="$(cpu_s "$worker_pid")" -v n="$N" \
    'BEGIN { printf "%.2f worker=%.2f sidecar=%.2f", (b - a) * 1e6 / n, (w - w0) * 1e6 / n, ((b - a) - (w - w0)) * 1e6 / n }')
  apply_json '{"plan": {}}'
  kill "$sidecar"; wait "$sidecar" 2>/dev/null || true
  echo "RUNNER=millrace-py-p$procs N=$N $result cpu_s_per_M=$cpu"
}

default_procs=$(nproc)
results=$out/results.txt; : >"$results"
for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  for runner in ${RUNNERS:-limit-json-par quix moose-py millrace-rust millrace-py}; do
    case $runner in
      limit-json-par|quix) BROKER=$BROKER bash "$PEER/run.sh" "$runner" "$N" | tee -a "$results" ;;
      moose-py) BROKER=$BROKER bash "$PEER/run.sh" moose-py "$NMOOSE" | tee -a "$results" ;;
      millrace-rust) millrace_rust | tee -a "$results" ;;
      millrace-py) millrace_py "$default_procs" | tee -a "$results" ;;
      *) echo "unknown runner $runner"; exit 1 ;;
    esac
  done
done
echo "== sidecar processes"
for p in ${PROCS-1 2 4}; do
  [ "$p" = "$default_procs" ] || millrace_py "$p" | tee -a "$results"
done

echo "== summary (medians; arrival rates as measure.py reads them)"
"$py" - "$results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"RUNNER=(\S+) .*?arrival_rate=(\d+).*? (ok|FAIL)(?: cpu_s_per_M=(\S+))?", line)
    if m:
        cpu = float(m.group(4)) if m.group(4) not in (None, "?") else None
        runs.setdefault(m.group(1), []).append((int(m.group(2)) if m.group(3) == "ok" else 0, cpu))
med = {k: statistics.median(r for r, _ in v) for k, v in runs.items()}
for name, rs in runs.items():
    cpus = [c for _, c in rs if c is not None]
    cpu = f"cpu_s_per_M {statistics.median(cpus):6.2f}" if cpus else ""
    print(f"{name:20} median {med[name]:>9,.0f}/s  runs {[r for r, _ in rs]}  {cpu}")
for py in sorted(k for k in med if k.startswith("millrace-")):
    ratios = [f"{med[py] / med[peer]:.2f}x {peer}" for peer in ("limit-json-par", "quix", "moose-py") if med.get(peer)]
    print(f"{py:20} " + ", ".join(ratios))
PY
