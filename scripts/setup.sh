#!/usr/bin/env bash
# Installs what building and testing hpfaas needs, when it is missing:
# Debian packages (as root, via apt-get) and a Python venv at .venv with the
# SDK (editable) and pytest. Safe to run again; does nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(pkg-config libzmq3-dev libhwloc-dev libopenmpi-dev openmpi-bin libclang-dev)
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
