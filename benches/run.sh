#!/usr/bin/env bash
# The benchmark in one command: hpfaas against Parsl's HighThroughputExecutor.
# Installs what is missing (scripts/setup.sh; .venv-bench with Parsl), builds
# the release binary and the broker_bench example, then runs
# benches/compare.py with these arguments and prints one table.
#
#   benches/run.sh [--smoke] [--hpfaas-bin PATH] [--only noop,latency,...]
#                  [--systems hpfaas,htex] [--htex-shell-tasks N] [--out FILE]
#   benches/run.sh --only soak [--minutes M] [--hpfaas-bin PATH] [--out FILE] [-- UP_FLAGS]
#
# --only soak runs benches/soak.py instead (hpfaas only, no Parsl): a steady
# SDK stream for M minutes, memory, disk and tasks/s each minute, and slopes.
#
# --smoke: tiny sizes, hpfaas only, with .venv (no Parsl): checks that every
# workload runs and returns correct results (exit status 1 if not), never
# timing. With --hpfaas-bin other than target/release/hpfaas nothing is built.
set -euo pipefail
cd "$(dirname "$0")/.."

PARSL_VERSION=2026.10.26
smoke=false
soak=false
bin=target/release/hpfaas
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
        --) break ;;
        --smoke) smoke=true ;;
        --only) [[ ${args[i + 1]:-} == soak ]] && soak=true ;;
        --only=soak) soak=true ;;
        --hpfaas-bin) bin=${args[i + 1]:-} ;;
        --hpfaas-bin=*) bin=${args[i]#*=} ;;
    esac
done

scripts/setup.sh

if [[ $bin == target/release/hpfaas || $bin == "$PWD/target/release/hpfaas" ]]; then
    cargo build --release --bin hpfaas
    if ! $soak && ! cargo build --release -p hpfaas-executor --example broker_bench; then
        echo "run.sh: note: the broker_bench example did not build; the dispatch and scale rows" \
            "will say 'not built' unless an older build is in target/release/examples" >&2
    fi
else
    echo "run.sh: using $bin as it is (nothing built)"
fi

if $soak; then
    HPFAAS_BENCH_COMMAND=benches/run.sh exec .venv/bin/python benches/soak.py "$@"
fi

if $smoke; then
    python=.venv/bin/python
else
    python=.venv-bench/bin/python
    if ! "$python" -c "import hpfaas, parsl; assert parsl.__version__ == '$PARSL_VERSION'" 2>/dev/null; then
        echo "run.sh: installing parsl==$PARSL_VERSION and the SDK into .venv-bench"
        [[ -x $python ]] || python3 -m venv .venv-bench
        "$python" -m pip install -q --disable-pip-version-check "parsl==$PARSL_VERSION" -e ./python
    fi
fi

HPFAAS_BENCH_COMMAND=benches/run.sh exec "$python" benches/compare.py "$@"
