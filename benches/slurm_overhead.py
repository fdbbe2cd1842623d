"""Pilot jobs on the local Slurm: time from `hpfaas endpoint start` to the
first result, and scheduler commands per minute while 4 blocks are up.

Needs root and a running Slurm (`scripts/slurm.sh up`), and a built binary:
    .venv/bin/python benches/slurm_overhead.py [--bin target/release/hpfaas]
Scheduler commands are counted by shims put first on the agent's PATH that
log each call and exec the real tool.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "python"))

from _service import create_token, start_service, stop_service, wait_result  # noqa: E402
from hpfaas import Client  # noqa: E402

TOOLS = ["sbatch", "squeue", "sacct", "scancel"]


def where():
    import os

    return os.environ.get("SLURM_JOB_ID")


def make_shims(directory, log):
    directory.mkdir()
    for tool in TOOLS:
        real = shutil.which(tool)
        shim = directory / tool
        shim.write_text(f'#!/bin/sh\necho "{tool}" >> {log}\nexec {real} "$@"\n')
        shim.chmod(0o755)


def configure(home, name, provider_keys):
    d = home / "endpoints" / name
    d.mkdir(parents=True)
    (d / "config.toml").write_text(
        "[engine]\nmax_workers_per_node = 1\n"
        '[provider]\ntype = "slurm"\npartition = "debug"\nwalltime = "00:10:00"\n' + provider_keys
    )


def endpoint(binary, env, *args):
    subprocess.run([binary, "endpoint", *args], env=env, check=True, capture_output=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default=str(REPO / "target/release/hpfaas"))
    parser.add_argument("--window", type=float, default=60.0, help="seconds to count commands over")
    args = parser.parse_args()
    if not shutil.which("sbatch") or subprocess.run(["scontrol", "ping"], capture_output=True).returncode:
        sys.exit("no Slurm here: run scripts/slurm.sh up as root first")

    home = Path(tempfile.mkdtemp(prefix="hpfaas-bench-slurm-"))
    log = home / "commands.log"
    make_shims(home / "shims", log)
    service, url = start_service(args.bin, home)
    try:
        token = create_token(args.bin, home)
        env = dict(os.environ, HPFAAS_HOME=str(home), HPFAAS_URL=url, HPFAAS_TOKEN=token,
                   PATH=f"{home / 'shims'}:{os.environ['PATH']}")
        client = Client(url=url, token=token)
        function_id = client.register_function(where)

        configure(home, "bench-first", "init_blocks = 0\nmax_blocks = 1\n")
        t0 = time.perf_counter()
        endpoint(args.bin, env, "start", "bench-first")
        started = time.perf_counter() - t0
        eid = (home / "endpoints/bench-first/endpoint.json").read_text()
        eid = re.search(r'"endpoint_id": "([^"]+)"', eid).group(1)
        task = client.run(endpoint_id=eid, function_id=function_id)
        job = wait_result(client, task, 0.01)
        first = time.perf_counter() - t0
        endpoint(args.bin, env, "stop", "bench-first")

        configure(home, "bench-four", "init_blocks = 4\nmin_blocks = 4\nmax_blocks = 4\n")
        endpoint(args.bin, env, "start", "bench-four")
        state_file = home / "endpoints/bench-four/agent.json"
        deadline = time.time() + 120
        while time.time() < deadline:
            text = state_file.read_text() if state_file.exists() else ""
            if text.count('"state": "running"') == 4:
                break
            time.sleep(0.2)
        else:
            sys.exit("4 blocks did not come up within 120 s")
        before = log.read_text().splitlines()
        time.sleep(args.window)
        during = log.read_text().splitlines()[len(before):]
        endpoint(args.bin, env, "stop", "bench-four")
        per_minute = {t: during.count(t) * 60.0 / args.window for t in TOOLS}
        total = sum(per_minute.values())

        print(f"machine: {os.cpu_count()} cores, Slurm {subprocess.run(['sinfo', '-V'], capture_output=True, text=True).stdout.strip()}")
        print(f"endpoint start returned after       {started:6.2f} s")
        print(f"first result (ran in job {job}) after {first:6.2f} s")
        print(f"scheduler commands/min, 4 blocks up: {total:.1f} "
              + ", ".join(f"{t} {n:.1f}" for t, n in per_minute.items()))
    finally:
        stop_service(service, home)


if __name__ == "__main__":
    main()
