"""The REST client: `Client` and `Batch`, named as Globus Compute names them.

`Client` speaks the routes of docs/api.md over one keep-alive `http.client`
connection per thread (a fresh urllib request per call would cost a TCP
handshake each time). It also finds the service: arguments, then
`HPFAAS_URL`/`HPFAAS_TOKEN`, then the `up.json` that `hpfaas up` writes.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import platform
import re
import select
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

from hpfaas.errors import (
    EXCEPTION_TYPES,
    HpfaasError,
    HTTPError,
    IncompatibleService,
    TaskExecutionFailed,
    TaskPending,
    UntrustedResult,
)
from hpfaas.serialize import (
    JSON,
    SHELL_FUNCTION,
    SHELL_RESULT,
    deserialize,
    pack,
    serialize,
    serialize_function,
    serialize_json,
    serialize_or_blob,
    serialize_with_refs,
    unpack,
)
from hpfaas.shell import ShellFunction
from hpfaas.version import API_VERSION, __version__

#: Seconds a REST call may wait for the service before failing.
REQUEST_TIMEOUT = 60.0

#: Pickled args longer than this (bytes) travel as a blob, raw after the JSON
#: submit body instead of base64 inside it (docs/api.md, "Binary arguments").
BLOB_MIN = 64 * 1024
#: The submit body type that carries blobs.
BLOBS_CONTENT_TYPE = "application/x-hpfaas-blobs"

# Errors that mean a reused keep-alive connection had been closed by the server.
_DROPPED_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
# Errors that mean a connection broke before its answer was read in full: a
# submit that carries an idempotency key is sent again once after them.
_LOST_ANSWER = _DROPPED_CONNECTION + (ConnectionAbortedError, http.client.IncompleteRead)
# A service that is down or restarting: nothing was answered.
_SERVICE_AWAY = _LOST_ANSWER + (ConnectionRefusedError,)

#: Seconds a submit keeps trying (same idempotency key) while the service is
#: unreachable: a service restarting (upgrade, crash and systemd restart)
#: does not fail the calls sent meanwhile.
SUBMIT_RETRY_SECONDS = 60.0

# Types reported for tasks that ended without an exception of their own.
_STATUS_EXCEPTION_TYPES = {"cancelled": "TaskCancelled", "unknown": "UnknownTask"}


def hpfaas_home() -> str:
    """The hpfaas state directory: `$HPFAAS_HOME`, else `~/.hpfaas`."""
    return os.environ.get("HPFAAS_HOME") or os.path.expanduser("~/.hpfaas")


def _read_up_json() -> Tuple[str, dict]:
    path = os.path.join(hpfaas_home(), "up.json")
    try:
        with open(path, encoding="utf-8") as f:
            return path, json.load(f)
    except FileNotFoundError:
        return path, {}
    except ValueError as exc:
        raise HpfaasError(
            f"{path} is not valid JSON ({exc}); remove it or run `hpfaas up`"
        ) from exc


def pack_arguments(args: Iterable, kwargs: Optional[dict], as_json: bool = False) -> str:
    """A task payload: `pack([args, kwargs])`, as JSON when the manager must read it."""
    return pack_call(args, kwargs, as_json, blob_min=None)[0]


def pack_call(
    args: Iterable,
    kwargs: Optional[dict],
    as_json: bool = False,
    blob_min: Optional[int] = BLOB_MIN,
) -> Tuple[str, Optional[bytes]]:
    """`(pack_arguments(...), None)`, but args that pickle to more than
    `blob_min` bytes become a blob: the payload's args buffer is `pb\\n<length>`
    and the pickle is returned to be sent raw after the JSON body."""
    if as_json:
        first, blob = serialize_json(tuple(args)), None
    else:
        first, blob = serialize_or_blob(tuple(args), blob_min)
    encode = serialize_json if as_json else serialize
    return pack([first, encode(dict(kwargs)) if kwargs else _no_kwargs(as_json)]), blob


def pack_call_with_parents(
    args: Iterable, kwargs: Optional[dict], is_ref: Callable[[Any], bool]
) -> Tuple[str, List[Any]]:
    """Packed arguments in which each object `is_ref` accepts (a future) is a
    numbered reference, with those objects in number order: the service
    hands the worker their tasks' results in their place."""
    refs: List[Any] = []
    first = serialize_with_refs(tuple(args), is_ref, refs)
    rest = serialize_with_refs(dict(kwargs), is_ref, refs) if kwargs else _no_kwargs(False)
    return pack([first, rest]), refs


