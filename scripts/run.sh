#!/usr/bin/env bash
# Millrace's main job: start the local stack, then the control plane on 127.0.0.1:50051 (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/stack.sh start
eval "$(bash scripts/stack.sh env)"
cargo build --release --locked -p millrace-control-plane
echo "control plane on ${MILLRACE_LISTEN:-127.0.0.1:50051}; try: $MILLRACE_GRPCURL -plaintext ${MILLRACE_LISTEN:-127.0.0.1:50051} list"
exec target/release/millrace-control-plane
