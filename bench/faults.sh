#!/usr/bin/env bash
# The fault harness (issue #21; figures in RELIABILITY.md): records flow through the ingest API, a Python transform
# and table sync while one fault at a time is injected; it prints one line per fault and a Markdown table of records
# in, lost, duplicated and time to recover. Each fault runs on its own Tansu broker (memory:// storage; sqlite:// for
# broker-restart), its own Postgres database, ClickHouse database and topic namespace, and everything it starts is
# stopped on exit (a Postgres or ClickHouse it stopped is started again, on failure too).
#
#   bash bench/faults.sh [RECORDS] [FAULTS] [faults.py options...]
#
#   RECORDS   records posted per fault (default 200000), 500 a POST, at a steady rate over --flow-s (60 s)
#   FAULTS    all (default), ci (the cheap and safe ones: only the harness's own processes are touched: none
#             worker-kill worker-takeover sidecar-process sidecar-all cp-kill cp-leader), or a comma-separated list
#             of: none worker-kill worker-takeover sidecar-process sidecar-all cp-kill cp-down broker-restart
#             clickhouse-restart postgres-restart postgres-down cp-leader (two control planes, the leader killed)
#
# `all` restarts the machine's ClickHouse and Postgres (their faults): do not run it beside other tests.
# PROFILE=debug uses target/debug (what CI builds) instead of building the release binaries; FAULTS_BIN_DIR=DIR uses
# the binaries in DIR without building. FAULTS_OUT (default /tmp/millrace-faults) gets the logs, results and table.
# `ci` sets the CI options (a 12 s flow, shorter waits, a failure above the duplicate bound). Exit status: 1 on any
# lost record or duplicates over the bound (when one is set), 2 when a scenario could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-200000}
faults=${2:-all}
shift $(($# < 2 ? $# : 2))

bash scripts/stack.sh start >&2
eval "$(bash scripts/stack.sh env)"
export MILLRACE_TANSU_BIN
sdkpy=${MILLRACE_SDK_VENV:-$HOME/.millrace/sdk-venv}/bin/python
[ -x "$sdkpy" ] || bash scripts/sdk.sh
if [ -n "${FAULTS_BIN_DIR:-}" ]; then
  bin=$FAULTS_BIN_DIR   # binaries built elsewhere (say from a clean checkout of a commit)
elif [ "${PROFILE:-release}" = debug ]; then
  cargo build --workspace --bins --locked   # what scripts/test.sh builds: nothing to do there
  bin=target/debug
else
  cargo build --release --locked -p millrace-control-plane -p millrace-worker -p millrace-cli
  bin=target/release
fi

# The binaries are copied out, so that another build of the shared target dir cannot swap them mid-run; what they
# were built from is written beside them.
out=${FAULTS_OUT:-/tmp/millrace-faults}
mkdir -p "$out/bin"
cp "$bin/millrace-control-plane" "$bin/millrace-worker" "$out/bin/"
{
  if [ -n "${FAULTS_BIN_DIR:-}" ]; then
    echo "built elsewhere: $FAULTS_BIN_DIR ${FAULTS_SOURCE:-}"
  else
    echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "uncommitted changes: $(git status --porcelain 2>/dev/null | wc -l) files, diff sha256 $(git diff HEAD 2>/dev/null | sha256sum | cut -c1-16)"
  fi
  echo "binaries: $bin ($(date -u +%FT%TZ))"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
} >"$out/source.txt"

extra=()
if [ "$faults" = ci ]; then
  # The bound CI holds every fault to: duplicates at most 25% of the records in (RELIABILITY.md says where the
  # duplicates come from and what they measured).
  extra=(--flow-s 12 --catchup-s 90 --give-up-s 60 --stall-s 30 --max-dup-fraction 0.25)
fi
cat "$out/source.txt" >&2
exec "$sdkpy" bench/faults.py "$records" "$faults" --bin-dir "$out/bin" --out "$out" "${extra[@]}" "$@"
