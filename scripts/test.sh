#!/usr/bin/env bash
# Everything CI runs: start the real stack (installing what is missing), then every test against it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/stack.sh start
eval "$(bash scripts/stack.sh env)"
export RUST_BACKTRACE=1
# The Python SDK first: the CLI tests plan Python apps with it, and `millrace dev` would install it mid-test.
bash scripts/sdk.sh
echo "== build (the data-plane tests start real worker processes)"
cargo build --workspace --bins --locked
echo "== cargo test (unit and integration, against the real stack)"
cargo test --workspace --locked
echo "== Python SDK: pytest (declarations; apps run by the real control plane, worker and Python sidecar)"
# From outside sdk-python/, so that the installed package (with its generated stubs) is the one imported.
(cd /tmp && "${MILLRACE_SDK_VENV:-$HOME/.millrace/sdk-venv}/bin/pytest" -q -p no:cacheprovider "$OLDPWD/sdk-python/tests")
echo "== faults, short form (bench/faults.sh: kill -9 of each of its processes under load; fails on any lost record or duplicates over 25%; the long form is RELIABILITY.md)"
PROFILE=debug FAULTS_OUT=/tmp/millrace-faults-ci bash bench/faults.sh 20000 ci
