"""What the benchmarks share: a throwaway `hpfaas service`, a token for it, and
waiting for a task's result."""

import re
import shutil
import subprocess
import time

from hpfaas import TaskPending


def start_service(binary, home):
    """`hpfaas service` on a free loopback port with its data in `home/service`: (process, url)."""
    proc = subprocess.Popen(
        [binary, "service", "--listen", "127.0.0.1:0", "--data-dir", str(home / "service")],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return proc, match.group(1)
    raise RuntimeError("the service did not start")


def create_token(binary, home, user="bench"):
    """A new user's API token for the service started in `home`."""
    return subprocess.run(
        [binary, "token", "create", "--user", user, "--data-dir", str(home / "service")],
        capture_output=True, text=True, check=True,
    ).stdout.strip()


def wait_result(client, task, poll):
    """The task's result, polling every `poll` seconds while it is pending."""
    while True:
        try:
            return client.get_result(task)
        except TaskPending:
            time.sleep(poll)


def stop_service(proc, home):
    """Stops the service and removes the benchmark's `home`."""
    proc.terminate()
    proc.wait()
    shutil.rmtree(home, ignore_errors=True)
