"""What a Python task writes to `sys.stdout` and `sys.stderr`, kept per task.

The worker swaps both streams for a :class:`TaskStreams` pair while a task
runs. Each stream keeps at most ``limit`` bytes: the first half and the last
half of what was written, with a line counting the bytes dropped between
them, the way a shell task's output is kept (``engine.python_output_limit``).

Only the Python-level streams are captured: output that bypasses them
(a C library writing to file descriptor 1 or 2, a child process inheriting
them) goes to the block's worker log, as before. Capturing the descriptors
would cost every task system calls and a file on disk that a runaway C loop
could fill; these streams cost nothing for a task that prints nothing.
Standard library only.
"""

from __future__ import annotations

import io
import sys
from typing import Any, Dict, Optional, Tuple

#: Default of ``engine.python_output_limit``: 16 KiB of head and 16 KiB of tail.
DEFAULT_LIMIT = 32 * 1024


class _Bounded:
    """The first ``head`` and last ``tail`` bytes of what was written, and the total."""

    __slots__ = ("_head_limit", "_tail_limit", "_head", "_tail", "total")

    def __init__(self, limit: int) -> None:
        self._head_limit = limit - limit // 2
        self._tail_limit = limit // 2
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def take(self, data: bytes) -> None:
        """Keeps what fits of ``data``; amortised linear in what is written."""
        self.total += len(data)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data and self._tail_limit:
            self._tail += data
            # Trimmed only once it is twice the limit, so a stream of small
            # writes moves each byte a bounded number of times.
            if len(self._tail) > 2 * self._tail_limit:
                del self._tail[: len(self._tail) - self._tail_limit]

    def text(self) -> Tuple[str, int]:
        """The kept text (a line marking where bytes were dropped) and how many were."""
        tail = bytes(self._tail[max(0, len(self._tail) - self._tail_limit) :])
        dropped = self.total - len(self._head) - len(tail)
        head = self._head.decode("utf-8", "replace")
        if not dropped:
            return head + tail.decode("utf-8", "replace"), 0
        newline = "" if head.endswith("\n") or not head else "\n"
        marker = f"{newline}[hpfaas: {dropped} bytes of output dropped here]\n"
        return head + marker + tail.decode("utf-8", "replace"), dropped

    def clear(self) -> None:
        """Empties it for the next task, keeping the buffers' memory."""
        del self._head[:]
        del self._tail[:]
        self.total = 0


class _BinaryStream(io.BufferedIOBase):
    """``sys.stdout.buffer`` of a captured stream: bytes go to the same store."""

    def __init__(self, store: _Bounded) -> None:
        super().__init__()
        self._store = store

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        data = bytes(data)
        self._store.take(data)
        return len(data)


class _TextStream(io.TextIOBase):
    """A text stream that keeps what is written to it in a bounded store."""

    def __init__(self, store: _Bounded, name: str, fd: int) -> None:
        super().__init__()
        self._store = store
        self._fd = fd
        self._buffer = _BinaryStream(store)
        self.name = name

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "backslashreplace"

    @property
    def buffer(self) -> io.BufferedIOBase:  # type: ignore[override]
        return self._buffer

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        # The worker's stream, reused by every later task: a task cannot close it.
        pass

    def fileno(self) -> int:
        # Code that needs a descriptor (faulthandler, a subprocess given
        # sys.stdout) gets the worker's own: its bytes reach the worker log.
        return self._fd

    def write(self, text: str) -> int:  # type: ignore[override]
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._store.take(text.encode("utf-8", "backslashreplace"))
        return len(text)


class TaskStreams:
    """The stdout and stderr a task sees; ``limit`` bytes of each are kept."""

    def __init__(self, limit: int) -> None:
        self._out = _Bounded(limit)
        self._err = _Bounded(limit)
        self._stdout = _TextStream(self._out, "<stdout>", 1)
        self._stderr = _TextStream(self._err, "<stderr>", 2)
        self._saved: Optional[Tuple[Any, Any]] = None

    def __enter__(self) -> "TaskStreams":
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = self._stdout, self._stderr
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
            self._saved = None

    def take(self) -> Optional[Dict[str, Any]]:
        """What was written since the last call (the reply's ``output``), or
        None when nothing was; the streams start empty again."""
        if not (self._out.total or self._err.total):
            return None
        stdout, stdout_dropped = self._out.text()
        stderr, stderr_dropped = self._err.text()
        self._out.clear()
        self._err.clear()
        return {
            "stdout": stdout,
            "stderr": stderr,
            "stdout_dropped": stdout_dropped,
            "stderr_dropped": stderr_dropped,
        }
