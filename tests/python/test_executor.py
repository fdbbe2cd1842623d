"""`Executor` against the in-process fake service: batching, the result stream, shutdown."""

from __future__ import annotations

import concurrent.futures
import io
import json
import logging
import threading

import pytest
from fake_service import TOKEN

from hpfaas import (
    Executor,
    HpfaasError,
    ShellFunction,
    ShellResult,
    TaskExecutionFailed,
)
from hpfaas.errors import HTTPError
from hpfaas.executor import _sse_events

TIMEOUT = 10.0


def square(x):
    return x * x


def fails_with_boom():
    raise ValueError("boom")


@pytest.fixture
def executor(fake, fake_client):
    with Executor(endpoint_id=fake.endpoint_id, client=fake_client) as ex:
        yield ex


def hpfaas_threads():
    return [t for t in threading.enumerate() if t.name.startswith("hpfaas-")]


def test_map_returns_results_in_order_with_few_requests(fake, executor):
    assert list(executor.map(square, range(1000), timeout=TIMEOUT)) == [x * x for x in range(1000)]
    assert len(fake.functions) == 1, "the function is registered once"
    # Submits are batched while a request is in flight, not sent one by one.
    assert len(fake.submit_bodies) < 100
    assert {body["task_group_id"] for body in fake.submit_bodies} == {executor.task_group_id}


def test_batch_size_caps_a_request(fake, fake_client):
    fake.accept_submits.clear()
    with Executor(endpoint_id=fake.endpoint_id, client=fake_client, batch_size=7) as ex:
        futures = [ex.submit(square, i) for i in range(50)]
        fake.accept_submits.set()
        assert [f.result(TIMEOUT) for f in futures] == [i * i for i in range(50)]
    assert max(sum(map(len, b["tasks"].values())) for b in fake.submit_bodies) == 7


def test_futures_carry_task_ids_and_exceptions(executor):
    ok = executor.submit(square, 3)
    bad = executor.submit(fails_with_boom)
    assert ok.result(TIMEOUT) == 9
    exc = bad.exception(TIMEOUT)
    assert isinstance(exc, TaskExecutionFailed)
    assert (exc.remote_type, exc.remote_message) == ("ValueError", "boom")
    assert ok.task_id and bad.task_id and ok.task_id != bad.task_id


def test_resource_specification_is_sent(fake, executor):
    with pytest.raises(TypeError):
        executor.resource_specification = ["not", "a", "dict"]
    executor.resource_specification = {"num_nodes": 2}
    executor.submit(square, 2).result(TIMEOUT)
    assert fake.submit_bodies[-1]["resource_specification"] == {"num_nodes": 2}


def test_shell_function(executor):
    result = executor.submit(ShellFunction("echo {msg}"), msg="hi").result(TIMEOUT)
    assert result == ShellResult(0, "hi\n", "", "echo hi")


def test_stream_resumes_after_drops_with_last_event_id(fake, executor):
    fake.drop_stream_after = 3
    assert list(executor.map(square, range(20), timeout=TIMEOUT)) == [x * x for x in range(20)]
    assert len(fake.stream_last_event_ids) > 1
    assert fake.stream_last_event_ids[0] is None
    resumed = [int(i) for i in fake.stream_last_event_ids[1:]]
    assert resumed == sorted(resumed) and resumed[0] >= 3


def test_repeated_events_resolve_each_future_once(fake, executor, caplog):
    fake.repeat_events = True
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # a stream thread killed by a repeat would hang the second round
            assert list(executor.map(square, range(10), timeout=TIMEOUT)) == [
                x * x for x in range(10)
            ]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_failed_submit_fails_its_futures(fake, executor):
    fake.fail_submits = (413, "payload_too_large", "body over 10 MiB")
    futures = [executor.submit(square, i) for i in range(5)]
    done, not_done = concurrent.futures.wait(futures, TIMEOUT)
    assert not not_done
    for future in futures:
        exc = future.exception()
        assert isinstance(exc, HTTPError)
        assert (exc.status, exc.code) == (413, "payload_too_large")


