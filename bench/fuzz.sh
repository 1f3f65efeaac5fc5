#!/usr/bin/env bash
# The long fuzz run of issue #22: every `fuzz_` test of the worker (body splitting, record check, rows) and of the
# control plane (plan validation), in release, with PROPTEST_CASES cases per property. Prints the cases run, the
# wall time and the peak RSS of the test processes. CI runs the same tests in debug with 2,000 cases each.
#   bash bench/fuzz.sh [cases-per-property]      (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-100000}

# Built first, and the test binaries run directly: the time and memory measured are the tests' own, not cargo's
# (nor a build's, nor a wait for cargo's lock).
bins=$(cargo test --release --locked -p millrace-worker -p millrace-control-plane --lib --no-run 2>&1 \
  | tee /dev/stderr | sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))$/\1/p')
[ -n "$bins" ] || { echo "no test binaries were built"; exit 1; }

tally=$(mktemp) rusage=$(mktemp) log=$(mktemp)
trap 'rm -f "$tally" "$rusage"' EXIT
peak_kb=0 status=0
start=$(date +%s.%N)
for bin in $bins; do
  # Peak RSS from wait4's rusage: /usr/bin/time where there is one, else Python's view of the same.
  if [ -x /usr/bin/time ]; then
    PROPTEST_CASES=$cases FUZZ_TALLY=$tally /usr/bin/time -f '%M' -o "$rusage" "$bin" fuzz_ >>"$log" 2>&1 || status=$?
  else
    PROPTEST_CASES=$cases FUZZ_TALLY=$tally python3 -c '
import resource, subprocess, sys
status = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(status)' "$rusage" "$bin" fuzz_ >>"$log" 2>&1 || status=$?
  fi
  kb=$(tail -n 1 "$rusage" | tr -dc 0-9)
  [ "${kb:-0}" -gt "$peak_kb" ] && peak_kb=$kb
done
end=$(date +%s.%N)

grep -E '^test |test result' "$log" || true
if [ "$status" != 0 ]; then
  echo "FAILED (exit $status); the whole log: $log"
  exit "$status"
fi
printf 'cases per property: %s\nproperties: %s\ntotal cases: %s\nwall time: %.0f s\npeak RSS: %s MiB\n' \
  "$cases" "$(wc -l <"$tally")" "$(awk '{s += $2} END {print s + 0}' "$tally")" \
  "$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')" "$((peak_kb / 1024))"
rm -f "$log"
