"""Drives the real Globus Compute SDK against an hpfaas service; run by `.venv-gc/bin/python`.

`gc_driver.py URL TOKEN ENDPOINT_ID MODE [N] [ARGS...]` prints one JSON report on stdout.
Modes:
- `suite`: register_function, run + get_task + get_result, a failing function,
  create_batch + batch_run + get_batch_result for N tasks, get_endpoint_status,
  and the task group's listing (what `Executor.reload_tasks` reads).
  `--source` uses PureSourceTextInspect + JSONData (no dill needed in the worker),
  else the SDK's defaults (DillCode + DillDataBase64).
- `submit`: register `square` with source strategies and run it once on 7;
  prints the function and task ids (for the hpfaas SDK to read).
- `read TASK_ID`: get_result of a task submitted by another client.
- `dill_missing`: the default strategies against a worker without dill.

`gc_driver.py payloads` prints, without a service, `square` serialized with each of
Globus Compute's code strategies and `(3,)`/`{}` with each data strategy;
`gc_driver.py worker_check` feeds those to the hpfaas worker runtime in this
Python (dill installed) and checks each result strategy decodes with Globus Compute's
own serializer.
"""

from __future__ import annotations

import json
import sys
import time

import globus_sdk
from globus_compute_sdk import Client
from globus_compute_sdk.errors import TaskExecutionFailed
from globus_compute_sdk.sdk.client import _ComputeWebClient
from globus_compute_sdk.serialize import JSONData, PureSourceTextInspect
from globus_compute_sdk.version import __version__

REPO_PYTHON = __file__.rsplit("/tests/python/", 1)[0] + "/python"

TIMEOUT = 120.0


class HpfaasClient(Client):
    """The client recipe of docs/globus-compute.md: a token and a URL, no Globus login."""

    def __init__(self, url: str, token: str, **kwargs):
        super().__init__(
            authorizer=globus_sdk.AccessTokenAuthorizer(token), do_version_check=False, **kwargs
        )
        self.web_service_address = url
        self._compute_web_client = _ComputeWebClient(base_url=url, authorizer=self.authorizer)
        self.version_check()


def square(x):
    return x * x


def add(a, b=0):
    return a + b


def divide(a, b):
    return a / b


def wait_result(gcc: Client, task_id: str):
    deadline = time.monotonic() + TIMEOUT
    while True:
        task = gcc.get_task(task_id)
        if not task["pending"]:
            return gcc.get_result(task_id)
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} still {task['status']} after {TIMEOUT} s")
        time.sleep(0.1)


def wait_batch(gcc: Client, task_ids: list) -> dict:
    deadline = time.monotonic() + TIMEOUT
    done: dict = {}
    while len(done) < len(task_ids):
        todo = [t for t in task_ids if t not in done]
        for tid, doc in gcc.get_batch_result(todo).items():
            if not doc["pending"]:
                done[tid] = doc
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(task_ids) - len(done)} tasks still pending")
        if len(done) < len(task_ids):
            time.sleep(0.2)
    return done


def client(url: str, token: str, source: bool) -> Client:
    if source:
        return HpfaasClient(
            url,
            token,
            code_serialization_strategy=PureSourceTextInspect(),
            data_serialization_strategy=JSONData(),
        )
    return HpfaasClient(url, token)


def failure_report(gcc: Client, endpoint_id: str, fid: str) -> dict:
    tid = gcc.run(1, 0, endpoint_id=endpoint_id, function_id=fid)
    try:
        value = wait_result(gcc, tid)
    except TaskExecutionFailed as exc:
        return {"raised": "TaskExecutionFailed", "remote_data": exc.remote_data}
    return {"raised": None, "value": value}


