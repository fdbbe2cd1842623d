"""Idempotent submits, cancellation, final states without a value, a revoked
token's stream, and TLS — all against the real service (no fakes); network
faults come from the TCP relay (tests/python/relay.py)."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import ssl
import subprocess
import sys
import uuid

import pytest
from helpers import gated, wait_until

from hpfaas import (
    Client,
    Executor,
    HpfaasError,
    ResultExpired,
    TaskCancelled,
    TaskExecutionFailed,
)
from hpfaas.client import task_result
from hpfaas.errors import HTTPError
from hpfaas.executor import SUBMIT_THREADS

#: Generous: a debug build on a busy 2-core machine.
TIMEOUT = 60.0


def square(x):
    return x * x


@pytest.fixture(scope="module")
def client(service):
    return Client(service.url, service.token)


def hpfaas_cli(service, *args: str) -> str:
    done = subprocess.run(
        [str(service.binary), *args],
        env={**os.environ, "HPFAAS_HOME": str(service.home)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, f"hpfaas {' '.join(args)} failed: {done.stderr}"
    return done.stdout.strip()


# -- idempotent submits ------------------------------------------------------


def submit_keys(relay):
    return [
        r.headers.get("idempotency-key")
        for r in relay.requests
        if r.method == "POST" and r.path.endswith("/submit")
    ]


def test_every_submit_carries_a_fresh_idempotency_key(service, relay):
    client = Client(relay.url, service.token)
    function_id = client.register_function(square)
    for i in range(2):
        client.run(i, endpoint_id=service.endpoint_id, function_id=function_id)
    keys = submit_keys(relay)
    assert len(keys) == 2 and len(set(keys)) == 2
    assert all(uuid.UUID(key).version == 4 for key in keys)


def test_a_lost_submit_answer_is_retried_once_with_the_same_key(service, client, relay):
    relay.cut_submit_answers = 1  # the service answers; the client never sees it
    relayed = Client(relay.url, service.token)
    function_id = relayed.register_function(square)
    batch = relayed.create_batch(task_group_id=str(uuid.uuid4()))
    for i in range(3):
        batch.add(function_id, (i,))
    answer = relayed.batch_run(service.endpoint_id, batch)
    keys = submit_keys(relay)
    assert len(keys) == 2 and keys[0] == keys[1], "sent again, with the same key"
    task_ids = answer["tasks"][function_id]
    # Exactly one set of tasks exists: the retry got the original answer.
    assert [t["id"] for t in client.get_taskgroup_tasks(batch.task_group_id)] == task_ids
    for task_id, i in zip(task_ids, range(3)):
        wait_until(lambda: not client.get_task(task_id)["pending"], TIMEOUT, task_id)
        assert client.get_result(task_id) == i * i


def test_a_submit_whose_answers_are_lost_is_sent_again_with_one_key_and_stored_once(
    service, client, relay
):
    # Two answers cut (a service restarting, say): the submit is sent until
    # one arrives, always with the same key, so the task exists once.
    relay.cut_submit_answers = 2
    relayed = Client(relay.url, service.token)
    function_id = relayed.register_function(square)
    batch = relayed.create_batch(task_group_id=str(uuid.uuid4()))
    batch.add(function_id, (4,))
    answer = relayed.batch_run(service.endpoint_id, batch)
    keys = submit_keys(relay)
    assert len(keys) == 3 and len(set(keys)) == 1, keys
    assert len(answer["tasks"][function_id]) == 1
    assert len(client.get_taskgroup_tasks(batch.task_group_id)) == 1


def test_executor_submit_survives_a_lost_answer(service, client, relay):
    relay.cut_submit_answers = 1
    with Executor(service.endpoint_id, client=Client(relay.url, service.token)) as ex:
        assert ex.submit(square, 7).result(TIMEOUT) == 49
        tasks = client.get_taskgroup_tasks(ex.task_group_id)
    assert len(tasks) == 1
    keys = submit_keys(relay)
    assert len(keys) == 2 and keys[0] == keys[1]


# -- cancellation ------------------------------------------------------------


def test_client_cancels_a_running_task(service, client, gate):
    function_id = client.register_function(gated)
    task_id = client.run(gate.port, 1, endpoint_id=service.endpoint_id, function_id=function_id)
    gate.wait_arrivals(1, TIMEOUT)
    assert client.cancel(task_id) == {"task_id": task_id, "status": "cancelled"}
    doc = client.get_task(task_id)
    assert (doc["status"], doc["pending"]) == ("cancelled", False)
    with pytest.raises(TaskCancelled) as info:
        client.get_result(task_id)
    assert isinstance(info.value, TaskExecutionFailed)
    assert info.value.remote_type == "TaskCancelled"
    assert "cancelled by user local" in info.value.remote_message
    with pytest.raises(HTTPError) as refused:
        client.cancel(task_id)
    assert refused.value.status == 409


def test_client_cancels_a_task_group(service, client, gate):
    function_id = client.register_function(gated)
    batch = client.create_batch(task_group_id=str(uuid.uuid4()))
    for i in range(3):
        batch.add(function_id, (gate.port, i))
    task_ids = client.batch_run(service.endpoint_id, batch)["tasks"][function_id]
    gate.wait_arrivals(1, TIMEOUT)
    answer = client.cancel_task_group(batch.task_group_id)
    assert (answer["status"], answer["cancelled"]) == ("cancelled", 3)
    for task_id in task_ids:
        with pytest.raises(TaskCancelled):
            client.get_result(task_id)


def test_future_cancel_of_a_running_task(service, client, gate):
    with Executor(service.endpoint_id, client=client) as ex:
        future = ex.submit(gated, gate.port, 1)
        gate.wait_arrivals(1, TIMEOUT)
        wait_until(lambda: future.task_id, TIMEOUT, "the task id")
        assert future.running()
        assert future.cancel()
        assert future.cancelled() and future.done()
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(0)
        done, _ = concurrent.futures.wait([future], 0)
        assert done == {future}
        assert client.get_task(future.task_id)["status"] == "cancelled"
        # A finished task cannot be cancelled.
        finished = ex.submit(square, 3)
        assert finished.result(TIMEOUT) == 9
        assert not finished.cancel() and not finished.cancelled()


def test_future_cancel_before_submit_stays_local(service, relay):
    relay.hold_submits()
    with Executor(service.endpoint_id, client=Client(relay.url, service.token)) as ex:
        # Every submitter thread has a request waiting: the next call queues.
        first = []
        for i in range(SUBMIT_THREADS):
            first.append(ex.submit(square, 1))
            relay.wait_held(i + 1, TIMEOUT)
        queued = ex.submit(square, 2)
        assert queued.cancel() and queued.cancelled()
        relay.release_submits()
        assert [f.result(TIMEOUT) for f in first] == [1] * SUBMIT_THREADS
    assert [len(b["tasks"][next(iter(b["tasks"]))]) for b in relay.submits()] == [1] * SUBMIT_THREADS
    assert not any(r.path.endswith("/cancel") for r in relay.requests)


def test_a_task_cancelled_elsewhere_fails_its_future(service, client, gate):
    with Executor(service.endpoint_id, client=client) as ex:
        future = ex.submit(gated, gate.port, 1)
        gate.wait_arrivals(1, TIMEOUT)
        client.cancel_task_group(ex.task_group_id)
        assert isinstance(future.exception(TIMEOUT), TaskCancelled)


# -- final states without a value ---------------------------------------------


def test_expired_and_cancelled_documents_raise_their_own_errors():
    # The task documents of docs/api.md, as the service sends them.
    expired = {
        "task_id": "t",
        "status": "success",
        "pending": False,
        "exception": "",
        "exception_type": "ResultExpired",
        "exception_message": "the result expired unfetched",
    }
    with pytest.raises(ResultExpired) as info:
        task_result(expired, lambda endpoint_id: True)
    assert isinstance(info.value, TaskExecutionFailed)
    assert isinstance(info.value, HpfaasError)
    cancelled = {"task_id": "t", "status": "cancelled", "pending": False}
    with pytest.raises(TaskCancelled):
        task_result(cancelled, lambda endpoint_id: True)


# -- a revoked token's result stream ------------------------------------------


def test_a_revoked_token_fails_the_futures_once(service, relay, gate):
    data_dir = str(service.home / "up")
    token = hpfaas_cli(service, "token", "create", "--user", "local", "--data-dir", data_dir)
    with Executor(service.endpoint_id, client=Client(relay.url, token)) as ex:
        future = ex.submit(gated, gate.port, 1)
        gate.wait_arrivals(1, TIMEOUT)
        wait_until(lambda: relay.streams, TIMEOUT, "the result stream")
        hpfaas_cli(service, "token", "revoke", token, "--data-dir", data_dir)
        exc = future.exception(TIMEOUT)
        assert isinstance(exc, HTTPError) and (exc.status, exc.code) == (401, "unauthorized")
        assert "result stream" in str(exc)
        # Later futures fail too (their submit is refused), and the stream is
        # not asked for again.
        assert isinstance(ex.submit(gated, gate.port, 2).exception(TIMEOUT), HTTPError)
        gate.open()
    assert len(relay.streams) == 1


# -- TLS -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_service(service, tmp_path_factory):
    """`hpfaas service --tls-cert/--tls-key` with a fresh self-signed certificate."""
    if shutil.which("openssl") is None:
        reason = "openssl not found: cannot make a certificate for the TLS tests"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        print(f"\nskipping TLS tests: {reason}", file=sys.stderr)
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    data_dir = tmp / "data"
    log = tmp / "service.log"
    env = {**os.environ, "HPFAAS_HOME": str(tmp)}
    env.pop("HPFAAS_CA_FILE", None)
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [str(service.binary), "service", "--listen", "127.0.0.1:0"]
            + ["--data-dir", str(data_dir), "--tls-cert", str(cert), "--tls-key", str(key)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        marker = "hpfaas service listening on "

        def url():
            assert proc.poll() is None, f"hpfaas service exited: {log.read_text()}"
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith(marker):
                    return line[len(marker) :].strip()
            return None

        address = wait_until(url, TIMEOUT, "the TLS service to listen")
        assert address.startswith("https://")
        token = subprocess.run(
            [str(service.binary), "token", "create", "--user", "tls", "--data-dir", str(data_dir)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=TIMEOUT,
        ).stdout.strip()
        yield address, token, str(cert)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_tls_service_with_its_ca_file(tls_service):
    url, token, ca_file = tls_service
    client = Client(url, token, ca_file=ca_file)
    assert client.register_function(square)
    assert client.version()["hpfaas"]


def test_tls_ca_file_from_the_environment(tls_service, monkeypatch):
    url, token, ca_file = tls_service
    monkeypatch.setenv("HPFAAS_CA_FILE", ca_file)
    assert Client(url, token).get_endpoints() == []


def test_tls_without_the_ca_is_refused(tls_service, monkeypatch):
    url, token, _ = tls_service
    monkeypatch.delenv("HPFAAS_CA_FILE", raising=False)
    with pytest.raises(ssl.SSLCertVerificationError):
        Client(url, token).get_endpoints()
    # verify=False is the way around it (for tests only).
    assert Client(url, token, verify=False).get_endpoints() == []


def test_tls_missing_ca_file_is_a_clear_error(tls_service, tmp_path):
    url, token, _ = tls_service
    missing = tmp_path / "nope.pem"
    with pytest.raises(HpfaasError, match="nope.pem"):
        Client(url, token, ca_file=str(missing))


def test_tls_result_stream(tls_service):
    # No agent connects here: a task cancelled while queued is a result the
    # stream carries, over TLS like every request.
    url, token, ca_file = tls_service
    client = Client(url, token, ca_file=ca_file)
    endpoint_id = client._request("POST", "/v3/endpoints", {"endpoint_name": "offline"})[
        "endpoint_id"
    ]
    with Executor(endpoint_id, client=client) as ex:
        future = ex.submit(square, 3)
        wait_until(lambda: future.task_id, TIMEOUT, "the task id")
        client.cancel(future.task_id)
        assert isinstance(future.exception(TIMEOUT), TaskCancelled)

