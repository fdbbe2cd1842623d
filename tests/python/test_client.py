"""`Client`: finding the service, then REST calls, results and errors against the real one."""

from __future__ import annotations

import itertools
import json
import pickle
import uuid

import pytest
from helpers import gated, wait_until

from hpfaas import (
    Client,
    HpfaasError,
    ShellFunction,
    ShellResult,
    TaskExecutionFailed,
    TaskPending,
)
from hpfaas.errors import HTTPError
from hpfaas.stream import sse_events

#: Generous: a debug build on a busy 2-core machine.
TIMEOUT = 60.0
#: The statuses of docs/api.md a task has before it is done.
PENDING_STATUSES = {
    "received",
    "waiting-for-ep",
    "waiting-for-nodes",
    "waiting-for-launch",
    "running",
}


def add(a, b=10):
    return a + b


def fails_with_boom():
    raise ValueError("boom")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HPFAAS_HOME and no HPFAAS_URL/HPFAAS_TOKEN in the environment."""
    monkeypatch.setenv("HPFAAS_HOME", str(tmp_path))
    monkeypatch.delenv("HPFAAS_URL", raising=False)
    monkeypatch.delenv("HPFAAS_TOKEN", raising=False)
    return tmp_path


def write_up_json(home, url, token="up-token", endpoint_id="ep-from-up-json"):
    (home / "up.json").write_text(
        json.dumps({"url": url, "token": token, "endpoint_id": endpoint_id})
    )


# -- finding the service -----------------------------------------------------------


def test_nothing_configured_is_a_clear_error(home):
    with pytest.raises(HpfaasError, match=r"HPFAAS_URL.*hpfaas up.*up\.json"):
        Client()


def test_up_json_is_found_through_hpfaas_home(home):
    write_up_json(home, "http://127.0.0.1:1/")
    client = Client()
    assert client.url == "http://127.0.0.1:1"
    assert client.default_endpoint_id == "ep-from-up-json"


def test_environment_beats_up_json_and_arguments_beat_both(home, monkeypatch):
    write_up_json(home, "http://127.0.0.1:1")
    monkeypatch.setenv("HPFAAS_URL", "http://127.0.0.1:2")
    monkeypatch.setenv("HPFAAS_TOKEN", "env-token")
    client = Client()
    assert client.url == "http://127.0.0.1:2"
    # up.json describes another service: its endpoint is not this one's.
    assert client.default_endpoint_id is None
    assert Client("http://127.0.0.1:3", "arg-token").url == "http://127.0.0.1:3"


def test_url_without_token_is_named(home):
    with pytest.raises(HpfaasError, match="no hpfaas service token"):
        Client("http://127.0.0.1:1")


def test_non_http_url_is_refused(home):
    with pytest.raises(HpfaasError, match="not an http"):
        Client("ftp://example.org", "t")


# -- calls (against the real service) ---------------------------------------------


@pytest.fixture(scope="module")
def client(service):
    return Client(service.url, service.token)


def wait_done(client, task_id):
    """The task's document once it is no longer pending."""

    def done():
        doc = client.get_task(task_id)
        return None if doc["pending"] else doc

    return wait_until(done, TIMEOUT, f"task {task_id}")


def submit_one(client, endpoint_id, function_id, *args):
    """`batch_run` of one call; the service's answer."""
    batch = client.create_batch()
    batch.add(function_id, args)
    return client.batch_run(endpoint_id, batch)


def test_register_run_and_get_result(service, client):
    function_id = client.register_function(add, description="adds")
    doc = client.get_function(function_id)
    assert (doc["function_uuid"], doc["function_name"], doc["description"]) == (
        function_id,
        "add",
        "adds",
    )
    assert doc["function_code"].split("\n", 1)[1].startswith("st\nadd:")
    task_id = client.run(1, endpoint_id=service.endpoint_id, function_id=function_id, b=2)
    done = wait_done(client, task_id)
    assert (done["status"], done["function_id"]) == ("success", function_id)
    assert client.get_result(task_id) == 3


