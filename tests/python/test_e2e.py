"""End to end against a real `hpfaas up --workers 2` (skipped while the binary is not built).

Tests that break the endpoint on purpose (a lost worker, a lost manager) come
last, and check that the endpoint recovers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import wait_until

from hpfaas import Client, Executor, ShellFunction, TaskExecutionFailed, TaskPending

REPO = Path(__file__).resolve().parents[2]
#: Generous: a debug build on a busy 2-core machine may start a block slowly.
TASK_TIMEOUT = 60.0
MAP_TIMEOUT = 300.0


def square(x):
    return x * x


def add(a, b=10):
    return a + b


def fails_with_boom():
    raise ValueError("boom")


def kills_its_worker():
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def sleep_after_recording_parent(path, seconds):
    import os
    import time

    with open(path, "w") as f:
        f.write(str(os.getppid()))
    time.sleep(seconds)


@pytest.fixture(scope="module")
def client(service):
    return Client(service.url, service.token)


@pytest.fixture
def executor(service, client):
    with Executor(endpoint_id=service.endpoint_id, client=client) as ex:
        yield ex


@pytest.fixture
def up_json_only(service, monkeypatch):
    """An environment where only `$HPFAAS_HOME/up.json` says where the service is."""
    monkeypatch.setenv("HPFAAS_HOME", str(service.home))
    monkeypatch.delenv("HPFAAS_URL", raising=False)
    monkeypatch.delenv("HPFAAS_TOKEN", raising=False)


def poll_result(client, task_id, timeout=TASK_TIMEOUT):
    """`get_result`, asked again while the task is pending."""

    def probe():
        try:
            return (client.get_result(task_id),)
        except TaskPending:
            return None

    return wait_until(probe, timeout, f"task {task_id}")[0]


def test_endpoint_is_online(service, client):
    wait_until(
        lambda: client.get_endpoint_status(service.endpoint_id)["status"] == "online",
        TASK_TIMEOUT,
        "the endpoint to be online",
    )
    assert service.endpoint_id in [e["endpoint_id"] for e in client.get_endpoints()]


def test_map_10000_tasks_in_order(executor):
    results = list(executor.map(square, range(10_000), timeout=MAP_TIMEOUT))
    assert results == [x * x for x in range(10_000)]


def test_run_and_get_result(service, client):
    function_id = client.register_function(add)
    task_id = client.run(1, endpoint_id=service.endpoint_id, function_id=function_id, b=2)
    assert poll_result(client, task_id) == 3
    doc = client.get_task(task_id)
    assert (doc["status"], doc["pending"], doc["function_id"]) == ("success", False, function_id)


def test_batch_run_and_get_batch_result(service, client):
    function_id = client.register_function(add)
    batch = client.create_batch()
    for i in range(10):
        batch.add(function_id, args=(i,), kwargs={"b": 1000})
    task_ids = client.batch_run(service.endpoint_id, batch)["tasks"][function_id]

    def all_done():
        results = client.get_batch_result(task_ids)
        return results if not any(r["pending"] for r in results.values()) else None

    results = wait_until(all_done, TASK_TIMEOUT, "the batch")
    assert [results[t]["result"] for t in task_ids] == [1000 + i for i in range(10)]


def test_remote_exception(executor):
    exc = executor.submit(fails_with_boom).exception(TASK_TIMEOUT)
    assert isinstance(exc, TaskExecutionFailed)
    assert (exc.remote_type, exc.remote_message) == ("ValueError", "boom")
    assert "fails_with_boom" in exc.remote_traceback


def test_reattach_to_a_task_group_from_another_process(service, client, tmp_path):
    script = tmp_path / "submit_and_leave.py"
    script.write_text(
        textwrap.dedent(
            """
            from hpfaas import Executor

            def slow_square(x):
                import time
                time.sleep(0.5)
                return x * x

            if __name__ == "__main__":
                ex = Executor()
                futures = [ex.submit(slow_square, i) for i in range(4)]
                ex.shutdown(wait=False)  # sends the calls, does not wait for results
                print(ex.task_group_id)
            """
        )
    )
    env = {**os.environ, "HPFAAS_HOME": str(service.home), "PYTHONPATH": str(REPO / "python")}
    env.pop("HPFAAS_URL", None)
    env.pop("HPFAAS_TOKEN", None)
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    task_group_id = done.stdout.strip()

    with Executor(
        endpoint_id=service.endpoint_id, client=client, task_group_id=task_group_id
    ) as ex:
        futures = ex.reload_tasks()
        assert len(futures) == 4
        assert [f.result(TASK_TIMEOUT) for f in futures] == [0, 1, 4, 9]


def test_shell_function(executor):
    result = executor.submit(ShellFunction("echo {msg}"), msg="hi").result(TASK_TIMEOUT)
    assert (result.returncode, result.stdout) == (0, "hi\n")


def test_shell_function_walltime(executor):
    # 124 and the message are the walltime's kill, not `sleep` ending on its own.
    result = executor.submit(ShellFunction("sleep 600", walltime=0.5)).result(TASK_TIMEOUT)
    assert result.returncode == 124
    assert "walltime" in result.stderr


def test_client_finds_up_json_through_hpfaas_home(service, up_json_only):
    client = Client()
    assert client.url == service.url.rstrip("/")
    assert client.get_endpoint_status(service.endpoint_id)["status"] == "online"


def test_executor_uses_the_endpoint_of_up_json(service, up_json_only):
    with Executor() as ex:
        assert ex.endpoint_id == service.endpoint_id
        assert ex.submit(square, 12).result(TASK_TIMEOUT) == 144


def test_lost_worker_fails_its_task_only(executor):
    exc = executor.submit(kills_its_worker).exception(TASK_TIMEOUT)
    assert isinstance(exc, TaskExecutionFailed)
    assert exc.remote_type == "WorkerLost"
    assert list(executor.map(square, range(10), timeout=TASK_TIMEOUT)) == [x * x for x in range(10)]


def test_lost_manager_fails_its_task_and_a_new_block_starts(client, executor, tmp_path):
    # The task records its worker's parent, the manager, so we kill the very
    # manager that runs it, whatever the number of blocks.
    parent_file = tmp_path / "manager.pid"
    sleeper = executor.submit(sleep_after_recording_parent, str(parent_file), 30)
    wait_until(
        lambda: sleeper.task_id and client.get_task(sleeper.task_id)["status"] == "running",
        TASK_TIMEOUT,
        "the sleeping task to be running",
    )
    manager_pid = int(
        wait_until(lambda: parent_file.exists() and parent_file.read_text(), TASK_TIMEOUT, "the manager pid")
    )
    cmdline = Path(f"/proc/{manager_pid}/cmdline").read_bytes()
    assert b"hpfaas" in cmdline, f"pid {manager_pid} is not a manager: {cmdline!r}"

    os.kill(manager_pid, signal.SIGKILL)
    # The heartbeat threshold is 10 s (conftest.ENGINE_CONFIG); the wait is generous.
    exc = sleeper.exception(TASK_TIMEOUT)
    assert isinstance(exc, TaskExecutionFailed)
    assert exc.remote_type == "ManagerLost"
    assert executor.submit(square, 7).result(TASK_TIMEOUT) == 49
