"""A TCP relay between the SDK and the real service, to inject network faults.

Only the network is played with here: every answer comes from the real
service. The relay reads the HTTP requests going up, so it can record them,
hold submits back, or change a header on the way as a proxy might. Answers go
down as they come, except on result streams, whose chunked server-sent events
it follows so that it can cut a stream (by close or reset) after some events;
and the service's close of a connection can be made to reach the client late.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

#: Bound on every wait of the relay itself (connecting, joining its threads).
RELAY_TIMEOUT = 10.0
#: Bound on how long a held request stays held when a test forgets to release it.
HOLD_TIMEOUT = 60.0


@dataclass(frozen=True)
class Request:
    """One HTTP request as the client sent it (before any change the relay made)."""

    method: str
    path: str
    headers: Dict[str, str]  # lowercased names
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class StreamRecord:
    """One result-stream connection: what the client asked for, what it was given."""

    #: The client's Last-Event-ID header, None when it sent none.
    last_event_id: Optional[str]
    #: Ids of the result events passed on to the client, in order.
    event_ids: List[int] = field(default_factory=list)
    #: How many of them no earlier stream had passed on.
    new_events: int = 0
    #: Whether the relay cut this connection.
    cut: bool = False


def _is_submit(method: str, path: str) -> bool:
    return method == "POST" and path.startswith("/v3/endpoints/") and path.endswith("/submit")


def _is_stream(method: str, path: str) -> bool:
    return method == "GET" and path.startswith("/v3/taskgroup/") and "/stream" in path


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more


class Relay:
    """Listens on 127.0.0.1 and relays each connection to the service at `target`."""

    def __init__(self, target: str):
        parts = urllib.parse.urlsplit(target)
        self._target: Tuple[str, int] = (parts.hostname, parts.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self._listener.getsockname()[1]

        self._changed = threading.Condition()
        # Guarded by `_changed`:
        self._connections = 0
        self._requests: List[Request] = []
        self._streams: List[StreamRecord] = []
        self._seen_events: set = set()
        self._holding = False
        self._held = 0
        self._closed = False
        self._sockets: List[socket.socket] = []
        self._threads: List[threading.Thread] = []

        #: Headers to set (or, with None, to remove) on result-stream requests.
        self.stream_headers: Dict[str, Optional[str]] = {}
        #: Cut each result stream once it has passed on this many events that no
        #: earlier stream passed on (so a replay of old events does not count).
        self.cut_streams_after: Optional[int] = None
        #: Cut streams with a TCP reset rather than an orderly close.
        self.cut_with_reset = False
        #: Pass the service's close of a connection on only once the client has
        #: sent another request on it, as when the FIN is slower than the client.
        self.late_closes = False
        #: Cut this many submits' connections once the service has answered them,
        #: before the answer reaches the client (so the tasks exist, unbeknown to it).
        self.cut_submit_answers = 0

        self._start(self._accept_loop, "relay-accept")

    # -- what the tests read and turn -------------------------------------

    @property
    def connections(self) -> int:
        """Connections the client opened through the relay."""
        with self._changed:
            return self._connections

    @property
    def requests(self) -> List[Request]:
        with self._changed:
            return list(self._requests)

    def submits(self) -> List[dict]:
        """The JSON bodies of the submit requests, in order."""
        return [r.json() for r in self.requests if _is_submit(r.method, r.path)]

    @property
    def streams(self) -> List[StreamRecord]:
        with self._changed:
            return [
                StreamRecord(s.last_event_id, list(s.event_ids), s.new_events, s.cut)
                for s in self._streams
            ]

    def hold_submits(self) -> None:
        """Hold submit requests back (the client waits for its answer) until released."""
        with self._changed:
            self._holding = True

    def wait_held(self, count: int, timeout: float) -> None:
        """Wait until `count` submits have been held back."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._held >= count, timeout):
                raise AssertionError(f"{self._held} submits held after {timeout} s, not {count}")

    def release_submits(self) -> None:
        """Pass the held submits on, and hold no more."""
        with self._changed:
            self._holding = False
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._holding = False
            self._changed.notify_all()
            sockets, threads = list(self._sockets), list(self._threads)
        _shutdown(self._listener)
        self._listener.close()
        for sock in sockets:
            _shutdown(sock)
        for thread in threads:
            thread.join(RELAY_TIMEOUT)
            assert not thread.is_alive(), f"relay thread {thread.name} did not stop"
        for sock in sockets:
            sock.close()

    # -- relaying ---------------------------------------------------------

    def _start(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._changed:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self._target, timeout=RELAY_TIMEOUT)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._changed:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._connections += 1
                self._sockets += [client, upstream]
            connection = _Connection(self, client, upstream)
            self._start(connection.pump_up, "relay-up")
            self._start(connection.pump_down, "relay-down")

    def _on_request(self, request: Request) -> Optional[StreamRecord]:
        """Record a request; hold it while submits are held; a stream's record."""
        with self._changed:
            self._requests.append(request)
            if _is_submit(request.method, request.path) and self._holding:
                self._held += 1
                self._changed.notify_all()
                self._changed.wait_for(lambda: not self._holding or self._closed, HOLD_TIMEOUT)
            if not _is_stream(request.method, request.path):
                return None
            record = StreamRecord(request.headers.get("last-event-id"))
            self._streams.append(record)
            return record

    def _take_submit_cut(self) -> bool:
        """True if this submit's answer is to be lost (counts it)."""
        with self._changed:
            if self.cut_submit_answers <= 0:
                return False
            self.cut_submit_answers -= 1
            return True

    def _on_event(self, record: StreamRecord, event_id: int) -> bool:
        """Note an event passed on; True once the stream is to be cut."""
        with self._changed:
            record.event_ids.append(event_id)
            if event_id not in self._seen_events:
                self._seen_events.add(event_id)
                record.new_events += 1
            limit = self.cut_streams_after
            return limit is not None and record.new_events >= limit


