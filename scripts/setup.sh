#!/usr/bin/env bash
# Installs what building and testing hpfaas needs, when it is missing:
# Debian packages (as root, via apt-get) and a Python venv at .venv with the
# SDK (editable), pytest and schemathesis (API fuzzing), and .venv-gc with the
# Globus Compute SDK. Safe to run again; does nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# systemd: only its systemd-analyze, which checks contrib/systemd's units.
# bubblewrap, podman and runc: workers in containers (tests/python/test_containers.py;
# runc because Debian's crun cannot start a container on cgroup v1 hosts).
# chromium: the dashboard's browser test (tests/python/test_dashboard.py).
packages=(pkg-config libzmq3-dev libhwloc-dev libopenmpi-dev openmpi-bin libclang-dev systemd
    bubblewrap podman runc chromium)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# promtool (Debian's prometheus; its recommends are only the web console's
# scripts): tests/metrics.rs checks the /metrics exposition with it, and
# skips that check with a note when it is missing outside CI.
if ! command -v promtool >/dev/null; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: promtool missing; the metrics exposition check will skip (sudo apt-get install --no-install-recommends prometheus)" >&2
    else
        echo "setup: installing prometheus (for promtool)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    fi
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install a Rust toolchain (rustup) first" >&2
    exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import pytest, hpfaas" 2>/dev/null; then
    echo "setup: installing the SDK and pytest into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ./python pytest
fi

# The real Globus Compute SDK, in its own venv so .venv stays stdlib-only
# (tests/python/test_globus_compute.py). About 5-30 s with network access; a
# failed install only skips those tests (outside CI).
if ! .venv-gc/bin/python -c "import globus_compute_sdk, dill" 2>/dev/null; then
    echo "setup: installing globus-compute-sdk into .venv-gc"
    [[ -x .venv-gc/bin/python ]] || python3 -m venv .venv-gc
    .venv-gc/bin/python -m pip install -q --disable-pip-version-check "globus-compute-sdk>=4,<5" \
        || echo "setup: could not install globus-compute-sdk; its tests will skip" >&2
fi
# tests/python/test_package.py builds the SDK's wheel offline with the venv's own
# setuptools, which must read SPDX license expressions (77 and newer).
if ! .venv/bin/python -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" 2>/dev/null; then
    echo "setup: installing setuptools>=77 into .venv (builds the SDK's wheel)"
    .venv/bin/python -m pip install -q --disable-pip-version-check "setuptools>=77"
fi
if [[ ! -x .venv/bin/schemathesis ]]; then
    echo "setup: installing schemathesis into .venv (API fuzzing)"
    .venv/bin/python -m pip install -q --disable-pip-version-check schemathesis
fi