def test_pending_task_raises_task_pending(service, client, gate):
    function_id = client.register_function(gated)
    task_id = client.run(
        gate.port, "done", endpoint_id=service.endpoint_id, function_id=function_id
    )
    with pytest.raises(TaskPending) as info:
        client.get_result(task_id)
    assert info.value.task_id == task_id
    assert info.value.status in PENDING_STATUSES
    gate.wait_arrivals(1, TIMEOUT)  # the task runs, and waits for the gate
    wait_until(
        lambda: client.get_task(task_id)["status"] == "running", TIMEOUT, "status running"
    )
    with pytest.raises(TaskPending) as info:
        client.get_result(task_id)
    assert info.value.status == "running"
    gate.open()
    wait_done(client, task_id)
    assert client.get_result(task_id) == "done"


def test_remote_exception_becomes_task_execution_failed(service, client):
    function_id = client.register_function(fails_with_boom)
    task_id = client.run(endpoint_id=service.endpoint_id, function_id=function_id)
    wait_done(client, task_id)
    with pytest.raises(TaskExecutionFailed) as info:
        client.get_result(task_id)
    exc = info.value
    assert (exc.remote_type, exc.remote_message) == ("ValueError", "boom")
    assert "in fails_with_boom" in exc.remote_traceback
    assert exc.remote_data == exc.remote_traceback
    assert exc.completion_t is not None and float(exc.completion_t) > 0
    assert str(exc).startswith("ValueError: boom\n")
    assert "in fails_with_boom" in str(exc)
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.remote_type, copy.remote_traceback) == (
        "ValueError",
        exc.remote_traceback,
    )


def test_batch_run_and_get_batch_result(service, client):
    add_id = client.register_function(add)
    boom_id = client.register_function(fails_with_boom)
    batch = client.create_batch()
    for i in range(5):
        batch.add(add_id, args=(i,), kwargs={"b": 100})
    batch.add(boom_id)
    response = client.batch_run(service.endpoint_id, batch)
    assert set(response) >= {"request_id", "task_group_id", "endpoint_id", "tasks"}
    assert response["endpoint_id"] == service.endpoint_id
    add_tasks, boom_tasks = response["tasks"][add_id], response["tasks"][boom_id]
    task_ids = add_tasks + boom_tasks + ["00000000-0000-0000-0000-000000000000"]

    def all_done():
        results = client.get_batch_result(task_ids)
        return results if not any(r["pending"] for r in results.values()) else None

    results = wait_until(all_done, TIMEOUT, "the batch")
    assert [results[t]["result"] for t in add_tasks] == [100, 101, 102, 103, 104]
    assert results[add_tasks[0]]["status"] == "success"
    assert results[boom_tasks[0]]["exception"].remote_type == "ValueError"
    assert results[task_ids[-1]]["exception"].remote_type == "UnknownTask"
    # The group lists its tasks in submission order.
    group = client.get_taskgroup_tasks(response["task_group_id"])
    assert [t["id"] for t in group] == add_tasks + boom_tasks


def test_shell_function_gets_json_arguments(service, client):
    function_id = client.register_function(ShellFunction("echo {msg}"))
    assert client.is_shell_function(function_id)
    task_id = client.run(endpoint_id=service.endpoint_id, function_id=function_id, msg="hi")
    wait_done(client, task_id)
    assert client.get_result(task_id) == ShellResult(0, "hi\n", "", "echo 'hi'")
    # The manager insists on JSON: a client that does not know the function is
    # a shell function sends pickled arguments, and the task fails.
    unaware = Client(service.url, service.token)
    task_id = unaware.run(endpoint_id=service.endpoint_id, function_id=function_id, msg="hi")
    wait_done(client, task_id)
    with pytest.raises(TaskExecutionFailed) as info:
        client.get_result(task_id)
    assert info.value.remote_type == "ShellFunctionError"
    assert "JSON" in info.value.remote_message