class _Connection:
    """One client connection and its connection to the service."""

    def __init__(self, relay: Relay, client: socket.socket, upstream: socket.socket):
        self.relay = relay
        self.client = client
        self.upstream = upstream
        self.stream: Optional[StreamRecord] = None
        #: Set when the client connection is to end with a reset (see `cut`).
        self.reset = False
        # Guarded by `_lock`: whether the service closed while `late_closes` keeps
        # the client from knowing, and whether a request awaits its answer.
        self._lock = threading.Lock()
        self.closed_late = False
        self._awaiting_answer = False
        self._awaiting_submit = False

    def close(self) -> None:
        if self.reset:
            try:
                self.client.shutdown(socket.SHUT_RD)  # unlike SHUT_WR, sends no FIN
            except OSError:
                pass
        else:
            _shutdown(self.client)
        _shutdown(self.upstream)

    def cut(self) -> None:
        """End both connections; the client's with a reset if the relay says so."""
        if self.relay.cut_with_reset:
            # With linger 0 the last close sends RST, as a dead peer or middlebox would;
            # pump_up makes that close once its read, woken by SHUT_RD, has ended.
            self.reset = True
            self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def pump_up(self) -> None:
        """Client to service, one parsed request at a time."""
        reader = self.client.makefile("rb")
        upstream_failed = False
        try:
            while True:
                request_line = reader.readline()
                if not request_line:
                    return
                lines = []
                while True:
                    line = reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    lines.append(line.decode("latin-1").rstrip("\r\n"))
                headers = [tuple(part.strip() for part in h.split(":", 1)) for h in lines]
                named = {name.lower(): value for name, value in headers}
                body = reader.read(int(named.get("content-length", 0)))
                method, target, _ = request_line.decode("latin-1").split(" ", 2)
                path = target.split("?", 1)[0]
                request = Request(method, path, named, body)
                with self._lock:
                    if upstream_failed or self.closed_late:
                        return  # the service is gone: the client learns it now
                    self._awaiting_answer = True
                    self._awaiting_submit = _is_submit(method, path)
                record = self.relay._on_request(request)
                if record is not None:
                    headers = self._rewrite(headers, self.relay.stream_headers)
                    self.stream = record
                head = request_line + b"".join(
                    f"{name}: {value}\r\n".encode("latin-1") for name, value in headers
                )
                try:
                    self.upstream.sendall(head + b"\r\n" + body)
                except OSError:
                    # The service stopped reading (it refused the body, say): passing
                    # on its answer and its close is pump_down's part.
                    upstream_failed = True
        except OSError:
            return
        finally:
            reader.close()
            self.close()
            if self.reset:
                self.client.close()

    @staticmethod
    def _rewrite(headers, changes: Dict[str, Optional[str]]):
        changes = {name.lower(): value for name, value in changes.items()}
        kept = [(n, v) for n, v in headers if n.lower() not in changes]
        return kept + [(n, v) for n, v in changes.items() if v is not None]

    def pump_down(self) -> None:
        """Service to client: as is, except that result streams are followed event by event."""
        parser: Optional[_StreamParser] = None
        try:
            while True:
                data = self.upstream.recv(65536)
                with self._lock:
                    if not data:
                        # Closed between requests: with late_closes, the client is
                        # told only when it sends the next (pump_up does it).
                        late = self.relay.late_closes and self.stream is None
                        self.closed_late = late and not self._awaiting_answer
                        return
                    # No pipelining (http.client waits for each answer): these bytes
                    # answer the last request forwarded.
                    self._awaiting_answer = False
                    answered_submit, self._awaiting_submit = self._awaiting_submit, False
                if answered_submit and self.relay._take_submit_cut():
                    self.cut()
                    return
                if self.stream is None:
                    self.client.sendall(data)
                    continue
                if parser is None:
                    parser = _StreamParser()
                for piece, event_ids in parser.feed(data):
                    # Recorded before they are passed on, so a test that has seen
                    # a result can count on the relay having recorded it.
                    cut = False
                    for event_id in event_ids:
                        cut = self.relay._on_event(self.stream, event_id) or cut
                    self.client.sendall(piece)
                    if cut:
                        self.stream.cut = True
                        self.cut()
                        return
        except OSError:
            return
        finally:
            if self.closed_late:
                _shutdown(self.upstream)
            else:
                self.close()


