#!/usr/bin/env bash
# The main job, from a fresh machine: install what is missing, build
# (release), start `hpfaas up` with a private HPFAAS_HOME, run
# examples/quickstart.py through the Python SDK, and stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release --bin hpfaas

export HPFAAS_HOME
HPFAAS_HOME=$(mktemp -d -t hpfaas-quickstart.XXXXXX)
unset HPFAAS_URL HPFAAS_TOKEN
target/release/hpfaas up --workers "${WORKERS:-2}" > "$HPFAAS_HOME/up.log" 2>&1 &
up_pid=$!
trap 'kill -INT $up_pid 2>/dev/null; wait $up_pid 2>/dev/null; rm -rf "$HPFAAS_HOME"' EXIT

for _ in $(seq 300); do
    [[ -s "$HPFAAS_HOME/up.json" ]] && break
    if ! kill -0 $up_pid 2>/dev/null; then
        cat "$HPFAAS_HOME/up.log" >&2
        exit 1
    fi
    sleep 0.1
done
[[ -s "$HPFAAS_HOME/up.json" ]] || { echo "hpfaas up did not start; log:" >&2; cat "$HPFAAS_HOME/up.log" >&2; exit 1; }

.venv/bin/python examples/quickstart.py
