#!/usr/bin/env bash
# Everything CI runs: start the real stack (installing what is missing), then every test against it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/stack.sh start
eval "$(bash scripts/stack.sh env)"
export RUST_BACKTRACE=1
echo "== build (the data-plane tests start real worker processes)"
cargo build --workspace --bins --locked
echo "== cargo test (unit and integration, against the real stack)"
cargo test --workspace --locked