@functools.cache
def _no_kwargs(as_json: bool) -> str:
    # Most calls have no keyword arguments: their buffer is encoded once.
    return serialize_json({}) if as_json else serialize({})


def encode_payload(payload: str, pickled: bool = False) -> str:
    """A payload as the JSON string it is sent as; its length is its size in the body.

    A submit body is assembled from these (`Batch.body`), so a payload is
    JSON-encoded once, on the caller's thread, not again for the request.
    `pickled` says it is `pack_arguments(..., as_json=False)`: framing digits,
    newlines and base64, of which JSON escapes only the newline, so it is
    quoted without json.dumps's scan of every character (a third of the
    SDK's time on a 1 MiB argument).
    """
    if pickled:
        return '"' + payload.replace("\n", "\\n") + '"'
    # ASCII (json.dumps escapes the rest), so characters are bytes.
    return json.dumps(payload)


#: Result strategies that are plain data (JSON text), safe from any endpoint.
DATA_ONLY_RESULTS = (JSON, SHELL_RESULT)

#: What an `Executor` asks of an endpoint whose pickles it will not decode:
#: JSON when the value allows, so most results still arrive.
JSON_FIRST = [JSON, "00\n"]


class TaskOutput(NamedTuple):
    """What a Python task wrote to ``sys.stdout`` and ``sys.stderr``, as its
    endpoint kept it: each stream's head and tail, with a line
    ``[hpfaas: N bytes of output dropped here]`` where bytes were left out,
    and N in ``stdout_dropped``/``stderr_dropped`` (docs/api.md, "Task output").
    Empty for a task that printed nothing, and for shell tasks (their output
    is in their ``ShellResult``)."""

    stdout: str = ""
    stderr: str = ""
    stdout_dropped: int = 0
    stderr_dropped: int = 0

    @classmethod
    def of(cls, doc: dict) -> "TaskOutput":
        """The output in a task document (its ``output`` key); empty without one."""
        output = doc.get("output")
        if not isinstance(output, dict):
            return cls()
        return cls(
            stdout=str(output.get("stdout") or ""),
            stderr=str(output.get("stderr") or ""),
            stdout_dropped=int(output.get("stdout_dropped") or 0),
            stderr_dropped=int(output.get("stderr_dropped") or 0),
        )


def task_result(doc: dict, may_unpickle: Callable[[Optional[str]], bool]) -> Any:
    """The value of a finished task document; raises `TaskPending` or `TaskExecutionFailed`.

    A cancelled task raises `TaskCancelled`, and one whose result the service
    purged unfetched raises `ResultExpired` (both `TaskExecutionFailed`). A
    result that is not plain JSON is decoded only if `may_unpickle(endpoint
    id)` says so (`Client.may_unpickle`); else `UntrustedResult`.
    """
    status = doc.get("status", "unknown")
    if doc.get("pending"):
        raise TaskPending(doc["task_id"], status)
    exception_type = doc.get("exception_type") or _STATUS_EXCEPTION_TYPES.get(status)
    if status == "success" and "result" in doc and exception_type != "ResultExpired":
        result = doc["result"]
        if not result.startswith(DATA_ONLY_RESULTS) and not may_unpickle(doc.get("endpoint_id")):
            raise UntrustedResult(doc.get("task_id", "?"), doc.get("endpoint_id"))
        return deserialize(result)
    error_class = EXCEPTION_TYPES.get(exception_type, TaskExecutionFailed)
    error = error_class(
        exception_type or "TaskFailed",
        doc.get("exception_message") or doc.get("reason") or f"task ended as {status}",
        doc.get("exception", ""),
        doc.get("completion_t"),
    )
    # What the task printed before it failed is often why it failed.
    error.output = TaskOutput.of(doc)
    raise error


_RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def _release(text: Any) -> Optional[Tuple[int, int, int]]:
    """`"1.2.3"` (a pre-release suffix ignored) as `(1, 2, 3)`; None if it is no version."""
    match = _RELEASE.match(text) if isinstance(text, str) else None
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def check_compatible(url: str, versions: Any) -> None:
    """Raise `IncompatibleService` unless `versions` (the service's `GET
    /v2/version?service=all`) says the service serves this SDK.

    Compatible means: the service's `api_version` equals this SDK's
    `API_VERSION` (the REST routes and shapes are the same; the releases may
    differ), and this SDK's release is no older than the service's
    `min_sdk_version`. docs/api.md, "Version compatibility".
    """
    sdk = f"this SDK is hpfaas {__version__} (REST API version {API_VERSION})"
    if not isinstance(versions, dict):
        raise IncompatibleService(
            url, f"its /v2/version answer {versions!r:.80} is not an object; {sdk}"
        )
    release = versions.get("hpfaas")
    service_version = release if isinstance(release, str) else None
    service = f"hpfaas {service_version or '(an unnamed release)'}"
    api_version = versions.get("api_version")
    if not isinstance(api_version, int) or isinstance(api_version, bool):
        raise IncompatibleService(
            url,
            f"it is {service} and reports no REST API"
            f" version (api_version), so it predates this SDK's checks; {sdk}."
            f" Use the SDK of the service's release, or a service of REST API version"
            f" {API_VERSION}",
            service_version,
        )
    if api_version != API_VERSION:
        raise IncompatibleService(
            url,
            f"it is {service} (REST API version {api_version}); {sdk}."
            f" Install the SDK of the service's release (pip install ./python from"
            f" {service}), or use a service of REST API version {API_VERSION}",
            service_version,
        )
    minimum = versions.get("min_sdk_version")
    if minimum is None:
        return
    if _release(minimum) is None:
        raise IncompatibleService(
            url, f"its min_sdk_version {minimum!r:.80} is not a version; {sdk}", service_version
        )
    sdk_release = _release(__version__)
    if sdk_release is not None and sdk_release < _release(minimum):
        raise IncompatibleService(
            url,
            f"it is {service} and serves SDKs from {minimum} on; {sdk}."
            f" Upgrade the SDK to {minimum} or newer",
            service_version,
        )


def _readable(sock: socket.socket) -> bool:
    # poll, unlike select, works for descriptors numbered above 1024.
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


def _error_from(status: int, body: bytes) -> HTTPError:
    try:
        doc = json.loads(body)
        return HTTPError(status, doc["code"], doc["error"])
    except (ValueError, TypeError, KeyError):
        return HTTPError(status, "http_error", body.decode("utf-8", "replace").strip())


class Batch:
    """Tasks to submit in one request (`Client.create_batch`, then `Client.batch_run`)."""

    def __init__(
        self,
        task_group_id: Optional[str] = None,
        resource_specification: Optional[dict] = None,
        result_serializers: Optional[List[str]] = None,
        is_shell_function: Callable[[str], bool] = lambda function_id: False,
    ):
        self.task_group_id = task_group_id
        self.resource_specification = resource_specification
        self.result_serializers = result_serializers
        self.tasks: Dict[str, List[str]] = {}
        # The payloads of `tasks` as JSON strings (`encode_payload`), and their blobs.
        self._encoded: Dict[str, List[str]] = {}
        self._blobs: Dict[str, List[Optional[bytes]]] = {}
        # Each task's parents' ids (None: it has none), for `depends_on`.
        self._parents: Dict[str, List[Optional[List[str]]]] = {}
        self._has_blobs = False
        #: Bytes the payloads take in the request body, to keep it under the service's limit.
        self.payload_size = 0
        self._is_shell_function = is_shell_function

    def add(self, function_id: str, args: Iterable = (), kwargs: Optional[dict] = None) -> None:
        """Add a call of a registered function."""
        payload, blob = pack_call(args, kwargs, self._is_shell_function(function_id))
        self.add_payload(function_id, payload, blob=blob)

    def add_payload(
        self,
        function_id: str,
        payload: str,
        encoded: Optional[str] = None,
        blob: Optional[bytes] = None,
        parents: Optional[List[str]] = None,
    ) -> None:
        """Add a call whose arguments are already packed (`pack_arguments`,
        or `pack_call` with the blob it returned).

        `encoded` is its `encode_payload`, when the caller has it already;
        `parents` the ids of the tasks its references name, in their order
        (`pack_call_with_parents`).
        """
        if encoded is None:
            encoded = encode_payload(payload)
        self.tasks.setdefault(function_id, []).append(payload)
        self._encoded.setdefault(function_id, []).append(encoded)
        self._blobs.setdefault(function_id, []).append(blob)
        self._parents.setdefault(function_id, []).append(parents)
        self.payload_size += len(encoded) + (len(blob) if blob is not None else 0)
        self._has_blobs = self._has_blobs or blob is not None

    @property
    def content_type(self) -> str:
        """The request body's type: JSON, or JSON followed by blobs."""
        return BLOBS_CONTENT_TYPE if self._has_blobs else "application/json"

    def _options(self) -> Dict[str, Any]:
        options: Dict[str, Any] = {}
        if self.task_group_id is not None:
            options["task_group_id"] = self.task_group_id
        if self.resource_specification is not None:
            options["resource_specification"] = self.resource_specification
        if self.result_serializers is not None:
            options["result_serializers"] = self.result_serializers
        if any(p is not None for ps in self._parents.values() for p in ps):
            options["depends_on"] = self._parents
        return options

    def prepare(self) -> dict:
        """The JSON body of `POST /v3/endpoints/{id}/submit`, as a dict."""
        return {"tasks": self.tasks, **self._options()}

    def body_parts(self) -> List[bytes]:
        """`prepare()` as JSON, in pieces spliced from the already encoded
        payloads: sent one after another, so a body of many MiB is never
        joined into one more copy. With blobs, the JSON's length and a
        newline come first, and the blobs after it, in payload order."""
        parts = [b'{"tasks":{']
        for i, (fid, encoded) in enumerate(self._encoded.items()):
            parts.append(f'{"," if i else ""}{json.dumps(fid)}:['.encode("ascii"))
            for j, payload in enumerate(encoded):
                if j:
                    parts.append(b",")
                parts.append(payload.encode("ascii"))
            parts.append(b"]")
        options = json.dumps(self._options())[1:-1]
        parts.append(f'}}{"," if options else ""}{options}}}'.encode("ascii"))
        if not self._has_blobs:
            return parts
        blobs = [b for fid in self._encoded for b in self._blobs[fid] if b is not None]
        return [f"{sum(map(len, parts))}\n".encode("ascii"), *parts, *blobs]

    def body(self) -> bytes:
        """The request body (`body_parts`, joined): `prepare()` as JSON bytes,
        preceded by its length and followed by the blobs if there are any."""
        return b"".join(self.body_parts())


