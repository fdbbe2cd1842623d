"""Memoization against a real `hpfaas up` (docs/api.md, "Memoization"): a
function registered with `cache=True` runs once per distinct call; a changed
body, other arguments or another user miss; failures are not reused; entries
can be cleared, expire after `--cache-ttl`, and survive a SIGKILL of `up`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest
from conftest import ENGINE_CONFIG, STARTUP_TIMEOUT, _read_up_json, hpfaas_binary
from helpers import wait_until

from hpfaas import Client, Executor

TIMEOUT = 60.0


def record(path, x):
    """Appends a line to `path` for each run: the tests count runs."""
    with open(path, "a") as f:
        f.write(f"{x}\n")
    if x < 0:
        raise ValueError("negative")
    return x * 2


def record_changed(path, x):
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x * 3


def runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def result_of(client: Client, task_id: str):
    """The task's value once it is final (the service owns its state: polled)."""
    wait_until(lambda: not client.get_task(task_id)["pending"], TIMEOUT, f"task {task_id}")
    return client.get_result(task_id)


def _share(service, users, method="POST"):
    request = urllib.request.Request(
        f"{service.url}/v3/endpoints/{service.endpoint_id}/share",
        data=json.dumps({"users": users}).encode(),
        method=method,
        headers={"Authorization": f"Bearer {service.token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
        assert answer.status == 200


def test_a_cached_function_runs_once_per_distinct_call(service, other_user_token, tmp_path):
    log = str(tmp_path / "runs")
    client = Client(service.url, service.token)
    with Executor(endpoint_id=service.endpoint_id, client=client, cache=True) as ex:
        first = ex.submit(record, log, 1)
        assert first.result(TIMEOUT) == 2
        assert runs(tmp_path / "runs") == 1
        again = ex.submit(record, log, 1)
        assert again.result(TIMEOUT) == 2
        assert runs(tmp_path / "runs") == 1, "the identical call ran"
        doc = client.get_task(again.task_id)
        assert doc["cached"] is True and doc["cached_from"] == first.task_id, doc
        # Other arguments miss.
        assert ex.submit(record, log, 2).result(TIMEOUT) == 4
        assert runs(tmp_path / "runs") == 2
        # A changed body misses.
        assert ex.submit(record_changed, log, 1).result(TIMEOUT) == 3
        assert runs(tmp_path / "runs") == 3
        # A failure is not reused: both calls run.
        for _ in range(2):
            with pytest.raises(Exception, match="negative"):
                ex.submit(record, log, -1).result(TIMEOUT)
        assert runs(tmp_path / "runs") == 5

    # Identical calls in one submit run once.
    fid = client.register_function(record, cache=True)
    batch = client.create_batch()
    for _ in range(3):
        batch.add(fid, (log, 7), {})
    ids = client.batch_run(service.endpoint_id, batch)["tasks"][fid]
    assert [result_of(client, task_id) for task_id in ids] == [14, 14, 14]
    assert runs(tmp_path / "runs") == 6

    # Cleared (every entry of this body: the executor's calls of `record` too),
    # the next call runs again.
    assert client.clear_cache(fid) == 3
    task_id = client.run(log, 7, endpoint_id=service.endpoint_id, function_id=fid)
    assert result_of(client, task_id) == 14
    assert runs(tmp_path / "runs") == 7
    assert client.clear_cache() >= 1

    # Another user with the same function and arguments runs it.
    _share(service, ["other"])
    try:
        other = Client(service.url, other_user_token)
        with Executor(endpoint_id=service.endpoint_id, client=other, cache=True) as ex:
            assert ex.submit(record, log, 2).result(TIMEOUT) == 4
        assert runs(tmp_path / "runs") == 8
    finally:
        _share(service, ["other"], method="DELETE")


def _start_up(home: Path, *args: str) -> tuple[subprocess.Popen, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("HPFAAS_URL", "HPFAAS_TOKEN")}
    env["HPFAAS_HOME"] = str(home)
    config = home / "engine.toml"
    config.write_text(ENGINE_CONFIG)
    with open(home / "hpfaas-up.log", "ab") as log:
        proc = subprocess.Popen(
            [str(hpfaas_binary()), "up", "--workers", "1", "--listen", "127.0.0.1:0"]
            + ["--config", str(config), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    up = wait_until(lambda: _read_up_json(home / "up.json", proc), STARTUP_TIMEOUT, "up.json")
    return proc, up


def _stop(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        # Its whole session: the managers and workers it started too.
        os.killpg(proc.pid, sig)
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_cached_results_survive_a_sigkill_and_expire_after_the_ttl(tmp_path):
    if not hpfaas_binary().exists():
        pytest.skip(f"no hpfaas binary at {hpfaas_binary()}")
    log = tmp_path / "runs"
    with tempfile.TemporaryDirectory(prefix="hpfaas-memo-") as tmp:
        home = Path(tmp)
        proc, up = _start_up(home, "--cache-ttl", "8s")
        try:
            client = Client(up["url"], up["token"])
            fid = client.register_function(record, cache=True)

            def call():
                task = client.run(str(log), 5, endpoint_id=up["endpoint_id"], function_id=fid)
                return result_of(client, task)

            assert call() == 10
            assert runs(log) == 1
            _stop(proc, signal.SIGKILL)
            # A killed `up` leaves its up.json: the restart writes a new one.
            (home / "up.json").unlink()
            proc, up = _start_up(home, "--cache-ttl", "8s")
            client = Client(up["url"], up["token"])
            assert call() == 10
            assert runs(log) == 1, "the cached result was lost with the killed service"
            # Once the TTL has passed, the call runs again.
            wait_until(lambda: call() == 10 and runs(log) == 2, TIMEOUT, "the entry to expire")
        finally:
            _stop(proc, signal.SIGINT)
