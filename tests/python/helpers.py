"""Helpers shared by the test modules."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

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