def suite(url: str, token: str, endpoint_id: str, n: int, source: bool) -> dict:
    gcc = client(url, token, source)
    report: dict = {"sdk_version": __version__}
    fid = gcc.register_function(square)
    report["function_id"] = fid
    code = gcc.get_function(fid)["function_code"]
    report["function_code_strategy"] = code.split("\n", 1)[1][:3]
    tid = gcc.run(7, endpoint_id=endpoint_id, function_id=fid)
    report["run_result"] = wait_result(gcc, tid)
    task = gcc.get_task(tid)
    report["get_task"] = {k: task[k] for k in ("pending", "status", "result")}
    report["kwargs_result"] = wait_result(
        gcc, gcc.run(2, b=3, endpoint_id=endpoint_id, function_id=gcc.register_function(add))
    )
    report["failure"] = failure_report(gcc, endpoint_id, gcc.register_function(divide))

    batch = gcc.create_batch()
    for i in range(n):
        batch.add(fid, args=(i,))
    started = time.monotonic()
    submitted = gcc.batch_run(endpoint_id, batch)
    ids = submitted["tasks"][fid]
    results = wait_batch(gcc, ids)
    report["batch"] = {
        "keys": list(submitted["tasks"]),
        "count": len(ids),
        "all_correct": all(results[t].get("result") == i * i for i, t in enumerate(ids)),
        "seconds": round(time.monotonic() - started, 2),
    }
    # What Executor.reload_tasks reads: GET /v2/taskgroup/{id}.
    group = gcc._compute_web_client.v2.get_task_group(submitted["task_group_id"]).data
    report["taskgroup"] = {
        "taskgroup_id": group["taskgroup_id"],
        "same_ids": [t["id"] for t in group["tasks"]] == ids,
    }
    # Executor.reload_tasks re-attaches to finished tasks without AMQP.
    from globus_compute_sdk import Executor

    with Executor(endpoint_id=endpoint_id, client=gcc) as ex:
        futures = list(ex.reload_tasks(submitted["task_group_id"]))
        report["reload_tasks"] = {
            "count": len(futures),
            "all_correct": sorted(f.result(timeout=10) for f in futures)
            == sorted(i * i for i in range(n)),
        }
    # The JSON result serializer, by GC import path.
    jbatch = gcc.create_batch(result_serializers=["globus_compute_sdk.serialize.JSONData"])
    jbatch.add(fid, args=(9,))
    jtid = gcc.batch_run(endpoint_id, jbatch)["tasks"][fid][0]
    report["json_result"] = wait_result(gcc, jtid)
    report["json_result_raw"] = gcc._compute_web_client.v2.get_task(jtid).data["result"]
    report["endpoint_status"] = gcc.get_endpoint_status(endpoint_id)
    return report


def payloads() -> dict:
    """`square` under every code strategy, `(3,)` and `{}` under every data strategy."""
    from globus_compute_sdk.serialize import concretes
    from globus_compute_sdk.serialize.facade import ComputeSerializer

    code = {}
    for name in (
        "DillCode", "PureSourceTextInspect", "PureSourceDill", "DillCodeSource",
        "DillCodeTextInspect", "CombinedCode", "AllCodeStrategies",
    ):
        code[name] = ComputeSerializer.pack_buffers([getattr(concretes, name)().serialize(square)])
    data = {}
    for name in ("DillDataBase64", "JSONData", "AllDataStrategies"):
        strategy = getattr(concretes, name)()
        buffers = [strategy.serialize((3,)), strategy.serialize({})]
        data[name] = ComputeSerializer.pack_buffers(buffers)
    return {"code": code, "data": data}


def worker_check() -> dict:
    """Run every payload through hpfaas's worker runtime (with dill here) and decode the
    results as the Globus Compute client does."""
    sys.path.insert(0, REPO_PYTHON)
    from globus_compute_sdk.serialize.facade import ComputeSerializer
    from hpfaas.worker import TaskRunner

    made = payloads()
    runs = {}
    for cname, code in made["code"].items():
        for dname, payload in made["data"].items():
            reply = TaskRunner().run(
                {"task_id": "t", "function_id": "f", "function_code": code, "payload": payload}
            )
            runs[f"{cname}+{dname}"] = (
                ComputeSerializer().deserialize(reply["result"]) if reply["ok"] else reply
            )
    results = {}
    for path in (
        "globus_compute_sdk.serialize.DillDataBase64",
        "globus_compute_sdk.serialize.JSONData",
        "globus_compute_sdk.serialize.concretes.AllDataStrategies",
    ):
        reply = TaskRunner().run({
            "task_id": "t", "function_id": "f", "function_code": made["code"]["DillCode"],
            "payload": made["data"]["JSONData"], "result_serializers": [path],
        })
        results[path] = [reply["result"][:3], ComputeSerializer().deserialize(reply["result"])]
    return {"runs": runs, "results": results}


def main() -> None:
    if sys.argv[1] in ("payloads", "worker_check"):
        json.dump(payloads() if sys.argv[1] == "payloads" else worker_check(), sys.stdout)
        return
    url, token, endpoint_id, mode, *rest = sys.argv[1:]
    if mode == "suite":
        n = int(rest[0]) if rest else 10
        report = suite(url, token, endpoint_id, n, source="--source" in rest)
    elif mode == "submit":
        gcc = client(url, token, source=True)
        fid = gcc.register_function(square)
        tid = gcc.run(7, endpoint_id=endpoint_id, function_id=fid)
        report = {"function_id": fid, "task_id": tid}
    elif mode == "read":
        report = {"result": wait_result(client(url, token, source=True), rest[0])}
    elif mode == "dill_missing":
        gcc = client(url, token, source=False)
        report = failure_report(gcc, endpoint_id, gcc.register_function(add))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