def test_get_function_learns_shell_functions_registered_elsewhere(service, client):
    function_id = client.register_function(ShellFunction("echo {msg}"))
    other = Client(service.url, service.token)
    assert not other.is_shell_function(function_id)
    other.get_function(function_id)
    assert other.is_shell_function(function_id)
    # And so it sends the JSON arguments the manager needs.
    task_id = other.run(endpoint_id=service.endpoint_id, function_id=function_id, msg="yo")
    wait_done(other, task_id)
    assert other.get_result(task_id).stdout == "yo\n"


def test_error_answers_raise_http_error(service, client, other_user_token):
    unknown = str(uuid.uuid4())
    with pytest.raises(HTTPError) as info:
        client.get_task(unknown)
    assert (info.value.status, info.value.code) == (404, "not_found")
    assert unknown in info.value.message
    with pytest.raises(HTTPError) as info:
        client.get_task("no-such-task")
    assert (info.value.status, info.value.code) == (400, "bad_request")
    assert "no-such-task" in info.value.message
    with pytest.raises(HTTPError) as info:
        Client(service.url, "wrong-token").get_task(unknown)
    assert (info.value.status, info.value.code) == (401, "unauthorized")

    # Another user sees none of our tasks, groups or functions.
    function_id = client.register_function(add)
    response = submit_one(client, service.endpoint_id, function_id, 1)
    task_id, group = response["tasks"][function_id][0], response["task_group_id"]
    other = Client(service.url, other_user_token)
    for call in (
        lambda: other.get_task(task_id),
        lambda: other.get_function(function_id),
        lambda: other.get_taskgroup_tasks(group),
        lambda: other.open_stream(f"/v3/taskgroup/{group}/stream", {}, TIMEOUT),
    ):
        with pytest.raises(HTTPError) as info:
            call()
        assert (info.value.status, info.value.code) == (404, "not_found")
    assert other.get_batch_status([task_id])[task_id]["status"] == "unknown"


def test_failed_submits_raise_http_error(service, client, other_user_token):
    function_id = client.register_function(add)

    def submit(by, endpoint_id, payload_chars=0, function_id=function_id):
        """The HTTPError of submitting one call (and one payload this long)."""
        batch = by.create_batch()
        batch.add(function_id, (1,))
        if payload_chars:
            batch.add_payload(function_id, "x" * payload_chars)
        with pytest.raises(HTTPError) as info:
            by.batch_run(endpoint_id, batch)
        return info.value

    exc = submit(client, str(uuid.uuid4()))
    assert (exc.status, exc.code) == (404, "not_found")
    other = Client(service.url, other_user_token)
    exc = submit(other, service.endpoint_id, function_id=other.register_function(add))
    assert (exc.status, exc.code) == (403, "forbidden")
    assert service.endpoint_id in exc.message
    # Over the service's 10 MiB body limit: just over, and so far over that the
    # service answers and closes long before the client has sent it all.
    for chars in (10 * 2**20 + 1, 40 * 2**20):
        exc = submit(client, service.endpoint_id, payload_chars=chars)
        assert (exc.status, exc.code) == (413, "payload_too_large")
        assert str(10 * 2**20) in exc.message
    # The client is still usable afterwards.
    assert client.get_endpoint_status(service.endpoint_id)["status"] == "online"


def test_a_batch_body_is_its_prepared_document_as_json():
    from hpfaas.client import Batch

    batch = Batch("g", {"num_nodes": 2}, ["11\n"])
    for function_id, payload in [("f", 'a\n"b\\'), ("h", "c\u00e9"), ("f", "d")]:
        batch.add_payload(function_id, payload)
    assert json.loads(batch.body()) == batch.prepare()
    assert batch.payload_size == sum(len(json.dumps(p)) for ps in batch.tasks.values() for p in ps)
    assert json.loads(Batch().body()) == {"tasks": {}}


