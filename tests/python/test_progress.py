"""`hpfaas.progress`: silent unless its stream is a terminal; on a pseudo-terminal
the bar appears, counts failures, and ends with the final count on its own line."""

from __future__ import annotations

import concurrent.futures
import io
import os
import pty
import select
import threading

import hpfaas
from hpfaas.progress_display import render


def futures_finishing_later(n: int, failing: int = 0):
    """`n` futures, the first `failing` of which fail, completed by a thread
    once the caller releases the returned event."""
    futures = [concurrent.futures.Future() for _ in range(n)]
    release = threading.Event()

    def finish():
        release.wait(10)
        for i, f in enumerate(futures):
            if i < failing:
                f.set_exception(ValueError(i))
            else:
                f.set_result(i)

    thread = threading.Thread(target=finish, daemon=True)
    thread.start()
    return futures, release, thread


def test_not_a_terminal_is_silent_and_yields_every_future():
    futures, release, thread = futures_finishing_later(5, failing=1)
    out = io.StringIO()
    release.set()
    yielded = list(hpfaas.progress(futures, file=out))
    thread.join(10)
    assert sorted(map(id, yielded)) == sorted(map(id, futures))
    assert out.getvalue() == ""


def _read_all(fd: int) -> str:
    """What the pty's master side holds now (the writer has finished)."""
    data = b""
    while select.select([fd], [], [], 0.5)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO once the slave side is closed
            break
        if not chunk:
            break
        data += chunk
    return data.decode()


def test_on_a_terminal_the_bar_ends_with_the_final_count():
    master, slave = pty.openpty()
    terminal = os.fdopen(slave, "w")
    try:
        futures, release, thread = futures_finishing_later(10, failing=3)
        bar = hpfaas.progress(futures, file=terminal, interval=0)
        release.set()
        assert len(list(bar)) == 10
        thread.join(10)
        text = _read_all(master)
    finally:
        terminal.close()
        os.close(master)
    assert text.startswith("\r[" + "." * 30 + "] 0/10"), repr(text)
    # The line discipline turns "\n" into "\r\n" on its way to the master side.
    last = text.rstrip("\r\n").rsplit("\r", 1)[-1]
    assert last.startswith("[" + "#" * 30 + "] 10/10 (3 failed) "), repr(text)
    assert text.endswith("\n")


def test_render_shows_counts_rate_and_time_left():
    assert render(25, 100, 0, 5.0) == "[" + "#" * 7 + "." * 23 + "] 25/100 5.0/s eta 0:15"
    assert render(100, 100, 2, 3600.0).endswith("] 100/100 (2 failed) 0.0/s in 1:00:00")
    assert render(0, 0, 0, 0.0) == "[" + "#" * 30 + "] 0/0 0.0/s in 0:00"
