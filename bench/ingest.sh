#!/usr/bin/env bash
# The ingest and table-sync benchmark, in one sitting on one dedicated Tansu broker (memory engine):
#   - ingest: Millrace's POST /ingest/<name> driven by ../shared/peer-bench's own load generator (wrk with ingest.lua,
#     64 keep-alive connections, every id once, bodies built before the clock) and checked the same way (the topic
#     consumed afterwards: every id once), at 1000 and 100 records per POST, beside peer-bench's `raw` (one Rust
#     rdkafka producer) and `moose` (the reference product's own ingest API), ROUNDS times interleaved;
#   - sync: N records already in a 4-partition topic inserted into ClickHouse by Millrace's sync units, beside the
#     smaller of two bounds: a raw consume of the topic with one consumer per partition (target/release/consume) and
#     clickhouse-client inserting the same rows as JSONEachRow;
#   - latency: records POSTed at 1,000 a second for 20 s, and the time until each is visible in ClickHouse.
# Prints a summary; BENCHMARKS.md keeps the figures.
#
#   bash bench/ingest.sh [N] [ROUNDS]        (defaults 1000000 and 3; BENCH_PARTS=ingest|sync|latency for one part)
#   BENCH_TLS=1 also runs each ingest round against a second worker serving HTTPS that wants an ingest token
#   (RUNNER=millrace-ingest-tls), beside the plain one.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000} ROUNDS=${2:-3} PARTS=${BENCH_PARTS:-all}
PEER=$(cd ../shared/peer-bench && pwd)
export PEER_BENCH_ENV=${PEER_BENCH_ENV:-$HOME/.millrace/peer-bench-env}
out=${BENCH_OUT:-/tmp/millrace-bench-ingest}; mkdir -p "$out"

