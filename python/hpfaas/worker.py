"""The worker runtime: a warm Python process that runs tasks for the manager.

The manager starts it with the runtime directory on `sys.path` and talks to it
over the worker's stdin/stdout (docs/api.md, "Worker pipe protocol"): frames of
a 4-byte big-endian length and UTF-8 JSON (a request's payload follows its
JSON header and a newline, unescaped, and its blob, if any, the payload).
Standard library only, so a compute node needs nothing but an interpreter. A user's exception, even a SystemExit,
becomes a failed result; only the end of the manager's pipe ends the worker.
What a task prints goes back with its reply (:mod:`hpfaas.capture`).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import struct
import traceback
from types import TracebackType
from typing import Any, BinaryIO, Callable, Dict, Optional

from hpfaas.capture import DEFAULT_LIMIT, TaskStreams
from hpfaas.serialize import (
    ALL_DATA,
    JSON,
    PICKLE,
    PARENT_RESULTS,
    PICKLE_BLOB,
    deserialize,
    deserialize_blob,
    deserialize_with_parents,
    result_strategy,
    serialize,
    serialize_all_data,
    serialize_json,
    unpack,
)

_RESULT_ENCODERS = {PICKLE: serialize, JSON: serialize_json, ALL_DATA: serialize_all_data}
_HEADER = struct.Struct(">I")


class TaskRunner:
    """Runs task messages, caching each decoded function by its id; with an
    ``output_limit`` (bytes per stream, 0 for none) a task's prints go back
    with its reply."""

    def __init__(self, output_limit: int = 0) -> None:
        self._functions: Dict[str, Callable] = {}
        self._broken: Dict[str, BaseException] = {}
        self._streams = TaskStreams(output_limit) if output_limit > 0 else None

    def run(self, msg: dict) -> dict:
        """Run one task message and return the reply message; never raises."""
        if self._streams is None:
            return self._run(msg)
        with self._streams:
            reply = self._run(msg)
        output = self._streams.take()
        if output is not None:
            reply["output"] = output
        return reply

    def _run(self, msg: dict) -> dict:
        task_id = msg.get("task_id")
        try:
            fn = self._function(msg["function_id"], msg.get("function_code"))
            args, kwargs = _decode_arguments(msg["payload"], msg.get("blob"))
            home = _enter_sandbox(msg.get("sandbox_dir"))
        except BaseException as exc:
            return _failure(task_id, exc, exc.__traceback__)
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:
            # Skip this frame: the user's traceback starts in their function.
            return _failure(task_id, exc, exc.__traceback__.tb_next)
        finally:
            if home is not None:
                os.chdir(home)
        try:
            result = _encode_result(value, msg.get("result_serializers") or ())
        except BaseException as exc:
            return _failure(task_id, exc, exc.__traceback__)
        return {"task_id": task_id, "ok": True, "result": result}

    def _function(self, function_id: str, function_code: Optional[str]) -> Callable:
        if function_code is not None:
            try:
                (buffer,) = unpack(function_code)
                self._functions[function_id] = deserialize(buffer)
            except BaseException as exc:
                # The manager sends the code once per worker; remember why it
                # could not be decoded, so later calls report the same cause.
                self._broken[function_id] = exc
                raise
        try:
            return self._functions[function_id]
        except KeyError:
            if function_id in self._broken:
                raise self._broken[function_id]
            raise LookupError(f"function {function_id} was neither sent nor cached") from None


def _enter_sandbox(directory: Optional[str]) -> Optional[str]:
    """With run_in_sandbox: chdir into the task's directory; returns where to go back."""
    if not directory:
        return None
    home = os.getcwd()
    os.chdir(directory)
    return home


