#!/usr/bin/env bash
# Runs every test: installs what is missing, builds once (debug profile),
# checks formatting and lints, then Rust tests and Python tests against the
# real binaries. Each stage has its own time limit; any failure stops the run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

stage() {
    local name=$1 limit=$2
    shift 2
    echo "=== ${name}"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    echo "=== ${name}: ok in $((SECONDS - start)) s"
}

slurm_started=
cleanup() {
    # Anything a failed test left behind: agents, managers, `hpfaas up`.
    # Only on CI, where nothing else of the user's can be running.
    # (`if`, not `&&`: under set -e a false test would end the trap early.)
    if [[ ${CI:-} == true ]]; then
        pkill -f "target/debug/hpfaas" 2>/dev/null || true
    fi
    # The Slurm this run started (a Slurm that was already up stays up).
    if [[ -n $slurm_started ]]; then
        scripts/slurm.sh down || echo "warning: scripts/slurm.sh down failed" >&2
    fi
}
trap cleanup EXIT

stage "setup" 900 scripts/setup.sh
stage "build" 1200 cargo build --workspace --all-targets
stage "format" 60 cargo fmt --all -- --check
stage "lint" 900 cargo clippy --workspace --all-targets -- -D warnings

# The emulated PBS Pro and LSF tools (they hand jobs to the local Slurm).
export HPFAAS_EMULATORS=$PWD/tests/emulators/bin
# A real single-node Slurm for the batch-system tests: HPFAAS_SLURM=1 tells
# them it is there. Starting one needs root; without it they skip (and fail
# under CI=true).
if [[ $(id -u) -ne 0 ]]; then
    echo "=== slurm: not started: starting Slurm needs root; tests that need Slurm will skip"
elif scripts/slurm.sh status >/dev/null 2>&1; then
    echo "=== slurm: already running; using it, and leaving it running"
    export HPFAAS_SLURM=1
else
    slurm_started=1
    stage "slurm" 600 scripts/slurm.sh up
    export HPFAAS_SLURM=1
fi
if [[ -n ${HPFAAS_SLURM:-} ]]; then
    stage "emulator self-test" 300 tests/emulators/selftest.sh
fi
if command -v cargo-nextest >/dev/null; then
    stage "rust tests" 900 cargo nextest run --workspace --no-fail-fast
else
    stage "rust tests" 900 cargo test --workspace --no-fail-fast
fi
# schemathesis against the service's own /openapi.json (>= 2,000 requests,
# zero 5xx, the service still alive); about 20 s.
stage "api fuzz" 300 env HPFAAS_BIN="$PWD/target/debug/hpfaas" tests/fuzz/api_fuzz.sh
stage "python tests" 900 env HPFAAS_BIN="$PWD/target/debug/hpfaas" .venv/bin/python -m pytest tests/python -q -rs
# Fault injection (tests/faults): SIGKILL of a worker, a manager, the endpoint
# agent and the service mid-run; every task's result exactly once. 5,000 tasks
# per run here (about 1 min); by hand the default is 20,000.
stage "fault injection" 600 env HPFAAS_BIN="$PWD/target/debug/hpfaas" HPFAAS_FAULT_TASKS=5000 \
    .venv/bin/python -m pytest tests/faults -q -rs
# The benchmark harness's hpfaas side with tiny sizes and the debug build
# (benches/run.sh --smoke): every workload runs and returns correct results,
# so the harness cannot rot; no timing is judged. About 15 s.
stage "bench smoke" 300 benches/run.sh --smoke --hpfaas-bin target/debug/hpfaas
