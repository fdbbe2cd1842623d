"""Priorities and per-function defaults end to end (issue 19): a real `hpfaas
service` and a local endpoint with ONE worker and no prefetch, so the order the
queued tasks run in is the order the service and the broker serve them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import hpfaas_binary
from helpers import Gate, gated, wait_until

from hpfaas import Client, Executor
from hpfaas.errors import HTTPError, TaskPending

STARTUP_TIMEOUT = 60.0
RUN_TIMEOUT = 120.0
ENDPOINT = "prio"


def stamp(tag):
    """Run on the worker: when this task ran, and which it was."""
    import time

    return [time.time(), tag]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rig:
    """`hpfaas service` on a fixed port and data dir (so it can be killed and
    restarted), and one local endpoint with a single worker."""

    def __init__(self, tmp: Path):
        self.binary = hpfaas_binary()
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = tmp / "service"
        self.data_dir.mkdir()
        self.home = tmp / "home"
        self.log = open(tmp / "service.log", "ab")
        self.service = None
        self.start_service()
        done = subprocess.run(
            [str(self.binary), "token", "create", "--user", "alice"]
            + ["--data-dir", str(self.data_dir)],
            capture_output=True, text=True, timeout=STARTUP_TIMEOUT, stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr
        self.token = done.stdout.strip()
        self.ep_dir = self.home / "endpoints" / ENDPOINT
        self.ep_dir.mkdir(parents=True)
        (self.ep_dir / "config.toml").write_text(
            "[engine]\nmax_workers_per_node = 1\nprefetch_capacity = 0\n"
            "heartbeat_period = 0.5\nheartbeat_threshold = 10.0\n"
            '[provider]\ntype = "local"\ninit_blocks = 1\nmin_blocks = 1\nmax_blocks = 1\n'
        )
        self.endpoint_id = None

    def start_service(self):
        self.service = subprocess.Popen(
            [str(self.binary), "service", "--listen", f"127.0.0.1:{self.port}"]
            + ["--data-dir", str(self.data_dir)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )

        def listening():
            assert self.service.poll() is None, "the service exited"
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return True
            except OSError:
                return False

        wait_until(listening, STARTUP_TIMEOUT, "the service to listen")

    def kill_service(self):
        self.service.send_signal(signal.SIGKILL)
        self.service.wait()

    def env(self):
        return {**os.environ, "HPFAAS_HOME": str(self.home), "HPFAAS_URL": self.url,
                "HPFAAS_TOKEN": self.token}

    def endpoint(self, action: str):
        done = subprocess.run(
            [str(self.binary), "endpoint", action, ENDPOINT], env=self.env(),
            capture_output=True, text=True, timeout=STARTUP_TIMEOUT, stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, f"endpoint {action} failed: {done.stdout}{done.stderr}"
        self.endpoint_id = json.loads((self.ep_dir / "endpoint.json").read_text())["endpoint_id"]

    def client(self) -> Client:
        return Client(url=self.url, token=self.token)

    def close(self):
        if self.endpoint_id is not None:
            subprocess.run(
                [str(self.binary), "endpoint", "stop", ENDPOINT], env=self.env(),
                capture_output=True, timeout=STARTUP_TIMEOUT, stdin=subprocess.DEVNULL,
            )
        if self.service.poll() is None:
            self.service.kill()
        self.service.wait()
        self.log.close()


@pytest.fixture
def rig():
    if not hpfaas_binary().exists():
        pytest.skip(f"hpfaas binary not found at {hpfaas_binary()}")
    with tempfile.TemporaryDirectory(prefix="hpfaas-prio-") as tmp:
        r = Rig(Path(tmp))
        try:
            yield r
        finally:
            r.close()


def run_order(client: Client, task_ids: list) -> list:
    """The tags of these tasks, in the order they ran."""

    def results():
        try:
            return [client.get_result(t) for t in task_ids]
        except TaskPending:
            return None

    done = wait_until(results, RUN_TIMEOUT, "the tasks to finish")
    return [tag for _, tag in sorted(done)]


def submit(client: Client, endpoint_id: str, function_id: str, tag: str, spec=None) -> str:
    batch = client.create_batch(resource_specification=spec)
    batch.add(function_id, (tag,))
    return client.batch_run(endpoint_id, batch)["tasks"][function_id][0]


def test_higher_priorities_run_first_and_function_defaults_apply(rig):
    rig.endpoint("start")
    client = rig.client()
    plain_fn = client.register_function(stamp)
    urgent_fn = client.register_function(stamp, resource_specification={"priority": 3})
    assert client.get_function(urgent_fn)["resource_specification"] == {"priority": 3}
    gate = Gate()
    try:
        with Executor(endpoint_id=rig.endpoint_id, client=client) as ex:
            blocker = ex.submit(gated, gate.port, "blocker")
            gate.wait_arrivals(1, RUN_TIMEOUT)  # the one worker is busy from now on
            ids = [submit(client, rig.endpoint_id, plain_fn, "low", {"priority": -1})]
            ids.append(submit(client, rig.endpoint_id, plain_fn, "plain"))
            ids.append(submit(client, rig.endpoint_id, urgent_fn, "overridden", {"priority": -5}))
            ids.append(submit(client, rig.endpoint_id, urgent_fn, "defaulted"))
            ex.priority = 5
            high = ex.submit(stamp, "high")
            ids.append(wait_until(lambda: high.task_id, RUN_TIMEOUT, "the submit of `high`"))
            # The agent acknowledges a task as it hands it to the broker.
            wait_until(
                lambda: all(
                    client.get_task(t)["status"] == "waiting-for-launch" for t in ids
                ),
                RUN_TIMEOUT, "every task to reach the endpoint",
            )
            gate.open()
            assert blocker.result(RUN_TIMEOUT) == "blocker"
            order = run_order(client, ids)
    finally:
        gate.close()
    assert order == ["high", "defaulted", "plain", "low", "overridden"]


def test_invalid_priorities_are_refused_naming_them(rig):
    client = rig.client()
    rig.endpoint("start")
    f = client.register_function(stamp)
    with pytest.raises(HTTPError) as err:
        submit(client, rig.endpoint_id, f, "x", {"priority": 10**6})
    assert err.value.status == 400 and "priority" in str(err.value)
    with pytest.raises(HTTPError) as err:
        client.register_function(stamp, resource_specification={"priority": "high"})
    assert err.value.status == 400 and "priority" in str(err.value)
    with Executor(endpoint_id=rig.endpoint_id, client=client) as ex:
        with pytest.raises(ValueError, match="priority"):
            ex.priority = 1001
        with pytest.raises(TypeError, match="priority"):
            ex.priority = 2.5


def test_priorities_survive_a_sigkill_of_the_service(rig):
    # The endpoint is configured but not started: every task waits at the service.
    client = rig.client()
    rig.endpoint("start")
    rig.endpoint("stop")
    wait_until(
        lambda: client.get_endpoint_status(rig.endpoint_id).get("status") == "offline",
        STARTUP_TIMEOUT, "the endpoint to be offline",
    )
    f = client.register_function(stamp)
    urgent_fn = client.register_function(stamp, resource_specification={"priority": 2})
    ids = [
        submit(client, rig.endpoint_id, f, "low", {"priority": -3}),
        submit(client, rig.endpoint_id, f, "plain"),
        submit(client, rig.endpoint_id, urgent_fn, "defaulted"),
        submit(client, rig.endpoint_id, f, "high", {"priority": 9}),
    ]
    rig.kill_service()
    rig.start_service()
    rig.endpoint("start")
    assert run_order(rig.client(), ids) == ["high", "defaulted", "plain", "low"]
    assert client.get_task(ids[2]).get("status") == "success"
