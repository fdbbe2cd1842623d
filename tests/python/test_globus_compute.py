"""The real Globus Compute SDK (`globus-compute-sdk` 4.x from PyPI) against a real `hpfaas up`
(issue 7, docs/globus-compute.md).

The SDK lives in its own venv, `.venv-gc` (scripts/setup.sh makes it), so the main test
venv stays stdlib-only; its code runs in subprocesses (`gc_driver.py`). Without `.venv-gc`
these tests skip, printing why; under `CI=true` they fail instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, Service, hpfaas_binary, running_up
from helpers import wait_until

from hpfaas import Client
from hpfaas.worker import TaskRunner

GC_PYTHON = REPO / ".venv-gc" / "bin" / "python"
DRIVER = Path(__file__).with_name("gc_driver.py")
BATCH = 1000
DRIVER_TIMEOUT = 300


@pytest.fixture(scope="module")
def gc_python() -> Path:
    if not GC_PYTHON.exists():
        reason = f"{GC_PYTHON} not found: run scripts/setup.sh (installs globus-compute-sdk there)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        print(f"\nskipping Globus Compute tests: {reason}", file=sys.stderr)
        pytest.skip(reason)
    return GC_PYTHON


def drive(gc_python: Path, *args: str) -> dict:
    done = subprocess.run(
        [str(gc_python), str(DRIVER), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT,
    )
    assert done.returncode == 0, f"gc_driver {args[3:] or args} failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout)


def drive_service(gc_python: Path, service: Service, *args: str) -> dict:
    return drive(gc_python, service.url, service.token, service.endpoint_id, *args)


def _python_has_dill(python: str) -> bool:
    return subprocess.run([python, "-c", "import dill"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def gc_service(gc_python):
    """A second `hpfaas up` whose workers run `.venv-gc/bin/python`, where dill is installed."""
    binary = hpfaas_binary()
    if not binary.exists():
        pytest.skip(f"hpfaas binary not found at {binary}")
    extra = f"worker_python = {json.dumps(str(gc_python))}\n"
    with running_up(binary, "hpfaas-gc-", extra, strict_shutdown=False) as up:
        yield up


# --- the worker runtime decodes every Globus Compute strategy ---------------------------

SOURCE_INC = "st\ninc:def inc(x):\n    return {'x': x}['x'] + 1\n"


def test_combined_layouts_by_hand():
    """The framings alone, stdlib only (no `.venv-gc` needed): `12\\n`/`13\\n` pack whole
    buffers and the first that decodes wins; `10\\n` joins `id:body` chunks with ':'."""
    from hpfaas.serialize import deserialize, pack

    broken = "01\n" + "not base64 of anything!"
    assert deserialize("12\n" + pack([broken, SOURCE_INC]))(1) == 2
    assert deserialize("13\n" + pack(["11\n[1, 2]", "00\nxx"])) == [1, 2]
    # 10: "st\n" ":" "inc:def ..." — the source holds ':' too.
    combined = "10\n" + ":".join(["01\n", "AAAA", "st\n", SOURCE_INC[3:]])
    assert deserialize(combined)(4) == 5
    with pytest.raises(ValueError, match="no strategy of this combined buffer decodes"):
        deserialize("12\n" + pack([broken]))


@pytest.fixture(scope="module")
def gc_payloads(gc_python) -> dict:
    return drive(gc_python, "payloads")


def _run(code: str, payload: str, serializers=()) -> dict:
    return TaskRunner().run(
        {
            "task_id": "t",
            "function_id": "f",
            "function_code": code,
            "payload": payload,
            "result_serializers": list(serializers),
        }
    )


@pytest.mark.skipif(_python_has_dill(sys.executable), reason="this Python has dill")
def test_source_and_json_strategies_need_no_dill(gc_payloads):
    from hpfaas.serialize import deserialize

    code, data = gc_payloads["code"], gc_payloads["data"]
    # Everything whose code is source text, and the combinations that hold source
    # text, runs without dill; `(3,)` pickled by dill is a plain pickle too.
    for cname in (
        "PureSourceTextInspect",
        "PureSourceDill",
        "DillCodeSource",
        "DillCodeTextInspect",
        "CombinedCode",
        "AllCodeStrategies",
    ):
        for dname in data:
            reply = _run(code[cname], data[dname])
            assert reply["ok"], (cname, dname, reply)
            assert deserialize(reply["result"]) == 9


@pytest.mark.skipif(_python_has_dill(sys.executable), reason="this Python has dill")
def test_dill_code_without_dill_says_to_install_it(gc_payloads):
    reply = _run(gc_payloads["code"]["DillCode"], gc_payloads["data"]["JSONData"])
    assert not reply["ok"]
    assert reply["exception"]["type"] == "MissingDill"
    message = reply["exception"]["message"]
    assert "install dill" in message and "PureSourceTextInspect" in message


def test_result_serializers_by_gc_import_path(gc_payloads):
    from hpfaas.serialize import deserialize, unpack

    code = gc_payloads["code"]["PureSourceTextInspect"]
    payload = gc_payloads["data"]["JSONData"]
    json_reply = _run(code, payload, ["globus_compute_sdk.serialize.JSONData"])
    assert json_reply["result"] == "11\n9"
    combo = _run(code, payload, ["globus_compute_sdk.serialize.concretes.AllDataStrategies"])
    assert combo["result"].startswith("13\n")
    assert [b[:3] for b in unpack(combo["result"][3:])] == ["11\n", "00\n"]
    assert deserialize(combo["result"]) == 9
    # Unknown strategies are skipped; the first allowed one that can encode wins.
    fallback = _run(code, payload, ["some.Other", "globus_compute_sdk.serialize.DillDataBase64"])
    assert fallback["result"].startswith("00\n")


def test_every_strategy_with_dill_decodes_in_gc(gc_python):
    """In `.venv-gc` (dill installed) every code x data strategy runs, and each result
    strategy decodes with Globus Compute's own serializer."""
    report = drive(gc_python, "worker_check")
    assert report["runs"] and all(v == 9 for v in report["runs"].values()), report["runs"]
    assert {path.rpartition(".")[2]: r for path, r in report["results"].items()} == {
        "DillDataBase64": ["00\n", 9],
        "JSONData": ["11\n", 9],
        "AllDataStrategies": ["13\n", 9],
    }


