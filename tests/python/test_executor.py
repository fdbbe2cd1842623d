"""`Executor` against the real service: batching, the result stream, shutdown.

Faults the service would not make on its own come from the network: a TCP relay
(tests/python/relay.py) holds submits back, cuts result streams, or changes a
header on the way, and every answer is still the real service's.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import logging
import threading
import uuid

import pytest
from helpers import gated

from hpfaas import (
    Client,
    Executor,
    HpfaasError,
    ShellFunction,
    ShellResult,
    TaskExecutionFailed,
)
from hpfaas.errors import HTTPError
from hpfaas.executor import SUBMIT_THREADS
from hpfaas.stream import RECONNECT_DELAY_MIN
from hpfaas.stream import sse_events

#: Generous: a debug build on a busy 2-core machine.
TIMEOUT = 60.0


def square(x):
    return x * x


def fails_with_boom():
    raise ValueError("boom")


@pytest.fixture(scope="module")
def client(service):
    return Client(service.url, service.token)


@pytest.fixture
def relay_client(service, relay):
    """A `Client` of the service through the relay."""
    return Client(relay.url, service.token)


@pytest.fixture
def executor(service, client):
    with Executor(endpoint_id=service.endpoint_id, client=client) as ex:
        yield ex


@pytest.fixture
def relayed_executor(service, relay_client):
    with Executor(endpoint_id=service.endpoint_id, client=relay_client) as ex:
        yield ex


def hpfaas_threads():
    return [t for t in threading.enumerate() if t.name.startswith("hpfaas-")]


def tasks_per_submit(relay):
    return [sum(map(len, body["tasks"].values())) for body in relay.submits()]


def test_map_returns_results_in_order_with_few_requests(client, relay, relayed_executor):
    ex = relayed_executor
    assert list(ex.map(square, range(1000), timeout=TIMEOUT)) == [x * x for x in range(1000)]
    registered = [r for r in relay.requests if (r.method, r.path) == ("POST", "/v3/functions")]
    assert len(registered) == 1, "the function is registered once"
    # Submits are batched while a request is in flight, not sent one by one.
    assert sum(tasks_per_submit(relay)) == 1000
    assert len(relay.submits()) < 100
    assert {body["task_group_id"] for body in relay.submits()} == {ex.task_group_id}
    # The service agrees: one group of 1000 tasks of one function.
    tasks = client.get_taskgroup_tasks(ex.task_group_id)
    assert len(tasks) == 1000 and len({t["function_id"] for t in tasks}) == 1


def test_batch_size_caps_a_request(service, relay, relay_client):
    relay.hold_submits()
    with Executor(endpoint_id=service.endpoint_id, client=relay_client, batch_size=7) as ex:
        futures = [ex.submit(square, i) for i in range(50)]
        relay.wait_held(1, TIMEOUT)  # the first request waits; the rest queue up behind it
        relay.release_submits()
        assert [f.result(TIMEOUT) for f in futures] == [i * i for i in range(50)]
    sizes = tasks_per_submit(relay)
    assert max(sizes) == 7 and sum(sizes) == 50


def test_futures_carry_task_ids_and_exceptions(client, executor):
    ok = executor.submit(square, 3)
    bad = executor.submit(fails_with_boom)
    assert ok.result(TIMEOUT) == 9
    exc = bad.exception(TIMEOUT)
    assert isinstance(exc, TaskExecutionFailed)
    assert (exc.remote_type, exc.remote_message) == ("ValueError", "boom")
    assert ok.task_id and bad.task_id and ok.task_id != bad.task_id
    assert client.get_task(ok.task_id)["status"] == "success"
    assert client.get_task(bad.task_id)["status"] == "failed"


def test_resource_specification_is_sent(relay, relayed_executor):
    executor = relayed_executor
    with pytest.raises(TypeError):
        executor.resource_specification = ["not", "a", "dict"]
    executor.resource_specification = {"num_nodes": 1}
    assert executor.submit(square, 2).result(TIMEOUT) == 4
    assert relay.submits()[-1]["resource_specification"] == {"num_nodes": 1}


def test_shell_function(executor):
    result = executor.submit(ShellFunction("echo {msg}"), msg="hi").result(TIMEOUT)
    assert result == ShellResult(0, "hi\n", "", "echo 'hi'")


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_stream_resumes_after_drops_with_last_event_id(relay, relayed_executor, caplog, reset):
    relay.cut_streams_after = 3
    relay.cut_with_reset = reset
    with caplog.at_level(logging.INFO, logger="hpfaas.stream"):
        results = list(relayed_executor.map(square, range(20), timeout=TIMEOUT))
    assert results == [x * x for x in range(20)]
    streams = relay.streams
    assert len(streams) > 1 and streams[0].cut
    assert streams[0].last_event_id is None
    for before, after in zip(streams, streams[1:]):
        # Each reconnection resumes right after the last event the client was given.
        assert after.last_event_id == str(before.event_ids[-1])
    delivered = [e for s in streams for e in s.event_ids]
    assert delivered == sorted(delivered) and len(delivered) == len(set(delivered)) == 20
    # A stream that delivered results before it dropped is no failure to back off from.
    delays = [r.args[-1] for r in caplog.records if "reconnecting" in r.getMessage()]
    assert delays and all(d == RECONNECT_DELAY_MIN for d in delays), delays


def test_repeated_events_resolve_each_future_once(relay, relayed_executor, caplog):
    # Without Last-Event-ID the service replays the group from its start: each
    # reconnection repeats every result already delivered.
    relay.stream_headers = {"Last-Event-ID": None}
    relay.cut_streams_after = 4
    handed = []
    on_result = relayed_executor._on_result

    def counting(doc):
        handed.append(doc["task_id"])
        on_result(doc)

    relayed_executor._on_result = counting  # before the stream takes it
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # a stream thread killed by a repeat would hang the second round
            assert list(relayed_executor.map(square, range(10), timeout=TIMEOUT)) == [
                x * x for x in range(10)
            ]
    delivered = [e for s in relay.streams for e in s.event_ids]
    assert len(set(delivered)) == 20 and len(delivered) > 20, "some results came again"
    assert len(handed) == len(set(handed)) == 20, "each result reaches the executor once"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert bookkeeping(relayed_executor) == 0


def bookkeeping(executor):
    """Entries in the executor's per-task tables (everything but its registered functions)."""
    return sum(
        len(value)
        for name, value in vars(executor).items()
        if isinstance(value, (dict, set, list)) and name not in ("_registered", "_submitters")
    )


