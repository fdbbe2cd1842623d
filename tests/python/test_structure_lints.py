"""The structure lints: `scripts/check-imports.py` (no import cycles between the files of a
crate) and `scripts/check-architecture.py` (docs/architecture.md matches the tree)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "check-imports.py"


def write_crate(root: Path, files: dict) -> Path:
    for name, text in files.items():
        path = root / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def check(crate: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(crate)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "files, cycle",
    [
        pytest.param(
            {
                "lib.rs": "pub mod db;\n",
                "db/mod.rs": "pub mod tasks;\npub fn now() -> f64 { tasks::count() as f64 }\n",
                "db/tasks.rs": "use super::now;\npub fn count() -> usize { 1 }\n",
            },
            ["src/db/mod.rs", "src/db/tasks.rs"],
            id="super-and-child-module",
        ),
        pytest.param(
            {
                "lib.rs": "pub mod a;\npub mod b;\n",
                "a.rs": "use crate::{b::{self, B}};\npub struct A;\n",
                "b.rs": "use crate::a::A;\npub struct B;\n",
            },
            ["src/a.rs", "src/b.rs"],
            id="grouped-use",
        ),
        pytest.param(
            # lib.rs re-exports a type from a lower file and uses a provider;
            # the provider names the type through the re-export: no cycle.
            {
                "lib.rs": "pub mod kinds;\npub mod slurm;\npub use kinds::{Job, State as JobState};\n"
                "pub fn build() { slurm::submit(); }\n",
                "kinds.rs": "pub struct Job;\npub enum State { A }\n",
                "slurm.rs": "use crate::{Job, JobState};\npub fn submit() {}\n",
            },
            None,
            id="re-export",
        ),
    ],
)
def test_cycles_are_found_by_what_the_paths_resolve_to(tmp_path, files, cycle):
    out = check(write_crate(tmp_path, files))
    if cycle is None:
        assert out.returncode == 0, out.stdout
    else:
        assert out.returncode == 1, out.stdout
        assert " <-> ".join(str(tmp_path / f) for f in cycle) in out.stdout


def test_tests_and_comments_do_not_count(tmp_path):
    crate = write_crate(
        tmp_path,
        {
            "lib.rs": "pub mod a;\npub mod b;\n",
            "a.rs": "// see crate::b::B\npub struct A;\n"
            '#[cfg(test)]\nmod tests { use crate::b::B; }\n',
            "b.rs": 'use crate::a::A;\npub const S: &str = "crate::a::A";\n',
        },
    )
    assert check(crate).returncode == 0


def test_a_stale_path_and_an_unnamed_file_are_named(tmp_path):
    doc = tmp_path / "docs" / "architecture.md"
    doc.parent.mkdir()
    for name in ["src/main.rs", "src/up.rs", "src/gone_soon.rs", "registry/src/db/a.rs"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    doc.write_text("| up | `src/up.rs` |\n| db | `registry/src/db/` |\n| old | `src/old.rs` |\n")
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check-architecture.py"), "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stdout
    assert "names src/old.rs, which does not exist" in out.stdout
    assert "does not say what src/gone_soon.rs holds" in out.stdout
    # Named files, files in named folders and main.rs are found.
    assert "src/up.rs holds" not in out.stdout and "db/a.rs" not in out.stdout
    assert "main.rs" not in out.stdout
