#!/usr/bin/env bash
# The data-plane benchmark, in one sitting on one dedicated Tansu broker (memory engine):
#   - `limit-json-par` from ../shared/peer-bench: the raw rdkafka pipe with one consumer per partition and one
#     shared producer, doing the transform in Rust: the limit for a partition-parallel system;
#   - Millrace running `identity` and the reference page's `value x 2` through the Rust sidecar, with the CPU
#     seconds per million records of its worker and sidecar (from /proc);
# each on a fresh 4-partition topic of N records, ROUNDS times, interleaved; then the time from kill -9 and from
# SIGTERM of a worker to its partitions producing again (bench/src/bin/failover.rs), and a worker's memory with 64
# units on a backlog (bench/src/bin/memory.rs). Prints a table; BENCHMARKS.md keeps the figures.
#
#   bash bench/run.sh [N] [ROUNDS]        (defaults 1000000 and 3; BENCH_PARTS=throughput for the first part only)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000} ROUNDS=${2:-3}
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
# shellcheck source=bench/common.sh
source bench/common.sh

start_broker

cport=$(free_port) sport=$(free_port) hport=$(free_port)
db=postgres://postgres@127.0.0.1:${MILLRACE_PG_PORT:-5432}/millrace_bench
psql -q -h 127.0.0.1 -p "${MILLRACE_PG_PORT:-5432}" -U postgres -c 'DROP DATABASE IF EXISTS millrace_bench WITH (FORCE)' postgres
RUST_LOG=warn target/release/millrace-control-plane --listen 127.0.0.1:$cport --database-url "$db" \
  --kafka-brokers "$BROKER" >"$out/control-plane.log" 2>&1 & pids+=($!)
RUST_LOG=warn target/release/examples/reference --listen 127.0.0.1:$sport >"$out/sidecar.log" 2>&1 & pids+=($!)
sidecar_pid=$!
wait_port "$cport"; wait_port "$sport"
RUST_LOG=warn target/release/millrace-worker --control-plane http://127.0.0.1:$cport --kafka-brokers "$BROKER" \
  --sidecar default=http://127.0.0.1:$sport --http-listen 127.0.0.1:$hport >"$out/worker.log" 2>&1 & pids+=($!)
worker_pid=$!
wait_port "$hport"
# CPU seconds (user + system) of a process, from /proc.
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / t }' "/proc/$1/stat"; }

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
  w0=$(cpu_s "$worker_pid") s0=$(cpu_s "$sidecar_pid")
  apply "{\"plan\": $plan}"
  result=$("$py" "$PEER/measure.py" "$BROKER" "$dst" "$N" 600 "$started")
  cpu=$(awk -v w0="$w0" -v s0="$s0" -v w="$(cpu_s "$worker_pid")" -v s="$(cpu_s "$sidecar_pid")" -v n="$N" \
    'BEGIN { printf "%.2f worker=%.2f sidecar=%.2f", (w - w0 + s - s0) * 1e6 / n, (w - w0) * 1e6 / n, (s - s0) * 1e6 / n }')
  apply '{"plan": {}}'
  echo "RUNNER=millrace-$fn N=$N $result cpu_s_per_M=$cpu"
}

results=$out/results.txt; : >"$results"
for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  BROKER=$BROKER bash "$PEER/run.sh" limit-json-par "$N" | tee -a "$results"
  millrace identity | tee -a "$results"
  millrace bench_value_x2 | tee -a "$results"
done

# BENCH_PARTS=throughput skips the failover and memory parts.
if [ "${BENCH_PARTS:-all}" = all ]; then
echo "== failover (kill -9, then SIGTERM, of one of two workers; default 10 s lease)"
target/release/failover --brokers "$BROKER" --records 200000 --signal kill | tee -a "$results"
target/release/failover --brokers "$BROKER" --records 200000 --signal term | tee -a "$results"

echo "== memory (one worker, units on a backlog of 1 KB records; the bounded defaults vs librdkafka's own)"
unbounded=(--fetch-buffer-kb 65536 --max-in-flight-bytes 1073741824 --producer-buffer-kb 1048576)
target/release/memory --brokers "$BROKER" --units 64 --backlog-mb 4 | tee -a "$results"
target/release/memory --brokers "$BROKER" --units 64 --backlog-mb 4 --label unbounded -- "${unbounded[@]}" | tee -a "$results"
target/release/memory --brokers "$BROKER" --units 16 --backlog-mb 32 | tee -a "$results"
target/release/memory --brokers "$BROKER" --units 16 --backlog-mb 32 --label unbounded -- "${unbounded[@]}" | tee -a "$results"
fi

echo "== summary (medians over $ROUNDS rounds; arrival rates, as measure.py reads them, against limit-json-par's)"
"$py" - "$results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"RUNNER=(\S+) .*?arrival_rate=(\d+).*? (ok|FAIL)(?: cpu_s_per_M=(\S+))?", line)
    if m:
        cpu = float(m.group(4)) if m.group(4) not in (None, "?") else None
        runs.setdefault(m.group(1), []).append((int(m.group(2)) if m.group(3) == "ok" else 0, cpu))
limit = statistics.median(r for r, _ in runs.get("limit-json-par", [(0, None)])) or 1
for name, rs in runs.items():
    med = statistics.median(r for r, _ in rs)
    cpus = [c for _, c in rs if c is not None]
    cpu = f"cpu_s_per_M {statistics.median(cpus):.2f}" if cpus else ""
    print(f"{name:26} median {med:>9,.0f}/s  runs {[r for r, _ in rs]}  of limit-json-par {med / limit:.2f}  {cpu}")
PY