def test_bookkeeping_is_bounded_by_pending_tasks_not_by_finished_ones(executor):
    import tracemalloc

    # Each round's futures are dropped before the next: what stays is the executor's.
    def run(rounds, n):
        for _ in range(rounds):
            assert sum(executor.map(square, range(n), timeout=TIMEOUT)) == sum(
                x * x for x in range(n)
            )
            assert bookkeeping(executor) == 0, "nothing pending, nothing kept"

    run(2, 2000)  # warm-up: threads, connections, caches
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run(4, 2000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A task id kept per task is over 100 bytes: 8000 tasks would keep ~1 MB.
    # What may grow is the table of pending tasks, to this test's 2000 at most.
    assert grown < 8000 * 30, f"{grown} bytes kept after 8000 finished tasks"


@pytest.mark.parametrize("case", ["too large", "unknown endpoint", "another user's endpoint"])
def test_failed_submit_fails_its_futures(service, client, other_user_token, case):
    endpoint_id, by, args, expected = {
        # One call over the 10 MiB body limit: it is sent alone.
        "too large": (service.endpoint_id, client, b"x" * (11 * 2**20), (413, "payload_too_large")),
        "unknown endpoint": (str(uuid.uuid4()), client, 1, (404, "not_found")),
        "another user's endpoint": (
            service.endpoint_id,
            Client(service.url, other_user_token),
            1,
            (403, "forbidden"),
        ),
    }[case]
    with Executor(endpoint_id=endpoint_id, client=by) as executor:
        futures = [executor.submit(square, args) for _ in range(3)]
        done, not_done = concurrent.futures.wait(futures, TIMEOUT)
        assert not not_done
        for future in futures:
            exc = future.exception()
            assert isinstance(exc, HTTPError), exc
            assert (exc.status, exc.code) == expected
        if case == "too large":  # the executor goes on with calls the service accepts
            assert executor.submit(square, 5).result(TIMEOUT) == 25


def digest(data, salt=b""):
    import hashlib

    return hashlib.sha256(salt + bytes(data)).hexdigest()


def test_large_arguments_travel_as_blobs_and_arrive_intact(service, relay, relay_client):
    import hashlib
    import os

    # Large and small calls mixed in one request, with keyword arguments.
    blobs = [os.urandom(n) for n in (70_000, 400_000, 10, 1_500_000, 3)]
    with Executor(endpoint_id=service.endpoint_id, client=relay_client) as ex:
        futures = [ex.submit(digest, data, salt=b"s") for data in blobs]
        assert [f.result(TIMEOUT) for f in futures] == [
            hashlib.sha256(b"s" + data).hexdigest() for data in blobs
        ]
    blob_requests = [
        r for r in relay.requests if r.headers.get("content-type") == "application/x-hpfaas-blobs"
    ]
    assert blob_requests, "large arguments went as blobs"
    # Raw bytes, not base64: the body is about the size of the arguments.
    assert sum(len(r.body) for r in relay.requests) < sum(map(len, blobs)) * 1.05 + 20_000


def test_refused_stream_fails_outstanding_futures(relay, relayed_executor, other_user_token):
    # The stream request reaches the service with another user's token: the
    # service refuses that user the task group, as it must.
    relay.stream_headers = {"Authorization": f"Bearer {other_user_token}"}
    exc = relayed_executor.submit(square, 2).exception(TIMEOUT)
    assert isinstance(exc, HTTPError) and (exc.status, exc.code) == (404, "not_found")
    assert relayed_executor.task_group_id in exc.message
    # Later futures fail at once rather than wait for a stream that gave up.
    assert isinstance(relayed_executor.submit(square, 3).exception(TIMEOUT), HTTPError)
    assert len(relay.streams) == 1, "a refused stream is not asked for again"


def test_reload_tasks_reattaches_to_a_task_group(service, client, gate):
    first = Executor(endpoint_id=service.endpoint_id, client=client)
    submitted = [first.submit(gated, gate.port, i * i) for i in range(6)]
    first.shutdown(wait=False)  # sends the queued calls, does not wait for results
    assert all(f.task_id for f in submitted)
    assert not any(f.done() for f in submitted)

    with Executor(
        endpoint_id=service.endpoint_id,
        client=client,
        task_group_id=first.task_group_id,
    ) as second:
        gate.open()
        submitted[0].result(TIMEOUT)  # some results now come from the replay
        reloaded = second.reload_tasks()
        assert [f.task_id for f in reloaded] == [f.task_id for f in submitted]
        assert [f.result(TIMEOUT) for f in reloaded] == [i * i for i in range(6)]
        assert second.reload_tasks()[0].result(TIMEOUT) == 0, "asking twice still resolves"
    # The first executor, shut down without waiting, still resolved its own futures.
    assert [f.result(TIMEOUT) for f in submitted] == [i * i for i in range(6)]


def test_shutdown_waits_and_stops_threads(service, client):
    ex = Executor(endpoint_id=service.endpoint_id, client=client)
    futures = [ex.submit(square, i) for i in range(20)]
    threads = hpfaas_threads()
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [i * i for i in range(20)]
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), thread.name
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)