class Client:
    """A connection to an hpfaas service."""

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        ca_file: Optional[str] = None,
        verify: bool = True,
        trust_pickled_results_from: Iterable[str] = (),
    ):
        """`ca_file` (else `$HPFAAS_CA_FILE`): a PEM CA to trust, besides the
        system's, for an `https://` service; `verify=False` checks no
        certificate at all (for tests only).

        Pickled results are decoded only from your own endpoints and those in
        `trust_pickled_results_from` (endpoint ids): unpickling runs code the
        pickle names, so an endpoint shared with you could take over this
        process. JSON results are decoded from any endpoint."""
        url = url or os.environ.get("HPFAAS_URL")
        token = token or os.environ.get("HPFAAS_TOKEN")
        up_path, up = _read_up_json()
        url = url or up.get("url")
        token = token or up.get("token")
        if not url or not token:
            raise HpfaasError(
                f"no hpfaas service {'token' if url else 'URL'} found: pass url= and token=,"
                f" set HPFAAS_URL and HPFAAS_TOKEN, or run `hpfaas up` (which writes {up_path})"
            )
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HpfaasError(f"service URL {url!r} is not an http:// or https:// URL")
        self.url = url.rstrip("/")
        #: The local endpoint `hpfaas up` started, when up.json describes this service.
        self.default_endpoint_id: Optional[str] = (
            up.get("endpoint_id") if up.get("url", "").rstrip("/") == self.url else None
        )
        self._ssl_context: Optional[ssl.SSLContext] = None
        if parts.scheme == "https":
            ca_file = ca_file or os.environ.get("HPFAAS_CA_FILE") or None
            try:
                context = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise HpfaasError(f"cannot load the CA file {ca_file!r}: {exc}") from exc
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._ssl_context = context
        self._host, self._port = parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        self._local = threading.local()
        self._shell_function_ids: set = set()
        #: Endpoint ids whose pickled results are decoded although not yours.
        self.trust_pickled_results_from = {str(e) for e in trust_pickled_results_from}
        # Your endpoints, and others seen, as far as asked (`may_unpickle`).
        self._own_endpoints: Optional[set] = None
        self._trust_lock = threading.Lock()
        # Set once the service's version passed `check_compatible`.
        self._service_checked = False
        self._check_lock = threading.Lock()

    # -- functions --------------------------------------------------------

    def register_function(
        self,
        function: Union[Callable, ShellFunction],
        function_name: Optional[str] = None,
        description: Optional[str] = None,
        resource_specification: Optional[dict] = None,
        cache: bool = False,
    ) -> str:
        """Register a function (or a `ShellFunction`) and return its id.

        `resource_specification` holds defaults for its tasks (e.g.
        `{"priority": 5, "walltime": 60}`); the service applies them to every
        submit of the function, whose own values override them key by key.

        `cache=True`: an identical call (same function body, same argument
        bytes) gets the stored result of an earlier successful one back
        without running, and identical calls made together run once
        (docs/api.md, "Memoization")."""
        if resource_specification is not None and not isinstance(resource_specification, dict):
            raise TypeError(
                "resource_specification must be a dict, not"
                f" {type(resource_specification).__name__}"
            )
        body = {
            "function_name": function_name or getattr(function, "__name__", repr(function)),
            "function_code": pack([serialize_function(function)]),
            "metadata": {"python_version": platform.python_version(), "sdk_version": __version__},
        }
        if description is not None:
            body["description"] = description
        if resource_specification is not None:
            body["resource_specification"] = resource_specification
        if cache:
            body["cache"] = True
        response = self._request("POST", "/v3/functions", body, idempotent=False)
        function_id = response["function_uuid"]
        if isinstance(function, ShellFunction):
            self._shell_function_ids.add(function_id)
        return function_id

    def get_function(self, function_id: str) -> dict:
        """The function's document, code included."""
        doc = self._request("GET", f"/v2/functions/{function_id}")
        # Learn shell functions registered elsewhere, so `run` sends them JSON arguments.
        if unpack(doc["function_code"])[0].startswith(SHELL_FUNCTION):
            self._shell_function_ids.add(function_id)
        return doc

    def delete_function(self, function_id: str) -> dict:
        """Delete a function."""
        self._shell_function_ids.discard(function_id)
        return self._request("DELETE", f"/v2/functions/{function_id}")

    def clear_cache(self, function_id: Optional[str] = None) -> int:
        """Forget cached results: of one function, or all of yours; returns how many went."""
        path = f"/v3/functions/{function_id}/cache" if function_id else "/v3/cache"
        return self._request("DELETE", path)["cleared"]

    def is_shell_function(self, function_id: str) -> bool:
        """Whether this client knows the function to be a `ShellFunction`."""
        return function_id in self._shell_function_ids

    # -- tasks ------------------------------------------------------------

    def run(self, *args: Any, endpoint_id: str, function_id: str, **kwargs: Any) -> str:
        """Run one call of a registered function; returns the task id."""
        batch = self.create_batch()
        batch.add(function_id, args, kwargs)
        return self.batch_run(endpoint_id, batch)["tasks"][function_id][0]

    def create_batch(
        self,
        task_group_id: Optional[str] = None,
        result_serializers: Optional[List[str]] = None,
        resource_specification: Optional[dict] = None,
    ) -> Batch:
        """An empty `Batch` that knows this client's shell functions."""
        return Batch(
            task_group_id, resource_specification, result_serializers, self.is_shell_function
        )

    def batch_run(
        self, endpoint_id: str, batch: Batch, idempotency_key: Optional[str] = None
    ) -> dict:
        """Submit a batch; returns `{"request_id", "task_group_id", "endpoint_id", "tasks"}`.

        The request carries an `Idempotency-Key` (a fresh uuid4 unless given),
        so when the connection drops before the answer, or the service is
        down or restarting, it is sent again with the same key for up to
        `SUBMIT_RETRY_SECONDS`: the service answers the original answer and
        creates nothing twice.
        """
        key = idempotency_key or str(uuid.uuid4())
        deadline = time.monotonic() + SUBMIT_RETRY_SECONDS
        delay = 0.05
        while True:
            try:
                return self._request(
                    "POST",
                    f"/v3/endpoints/{endpoint_id}/submit",
                    headers={"Idempotency-Key": key, "Content-Type": batch.content_type},
                    retry_lost_answer=True,
                    data=batch.body_parts(),
                )
            except _SERVICE_AWAY:
                # The key makes sending again safe: the service creates
                # nothing twice, and answers a repeat with the first answer.
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 2.0)

    def get_task(self, task_id: str) -> dict:
        """The task document (status, and result or exception once finished)."""
        return self._request("GET", f"/v2/tasks/{task_id}")

    def get_result(self, task_id: str) -> Any:
        """The task's value; raises `TaskPending`, `TaskExecutionFailed` (whose
        ``output`` is what the task printed), or `UntrustedResult` for a pickle
        from an endpoint you do not trust."""
        return task_result(self.get_task(task_id), self.may_unpickle)

    def get_output(self, task_id: str) -> TaskOutput:
        """What the task printed (`TaskOutput`; empty while it runs or if it
        printed nothing). `get_task` has it too, under ``"output"``."""
        return TaskOutput.of(self.get_task(task_id))

    def may_unpickle(self, endpoint_id: Optional[str]) -> bool:
        """True if results of `endpoint_id` may be unpickled: it is yours (as
        `GET /v2/endpoints` lists them) or named in `trust_pickled_results_from`."""
        if endpoint_id is None:
            return False
        if endpoint_id in self.trust_pickled_results_from:
            return True
        with self._trust_lock:
            if self._own_endpoints is None or endpoint_id not in self._own_endpoints:
                # Asked again for an unknown id: an endpoint may be new since.
                self._own_endpoints = {e["endpoint_id"] for e in self.get_endpoints()}
            return endpoint_id in self._own_endpoints

    def cancel(self, task_id: str) -> dict:
        """Cancel a task that is not final: `{"task_id", "status": "cancelled"}`.

        Raises `HTTPError` 409 if the task is final already.
        """
        return self._request("POST", f"/v3/tasks/{task_id}/cancel", idempotent=False)

    def cancel_task_group(self, task_group_id: str) -> dict:
        """Cancel every task of the group not final yet: `{..., "cancelled": n}`."""
        return self._request("POST", f"/v3/taskgroup/{task_group_id}/cancel", idempotent=False)

    def get_batch_status(self, task_ids: List[str]) -> Dict[str, dict]:
        """Task documents of many tasks in one request, by task id."""
        return self._request("POST", "/v2/batch_status", {"task_ids": list(task_ids)})["results"]

    def get_batch_result(self, task_ids: List[str]) -> Dict[str, dict]:
        """`{tid: {"pending", "status", "result" | "exception", "output"}}` for
        many tasks; ``output`` (a `TaskOutput`) only when the task printed."""
        results = {}
        for task_id, doc in self.get_batch_status(task_ids).items():
            entry = {"pending": bool(doc.get("pending")), "status": doc.get("status")}
            if "output" in doc:
                entry["output"] = TaskOutput.of(doc)
            if not entry["pending"]:
                try:
                    entry["result"] = task_result(doc, self.may_unpickle)
                except Exception as exc:
                    entry["exception"] = exc
            results[task_id] = entry
        return results

    def get_taskgroup_tasks(self, task_group_id: str) -> List[dict]:
        """The group's tasks in submission order: `[{"id", "function_id", "status"}]`."""
        return self._request("GET", f"/v2/taskgroup/{task_group_id}")["tasks"]

    # -- endpoints and service -------------------------------------------

    def get_endpoints(self) -> List[dict]:
        """Your endpoints."""
        return self._request("GET", "/v2/endpoints")

    def get_endpoint_status(self, endpoint_id: str) -> dict:
        """`{"status": "online" | "offline", "details": {...}}`."""
        return self._request("GET", f"/v2/endpoints/{endpoint_id}/status")

    def version(self) -> dict:
        """The service's versions: `{"api", "hpfaas", "api_version", "min_sdk_version", ...}`.

        Answered whatever the service's version, so an incompatible one can be inspected.
        """
        return self._request("GET", "/v2/version?service=all", check=False)

    def check_service(self) -> None:
        """Raise `IncompatibleService` unless the service serves this SDK (`check_compatible`).

        Every call that contacts the service does this first, once per
        client; a compatible answer is remembered, anything else is asked again.
        """
        if self._service_checked:
            return
        with self._check_lock:
            if self._service_checked:
                return
            try:
                versions = self.version()
            except HTTPError as exc:
                if exc.code == "not_json":  # a 2xx answer, not JSON
                    raise IncompatibleService(
                        self.url, f"its /v2/version answer is not JSON ({exc.message}): no hpfaas service?"
                    ) from None
                if exc.status != 404:
                    raise
                raise IncompatibleService(
                    self.url,
                    f"it has no GET /v2/version ({exc}): it is no hpfaas service, or one"
                    f" older than this SDK (hpfaas {__version__}) works with",
                ) from None
            check_compatible(self.url, versions)
            self._service_checked = True

    # -- HTTP -------------------------------------------------------------

    def open_stream(
        self, path: str, headers: Dict[str, str], timeout: float
    ) -> Tuple[http.client.HTTPResponse, socket.socket]:
        """Start a long-lived GET on a connection of its own; raises `HTTPError` unless 200.

        Returns the response and its socket: shutting the socket down is how
        another thread interrupts a blocked read.
        """
        self.check_service()
        conn = self._new_connection(timeout)
        try:
            conn.request("GET", self._prefix + path, headers={**self._headers, **headers})
            sock = conn.sock  # getresponse() drops it from `conn` when the server will close
            response = conn.getresponse()
            if response.status != 200:
                raise _error_from(response.status, response.read())
        except BaseException:
            conn.close()
            raise
        return response, sock

    def _new_connection(self, timeout: float = REQUEST_TIMEOUT) -> http.client.HTTPConnection:
        if self._ssl_context is not None:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._ssl_context
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._new_connection()
        elif conn.sock is not None and _readable(conn.sock):
            # An idle keep-alive socket that is readable has been closed by the
            # server (or holds garbage): start afresh rather than fail on it.
            conn.close()
        return conn

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        idempotent: bool = True,
        headers: Optional[Dict[str, str]] = None,
        retry_lost_answer: bool = False,
        data: Optional[Union[bytes, List[bytes]]] = None,
        check: bool = True,
    ) -> Any:
        """One call with `body` as JSON (or `data`, JSON already encoded, maybe in parts);
        `retry_lost_answer` (for a request the service deduplicates, an
        idempotent submit) sends it once more whenever its answer was lost.
        `check`: `check_service()` first (only the version route itself skips it)."""
        if check:
            self.check_service()
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        conn = self._connection()
        reused = conn.sock is not None
        try:
            status, raw = self._exchange(conn, method, self._prefix + path, data, headers)
        except _LOST_ANSWER as exc:
            # The server may close an idle connection just as we reuse it; only
            # a request that cannot create anything twice is sent again.
            dropped_idle = reused and idempotent and isinstance(exc, _DROPPED_CONNECTION)
            if not (retry_lost_answer or dropped_idle):
                raise
            status, raw = self._exchange(conn, method, self._prefix + path, data, headers)
        if not 200 <= status < 300:
            raise _error_from(status, raw)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            # A proxy's login page, say: say so, not json's "Expecting value".
            shown = raw[:200].decode("utf-8", "replace")
            raise HTTPError(
                status, "not_json", f"{method} {path} answered with a body that is not JSON: {shown!r}"
            ) from None

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        path: str,
        data: Optional[Union[bytes, List[bytes]]],
        extra_headers: Optional[Dict[str, str]] = None,
    ) -> Tuple[int, bytes]:
        headers = self._headers if data is None else self._json_headers
        if extra_headers:
            headers = {**headers, **extra_headers}
        if isinstance(data, list):
            # Sent part after part; without a length http.client would chunk it.
            headers = {**headers, "Content-Length": str(sum(map(len, data)))}
        try:
            try:
                conn.request(method, path, body=data, headers=headers)
            except _DROPPED_CONNECTION as exc:
                response = self._answer_despite(conn, exc)
            else:
                response = conn.getresponse()
            raw = response.read()
        except BaseException:
            conn.close()
            raise
        # A refusal of a request with a body may come before the service has
        # read all of it (413 over the size limit, 401); the service then
        # closes the connection without saying so. Reused, it would take our
        # next request down with it: start the next one afresh.
        refused_body = data is not None and not 200 <= response.status < 300
        if response.will_close or refused_body:
            conn.close()
        return response.status, raw

    @staticmethod
    def _answer_despite(
        conn: http.client.HTTPConnection, send_error: BaseException
    ) -> http.client.HTTPResponse:
        """The answer a server sent before it stopped reading our request, if any.

        A server may refuse a body early (413 over its size limit) and close
        without reading the rest: sending then fails, yet its answer, which
        names the limit, is waiting to be read. With no answer there, the
        send's own error stands (and `_request` may retry on a fresh connection).
        """
        try:
            return conn.getresponse()
        except (OSError, http.client.HTTPException):
            raise send_error from None
