#!/usr/bin/env bash
# The data-plane benchmark, in one sitting on one dedicated Tansu broker (memory engine):
#   - the raw rdkafka consume-to-produce pipe (../shared/peer-bench `limit`), the physical limit;
#   - Millrace running `identity` and the reference page's `value x 2` through the Rust sidecar;
# each on a fresh 4-partition topic of N records, ROUNDS times, interleaved; then the time from kill -9 of a
# worker to its partitions producing again (bench/failover.rs). Prints a table; BENCHMARKS.md keeps the figures.
#
#   bash bench/run.sh [N] [ROUNDS]        (defaults 200000 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000} ROUNDS=${2:-3}
PEER=$(cd ../shared/peer-bench && pwd)
export PEER_BENCH_ENV=${PEER_BENCH_ENV:-$HOME/.millrace/peer-bench-env}
out=${BENCH_OUT:-/tmp/millrace-bench}; mkdir -p "$out"

bash scripts/stack.sh start
eval "$(bash scripts/stack.sh env)"
echo "== building (release)"
cargo build --release --locked -p millrace-control-plane -p millrace-worker -p millrace-bench
cargo build --release --locked -p millrace-sdk --example reference
bash "$PEER/setup.sh" >"$out/peer-setup.log" 2>&1 || { cat "$out/peer-setup.log"; exit 1; }
py=$PEER_BENCH_ENV/py/bin/python
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened"; return 1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# A broker of its own, so nothing else competes for it.
bport=$(free_port); BROKER=127.0.0.1:$bport
TANSU=${TANSU_BIN:-$HOME/.millrace/tools/tansu-0.6.0/bin/tansu}
"$TANSU" broker --listener-url "tcp://$BROKER" --advertised-listener-url "tcp://$BROKER" --storage-engine memory://tansu/ \
  >"$out/tansu.log" 2>&1 & pids+=($!)
wait_port "$bport"

cport=$(free_port) sport=$(free_port) hport=$(free_port)
db=postgres://postgres@127.0.0.1:${MILLRACE_PG_PORT:-5432}/millrace_bench
psql -q -h 127.0.0.1 -p "${MILLRACE_PG_PORT:-5432}" -U postgres -c 'DROP DATABASE IF EXISTS millrace_bench WITH (FORCE)' postgres
RUST_LOG=warn target/release/millrace-control-plane --listen 127.0.0.1:$cport --database-url "$db" \
  --kafka-brokers "$BROKER" >"$out/control-plane.log" 2>&1 & pids+=($!)
RUST_LOG=warn target/release/examples/reference --listen 127.0.0.1:$sport >"$out/sidecar.log" 2>&1 & pids+=($!)
wait_port "$cport"; wait_port "$sport"
RUST_LOG=warn target/release/millrace-worker --control-plane http://127.0.0.1:$cport --kafka-brokers "$BROKER" \
  --sidecar default=http://127.0.0.1:$sport --http-listen 127.0.0.1:$hport >"$out/worker.log" 2>&1 & pids+=($!)
wait_port "$hport"

G=$MILLRACE_GRPCURL
apply() { "$G" -plaintext -max-time 60 -d "$1" 127.0.0.1:$cport millrace.v1.ControlPlane/ApplyPlan >/dev/null; }

# One Millrace run: seed fresh topics (declared externally managed: the seeder made them), apply the transform,
# measure until N outputs are there, then drop the declarations.
millrace() {
  local fn=$1 tag src dst fields plan started result
  tag=$(date +%s%N); src=pb_src_$tag; dst=pb_dst_$tag
  "$py" "$PEER/seed.py" "$BROKER" "$src" "$dst" "$N"
  fields='[{"name":"id","type":{"scalar":"STRING"},"key":true},{"name":"value","type":{"scalar":"INT64"}}]'
  plan="{\"streams\":[{\"name\":\"$src\",\"fields\":$fields,\"parallelism\":4,\"lifeCycle\":\"EXTERNALLY_MANAGED\"},
    {\"name\":\"$dst\",\"fields\":$fields,\"parallelism\":4,\"lifeCycle\":\"EXTERNALLY_MANAGED\"}],
    \"transforms\":[{\"name\":\"bench\",\"source\":{\"name\":\"$src\"},\"destination\":{\"name\":\"$dst\"},\"function\":{\"name\":\"$fn\"}}]}"
  started=$(date +%s.%N)
  apply "{\"plan\": $plan}"
  result=$("$py" "$PEER/measure.py" "$BROKER" "$dst" "$N" 600 "$started")
  apply '{"plan": {}}'
  echo "RUNNER=millrace-$fn N=$N $result"
}

results=$out/results.txt; : >"$results"
for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  BROKER=$BROKER bash "$PEER/run.sh" limit "$N" | tee -a "$results"
  millrace identity | tee -a "$results"
  millrace bench_value_x2 | tee -a "$results"
done

echo "== failover (kill -9 of a worker; default 10 s lease)"
target/release/failover --brokers "$BROKER" --records "$N" | tee -a "$results"

echo "== summary (median records/s over $ROUNDS rounds; ratio to the raw pipe)"
"$py" - "$results" <<'PY'
import re, statistics, sys
rates = {}
for line in open(sys.argv[1]):
    m = re.match(r"RUNNER=(\S+) .*rate=(\d+).* (ok|FAIL)", line)
    if m:
        rates.setdefault(m.group(1), []).append(int(m.group(2)) if m.group(3) == "ok" else 0)
limit = statistics.median(rates.get("limit", [0])) or 1
for name, rs in rates.items():
    med = statistics.median(rs)
    print(f"{name:26} median {med:>9,.0f}/s  runs {rs}  ratio to limit {med / limit:.2f}")
PY
