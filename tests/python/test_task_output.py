"""A Python task's prints, end to end against a real `hpfaas up`: kept by its
worker (the first and last 16 KiB of each stream by default), stored with its
result, and given back by `TaskFuture`, `Client.get_task`/`get_output`,
`get_batch_result` and a failed task's exception."""

from __future__ import annotations

import pytest

from hpfaas import Client, Executor, TaskExecutionFailed, TaskOutput

#: Generous: a debug build on a busy 2-core machine may start a block slowly.
TASK_TIMEOUT = 120.0
HALF = 16 * 1024


def prints_a_mebibyte(tag):
    import sys

    print(f"BEGIN-{tag}" + "x" * (1 << 20) + f"END-{tag}")
    sys.stderr.write(f"note from {tag}\n")
    return tag


def prints_then_raises():
    print("about to fail")
    raise ValueError("boom")


def prints_then_kills_its_worker():
    import os
    import signal

    print("last words")
    os.kill(os.getpid(), signal.SIGKILL)


def says(word):
    print(word)
    return word


def silent():
    return 1


@pytest.fixture(scope="module")
def client(service):
    return Client(service.url, service.token)


def test_a_mebibyte_of_output_keeps_its_head_and_tail_and_counts_the_rest(service, client):
    with Executor(endpoint_id=service.endpoint_id, client=client) as ex:
        future = ex.submit(prints_a_mebibyte, "t1")
        assert future.result(TASK_TIMEOUT) == "t1"
    out = future.output()
    total = len("BEGIN-t1") + (1 << 20) + len("END-t1\n")
    assert out.stdout.startswith("BEGIN-t1xxx") and out.stdout.endswith("xxxEND-t1\n")
    assert out.stdout_dropped == total - 2 * HALF
    assert f"[hpfaas: {total - 2 * HALF} bytes of output dropped here]" in out.stdout
    assert (out.stderr, out.stderr_dropped) == ("note from t1\n", 0)
    assert (future.stdout, future.stderr) == (out.stdout, out.stderr)
    # The same output from the service's routes.
    doc = client.get_task(future.task_id)
    assert doc["output"]["stdout_dropped"] == out.stdout_dropped
    assert client.get_output(future.task_id) == out
    batch = client.get_batch_result([future.task_id])[future.task_id]
    assert batch["result"] == "t1" and batch["output"] == out


def test_a_raising_tasks_output_is_kept(service, client):
    with Executor(endpoint_id=service.endpoint_id, client=client) as ex:
        future = ex.submit(prints_then_raises)
        error = future.exception(TASK_TIMEOUT)
    assert isinstance(error, TaskExecutionFailed) and error.remote_type == "ValueError"
    assert error.output == TaskOutput(stdout="about to fail\n")
    assert future.stdout == "about to fail\n"
    with pytest.raises(TaskExecutionFailed) as raised:
        client.get_result(future.task_id)
    assert raised.value.output.stdout == "about to fail\n"


def test_a_silent_task_has_no_output_key(service, client):
    with Executor(endpoint_id=service.endpoint_id, client=client) as ex:
        future = ex.submit(silent)
        assert future.result(TASK_TIMEOUT) == 1
    assert future.output() == TaskOutput()
    assert "output" not in client.get_task(future.task_id)
    assert client.get_output(future.task_id) == TaskOutput()


def test_a_worker_killed_mid_task_loses_that_output_only(service, client):
    with Executor(endpoint_id=service.endpoint_id, client=client) as ex:
        lost = ex.submit(prints_then_kills_its_worker)
        error = lost.exception(TASK_TIMEOUT)
        assert isinstance(error, TaskExecutionFailed) and error.remote_type == "WorkerLost"
        assert lost.output() == TaskOutput()
        # The replacement workers run tasks, each with only its own output.
        futures = [ex.submit(says, f"w{i}") for i in range(4)]
        for i, f in enumerate(futures):
            assert f.result(TASK_TIMEOUT) == f"w{i}"
            assert f.output() == TaskOutput(stdout=f"w{i}\n")


def test_the_endpoints_python_output_limit_reaches_its_workers():
    """`engine.python_output_limit` goes from the endpoint's config through the
    agent and the manager to each worker."""
    from conftest import hpfaas_binary, running_up

    binary = hpfaas_binary()
    if not binary.exists():
        pytest.skip(f"hpfaas binary not found at {binary}")
    with running_up(binary, "hpfaas-output-", "python_output_limit = 64\n") as up:
        client = Client(up.url, up.token)
        with Executor(endpoint_id=up.endpoint_id, client=client) as ex:
            future = ex.submit(prints_a_mebibyte, "t2")
            assert future.result(TASK_TIMEOUT) == "t2"
    out = future.output()
    total = len("BEGIN-t2") + (1 << 20) + len("END-t2\n")
    assert out.stdout_dropped == total - 64
    assert out.stdout.startswith("BEGIN-t2" + "x" * 24) and out.stdout.endswith("xxxEND-t2\n")
