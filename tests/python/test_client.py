"""`Client` against the in-process fake service: configuration, REST calls, results, errors."""

from __future__ import annotations

import json
import pickle

import pytest
from fake_service import TOKEN
from helpers import wait_until

from hpfaas import (
    Client,
    HpfaasError,
    ShellFunction,
    ShellResult,
    TaskExecutionFailed,
    TaskPending,
)
from hpfaas.errors import HTTPError

TIMEOUT = 10.0


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


# -- calls ---------------------------------------------------------------------------


def test_register_run_and_get_result(fake, fake_client):
    function_id = fake_client.register_function(add, description="adds")
    assert fake.functions[function_id]["function_name"] == "add"
    assert fake.functions[function_id]["description"] == "adds"
    assert (
        fake_client.get_function(function_id)["function_code"]
        .split("\n", 1)[1]
        .startswith("st\nadd:")
    )
    task_id = fake_client.run(1, endpoint_id=fake.endpoint_id, function_id=function_id, b=2)
    assert wait_until(lambda: not fake_client.get_task(task_id)["pending"], TIMEOUT, "the task")
    assert fake_client.get_result(task_id) == 3


def test_pending_task_raises_task_pending(fake, fake_client):
    fake.run_tasks.clear()
    function_id = fake_client.register_function(add)
    task_id = fake_client.run(1, endpoint_id=fake.endpoint_id, function_id=function_id)
    with pytest.raises(TaskPending) as info:
        fake_client.get_result(task_id)
    assert info.value.task_id == task_id
    assert info.value.status in ("waiting-for-launch", "running")


def test_remote_exception_becomes_task_execution_failed(fake, fake_client):
    function_id = fake_client.register_function(fails_with_boom)
    task_id = fake_client.run(endpoint_id=fake.endpoint_id, function_id=function_id)
    wait_until(lambda: not fake_client.get_task(task_id)["pending"], TIMEOUT, "the task")
    with pytest.raises(TaskExecutionFailed) as info:
        fake_client.get_result(task_id)
    exc = info.value
    assert (exc.remote_type, exc.remote_message) == ("ValueError", "boom")
    assert "in fails_with_boom" in exc.remote_traceback
    assert exc.remote_data == exc.remote_traceback
    assert exc.completion_t is not None
    assert str(exc).startswith("ValueError: boom\n")
    assert "in fails_with_boom" in str(exc)
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.remote_type, copy.remote_traceback) == (
        "ValueError",
        exc.remote_traceback,
    )


def test_batch_run_and_get_batch_result(fake, fake_client):
    add_id = fake_client.register_function(add)
    boom_id = fake_client.register_function(fails_with_boom)
    batch = fake_client.create_batch()
    for i in range(5):
        batch.add(add_id, args=(i,), kwargs={"b": 100})
    batch.add(boom_id)
    response = fake_client.batch_run(fake.endpoint_id, batch)
    assert set(response) >= {"request_id", "task_group_id", "endpoint_id", "tasks"}
    add_tasks, boom_tasks = response["tasks"][add_id], response["tasks"][boom_id]
    task_ids = add_tasks + boom_tasks + ["00000000-0000-0000-0000-000000000000"]

    def all_done():
        results = fake_client.get_batch_result(task_ids)
        return results if not any(r["pending"] for r in results.values()) else None

    results = wait_until(all_done, TIMEOUT, "the batch")
    assert [results[t]["result"] for t in add_tasks] == [100, 101, 102, 103, 104]
    assert results[add_tasks[0]]["status"] == "success"
    assert results[boom_tasks[0]]["exception"].remote_type == "ValueError"
    assert results[task_ids[-1]]["exception"].remote_type == "UnknownTask"


def test_shell_function_gets_json_arguments(fake, fake_client):
    # The fake service asserts, as the manager needs, that shell arguments are JSON.
    function_id = fake_client.register_function(ShellFunction("echo {msg}"))
    assert fake_client.is_shell_function(function_id)
    task_id = fake_client.run(endpoint_id=fake.endpoint_id, function_id=function_id, msg="hi")
    wait_until(lambda: not fake_client.get_task(task_id)["pending"], TIMEOUT, "the task")
    assert fake_client.get_result(task_id) == ShellResult(0, "hi\n", "", "echo hi")


def test_get_function_learns_shell_functions_registered_elsewhere(fake, fake_client):
    function_id = fake_client.register_function(ShellFunction("true"))
    other = Client(fake.url, TOKEN)
    assert not other.is_shell_function(function_id)
    other.get_function(function_id)
    assert other.is_shell_function(function_id)


def test_error_answers_raise_http_error(fake, fake_client):
    with pytest.raises(HTTPError) as info:
        fake_client.get_task("no-such-task")
    assert (info.value.status, info.value.code) == (404, "not_found")
    assert "no-such-task" in info.value.message
    with pytest.raises(HTTPError) as info:
        Client(fake.url, "wrong-token").get_task("x")
    assert info.value.status == 401


def test_requests_share_one_keep_alive_connection(fake, fake_client):
    for _ in range(20):
        fake_client.get_endpoint_status(fake.endpoint_id)
    assert fake.connections == 1
    assert fake_client.get_endpoint_status(fake.endpoint_id)["status"] == "online"