# --- the real client against a real service ---------------------------------------------


def _check_suite(report: dict) -> None:
    assert report["sdk_version"].startswith("4.")
    assert report["run_result"] == 49
    assert report["get_task"] == {"pending": False, "status": "success", "result": 49}
    assert report["kwargs_result"] == 5
    failure = report["failure"]
    assert failure["raised"] == "TaskExecutionFailed", failure
    assert "ZeroDivisionError: division by zero" in failure["remote_data"]
    assert "Traceback" in failure["remote_data"] and "return a / b" in failure["remote_data"]
    batch = report["batch"]
    assert batch["keys"] == [report["function_id"]] and batch["count"] == BATCH
    assert batch["all_correct"]
    assert report["taskgroup"]["same_ids"]
    assert report["reload_tasks"] == {"count": BATCH, "all_correct": True}
    assert report["json_result"] == 81 and report["json_result_raw"] == "11\n81"
    status = report["endpoint_status"]
    assert status["status"] == "online" and status["details"]["total_workers"] >= 1


def test_gc_client_source_strategies_without_dill(gc_python, service):
    """PureSourceTextInspect + JSONData against the default workers (no dill needed)."""
    report = drive_service(gc_python, service, "suite", str(BATCH), "--source")
    assert report["function_code_strategy"] == "st\n"
    _check_suite(report)


def test_gc_client_default_dill_strategies(gc_python, gc_service):
    """The SDK's defaults (DillCode + DillDataBase64) against workers that have dill."""
    report = drive_service(gc_python, gc_service, "suite", str(BATCH))
    assert report["function_code_strategy"] == "01\n"
    _check_suite(report)


def test_gc_default_strategies_without_dill_in_worker(gc_python, service):
    if _python_has_dill("python3"):
        pytest.skip("the default worker python (python3) has dill")
    report = drive_service(gc_python, service, "dill_missing")
    assert report["raised"] == "TaskExecutionFailed", report
    assert "MissingDill" in report["remote_data"] and "install dill" in report["remote_data"]


def test_task_submitted_by_gc_is_read_by_hpfaas(gc_python, service):
    submitted = drive_service(gc_python, service, "submit")
    client = Client(service.url, service.token)
    value = wait_until(
        lambda: (not client.get_task(submitted["task_id"])["pending"]) and [
            client.get_result(submitted["task_id"])
        ],
        60,
        "the task submitted through Globus Compute's client",
    )
    assert value == [49]


def square_here(x):
    print("squaring", x)
    return x * x


def test_task_submitted_by_hpfaas_is_read_by_gc(gc_python, service):
    """Its document carries hpfaas's `output` key, which Globus Compute's client ignores."""
    client = Client(service.url, service.token)
    fid = client.register_function(square_here)
    tid = client.run(6, endpoint_id=service.endpoint_id, function_id=fid)
    assert drive_service(gc_python, service, "read", tid) == {"result": 36}
    assert client.get_task(tid)["output"]["stdout"] == "squaring 6\n"
