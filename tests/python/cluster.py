"""A user's view of the cluster for tests: their shell on the login node (HPFAAS_HOME,
the service, PATH with the PBS Pro and LSF emulators when asked), and the real Slurm
those tests need (skipped with the reason without one, a failure under CI=true)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from conftest import REPO

EMULATORS = Path(os.environ.get("HPFAAS_EMULATORS") or REPO / "tests" / "emulators" / "bin")
CLI_TIMEOUT = 60.0


def slurm_or_skip() -> None:
    """Skips (fails under CI=true) without a Slurm that answers."""
    reason = None
    if shutil.which("sinfo") is None:
        reason = "Slurm is not installed (scripts/slurm.sh up installs and starts it)"
    else:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
        if ping.returncode != 0 or "UP" not in ping.stdout:
            reason = f"Slurm is not running (scripts/slurm.sh up): {ping.stdout.strip()}"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        print(f"\nskipping: {reason}", file=sys.stderr)
        pytest.skip(reason)


class User:
    """A user's shell on the login node: their HPFAAS_HOME, the service, PATH."""

    def __init__(self, service, home: Path, emulated: bool) -> None:
        self.binary = str(service.binary)
        self.env = {
            **os.environ,
            "HPFAAS_HOME": str(home),
            "HPFAAS_URL": service.url,
            "HPFAAS_TOKEN": service.token,
        }
        self.env.pop("HPFAAS_OUTPUT", None)
        if emulated:
            self.env["PATH"] = f"{EMULATORS}:{self.env['PATH']}"
        self.home = home

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.binary, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"hpfaas {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout


def slurm_jobs(name_prefix: str) -> List[str]:
    """Ids of Slurm jobs whose name starts with `name_prefix` (PBS and LSF jobs too:
    the emulators hand their jobs to Slurm under the same name)."""
    out = subprocess.run(
        ["squeue", "--noheader", "--format=%i %j"], capture_output=True, text=True, timeout=30
    ).stdout
    return [l.split()[0] for l in out.splitlines() if len(l.split()) == 2 and l.split()[1].startswith(name_prefix)]
