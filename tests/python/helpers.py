"""Helpers shared by the test modules."""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable, List, TypeVar

T = TypeVar("T")

POLL_INTERVAL = 0.05


def wait_until(probe: Callable[[], T], timeout: float, what: str) -> T:
    """Return the first truthy `probe()`; fail naming `what` after `timeout` seconds.

    Only for state another process owns and announces no event for (a file it
    writes, a task's status in the service): everything in-process waits on events.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_INTERVAL)


class Gate:
    """A gate tasks wait at, so a test decides when they finish.

    A task running `gated(gate.port, value)` on a worker connects to the gate
    and blocks reading it: the test sees it arrive (so knows it runs), and
    `open()` writes a byte to every task waiting and to any arriving later.
    `close()` opens it too, so no task outlives its test blocked.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._changed = threading.Condition()
        self._waiting: List[socket.socket] = []
        self._arrivals = 0
        self._open = False
        self._accepting = threading.Thread(target=self._accept, name="gate", daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._changed:
                self._arrivals += 1
                self._changed.notify_all()
                if self._open:
                    self._let_through(sock)
                else:
                    self._waiting.append(sock)

    @staticmethod
    def _let_through(sock: socket.socket) -> None:
        try:
            sock.sendall(b"1")
        except OSError:
            pass  # the task gave up waiting
        sock.close()

    @property
    def arrivals(self) -> int:
        with self._changed:
            return self._arrivals

    def wait_arrivals(self, count: int, timeout: float) -> None:
        """Wait until `count` tasks have reached the gate."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._arrivals >= count, timeout):
                raise AssertionError(f"{self._arrivals} tasks at the gate after {timeout} s")

    def open(self) -> None:
        with self._changed:
            self._open = True
            waiting, self._waiting = self._waiting, []
        for sock in waiting:
            self._let_through(sock)

    def close(self) -> None:
        self.open()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._accepting.join(10.0)


def gated(port, value, timeout=60.0):
    """Run on a worker: wait at the test's `Gate` on `port`, then return `value`."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if sock.recv(1) != b"1":
            raise RuntimeError("the gate closed without opening")
    return value
