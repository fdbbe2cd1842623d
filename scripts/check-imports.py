#!/usr/bin/env python3
"""Reports import cycles between the files of each crate.

A file that names an item of another file of its crate (`crate::a::b`,
`super::x`, or a child module `child::y`) depends on it. Two files that
depend on each other, directly or round a longer loop, are one concept
split in two or a shared item on the wrong floor (docs/architecture.md,
"Floors"). Test modules (from the first `#[cfg(test)]` on) are left out:
tests may reach anywhere.

Usage: scripts/check-imports.py [crate_dir ...]   (default: every crate)
Exits 1 and names each cycle's files when there is one.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = ["protocol", "registry", "executor", "scheduler-adapters", "rotating-log", "."]

PATH_RE = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP_RE = re.compile(r"\buse\s+(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)
PUB_USE_RE = re.compile(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);")
MOD_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;", re.M)


def strip(text: str) -> str:
    """The file without its test module, comments and string literals."""
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def module_of(src: Path, file: Path) -> list[str]:
    """The module path of `file` inside the crate whose source root is `src`."""
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return parts


def file_of(
    modules: dict[tuple, Path], reexports: dict[tuple, list[str]], path: list[str], depth: int = 0
) -> Path | None:
    """The file defining what `path` names: the longest prefix of it that is a
    module, or, when that module only re-exports the next name (`pub use`),
    the file the name comes from."""
    for end in range(len(path), -1, -1):
        hit = modules.get(tuple(path[:end]))
        if hit is not None:
            if end < len(path) and depth < 8:
                origin = reexports.get(tuple(path[: end + 1]))
                if origin is not None:
                    return file_of(modules, reexports, origin + path[end + 1 :], depth + 1)
            return hit
    return None


def pub_uses(text: str, here: list[str], parent: list[str]) -> dict[tuple, list[str]]:
    """`(module path + name) -> absolute path` of each `pub use` in a file."""
    found = {}
    for body in PUB_USE_RE.findall(text):
        body = " ".join(body.split())
        prefix, _, group = body.partition("{")
        names = group.rstrip("}").split(",") if group else [prefix.split("::")[-1]]
        base = [w for w in prefix.split("::") if w][: -1 if not group else None]
        if base and base[0] == "crate":
            base = base[1:]
        elif base and base[0] == "super":
            base = parent + base[1:]
        else:
            base = here + [w for w in base if w != "self"]
        for name in names:
            name = name.strip()
            if not name or "{" in name or name == "*":
                continue
            item, _, alias = name.partition(" as ")
            words = [w for w in item.split("::") if w and w != "self"]
            found[tuple(here + [(alias or words[-1]).strip()])] = base + words
    return found


def expand_groups(text: str) -> list[list[str]]:
    """Every path a `use crate::a::{b, c::d}` (or `super::`) names."""
    found = []
    for root, prefix, body in USE_GROUP_RE.findall(text):
        base = [root] + [p for p in prefix.split("::") if p]
        depth, item, items = 0, "", []
        for ch in body:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                items.append(item)
                item = ""
            else:
                item += ch
        items.append(item)
        for it in items:
            head = re.split(r"[{\s]", it.strip(), maxsplit=1)[0]
            words = [w for w in head.split("::") if w and w != "self"]
            found.append(base + words)
    return found


def graph(crate: Path) -> dict[Path, set[Path]]:
    src = crate / "src"
    files = sorted(p for p in src.rglob("*.rs"))
    modules = {tuple(module_of(src, f)): f for f in files}
    texts = {f: strip(f.read_text()) for f in files}
    reexports: dict[tuple, list[str]] = {}
    for f in files:
        here = module_of(src, f)
        reexports.update(pub_uses(texts[f], here, here[:-1]))
    edges: dict[Path, set[Path]] = {f: set() for f in files}
    for f in files:
        text = texts[f]
        here = module_of(src, f)
        # `super` is the module above the one this file is.
        parent = here[:-1]
        paths = [[root] + [p for p in rest.split("::") if p] for root, rest in PATH_RE.findall(text)]
        paths += expand_groups(text)
        children = set(MOD_RE.findall(text))
        for name in children:
            # A child module used by name (`child::item`) is a dependency too.
            if re.search(rf"(?<![:\w]){name}::", text):
                paths.append(["self", name])
        for path in paths:
            root, rest = path[0], path[1:]
            if root == "crate":
                target = rest
            elif root == "self":
                target = here + rest
            else:  # super, possibly repeated
                base = parent
                while rest and rest[0] == "super":
                    base, rest = base[:-1], rest[1:]
                target = base + rest
            dep = file_of(modules, reexports, target)
            if dep is not None and dep != f:
                edges[f].add(dep)
    return edges


def cycles(edges: dict[Path, set[Path]]) -> list[list[Path]]:
    """Strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: Path) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def shown(path: Path) -> str:
    """`path` relative to the repository when it is in it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str]) -> int:
    crates = [(ROOT / c).resolve() for c in (argv or CRATES)]
    bad = 0
    for crate in crates:
        edges = graph(crate)
        for comp in cycles(edges):
            bad += 1
            names = [shown(p) for p in comp]
            print(f"import cycle in {crate.name or 'hpfaas'}: " + " <-> ".join(names))
            for a in comp:
                for b in sorted(edges[a] & set(comp)):
                    print(f"    {shown(a)} uses {shown(b)}")
    if bad:
        print(f"{bad} import cycle(s); move the shared item to the lowest file that uses it")
        return 1
    print(f"no import cycles between the files of {len(crates)} crate(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