class _StreamParser:
    """Splits a chunked text/event-stream response into whole chunks, with their result ids."""

    def __init__(self):
        self._buffer = b""
        self._head_done = False
        self._chunked = False
        self._events = ""

    def feed(self, data: bytes) -> List[Tuple[bytes, List[int]]]:
        """Pieces to pass on now, each with the ids of the result events it completes."""
        self._buffer += data
        pieces: List[Tuple[bytes, List[int]]] = []
        if not self._head_done:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return pieces
            head, self._buffer = self._buffer[: end + 4], self._buffer[end + 4 :]
            self._head_done = True
            status = head.split(b" ", 2)[1]
            self._chunked = status == b"200" and b"transfer-encoding: chunked" in head.lower()
            pieces.append((head, []))
        if not self._chunked:
            pieces.append((self._buffer, []))
            self._buffer = b""
            return pieces
        while True:
            end = self._buffer.find(b"\r\n")
            if end < 0:
                return pieces
            size = int(self._buffer[:end].split(b";")[0], 16)
            total = end + 2 + size + 2
            if len(self._buffer) < total:
                return pieces
            chunk, self._buffer = self._buffer[:total], self._buffer[total:]
            self._events += chunk[end + 2 : end + 2 + size].decode("utf-8")
            pieces.append((chunk, self._complete_result_ids()))
            if size == 0:
                self._chunked = False  # the last chunk: pass on whatever follows

    def _complete_result_ids(self) -> List[int]:
        ids = []
        *complete, self._events = self._events.replace("\r\n", "\n").split("\n\n")
        for block in complete:
            fields = dict(
                line.split(": ", 1) for line in block.split("\n") if ": " in line and line[0] != ":"
            )
            if fields.get("event") == "result" and "id" in fields:
                ids.append(int(fields["id"]))
        return ids
