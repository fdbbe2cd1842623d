"""The README's walk-through, as a new user follows it, against the real Slurm and the
emulated PBS Pro and LSF: `endpoint configure` (from a provider's template or a shipped
site), edit the values a site must set, `endpoint check`, `endpoint start`, the
quickstart's calls through the SDK, `endpoint stop`. Needs a running Slurm: skipped with
the reason without one, a failure under CI=true."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Optional

import pytest

from cluster import User, slurm_jobs, slurm_or_skip
from helpers import wait_until

# OpenMPI's mpiexec (the PBS and LSF launcher) refuses root unless told, as a site's
# worker_init would tell it.
AS_ROOT = "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
WORKER_INIT = AS_ROOT if os.geteuid() == 0 else ""
TASK_TIMEOUT = 180.0

# What a user at this "site" (one node, partition `debug`, no accelerators, no modules)
# edits in each starting point: key -> new value, or None to comment the key out.
EDITS: Dict[str, Dict[str, Optional[str]]] = {
    "--provider slurm": {"provider.partition": '"debug"', "engine.max_workers_per_node": "2"},
    "--provider pbs": {"provider.queue": '"debug"', "provider.worker_init": json.dumps(WORKER_INIT)},
    "--provider lsf": {"provider.queue": '"debug"', "provider.worker_init": json.dumps(WORKER_INIT)},
    "--provider local": {"engine.max_workers_per_node": "2"},
    "--site laptop": {"engine.max_workers_per_node": "2"},
    "--site slurm-test": {},
    "--site slurm-cpu": {
        "engine.address": None,
        "provider.partition": '"debug"',
        "provider.constraint": None,
        "provider.nodes_per_block": "1",
        "provider.worker_init": '""',
    },
    "--site slurm-gpu": {
        "engine.address": None,
        "engine.available_accelerators": "2",
        "provider.partition": '"debug"',
        "provider.scheduler_options": "[]",
        "provider.worker_init": '""',
    },
    "--site pbs-polaris": {
        "engine.address": None,
        "engine.available_accelerators": "2",
        "provider.nodes_per_block": "1",
        "provider.select_options": None,
        "provider.worker_init": json.dumps(WORKER_INIT),
        "provider.launcher": '"mpiexec"',
        "provider.launcher_template": None,
    },
    "--site lsf-summit": {
        "engine.address": None,
        "engine.available_accelerators": "2",
        "provider.queue": '"debug"',
        "provider.nodes_per_block": "1",
        "provider.worker_init": json.dumps(WORKER_INIT),
        "provider.launcher": '"mpiexec"',
        "provider.launcher_template": None,
    },
}

# The environment variable a block's job sets, by the provider a starting point uses.
JOB_VARIABLE = {"slurm": "SLURM_JOB_ID", "pbs": "PBS_JOBID", "lsf": "LSB_JOBID", "local": None}


def edit(text: str, section: str, key: str, value: Optional[str]) -> str:
    """`key` of `[section]` set to `value` (uncommenting its line), or commented out."""
    lines = text.splitlines()
    table = ""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            if table == section:
                break  # not in the section: added at its end below
            table = stripped.strip("[]").strip()
            continue
        m = re.match(r"#?\s*([A-Za-z_]+)\s*=", stripped)
        if table != section or not m or m.group(1) != key:
            continue
        # A multi-line value's continuation lines go with its key.
        end = i + 1
        if stripped.count('"""') == 1:
            while end < len(lines) and '"""' not in lines[end]:
                end += 1
            end += 1
        elif re.search(r"=\s*\[[^\]]*$", stripped):
            while end < len(lines) and "]" not in lines[end - 1]:
                end += 1
        if value is None:
            lines[i:end] = ["# " + l for l in lines[i:end]]
        else:
            lines[i:end] = [f"{key} = {value}"]
        return "\n".join(lines) + "\n"
    assert value is not None, f"{section}.{key} is not in the file to comment out"
    at = next(
        (j for j, l in enumerate(lines) if l.strip() == f"[{section}]"),
        None,
    )
    assert at is not None, f"no [{section}] in the file"
    end = at + 1
    while end < len(lines) and not lines[end].strip().startswith("["):
        end += 1
    lines.insert(end, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def square(x):
    return x * x


@pytest.mark.parametrize("start", list(EDITS))
def test_walkthrough(service, start: str) -> None:
    slurm_or_skip()
    from hpfaas import Client, Executor, ShellFunction

    name = "walk-" + re.sub(r"[^a-z0-9]+", "-", start.strip("-"))
    emulated = "pbs" in start or "lsf" in start
    with tempfile.TemporaryDirectory(prefix="hpfaas-walk-") as tmp:
        user = User(service, Path(tmp), emulated)
        try:
            user.ok("endpoint", "configure", name, *start.split())
            path = Path(tmp) / "endpoints" / name / "config.toml"
            text = path.read_text()
            kind = re.search(r'^type = "(\w+)"', text, re.M).group(1)
            for dotted, value in EDITS[start].items():
                section, key = dotted.split(".")
                text = edit(text, section, key, value)
            path.write_text(text)

            done = user.run("--output", "json", "endpoint", "check", name)
            report = json.loads(done.stdout)
            assert done.returncode == 0 and report["ok"], json.dumps(report, indent=1)
            verdicts = {f["check"]: f["verdict"] for f in report["findings"]}
            assert verdicts["scheduler"] == "ok" and verdicts["credential"] == "ok", report
            if kind == "slurm":
                assert "#SBATCH --partition=debug" in report["job_script"], report["job_script"]

            started = json.loads(user.ok("--output", "json", "endpoint", "start", name))
            endpoint_id = started["endpoint_id"]
            assert endpoint_id, started

            variable = JOB_VARIABLE[kind]
            client = Client(service.url, service.token)
            with Executor(endpoint_id=endpoint_id, client=client) as ex:
                assert list(ex.map(square, range(10))) == [x * x for x in range(10)]
                # `{}` is ShellFunction's keyword syntax: the variable goes without it.
                shell = ShellFunction("hostname; echo job=$%s" % (variable or "HOME"))
                stdout = ex.submit(shell).result(timeout=TASK_TIMEOUT).stdout
            lines = stdout.split()
            assert lines and lines[0], stdout
            if variable:
                assert lines[-1] != "job=", f"the task did not run in a {kind} job: {stdout}"

            user.ok("endpoint", "stop", name)
            wait_until(lambda: not slurm_jobs(f"hpfaas-{name}"), 60, f"the blocks of {name} to end")
        finally:
            user.run("endpoint", "stop", name)
            for job in slurm_jobs(f"hpfaas-{name}"):
                subprocess.run(["scancel", job], capture_output=True, timeout=30)


def test_check_finds_what_a_site_config_needs_changed(service) -> None:
    """Unedited, a site's config names an interface this machine lacks: `check` says so
    with the key and the interfaces there are, and exits non-zero; `start` refuses too."""
    slurm_or_skip()
    with tempfile.TemporaryDirectory(prefix="hpfaas-walk-") as tmp:
        user = User(service, Path(tmp), emulated=False)
        user.ok("endpoint", "configure", "raw", "--site", "slurm-cpu")
        done = user.run("endpoint", "check", "raw")
        assert done.returncode != 0, done.stdout
        assert re.search(r"FAIL\s+broker address\s+engine.address = \"ib0\"", done.stdout), done.stdout
        assert "would not start" in done.stderr, done.stderr
        started = user.run("endpoint", "start", "raw")
        assert started.returncode != 0 and "ib0" in started.stderr, started.stderr
