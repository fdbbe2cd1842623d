"""A task group's result stream: server-sent events read on a thread of their own.

`ResultStream` holds one long-lived `GET /v3/taskgroup/<id>/stream` response,
hands each `result` event to a callback, and reconnects after a drop with
`Last-Event-ID`, so no result is lost or seen twice by the callback's owner.
Event ids are the service's result sequence, increasing along a group's
stream: an event whose id is not above the last one handled is a replay and
is dropped here, which takes one integer rather than a set of every task id.
A refusal the service would repeat (a revoked token, an unknown group) ends
it through the failure callback instead.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
from typing import Callable, Iterator, Optional, Tuple

from hpfaas.client import Client
from hpfaas.errors import HTTPError

logger = logging.getLogger(__name__)

#: Silence after which the result stream is deemed dead (the service pings every 15 s).
STREAM_READ_TIMEOUT = 60.0
#: Bounds of the wait before reconnecting the result stream; it doubles per failure
#: in a row (a connection that delivered events ends the series).
RECONNECT_DELAY_MIN, RECONNECT_DELAY_MAX = 0.1, 5.0


def sse_events(response: http.client.HTTPResponse) -> Iterator[Tuple[str, Optional[str], str]]:
    """Yield `(event, last_event_id, data)` for each event of a text/event-stream."""
    event, last_event_id, data = "message", None, []
    partial = b""
    while True:
        # Whatever has arrived, split into lines here: a readline per line
        # through http.client's chunked decoding was most of this thread's
        # time on a busy stream.
        chunk = response.read1(65536)
        if not chunk:
            return
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8")
            if not line:  # a blank line ends an event
                if data:
                    yield event, last_event_id, "\n".join(data)
                event, data = "message", []
            elif not line.startswith(":"):  # ':' opens a comment, e.g. the keep-alive
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "data":
                    data.append(value)
                elif field == "event":
                    event = value
                elif field == "id":
                    last_event_id = value


#: Statuses for the codes of a result stream's `event: error`.
_STREAM_ERROR_STATUS = {"unauthorized": 401, "forbidden": 403, "not_found": 404}


def _stream_error(data: str) -> HTTPError:
    """The error a result stream's `event: error` reports (a revoked token, say)."""
    try:
        doc = json.loads(data)
        code, message = str(doc["code"]), str(doc["error"])
    except (ValueError, TypeError, KeyError):
        code, message = "stream_error", data
    return HTTPError(
        _STREAM_ERROR_STATUS.get(code, 400), code, f"the result stream ended: {message}"
    )


def _sequence_number(event_id: Optional[str]) -> Optional[int]:
    """An event id as the service's result sequence number; None if it is none."""
    if event_id is None or not (event_id.isascii() and event_id.isdigit()) or len(event_id) > 19:
        return None
    return int(event_id)


class ResultStream:
    """Reads a task group's result stream on its own thread, resuming after drops."""

    def __init__(
        self,
        client: Client,
        task_group_id: str,
        on_result: Callable[[dict], None],
        on_failure: Callable[[BaseException], None],
    ):
        self._client = client
        self._path = f"/v3/taskgroup/{task_group_id}/stream"
        self._on_result = on_result
        self._on_failure = on_failure
        self._last_event_id: Optional[str] = None
        # `_last_event_id` as a number: events at or below it were handled.
        self._handled_seq: Optional[int] = None
        self._stopped = threading.Event()
        self._sock_lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._thread = threading.Thread(
            target=self._run, name=f"hpfaas-results-{task_group_id[:8]}", daemon=True
        )

    def start(self) -> None:
        """Start reading."""
        self._thread.start()

    def stop(self) -> None:
        """Stop reading, interrupting a blocked read."""
        self._stopped.set()
        with self._sock_lock:
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed

    def join(self) -> None:
        """Wait for the thread to end (after `stop`)."""
        self._thread.join()

    def _run(self) -> None:
        delay = RECONNECT_DELAY_MIN
        while not self._stopped.is_set():
            level = logging.WARNING
            resumed_from = self._last_event_id
            try:
                self._read()
                level, reason, delay = logging.INFO, "the service ended it", RECONNECT_DELAY_MIN
            except HTTPError as exc:
                if exc.status < 500 and exc.status not in (408, 429):
                    self._on_failure(exc)  # asking again would get the same answer
                    return
                reason = str(exc)
            # ValueError covers undecodable bytes, which a fresh connection may not repeat.
            except (OSError, http.client.HTTPException, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if self._stopped.is_set():
                return
            if self._last_event_id != resumed_from:
                # The connection delivered events before it broke: this is a new
                # failure, not one more of a series, so the backoff starts afresh.
                delay = RECONNECT_DELAY_MIN
            logger.log(
                level,
                "result stream %s lost (%s); reconnecting in %.1f s",
                self._path,
                reason,
                delay,
            )
            if self._stopped.wait(delay):
                return
            delay = min(delay * 2, RECONNECT_DELAY_MAX)

    def _read(self) -> None:
        headers = {"Accept": "text/event-stream"}
        if self._last_event_id is not None:
            headers["Last-Event-ID"] = self._last_event_id
        response, sock = self._client.open_stream(self._path, headers, STREAM_READ_TIMEOUT)
        with self._sock_lock:
            self._sock = sock
        try:
            if self._stopped.is_set():  # stop() came while connecting
                return
            for event, event_id, data in sse_events(response):
                seq = _sequence_number(event_id)
                if seq is not None and self._handled_seq is not None and seq <= self._handled_seq:
                    continue  # a replay of an event handled already
                if event == "result":
                    self._dispatch(data)
                elif event == "error":
                    raise _stream_error(data)
                # Advanced only once the result is handled, so a drop re-delivers it.
                self._last_event_id = event_id
                self._handled_seq = seq
        finally:
            with self._sock_lock:
                self._sock = None
            response.close()
            sock.close()

    def _dispatch(self, data: str) -> None:
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or "task_id" not in doc:
            logger.error("result stream %s: skipped a malformed result: %.200s", self._path, data)
            return
        self._on_result(doc)