def test_a_batch_with_blobs_sends_its_json_length_the_json_then_the_blobs():
    from hpfaas.client import BLOB_MIN, Batch, pack_call
    from hpfaas.serialize import unpack

    big, small, other = b"\n" * (BLOB_MIN * 2), b"s", bytes(range(256)) * 300
    batch = Batch()
    for function_id, args in [("f", (big,)), ("g", (small,)), ("f", (other,))]:
        payload, blob = pack_call(args, None)
        batch.add_payload(function_id, payload, blob=blob)
    assert batch.content_type == "application/x-hpfaas-blobs"
    body = b"".join(batch.body_parts())
    length, rest = body.split(b"\n", 1)
    document, blobs = json.loads(rest[: int(length)]), rest[int(length) :]
    assert document == batch.prepare()
    first, second = (pack_call((data,), None)[1] for data in (big, other))
    # In payload order: both of f's, then none of g's.
    assert blobs == first + second
    assert [unpack(p)[0] for p in document["tasks"]["f"]] == [
        f"pb\n{len(first)}",
        f"pb\n{len(second)}",
    ]
    assert batch.payload_size <= len(rest) < batch.payload_size + 100, "blobs count too"
    assert not document["tasks"]["g"][0].startswith("3\npb")
    assert Batch().content_type == "application/json"
    # Shell functions' arguments stay JSON, however large.
    assert pack_call((big.decode(),), None, as_json=True)[1] is None


def test_a_pickled_payload_is_quoted_as_json_dumps_would():
    from hpfaas.client import encode_payload, pack_arguments

    for args, kwargs in [((b"\x00\n\"" * 1000, "é"), {"k": [1, None]}), ((), None)]:
        payload = pack_arguments(args, kwargs)
        assert encode_payload(payload, pickled=True) == json.dumps(payload)


def test_stream_replays_after_last_event_id(service, client):
    # What the Executor's result stream relies on: every finished task of the
    # group after Last-Event-ID, in increasing ids (the replay), then live ones.
    function_id = client.register_function(add)
    batch = client.create_batch()
    for i in range(3):
        batch.add(function_id, (i,))
    response = client.batch_run(service.endpoint_id, batch)
    task_ids = response["tasks"][function_id]
    wait_until(
        lambda: all(not d["pending"] for d in client.get_batch_status(task_ids).values()),
        TIMEOUT,
        "the batch",
    )
    path = f"/v3/taskgroup/{response['task_group_id']}/stream"

    def read_events(last_event_id, count):
        """The first `count` events `(id, task document)` after `last_event_id`."""
        stream, sock = client.open_stream(path, {"Last-Event-ID": last_event_id}, TIMEOUT)
        try:
            events = itertools.islice(sse_events(stream), count)
            return [(event_id, json.loads(data)) for _, event_id, data in events]
        finally:
            stream.close()
            sock.close()

    replay = read_events("0", 3)
    assert sorted(doc["task_id"] for _, doc in replay) == sorted(task_ids)
    ids = [int(event_id) for event_id, _ in replay]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert all(doc["status"] == "success" for _, doc in replay)
    # From the first id on, only the other two come again.
    assert [int(e) for e, _ in read_events(str(ids[0]), 2)] == ids[1:]


def test_requests_share_one_keep_alive_connection(service, relay):
    client = Client(relay.url, service.token)
    for _ in range(20):
        client.get_endpoint_status(service.endpoint_id)
    assert relay.connections == 1
    # The first contact asks the service's version (test_version_check.py).
    assert [r.path for r in relay.requests[:1]] == ["/v2/version"]
    assert len(relay.requests) == 21
    assert client.get_endpoint_status(service.endpoint_id)["status"] == "online"


def test_a_refused_body_does_not_spoil_the_next_request(service, relay):
    # The service refuses a body well over its limit before reading it, then
    # closes the connection without announcing it (no `Connection: close`).
    # Here that close reaches the client only once it sends its next request on
    # that connection, as a slow FIN would.
    relay.late_closes = True
    client = Client(relay.url, service.token)
    function_id = client.register_function(add)
    batch = client.create_batch()
    batch.add_payload(function_id, "x" * (12 * 2**20))
    with pytest.raises(HTTPError) as info:
        client.batch_run(service.endpoint_id, batch)
    assert info.value.status == 413
    # Registering is not idempotent, so a dropped connection would not be retried.
    assert client.register_function(add)
    assert relay.connections == 2
