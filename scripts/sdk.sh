#!/usr/bin/env bash
# The Python SDK's own virtualenv (~/.millrace/sdk-venv by default), with the `millrace` package of this checkout
# installed (its gRPC stubs are generated from proto/ as it builds) and the test tools. Idempotent; re-run after
# changing sdk-python/ or proto/.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MILLRACE_SDK_VENV:-$HOME/.millrace/sdk-venv}
py=$(command -v python3.11 || command -v python3)
mkdir -p "$(dirname "$venv")"
# One install at a time: several `millrace dev` (the CLI tests run three at once) must not pip into one venv together.
exec 9>"$venv.lock"
flock -w 600 9 || { echo "[sdk] another install into $venv holds $venv.lock for over 10 minutes" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "./sdk-python[test]"
# chdb (a modern ClickHouse inside Python) checks the DDL Millrace renders (sdk-python/tests/test_tables.py);
# installed once, it is large.
"$venv/bin/python" -c 'import chdb' 2>/dev/null || "$venv/bin/pip" install -q --disable-pip-version-check chdb
# pip builds in the source tree; leave it clean.
rm -rf sdk-python/build sdk-python/millrace.egg-info
echo "[sdk] millrace installed in $venv"