bash scripts/stack.sh start
eval "$(bash scripts/stack.sh env)"
echo "== building (release)"
cargo build --release --locked -p millrace-control-plane -p millrace-worker -p millrace-bench
# BENCH_BIN_DIR: the control plane and worker of another build (say an earlier commit's), to compare in one sitting.
bin=${BENCH_BIN_DIR:-target/release}
bash "$PEER/setup.sh" >"$out/peer-setup.log" 2>&1 || { cat "$out/peer-setup.log"; exit 1; }
command -v wrk >/dev/null || { apt-get update -qq >/dev/null; apt-get install -y -qq wrk >/dev/null; }
py=$PEER_BENCH_ENV/py/bin/python
check() { "$py" "$PEER/ingest_check.py" "$@"; }
ticks() { [ -r "/proc/$1/stat" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
hz=$(getconf CLK_TCK)
# shellcheck source=bench/common.sh
source bench/common.sh

start_broker

db=millrace_bench_ingest
cport=$(free_port) hport=$(free_port)
psql -q -h 127.0.0.1 -p "${MILLRACE_PG_PORT:-5432}" -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres
curl -s "$MILLRACE_CLICKHOUSE_URL" --data-binary "DROP DATABASE IF EXISTS $db" >/dev/null
RUST_LOG=warn "$bin"/millrace-control-plane --listen 127.0.0.1:$cport \
  --database-url "postgres://postgres@127.0.0.1:${MILLRACE_PG_PORT:-5432}/$db" --kafka-brokers "$BROKER" \
  --clickhouse-database "$db" >"$out/control-plane.log" 2>&1 & pids+=($!)
wait_port "$cport"
RUST_LOG=warn "$bin"/millrace-worker --control-plane http://127.0.0.1:$cport --kafka-brokers "$BROKER" \
  --http-listen 127.0.0.1:$hport >"$out/worker.log" 2>&1 & pids+=($!)
worker_pid=$!
wait_port "$hport"
if [ "${BENCH_TLS:-0}" = 1 ]; then
  # A second worker: HTTPS (a self-signed certificate for 127.0.0.1) and an ingest token.
  make_certs "$out"
  export BENCH_TOKEN=bench-ingest-token PEER_INGEST_LUA=$PEER/ingest.lua
  tport=$(free_port)
  RUST_LOG=warn "$bin"/millrace-worker --control-plane http://127.0.0.1:$cport --kafka-brokers "$BROKER" \
    --http-listen 127.0.0.1:$tport --tls-cert "$out/tls.pem" --tls-key "$out/tls.key" --ingest-token "$BENCH_TOKEN" \
    >"$out/worker-tls.log" 2>&1 & pids+=($!)
  tls_pid=$!
  wait_port "$tport"
fi
apply() { "$MILLRACE_GRPCURL" -plaintext -max-time 60 -d "{\"plan\": $1}" 127.0.0.1:$cport millrace.v1.ControlPlane/ApplyPlan >/dev/null; }
fields='[{"name":"id","type":{"scalar":"STRING"},"key":true},{"name":"value","type":{"scalar":"INT64"}}]'
ch() { curl -sS "$MILLRACE_CLICKHOUSE_URL" --data-binary "$1"; }

# One Millrace ingest run: a fresh stream and ingest API, the peers' warm-up, load and count.
millrace_ingest() {
  local per=$1 tls=${2:-} tag name url line secs codes rate result pid=$worker_pid runner=millrace-ingest script=$PEER/ingest.lua
  tag=$(date +%s%N); name=pb_ingest_$tag; url=http://127.0.0.1:$hport/ingest/$name
  if [ -n "$tls" ]; then
    url=https://127.0.0.1:$tport/ingest/$name pid=$tls_pid runner=millrace-ingest-tls script=bench/ingest_token.lua
  fi
  apply "{\"streams\":[{\"name\":\"$name\",\"fields\":$fields,\"parallelism\":4}],
    \"ingestApis\":[{\"name\":\"$name\",\"destination\":{\"name\":\"$name\"}}]}"
  "$py" - "$url" "$per" <<'PY'
import http.client, json, os, ssl, sys, time
from urllib.parse import urlparse
u, per = urlparse(sys.argv[1]), int(sys.argv[2])
headers = {"content-type": "application/json"}
if u.scheme == "https":
    headers["authorization"] = "Bearer " + os.environ["BENCH_TOKEN"]
for k in range(10):
    for _ in range(100):
        if u.scheme == "https":
            c = http.client.HTTPSConnection(u.hostname, u.port, timeout=30, context=ssl._create_unverified_context())
        else:
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        c.request("POST", u.path, json.dumps([{"id": f"w{k}_{i}", "value": i} for i in range(per)]), headers)
        r = c.getresponse(); r.read()
        if r.status == 200:
            break
        time.sleep(0.1)
    assert r.status == 200, r.status
PY
  local w0 b0 w1 b1
  w0=$(ticks "$pid") b0=$(ticks "$broker_pid")
  wrk -t1 -c 64 -d 300s --timeout 60s -s "$script" "$url" -- "$N" "$per" >"$out/wrk.out" 2>&1
  w1=$(ticks "$pid") b1=$(ticks "$broker_pid")
  line=$(grep '^posts=' "$out/wrk.out")
  secs=$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$line"); codes=$(sed -n 's/.*codes=\([^ ]*\).*/\1/p' <<<"$line")
  rate=$(awk -v n="$N" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
  result=$(check count "$BROKER" "$name" "$N") || true
  echo "RUNNER=$runner N=$N per_post=$per conns=64 rate=$rate codes=$codes $result" \
    "server_cpu=$(awk -v t=$((w1 - w0)) -v hz="$hz" -v s="$secs" 'BEGIN { printf "%.2f", t / hz / s }')" \
    "server_cpu_s_per_M=$(awk -v t=$((w1 - w0)) -v hz="$hz" -v n="$N" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')" \
    "broker_cpu=$(awk -v t=$((b1 - b0)) -v hz="$hz" -v s="$secs" 'BEGIN { printf "%.2f", t / hz / s }')"
  apply '{}'
}

results=$out/results.txt; : >"$results"
if [ "$PARTS" = all ] || [ "$PARTS" = ingest ]; then
  for r in $(seq "$ROUNDS"); do
    echo "== ingest round $r"
    # BENCH_PEERS=0 runs Millrace alone (for profiling).
    [ "${BENCH_PEERS:-1}" = 0 ] || BROKER=$BROKER bash "$PEER/ingest.sh" raw "$N" | tee -a "$results"
    for per in ${BENCH_PER_POST:-1000 100}; do
      [ "${BENCH_PEERS:-1}" = 0 ] || BROKER=$BROKER bash "$PEER/ingest.sh" moose "$N" "$per" | tee -a "$results"
      millrace_ingest "$per" | tee -a "$results"
      if [ "${BENCH_TLS:-0}" = 1 ]; then millrace_ingest "$per" tls | tee -a "$results"; fi
    done
  done
fi

if [ "$PARTS" = all ] || [ "$PARTS" = sync ]; then
  for r in $(seq "$ROUNDS"); do
    echo "== sync round $r"
    tag=$(date +%s%N); topic=pb_sync_$tag
    check create "$BROKER" "$topic" 4
    "$PEER_BENCH_ENV/target/release/peer-bench-limit" produce "$BROKER" "$topic" "$N" ids >/dev/null
    line=$(target/release/consume --brokers "$BROKER" --topic "$topic" --partitions 4 --records "$N")
    echo "RUNNER=raw-consume N=$N $line" | tee -a "$results"
    # clickhouse-client: the same rows as JSONEachRow, from a file.
    "$py" -c "import sys; w=sys.stdout.write; [w('{\"id\":\"%d\",\"value\":%d}\n' % (i, i)) for i in range($N)]" >"$out/rows.json"
    ch "CREATE DATABASE IF NOT EXISTS $db"
    ch "CREATE TABLE $db.ch_$tag (id String, value Int64) ENGINE = MergeTree ORDER BY id"
    t0=$(date +%s.%N)
    clickhouse-client --port "${MILLRACE_CH_TCP_PORT:-9000}" --query "INSERT INTO $db.ch_$tag FORMAT JSONEachRow" <"$out/rows.json"
    t1=$(date +%s.%N)
    echo "RUNNER=clickhouse-client N=$N rate=$(awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')" | tee -a "$results"
    # Millrace: the topic declared (externally managed: it exists), synced into a new table.
    t0=$(date +%s.%N)
    apply "{\"streams\":[{\"name\":\"$topic\",\"fields\":$fields,\"parallelism\":4,\"lifeCycle\":\"EXTERNALLY_MANAGED\",
      \"destination\":{\"name\":\"sync_$tag\"}}],\"tables\":[{\"name\":\"sync_$tag\",\"fields\":$fields}]}"
    first=
    while :; do
      n=$(ch "SELECT count() FROM $db.sync_$tag" 2>/dev/null || echo 0)
      [ -z "$first" ] && [ "${n:-0}" -gt 0 ] && first=$(date +%s.%N)
      [ "${n:-0}" -ge "$N" ] && break
      sleep 0.05
    done
    t1=$(date +%s.%N)
    echo "RUNNER=millrace-sync N=$N rows=$n rate=$(awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')" \
      "rate_after_first_rows=$(awk -v n="$N" -v a="$first" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')" | tee -a "$results"
    apply '{}'
  done
fi

if [ "$PARTS" = all ] || [ "$PARTS" = latency ]; then
  echo "== latency: 1,000 records/s for 20 s, POST to row visible"
  tag=$(date +%s%N); name=pb_lat_$tag
  apply "{\"streams\":[{\"name\":\"$name\",\"fields\":$fields,\"parallelism\":4,\"destination\":{\"name\":\"$name\"}}],
    \"tables\":[{\"name\":\"$name\",\"fields\":$fields}],\"ingestApis\":[{\"name\":\"$name\",\"destination\":{\"name\":\"$name\"}}]}"
  "$py" - "http://127.0.0.1:$hport/ingest/$name" "$MILLRACE_CLICKHOUSE_URL" "$db.$name" <<'PY' | tee -a "$results"
import http.client, json, sys, threading, time, urllib.request
from urllib.parse import urlparse
u, ch, table = urlparse(sys.argv[1]), sys.argv[2], sys.argv[3]
sent, seen, total = {}, {}, 20_000
def poll():
    # Every id each time (at most 20,000): ClickHouse 18.16 cannot filter a String column by toUInt64.
    q = f"SELECT id FROM {table} FORMAT TSV".encode()
    while len(seen) < total:
        now = time.monotonic()
        for line in urllib.request.urlopen(ch, data=q, timeout=30).read().decode().split():
            seen.setdefault(int(line), now)
        time.sleep(0.02)
t = threading.Thread(target=poll, daemon=True); t.start()
c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
start = time.monotonic()
for b in range(0, total, 10):   # 10 records every 10 ms
    time.sleep(max(0, start + b / 1000 - time.monotonic()))
    body = json.dumps([{"id": str(i), "value": i} for i in range(b, b + 10)])
    at = time.monotonic()
    c.request("POST", u.path, body, {"content-type": "application/json"}); r = c.getresponse(); r.read()
    assert r.status == 200, (r.status, r.read())
    for i in range(b, b + 10): sent[i] = at
t.join(60)
lat = sorted(seen[i] - sent[i] for i in seen if i in sent)
assert lat, "no record became visible"
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"RUNNER=millrace-latency records={len(lat)} rate=1000/s p50_s={p(0.5):.3f} p99_s={p(0.99):.3f} max_s={lat[-1]:.3f}")
PY
  apply '{}'
fi

echo "== summary (medians)"
"$py" - "$results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"RUNNER=(\S+) N=\d+(?: per_post=(\S+))?.*? rate=(\d+)", line)
    if m:
        name = m.group(1) + (f"@{m.group(2)}" if m.group(2) not in (None, "-") else "")
        ok = " FAIL" not in line
        cpu = re.search(r"server_cpu=([\d.]+)", line)
        runs.setdefault(name, []).append((int(m.group(3)) if ok else 0, float(cpu.group(1)) if cpu else None))
    elif line.startswith("RUNNER=millrace-latency"):
        print(line.strip())
med = {k: statistics.median(r for r, _ in v) for k, v in runs.items()}
for name, rs in runs.items():
    cpus = [c for _, c in rs if c is not None]
    print(f"{name:26} median {med[name]:>11,.0f}/s  runs {[r for r, _ in rs]}" + (f"  server cores {statistics.median(cpus):.2f}" if cpus else ""))
raw = med.get("raw")
for per in ("1000", "100"):
    m, mo = med.get(f"millrace-ingest@{per}"), med.get(f"moose-ingest@{per}")
    if m and raw:
        print(f"millrace-ingest@{per}: {m / raw:.2f}x raw" + (f", {m / mo:.2f}x moose" if mo else ""))
bound = min(v for k, v in med.items() if k in ("raw-consume", "clickhouse-client")) if "raw-consume" in med else None
if bound and med.get("millrace-sync"):
    print(f"millrace-sync: {med['millrace-sync'] / bound:.2f}x the bound ({bound:,.0f}/s)")
PY
