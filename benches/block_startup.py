"""A block of 2 managers started by mpiexec on this machine: time from
`hpfaas endpoint start` to the first task's result, and the overhead of an
MPIFunction running `true` on 4 ranks against a bare `mpiexec -n 4 true`.

    .venv/bin/python benches/block_startup.py [--bin target/release/hpfaas] [--runs 20]
Needs OpenMPI (`mpiexec`); as root the OpenMPI root overrides are set here.
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "python"))

from _service import create_token, start_service, stop_service, wait_result  # noqa: E402
from hpfaas import Client, Executor, MPIFunction  # noqa: E402

ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def where():
    import os

    return os.getpid()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default=str(REPO / "target/release/hpfaas"))
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if not shutil.which("mpiexec"):
        sys.exit("no mpiexec here: apt-get install openmpi-bin")

    home = Path(tempfile.mkdtemp(prefix="hpfaas-bench-block-"))
    service, url = start_service(args.bin, home)
    try:
        token = create_token(args.bin, home)
        d = home / "endpoints" / "block"
        d.mkdir(parents=True)
        exports = " ".join(f"{k}={v}" for k, v in ROOT_ENV.items())
        (d / "config.toml").write_text(
            "[engine]\nlauncher_options = \"--oversubscribe\"\n"
            '[provider]\ntype = "local"\nnodes_per_block = 2\nlauncher = "mpiexec"\n'
            f'init_blocks = 1\nmin_blocks = 1\nmax_blocks = 1\nworker_init = "export {exports}"\n'
        )
        env = dict(os.environ, HPFAAS_HOME=str(home), HPFAAS_URL=url, HPFAAS_TOKEN=token)
        client = Client(url=url, token=token)
        function_id = client.register_function(where)

        t0 = time.perf_counter()
        subprocess.run([args.bin, "endpoint", "start", "block"], env=env, check=True, capture_output=True)
        eid = re.search(r'"endpoint_id": "([^"]+)"', (d / "endpoint.json").read_text()).group(1)
        task = client.run(endpoint_id=eid, function_id=function_id)
        wait_result(client, task, 0.005)
        first = time.perf_counter() - t0

        bare, wrapped = [], []
        host = socket.gethostname()
        with Executor(endpoint_id=eid, client=client) as ex:
            ex.resource_specification = {"num_nodes": 2, "ranks_per_node": 2}
            ex.submit(MPIFunction("true")).result(timeout=60)  # warm-up
            for _ in range(args.runs):
                t = time.perf_counter()
                subprocess.run(["mpiexec", "-n", "4", "--host", f"{host}:4", "--bind-to", "none",
                                "--oversubscribe", "true"], env=dict(os.environ, **ROOT_ENV), check=True)
                bare.append(time.perf_counter() - t)
                t = time.perf_counter()
                r = ex.submit(MPIFunction("true")).result(timeout=60)
                wrapped.append(time.perf_counter() - t)
                assert r.returncode == 0, r
        subprocess.run([args.bin, "endpoint", "stop", "block"], env=env, check=True, capture_output=True)
        b, w = statistics.median(bare) * 1000, statistics.median(wrapped) * 1000
        print(f"machine: {os.cpu_count()} cores; {args.bin}")
        print(f"block of 2 managers (mpiexec): endpoint start to first result  {first:.2f} s")
        print(f"MPIFunction('true') on 4 ranks: median {w:.1f} ms; bare mpiexec -n 4 true: median {b:.1f} ms; "
              f"overhead {w - b:.1f} ms ({args.runs} runs)")
    finally:
        stop_service(service, home)


if __name__ == "__main__":
    main()