def _decode_arguments(payload: str, blob: Optional[memoryview]) -> tuple:
    buffers = unpack(payload)
    if len(buffers) == 3 and buffers[2].startswith(PARENT_RESULTS):
        # A dependent task: the service appended its parents' results.
        results = [deserialize(b) for b in unpack(buffers[2][len(PARENT_RESULTS) :])]
        return (
            deserialize_with_parents(buffers[0], results),
            deserialize_with_parents(buffers[1], results),
        )
    if len(buffers) != 2:
        raise ValueError(f"a task payload packs 2 buffers (args, kwargs), not {len(buffers)}")
    first, kwargs = buffers
    if first.startswith(PICKLE_BLOB):
        args = deserialize_blob(first, blob)
    elif blob is not None:
        raise ValueError("a task's blob came with args that do not name it (pb\\n)")
    else:
        args = deserialize(first)
    return args, deserialize(kwargs)


def _encode_result(value: Any, result_serializers) -> str:
    """The first allowed strategy that can encode the value (ids, or Globus Compute's
    import paths); pickle (`00\\n`) when none is named or known."""
    strategies = [s for s in map(result_strategy, result_serializers) if s is not None]
    errors = []
    for strategy in strategies or [PICKLE]:
        try:
            return _RESULT_ENCODERS[strategy](value)
        except Exception as exc:  # as Globus Compute's endpoint: try the next one
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise TypeError(
        "no allowed result serializer could encode the result: "
        + "; ".join(f"{type(e).__name__}: {e}" for e in errors)
    )


def _failure(task_id: Any, exc: BaseException, tb: Optional[TracebackType]) -> dict:
    return {
        "task_id": task_id,
        "ok": False,
        "exception": {
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
        },
    }


def _read_frame(stream: BinaryIO) -> Optional[dict]:
    """The next request, or None at a clean end of input: its JSON header up
    to the first newline, with the rest of the frame as its `payload`, but
    for the last `blob` bytes the header announces, which become the `blob`
    (a view, not a copy)."""
    header = stream.read(_HEADER.size)
    if not header:
        return None
    length = _HEADER.unpack(header)[0] if len(header) == _HEADER.size else -1
    body = stream.read(length) if length >= 0 else b""
    if len(body) != length:
        raise EOFError("the manager's pipe closed in the middle of a frame")
    newline = body.find(b"\n")
    if newline < 0:
        raise ValueError("a request frame without the newline after its JSON header")
    msg = json.loads(body[:newline])
    blob = msg.get("blob")
    end = len(body)
    if blob is not None:
        if not isinstance(blob, int) or not 0 <= blob <= end - newline - 1:
            raise ValueError(f"a request frame announces a blob of {blob!r} bytes it does not hold")
        end -= blob
        msg["blob"] = memoryview(body)[end:]
    msg["payload"] = body[newline + 1 : end].decode("utf-8")
    return msg


def _write_frame(stream: BinaryIO, msg: dict) -> None:
    body = json.dumps(msg).encode("utf-8")
    # Two writes into the buffered stream, not a concatenation: a large
    # result is not copied once more just to put 4 bytes in front of it.
    stream.write(_HEADER.pack(len(body)))
    stream.write(body)
    stream.flush()


def main(output_limit: int = DEFAULT_LIMIT) -> None:
    """Serve tasks over the inherited stdin/stdout until the manager closes stdin;
    keep ``output_limit`` bytes of each task's stdout and of its stderr (0: leave
    them to the worker log)."""
    # os.dup makes non-inheritable descriptors: a process the user's code
    # starts cannot hold the protocol pipe open after this worker dies.
    protocol_in = os.fdopen(os.dup(0), "rb")
    protocol_out = os.fdopen(os.dup(1), "wb")
    # From here on fd 0 reads nothing, and what reaches fd 1 or 2 lands in the worker log.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    # A Ctrl-C at a terminal reaches the whole process group; the manager, not
    # the terminal, decides when a worker stops (by closing its pipe).
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    ready = {"ready": True, "pid": os.getpid(), "python": platform.python_version()}
    _write_frame(protocol_out, ready)
    runner = TaskRunner(output_limit)
    while True:
        msg = _read_frame(protocol_in)
        if msg is None:
            return
        _write_frame(protocol_out, runner.run(msg))


if __name__ == "__main__":
    main()
