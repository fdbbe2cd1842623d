"""The worker runtime, driven over real pipes the way the manager drives it."""

from __future__ import annotations

import json
import os
import select
import shutil
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from hpfaas.serialize import (
    deserialize,
    pack,
    serialize,
    serialize_function,
    serialize_json,
    serialize_or_blob,
)

FRAME_TIMEOUT = 10.0
PACKAGE = Path(__file__).resolve().parents[2] / "python" / "hpfaas"


def double(x):
    return 2 * x


def greet(name, punctuation="!"):
    return f"hello {name}{punctuation}"


def fails_with_boom():
    raise ValueError("boom")


def chatty(x):
    print("a user print that must not reach the protocol pipe")
    print(x, file=__import__("sys").stderr)
    return x


def exits():
    import sys

    sys.exit(3)


def returns_a_generator():
    # Not even dill or cloudpickle, when installed, can pickle a generator.
    return (x for x in range(3))


def reads_stdin():
    import sys

    return sys.stdin.read()


class Worker:
    """A worker process started as the manager starts it, with frame helpers."""

    def __init__(self, runtime_dir: Path, log: Path, main_args: str = ""):
        bootstrap = (
            f"import sys; sys.path.insert(0, {str(runtime_dir)!r}); "
            f"from hpfaas.worker import main; main({main_args})"
        )
        self.log = log
        with open(log, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-u", "-c", bootstrap],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=runtime_dir,
            )
        self._buffer = b""

    def send(self, msg: dict, blob: bytes = None) -> None:
        """A request as the manager frames it: JSON header, newline, payload,
        and the blob, which the header announces."""
        header = {k: v for k, v in msg.items() if k != "payload"}
        if blob is not None:
            header.setdefault("blob", len(blob))
        body = json.dumps(header).encode() + b"\n" + msg.get("payload", "").encode()
        body += blob or b""
        self.proc.stdin.write(struct.pack(">I", len(body)) + body)
        self.proc.stdin.flush()

    def receive(self) -> dict:
        header = self._read_exactly(4)
        return json.loads(self._read_exactly(struct.unpack(">I", header)[0]))

    def call(
        self,
        fn,
        *args,
        function_id=None,
        send_code=True,
        result_serializers=(),
        **kwargs,
    ):
        """Send one task and return the worker's reply."""
        msg = {
            "task_id": str(uuid.uuid4()),
            "function_id": function_id or str(uuid.uuid4()),
            "payload": pack([serialize(args), serialize(kwargs)]),
            "result_serializers": list(result_serializers),
        }
        if send_code:
            msg["function_code"] = pack([serialize_function(fn)])
        self.send(msg)
        reply = self.receive()
        assert reply["task_id"] == msg["task_id"]
        return reply

    def close(self) -> int:
        """Close the pipe, as the manager does, and return the exit status."""
        self.proc.stdin.close()
        return self.proc.wait(FRAME_TIMEOUT)

    def _read_exactly(self, n: int) -> bytes:
        deadline = time.monotonic() + FRAME_TIMEOUT
        fd = self.proc.stdout.fileno()
        while len(self._buffer) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise AssertionError(f"no frame from the worker within {FRAME_TIMEOUT} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"worker closed its pipe; stderr:\n{self.log.read_text()}")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data


@pytest.fixture
def worker(tmp_path):
    # The manager copies the package's files into a directory of its own: so do we.
    runtime = tmp_path / "runtime"
    shutil.copytree(PACKAGE, runtime / "hpfaas", ignore=shutil.ignore_patterns("__pycache__"))
    w = Worker(runtime, tmp_path / "worker.log")
    yield w
    if w.proc.poll() is None:
        w.proc.kill()
        w.proc.wait()


def test_ready_frame(worker):
    ready = worker.receive()
    assert ready == {
        "ready": True,
        "pid": worker.proc.pid,
        "python": ".".join(map(str, sys.version_info[:3])),
    }


def test_call_returns_pickled_result(worker):
    worker.receive()
    reply = worker.call(greet, "world", punctuation="?")
    assert reply["ok"] is True
    assert deserialize(reply["result"]) == "hello world?"


def test_function_is_cached_by_id(worker):
    worker.receive()
    function_id = str(uuid.uuid4())
    assert deserialize(worker.call(double, 4, function_id=function_id)["result"]) == 8
    reply = worker.call(double, 5, function_id=function_id, send_code=False)
    assert deserialize(reply["result"]) == 10


def test_unknown_function_without_code_is_reported(worker):
    worker.receive()
    reply = worker.call(double, 1, send_code=False)
    assert reply["ok"] is False
    assert reply["exception"]["type"] == "LookupError"
    assert "neither sent nor cached" in reply["exception"]["message"]


def test_exception_is_reported_with_traceback(worker):
    worker.receive()
    reply = worker.call(fails_with_boom)
    assert reply["ok"] is False
    exc = reply["exception"]
    assert (exc["type"], exc["message"]) == ("ValueError", "boom")
    assert "in fails_with_boom" in exc["traceback"]
    assert 'raise ValueError("boom")' in exc["traceback"]
    assert exc["traceback"].rstrip().endswith("ValueError: boom")
    # The runtime's own frame is not part of the user's traceback.
    assert "worker.py" not in exc["traceback"]
    assert deserialize(worker.call(double, 1)["result"]) == 2


def test_user_output_comes_back_with_the_reply_not_on_the_protocol(worker):
    worker.receive()
    reply = worker.call(chatty, 7)
    assert deserialize(reply["result"]) == 7
    assert reply["output"] == {
        "stdout": "a user print that must not reach the protocol pipe\n",
        "stderr": "7\n",
        "stdout_dropped": 0,
        "stderr_dropped": 0,
    }
    # Each task's output is its own, and a silent task's reply has none.
    assert "output" not in worker.call(double, 1)
    assert worker.call(chatty, 8)["output"]["stderr"] == "8\n"
    assert worker.close() == 0
    assert "a user print" not in worker.log.read_text()


def prints_a_mebibyte_then_raises():
    import sys

    sys.stdout.write("BEGIN" + "x" * (1 << 20) + "END\n")
    for i in range(100_000):
        print(i, file=sys.stderr)
    sys.stdout.buffer.write(b"raw bytes\n")
    raise RuntimeError("after the prints")


def test_large_output_keeps_its_head_and_tail_and_counts_the_rest(worker):
    worker.receive()
    reply = worker.call(prints_a_mebibyte_then_raises)
    assert reply["ok"] is False and reply["exception"]["message"] == "after the prints"
    out = reply["output"]
    stdout_total = len("BEGIN") + (1 << 20) + len("END\n") + len("raw bytes\n")
    stderr_total = sum(len(f"{i}\n") for i in range(100_000))
    half = 16 * 1024
    assert out["stdout"].startswith("BEGINxxx") and out["stdout"].endswith("END\nraw bytes\n")
    assert out["stdout_dropped"] == stdout_total - 2 * half
    assert f"[hpfaas: {out['stdout_dropped']} bytes of output dropped here]" in out["stdout"]
    assert out["stderr"].startswith("0\n1\n2\n") and out["stderr"].endswith("99998\n99999\n")
    assert out["stderr_dropped"] == stderr_total - 2 * half
    marker = f"\n[hpfaas: {out['stderr_dropped']} bytes of output dropped here]\n"
    # The marker's first newline is left out when the head ends a line.
    assert len(out["stderr"]) - 2 * half in (len(marker), len(marker) - 1)


def uses_the_streams_like_a_file():
    import sys

    assert not sys.stdout.isatty() and sys.stdout.writable()
    assert sys.stderr.fileno() == 2
    sys.stdout.writelines(["a\n", "b\n"])
    sys.stdout.flush()
    print("é ✓ \udcff", end="")
    sys.stdout.close()
    return sys.stdout.encoding


def test_captured_streams_behave_like_text_files(worker):
    worker.receive()
    reply = worker.call(uses_the_streams_like_a_file)
    assert reply["ok"], reply
    assert deserialize(reply["result"]) == "utf-8"
    assert reply["output"]["stdout"] == "a\nb\né ✓ \\udcff"
    # Closing it closed nothing the next task needs.
    after = worker.call(prints_flushed, "next")
    assert after["ok"] and after["output"]["stdout"] == "next\n", after


def prints_flushed(text):
    print(text, flush=True)


def test_output_limit_zero_leaves_prints_to_the_worker_log(tmp_path):
    runtime = tmp_path / "runtime"
    shutil.copytree(PACKAGE, runtime / "hpfaas", ignore=shutil.ignore_patterns("__pycache__"))
    w = Worker(runtime, tmp_path / "worker.log", main_args="output_limit=0")
    try:
        w.receive()
        reply = w.call(chatty, 7)
        assert deserialize(reply["result"]) == 7 and "output" not in reply
        assert w.close() == 0
        assert "a user print that must not reach the protocol pipe" in w.log.read_text()
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def test_a_stream_of_tiny_writes_is_kept_in_linear_time():
    """Bounded by seconds where milliseconds are expected: catches only a
    quadratic tail (each write moving the whole kept tail)."""
    from hpfaas.capture import TaskStreams

    streams = TaskStreams(1 << 18)
    start = time.monotonic()
    with streams:
        for _ in range(500_000):
            sys.stdout.write("y")
    assert time.monotonic() - start < 60
    out = streams.take()
    assert out["stdout_dropped"] == 500_000 - (1 << 18)
    assert streams.take() is None


def test_user_stdin_is_empty(worker):
    worker.receive()
    assert deserialize(worker.call(reads_stdin)["result"]) == ""


def test_sys_exit_is_reported_not_fatal(worker):
    worker.receive()
    reply = worker.call(exits)
    assert reply["ok"] is False
    assert (reply["exception"]["type"], reply["exception"]["message"]) == (
        "SystemExit",
        "3",
    )
    assert deserialize(worker.call(double, 21)["result"]) == 42


def test_unpicklable_result_is_reported(worker):
    worker.receive()
    reply = worker.call(returns_a_generator)
    assert reply["ok"] is False
    assert "generator" in reply["exception"]["message"]
    assert deserialize(worker.call(double, 1)["result"]) == 2


def test_undecodable_arguments_are_reported(worker):
    worker.receive()
    worker.send(
        {
            "task_id": "t1",
            "function_id": "f1",
            "function_code": pack([serialize_function(double)]),
            "payload": "garbage",
            "result_serializers": [],
        }
    )
    reply = worker.receive()
    assert reply["task_id"] == "t1"
    assert reply["ok"] is False
    assert reply["exception"]["type"] == "ValueError"
    assert "malformed buffer framing" in reply["exception"]["message"]


def test_json_arguments_and_json_result_serializer(worker):
    worker.receive()
    worker.send(
        {
            "task_id": "t2",
            "function_id": "f2",
            "function_code": pack([serialize_function(greet)]),
            "payload": pack([serialize_json(["json"]), serialize_json({})]),
            "result_serializers": ["zz\n", "11\n", "00\n"],
        }
    )
    reply = worker.receive()
    assert reply == {"task_id": "t2", "ok": True, "result": '11\n"hello json!"'}


def test_a_payload_reaches_the_function_exactly_as_sent(worker):
    # The payload follows the request's JSON header unescaped: its framing
    # newlines, quotes, backslashes and raw UTF-8 must arrive as they were.
    worker.receive()
    text = 'line1\nline2 "q" \\ é ✓'
    args = '11\n["' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"]'
    worker.send(
        {
            "task_id": "t3",
            "function_id": "f3",
            "function_code": pack([serialize_function(greet)]),
            "payload": pack([args, serialize_json({})]),
            "result_serializers": ["11\n"],
        }
    )
    reply = worker.receive()
    assert reply["ok"], reply
    assert json.loads(reply["result"][3:]) == f"hello {text}!"


def test_a_blob_carries_the_args_pickle_raw_after_the_payload(worker):
    worker.receive()
    data = bytes(range(256)) * 4096  # every byte value, framing newlines included
    first, blob = serialize_or_blob((data,), 1024)
    assert first == f"pb\n{len(blob)}"
    kwargs = serialize({"punctuation": "?"})
    worker.send(
        {
            "task_id": "b1",
            "function_id": "fb",
            "function_code": pack([serialize_function(greet)]),
            "payload": pack([first, kwargs]),
            "result_serializers": [],
        },
        blob,
    )
    reply = worker.receive()
    assert reply["ok"], reply
    assert deserialize(reply["result"]) == f"hello {data!r}?"
    # A blob length that disagrees with the args, or args naming a blob
    # the task lacks, fail the task with the reason; the worker goes on.
    bad = [
        (pack([f"pb\n{len(blob) + 1}", kwargs]), blob, "the task's blob has"),
        (pack([first, kwargs]), None, "came without one"),
        (pack([serialize((1,)), kwargs]), blob, "do not name it"),
    ]
    for i, (payload, attached, why) in enumerate(bad):
        msg = {"task_id": f"x{i}", "function_id": "fb", "payload": payload}
        worker.send(msg, attached)
        reply = worker.receive()
        assert not reply["ok"] and why in reply["exception"]["message"], reply
    assert worker.call(double, 21)["ok"]


def test_a_frame_announcing_more_blob_than_it_holds_ends_the_worker(worker):
    worker.receive()
    worker.send({"task_id": "t", "function_id": "f", "payload": "", "blob": 10}, b"123")
    assert worker.proc.wait(FRAME_TIMEOUT) != 0
    assert "does not hold" in worker.log.read_text()


def test_eof_exits_cleanly(worker):
    worker.receive()
    assert worker.close() == 0


def test_a_function_that_cannot_be_decoded_reports_its_cause_every_time(tmp_path):
    """The manager sends code once per worker: later calls must not turn the
    decoding error into 'neither sent nor cached'."""
    from hpfaas.serialize import pack
    from hpfaas.worker import TaskRunner

    runner = TaskRunner()
    broken = pack(["st\nf:def f(:\n"])
    args = pack(["11\n[]", "11\n{}"])
    first = runner.run({"task_id": "t1", "function_id": "f1", "function_code": broken, "payload": args})
    again = runner.run({"task_id": "t2", "function_id": "f1", "payload": args})
    assert first["exception"]["type"] == "SyntaxError"
    assert again["exception"]["type"] == "SyntaxError", again