def test_shutdown_can_cancel_queued_calls(service, relay, relay_client):
    relay.hold_submits()
    ex = Executor(endpoint_id=service.endpoint_id, client=relay_client)
    # Every submitter thread has a request in flight: later calls stay queued.
    in_flight = []
    for i in range(SUBMIT_THREADS):
        in_flight.append(ex.submit(square, 2))
        relay.wait_held(i + 1, TIMEOUT)
    queued = [ex.submit(square, i) for i in range(5)]
    stopper = threading.Thread(target=ex.shutdown, kwargs={"cancel_futures": True})
    stopper.start()
    done, _ = concurrent.futures.wait(queued, TIMEOUT)
    assert all(f.cancelled() for f in done) and len(done) == 5
    relay.release_submits()
    stopper.join(TIMEOUT)
    assert not stopper.is_alive()
    assert [f.result(TIMEOUT) for f in in_flight] == [4] * SUBMIT_THREADS
    assert tasks_per_submit(relay) == [1] * SUBMIT_THREADS, "the cancelled calls were never sent"


def test_executor_without_endpoint_uses_up_json(service, tmp_path, monkeypatch):
    monkeypatch.setenv("HPFAAS_HOME", str(tmp_path))
    monkeypatch.delenv("HPFAAS_URL", raising=False)
    monkeypatch.delenv("HPFAAS_TOKEN", raising=False)
    up = {"url": service.url, "token": service.token, "endpoint_id": service.endpoint_id}
    (tmp_path / "up.json").write_text(json.dumps(up))
    with Executor() as ex:
        assert ex.endpoint_id == service.endpoint_id
        assert ex.submit(square, 5).result(TIMEOUT) == 25


def test_executor_without_any_endpoint_is_a_clear_error(service, tmp_path, monkeypatch):
    monkeypatch.setenv("HPFAAS_HOME", str(tmp_path))  # no up.json there
    with pytest.raises(HpfaasError, match="no endpoint_id"):
        Executor(client=Client(service.url, service.token))


def test_sse_parser():
    stream = io.BytesIO(
        b": keep-alive\r\n\r\n"
        b'id: 1\r\nevent: result\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'
        b"data:no space\n\n"
        b"id: 7\nevent: other\ndata: x\n\n"
        b"id: 9\ndata: cut off by the end of the stream\n"
    )
    assert list(sse_events(stream)) == [
        ("result", "1", '{"a":\n1}'),
        ("message", "1", "no space"),
        ("other", "7", "x"),
    ]


def test_batches_stay_under_the_body_limit_once_encoded(service, relay, relay_client):
    # Shell arguments travel as JSON inside the JSON body, where each quote
    # costs four bytes: three calls of 2.8 M characters fit the executor's
    # 8 M-character budget per request, but not the service's 10 MiB.
    quotes = '"' * (1400 * 1024)
    relay.hold_submits()
    echo = ShellFunction("echo {n}")
    with Executor(endpoint_id=service.endpoint_id, client=relay_client) as ex:
        first = ex.submit(echo, n=0)
        relay.wait_held(1, TIMEOUT)  # the others queue up behind it, to share requests
        futures = [ex.submit(echo, n=i, pad=quotes) for i in range(1, 4)]
        relay.release_submits()
        results = [f.result(TIMEOUT) for f in [first] + futures]
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]
    assert all(len(r.body) <= 10 * 2**20 for r in relay.requests)
