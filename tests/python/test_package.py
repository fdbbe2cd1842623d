"""The SDK as a user gets it: a wheel built from `python/`, installed into a fresh venv
that holds nothing else, running the quickstart against a real `hpfaas up`."""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Building a wheel and a venv on a loaded 2-core machine; generous.
BUILD_TIMEOUT = 300.0
QUICKSTART_TIMEOUT = 300.0
#: What a fresh venv holds besides the wheel (pip, and setuptools on older Pythons).
VENV_OWN = {"pip", "setuptools"}


def _setuptools_reads_spdx() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77


def _run(cmd, timeout=BUILD_TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(c) for c in cmd],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def built():
    """`(wheel path, temporary dir)`: the wheel of a copy of `python/` (so the
    build leaves nothing in the working tree), in a directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="hpfaas-wheel-") as tmp:
        tmp = Path(tmp)
        source = tmp / "src"
        # symlinks=False: the copy holds the LICENSE the link points at.
        shutil.copytree(
            REPO / "python",
            source,
            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
        )
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source)]
        cmd += ["-w", str(tmp / "dist"), "--disable-pip-version-check"]
        if _setuptools_reads_spdx():
            cmd.append("--no-build-isolation")  # offline, and seconds faster
        else:
            print(
                "\nbuilding the wheel with build isolation (fetches setuptools>=77):"
                " this interpreter's setuptools is older; scripts/setup.sh upgrades it",
                file=sys.stderr,
            )
        _run(cmd)
        wheels = list((tmp / "dist").glob("hpfaas-*.whl"))
        assert len(wheels) == 1, f"expected one wheel, found {wheels}"
        yield wheels[0], tmp


def test_wheel_holds_every_module_the_license_and_py_typed(built):
    wheel, _ = built
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        modules = {f"hpfaas/{p.name}" for p in (REPO / "python" / "hpfaas").glob("*.py")}
        assert "hpfaas/stream.py" in modules
        assert modules <= names, f"the wheel lacks {sorted(modules - names)}"
        assert "hpfaas/py.typed" in names, "the wheel lacks py.typed (PEP 561)"
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        license_name = f"{dist_info}/licenses/LICENSE"
        assert license_name in names, f"the wheel lacks {license_name}: {sorted(names)}"
        assert whl.read(license_name) == (REPO / "LICENSE").read_bytes()
        metadata = email.parser.Parser().parsestr(whl.read(f"{dist_info}/METADATA").decode())
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text()
    assert metadata["Requires-Python"] == ">=3.9"
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    for url in metadata.get_all("Project-URL"):
        target = url.split(",", 1)[1].strip()
        assert (REPO / target).exists(), f"Project-URL {url!r} names no file of the repository"


def test_quickstart_runs_from_the_installed_wheel(built, service):
    wheel, tmp = built
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HPFAAS_URL")}
    env.pop("HPFAAS_TOKEN", None)
    env["HPFAAS_HOME"] = str(service.home)
    # In the venv: nothing but its own tools and the wheel, and hpfaas comes from it.
    probe = _run(
        [
            python,
            "-c",
            "import hpfaas, importlib.metadata as m;"
            "print(hpfaas.__file__);"
            "print(' '.join(sorted(d.metadata['Name'].lower() for d in m.distributions())))",
        ],
        cwd=tmp,
        env=env,
    )
    location, installed = probe.stdout.splitlines()
    assert Path(location).resolve().is_relative_to(venv.resolve()), location
    assert set(installed.split()) - VENV_OWN == {"hpfaas"}, installed
    done = _run(
        [python, REPO / "examples" / "quickstart.py"],
        timeout=QUICKSTART_TIMEOUT,
        cwd=tmp,
        env=env,
    )
    assert "remote error, as expected: ZeroDivisionError" in done.stdout, done.stdout
    assert "summary: 1003 tasks run on endpoint" in done.stdout, done.stdout