def test_refused_stream_fails_outstanding_futures(fake, executor):
    fake.fail_streams = (403, "forbidden", "not your task group")
    exc = executor.submit(square, 2).exception(TIMEOUT)
    assert isinstance(exc, HTTPError) and exc.status == 403
    # Later futures fail at once rather than wait for a stream that gave up.
    assert isinstance(executor.submit(square, 3).exception(TIMEOUT), HTTPError)


def test_reload_tasks_reattaches_to_a_task_group(fake, fake_client):
    fake.run_tasks.clear()
    first = Executor(endpoint_id=fake.endpoint_id, client=fake_client)
    submitted = [first.submit(square, i) for i in range(6)]
    first.shutdown(wait=False)  # sends the queued calls, does not wait for results
    assert all(f.task_id for f in submitted)

    with Executor(
        endpoint_id=fake.endpoint_id,
        client=fake_client,
        task_group_id=first.task_group_id,
    ) as second:
        fake.run_tasks.set()
        submitted[0].result(TIMEOUT)  # some results now come from the replay
        reloaded = second.reload_tasks()
        assert [f.task_id for f in reloaded] == [f.task_id for f in submitted]
        assert [f.result(TIMEOUT) for f in reloaded] == [i * i for i in range(6)]
        assert second.reload_tasks()[0].result(TIMEOUT) == 0, "asking twice still resolves"
    # The first executor, shut down without waiting, still resolved its own futures.
    assert [f.result(TIMEOUT) for f in submitted] == [i * i for i in range(6)]


def test_shutdown_waits_and_stops_threads(fake, fake_client):
    ex = Executor(endpoint_id=fake.endpoint_id, client=fake_client)
    futures = [ex.submit(square, i) for i in range(20)]
    threads = hpfaas_threads()
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), thread.name
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)


def test_shutdown_can_cancel_queued_calls(fake, fake_client):
    fake.accept_submits.clear()
    ex = Executor(endpoint_id=fake.endpoint_id, client=fake_client)
    in_flight = ex.submit(square, 2)
    assert fake.submit_arrived.wait(TIMEOUT)
    queued = [ex.submit(square, i) for i in range(5)]
    stopper = threading.Thread(target=ex.shutdown, kwargs={"cancel_futures": True})
    stopper.start()
    done, _ = concurrent.futures.wait(queued, TIMEOUT)
    assert all(f.cancelled() for f in done) and len(done) == 5
    fake.accept_submits.set()
    stopper.join(TIMEOUT)
    assert in_flight.result(TIMEOUT) == 4


def test_executor_without_endpoint_uses_up_json(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("HPFAAS_HOME", str(tmp_path))
    monkeypatch.delenv("HPFAAS_URL", raising=False)
    monkeypatch.delenv("HPFAAS_TOKEN", raising=False)
    up = {"url": fake.url, "token": TOKEN, "endpoint_id": fake.endpoint_id}
    (tmp_path / "up.json").write_text(json.dumps(up))
    with Executor() as ex:
        assert ex.endpoint_id == fake.endpoint_id
        assert ex.submit(square, 5).result(TIMEOUT) == 25


def test_executor_without_any_endpoint_is_a_clear_error(fake, fake_client):
    with pytest.raises(HpfaasError, match="no endpoint_id"):
        Executor(client=fake_client)


def test_sse_parser():
    stream = io.BytesIO(
        b": keep-alive\r\n\r\n"
        b'id: 1\r\nevent: result\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'
        b"data:no space\n\n"
        b"id: 7\nevent: other\ndata: x\n\n"
        b"id: 9\ndata: cut off by the end of the stream\n"
    )
    assert list(_sse_events(stream)) == [
        ("result", "1", '{"a":\n1}'),
        ("message", "1", "no space"),
        ("other", "7", "x"),
    ]
