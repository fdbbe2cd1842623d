#!/usr/bin/env python3
"""Checks that docs/architecture.md matches the tree.

Every path the map names (in backticks, `{a,b}` alternatives expanded) must
exist, and every source file must be found in it: named itself, or inside a
folder the map names (`registry/src/routes/`). A crate's `lib.rs`, a
module's `mod.rs` and `main.rs` are found through their folder's other
files, since they only put the folder together.

Usage: scripts/check-architecture.py [--doc FILE] [--root DIR]
Exits 1 naming each stale path and each file the map misses.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

SOURCES = (
    "protocol/src",
    "registry/src",
    "executor/src",
    "scheduler-adapters/src",
    "rotating-log/src",
    "src",
)
PYTHON = "python/hpfaas"
TICKED = re.compile(r"`([^`\s]+)`")
PATHLIKE = re.compile(r"^[A-Za-z0-9_.{},/-]+/[A-Za-z0-9_.{},/-]*$")
ROOT_FILES = ("lib.rs", "mod.rs", "main.rs", "__init__.py")


def expand(path: str) -> list[str]:
    """`a/{b,c}.rs` -> `a/b.rs`, `a/c.rs` (one level of braces is enough)."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [
        alt
        for choice in m.group(1).split(",")
        for alt in expand(path[: m.start()] + choice + path[m.end() :])
    ]


def named_paths(doc: str) -> set[str]:
    found = set()
    for text in TICKED.findall(doc):
        if PATHLIKE.match(text) and "." in text.split("/")[-1] or text.endswith("/"):
            if PATHLIKE.match(text):
                found.update(expand(text))
    return found


def sources(root: Path) -> list[str]:
    files = []
    for folder in SOURCES:
        files += [str(p.relative_to(root)) for p in (root / folder).rglob("*.rs")]
    files += [str(p.relative_to(root)) for p in (root / PYTHON).glob("*.py")]
    return sorted(files)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root_default = Path(__file__).resolve().parent.parent
    parser.add_argument("--root", type=Path, default=root_default)
    parser.add_argument("--doc", type=Path)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    doc_path = args.doc or root / "docs" / "architecture.md"
    named = named_paths(doc_path.read_text())
    stale = sorted(p for p in named if not (root / p).exists())
    folders = [p for p in named if p.endswith("/")]
    missed = []
    for f in sources(root):
        if f in named or any(f.startswith(d) for d in folders):
            continue
        if Path(f).name in ROOT_FILES:
            continue
        missed.append(f)
    for p in stale:
        print(f"{doc_path.name} names {p}, which does not exist")
    for f in missed:
        print(f"{doc_path.name} does not say what {f} holds")
    if stale or missed:
        return 1
    print(f"{doc_path.name} names {len(named)} paths, all present; every source file is in it")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
