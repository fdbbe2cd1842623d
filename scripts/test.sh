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

# Every process this run starts carries this marker in its environment
# (agents and managers inherit it through `endpoint start`, the local provider
# and Slurm's default --export=ALL), so the cleanup ends exactly those: never
# a user's other checkouts or their own hpfaas.
HPFAAS_TEST_RUN=$(cat /proc/sys/kernel/random/uuid)
export HPFAAS_TEST_RUN

# Pids of the live processes whose environment holds this run's marker,
# except this shell and the processes of the pipeline that asks.
run_pids() {
    local dir pid
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        if { tr '\0' '\n' <"$dir/environ"; } 2>/dev/null | grep -qxF "HPFAAS_TEST_RUN=$HPFAAS_TEST_RUN"; then
            echo "$pid"
        fi
    done
}

slurm_started=
cleanup() {
    # Anything a failed test left behind (agents, managers, workers, `hpfaas
    # up`): this run's processes only, found by the marker. SIGTERM first so
    # agents cancel their blocks, then SIGKILL what is left.
    # (`if`, not `&&`: under set -e a false test would end the trap early.)
    local left
    left=$(run_pids)
    if [[ -n $left ]]; then
        echo "cleanup: ending processes this run left behind: $(echo $left)" >&2
        kill -TERM $left 2>/dev/null || true
        for _ in $(seq 50); do
            left=$(for p in $left; do [[ -d /proc/$p ]] && echo "$p"; done)
            [[ -z $left ]] && break
            sleep 0.1
        done
        if [[ -n $left ]]; then kill -KILL $left 2>/dev/null || true; fi
    fi
    if [[ -n ${HPFAAS_EMULATOR_STATE:-} ]]; then rm -rf "$HPFAAS_EMULATOR_STATE"; fi
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
stage "import cycles" 60 python3 scripts/check-imports.py
stage "architecture map" 60 python3 scripts/check-architecture.py

# The emulated PBS Pro and LSF tools (they hand jobs to the local Slurm),
# with their job records in a private directory of this run's (removed by
# the cleanup), not the shared /tmp default.
export HPFAAS_EMULATORS=$PWD/tests/emulators/bin
HPFAAS_EMULATOR_STATE=$(mktemp -d -t hpfaas-emulators-XXXXXX)
export HPFAAS_EMULATOR_STATE
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
    # Without the marker: the daemons are stopped by `slurm.sh down`, not
    # by the cleanup's kill.
    stage "slurm" 600 env -u HPFAAS_TEST_RUN scripts/slurm.sh up
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
