"""Futures as arguments against the real service and endpoint (`hpfaas up`):
the dependent is sent at once and held by the service until its parents
succeed, then runs with their results in place; failures and cancels
reach the dependents."""

from __future__ import annotations

import threading

import pytest

from hpfaas import Client, DependencyFailed, Executor, TaskCancelled, TaskExecutionFailed

#: Generous: a debug build on a busy 2-core machine.
TIMEOUT = 90.0


def add_one(x):
    return x + 1


def total(values, extra=None):
    return sum(values["xs"]) + values["pair"][0] + (extra or 0)


def divide(a, b):
    return a / b


def wait_for_file(path):
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.05)
    return 1


@pytest.fixture(scope="module")
def client(service):
    return Client(service.url, service.token)


@pytest.fixture
def executor(service, client):
    with Executor(endpoint_id=service.endpoint_id, client=client) as ex:
        yield ex


def test_a_future_as_an_argument_runs_on_its_result(executor):
    assert executor.submit(add_one, executor.submit(add_one, 1)).result(TIMEOUT) == 3


def test_futures_nested_in_lists_dicts_tuples_and_kwargs(executor):
    a, b, c = (executor.submit(add_one, i) for i in (1, 2, 3))
    # `a` twice: one parent, one reference number.
    doc = {"xs": [a, b, a], "pair": (c, "x")}
    assert executor.submit(total, doc, extra=a).result(TIMEOUT) == 2 + 3 + 2 + 4 + 2


def test_map_over_futures(executor):
    firsts = [executor.submit(add_one, i) for i in range(5)]
    assert list(executor.map(add_one, firsts, timeout=TIMEOUT)) == [i + 2 for i in range(5)]


def test_a_chain_longer_than_a_batch_completes(executor):
    future = executor.submit(add_one, 0)
    for _ in range(30):
        future = executor.submit(add_one, future)
    assert future.result(TIMEOUT) == 31


def test_the_dependent_is_held_while_its_parent_runs(executor, client, tmp_path):
    gate = tmp_path / "go"
    parent = executor.submit(wait_for_file, str(gate))
    child = executor.submit(add_one, parent)
    # Sent at once, not after the parent: the service holds it.
    deadline = threading.Event()
    status = None
    for _ in range(int(TIMEOUT * 10)):
        if child.task_id is not None:
            status = client.get_task(child.task_id)["status"]
            if status == "waiting-for-dependencies":
                break
        deadline.wait(0.1)
    assert status == "waiting-for-dependencies"
    gate.touch()
    assert child.result(TIMEOUT) == 2


def test_a_failed_parent_fails_its_dependents_naming_it(executor):
    parent = executor.submit(divide, 1, 0)
    child = executor.submit(add_one, parent)
    grandchild = executor.submit(add_one, child)
    with pytest.raises(TaskExecutionFailed, match="ZeroDivisionError"):
        parent.result(TIMEOUT)
    for future, names in ((child, parent), (grandchild, child)):
        with pytest.raises(DependencyFailed) as failed:
            future.result(TIMEOUT)
        assert names.task_id in str(failed.value)
        assert "ZeroDivisionError" in str(failed.value)


def test_cancelling_a_parent_cancels_its_dependent(executor, tmp_path):
    parent = executor.submit(wait_for_file, str(tmp_path / "never"))
    child = executor.submit(add_one, parent)
    for _ in range(int(TIMEOUT * 10)):
        if child.task_id is not None:
            break
        threading.Event().wait(0.1)
    assert parent.cancel()
    with pytest.raises(TaskCancelled, match=parent.task_id):
        child.result(TIMEOUT)


def _run_released(args, kwargs, results):
    """What a worker makes of a dependent task's payload once the service
    appended its parents' results (`dr\\n` + their buffers, packed)."""
    from hpfaas.client import pack_call_with_parents
    from hpfaas.serialize import PARENT_RESULTS, pack, serialize, serialize_function
    from hpfaas.worker import TaskRunner

    payload, refs = pack_call_with_parents(args, kwargs, lambda o: isinstance(o, Marker))
    released = payload + pack([PARENT_RESULTS + pack([serialize(r) for r in results])])
    reply = TaskRunner().run(
        {
            "task_id": "t",
            "function_id": "f",
            "function_code": pack([serialize_function(echo)]),
            "payload": released,
        }
    )
    return refs, reply


class Marker:
    """Stands for a future: any object the reference pickler is told to number."""


def echo(*args, **kwargs):
    return args, kwargs


def test_the_worker_puts_each_result_where_its_reference_was():
    a, b = Marker(), Marker()
    refs, reply = _run_released(([a, {"k": (b, a)}],), {"x": b}, ["A", "B"])
    assert refs == [a, b]
    assert reply["ok"], reply
    from hpfaas.serialize import deserialize

    assert deserialize(reply["result"]) == ((["A", {"k": ("B", "A")}],), {"x": "B"})


def test_a_reference_without_its_result_is_a_clear_error():
    refs, reply = _run_released(([Marker(), Marker()],), None, ["only one"])
    assert len(refs) == 2
    assert not reply["ok"]
    assert "parent result" in reply["exception"]["message"], reply


def test_many_references_are_numbered_in_linear_time():
    import time

    from hpfaas.client import pack_call_with_parents

    markers = [Marker() for _ in range(50_000)]
    start = time.monotonic()
    _, refs = pack_call_with_parents(markers + markers, None, lambda o: isinstance(o, Marker))
    # Well under a second; a quadratic numbering takes minutes.
    assert time.monotonic() - start < 20
    assert len(refs) == 50_000 and refs[0] is markers[0]


def gated_add_one(x, gate):
    import os
    import time

    while not os.path.exists(gate):
        time.sleep(0.05)
    return x + 1


def test_a_dependent_of_a_cached_call_that_waited_for_an_identical_one_runs(service, client, tmp_path):
    # The second call is identical to the first, which is still running: it waits
    # for the first's result (memoization), and its dependent must be released when
    # it ends with it, not only when an endpoint reports it.
    gate = str(tmp_path / "gate")
    with Executor(endpoint_id=service.endpoint_id, client=client, cache=True) as ex:
        first = ex.submit(gated_add_one, 1, gate)
        second = ex.submit(gated_add_one, 1, gate)
        dependent = ex.submit(add_one, second)
        open(gate, "w").close()
        assert dependent.result(TIMEOUT) == 3
        assert first.result(TIMEOUT) == 2 and second.result(TIMEOUT) == 2
        doc = client.get_task(second.task_id)
        assert doc.get("cached_from") == first.task_id, doc
