#!/usr/bin/env bash
# Kept for old instructions: Millrace runs with `millrace dev` (see README.md). Arguments go to it (an app file).
exec cargo run --release --locked --manifest-path "$(dirname "$0")/../Cargo.toml" --bin millrace -- dev "$@"
