#!/usr/bin/env bash
# Writes the Python SDK's API reference, generated from its docstrings, to
# target/sdk-docs/ (or the folder given); open OUT/hpfaas.html.
#
# pdoc writes it, from a venv of its own (.venv-docs, made and filled on the
# first run) so .venv stays stdlib-only. When pdoc cannot be installed (no
# package registry reachable), Python's own `pydoc -w` writes plainer pages
# instead, one per module, and this script says so on stderr.
# HPFAAS_SDK_DOCS_GENERATOR=pydoc chooses pydoc outright.
#
# Usage: scripts/sdk-docs.sh [OUT_DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/target/sdk-docs}
generator=${HPFAAS_SDK_DOCS_GENERATOR:-pdoc}
case $generator in
    pdoc | pydoc) ;;
    *)
        echo "sdk-docs: HPFAAS_SDK_DOCS_GENERATOR is \"$generator\"; use pdoc or pydoc" >&2
        exit 2
        ;;
esac

venv=$repo/.venv-docs
if [[ $generator == pdoc ]] && ! "$venv/bin/python" -c "import pdoc" 2>/dev/null; then
    echo "sdk-docs: installing pdoc into .venv-docs" >&2
    if ! { [[ -x $venv/bin/python ]] || python3 -m venv "$venv"; } ||
        ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "pdoc>=14"; then
        echo "sdk-docs: could not install pdoc; writing plainer pages with pydoc -w instead" >&2
        generator=pydoc
    fi
fi

mkdir -p "$out"
out=$(cd "$out" && pwd) # pydoc writes into its working directory
# The working tree's package, whatever else is installed.
export PYTHONPATH=$repo/python
# Every module by name: the package's page shows its exports (`__all__`),
# the modules' pages the rest (`Batch`, the codec, the worker runtime).
modules=(hpfaas)
for file in "$repo"/python/hpfaas/*.py; do
    name=$(basename "$file" .py)
    [[ $name == __init__ ]] || modules+=("hpfaas.$name")
done
if [[ $generator == pdoc ]]; then
    "$venv/bin/python" -m pdoc --docformat markdown --output-directory "$out" "${modules[@]}"
else
    (cd "$out" && python3 -m pydoc -w "${modules[@]}" >/dev/null)
fi
echo "sdk-docs: $generator wrote the SDK's API reference: $out/hpfaas.html"
