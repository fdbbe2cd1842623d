"""`progress(futures)`: a one-line progress bar on a terminal while futures finish.

Standard library only. The bar goes to standard error (or the ``file`` given)
only when that is a terminal, so logs and pipes get nothing; it is redrawn at
most every ``interval`` seconds and once more, with the final count, at the end.
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
from typing import IO, Iterable, Iterator, Optional, TypeVar

F = TypeVar("F", bound=concurrent.futures.Future)

#: Characters of the bar itself.
BAR_WIDTH = 30


def _is_terminal(stream: Optional[IO[str]]) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _seconds(s: float) -> str:
    s = int(s + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def render(done: int, total: int, failed: int, elapsed: float) -> str:
    """One line of the bar: fill, counts, failures, rate and time left."""
    filled = BAR_WIDTH * done // total if total else BAR_WIDTH
    rate = done / elapsed if elapsed > 0 else 0.0
    line = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total}"
    if failed:
        line += f" ({failed} failed)"
    line += f" {rate:.1f}/s"
    if done < total and rate > 0:
        line += f" eta {_seconds((total - done) / rate)}"
    else:
        line += f" in {_seconds(elapsed)}"
    return line


def progress(
    futures: Iterable[F], *, file: Optional[IO[str]] = None, interval: float = 0.2
) -> Iterator[F]:
    """Yield the futures as they finish (as `concurrent.futures.as_completed`
    does), drawing a one-line bar of how many are done and failed, the rate
    and the time left on ``file`` (default: ``sys.stderr``) when it is a
    terminal; elsewhere nothing is written. ::

        futures = [ex.submit(f, x) for x in xs]
        for fut in hpfaas.progress(futures):
            print(fut.result())
        # or only wait, with a bar: list(hpfaas.progress(futures))

    A task's exception is not raised here: ask each future for its result.
    """
    futures = list(futures)
    stream = sys.stderr if file is None else file
    if not _is_terminal(stream):
        yield from concurrent.futures.as_completed(futures)
        return
    start = time.monotonic()
    total, done, failed = len(futures), 0, 0
    drawn = float("-inf")

    def draw(final: bool = False) -> None:
        nonlocal drawn
        now = time.monotonic()
        if final or now - drawn >= interval:
            drawn = now
            end = "\n" if final else ""
            stream.write("\r" + render(done, total, failed, now - start) + "\x1b[K" + end)
            stream.flush()

    draw()
    try:
        for future in concurrent.futures.as_completed(futures):
            done += 1
            if future.cancelled() or future.exception() is not None:
                failed += 1
            draw(final=done == total)
            yield future
    finally:
        # Nothing to wait for, or left early: end the line so the next output starts clean.
        if done < total or not total:
            draw(final=True)
