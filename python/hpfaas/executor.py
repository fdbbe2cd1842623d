"""`Executor`: a `concurrent.futures.Executor` whose calls run on an hpfaas endpoint.

Three parties share the work. `submit` registers the function (once per
function object), serializes the arguments and queues them. A submitter thread
sends everything queued as one request whenever the queue goes idle, so a lone
call is sent at once and a burst shares requests, with no timer to wait for. A
result thread (`hpfaas.stream`) reads the task group's server-sent-event
stream, one long-lived response for all of the executor's tasks, and resolves
their futures.

What the executor keeps per task lasts only while the task is pending: the
stream drops repeated results itself (by their sequence numbers), and a result
that comes before its task id is known is held only while a submit that could
claim it is in flight.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import uuid
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from hpfaas.client import (
    JSON_FIRST,
    Client,
    TaskOutput,
    encode_payload,
    pack_call,
    pack_call_with_parents,
    task_result,
)
from hpfaas.errors import HpfaasError, HTTPError
from hpfaas.mpi import MPIFunction, validate_resource_specification
from hpfaas.stream import ResultStream

#: Most tasks sent in one submit request.
MAX_BATCH_TASKS = 4096
#: Lowest task priority the service accepts (docs/api.md, "Priorities and per-function defaults").
MIN_PRIORITY = -1000
#: Highest task priority the service accepts.
MAX_PRIORITY = 1000
#: Most payload bytes (as encoded in the body) in one submit request, under the
#: service's 10 MiB body limit.
MAX_BATCH_CHARS = 8 * 1024 * 1024


class _FutureInArguments(Exception):
    """A `TaskFuture` was met while a call's arguments were pickled."""


class TaskFuture(concurrent.futures.Future):
    """The future of one task; `task_id` is set once the task has been submitted.

    Once the task has finished, `output()` (or `stdout`, `stderr`) gives what
    it printed, whether it returned or raised.
    """

    task_id: Optional[str] = None
    # The executor that tracks this future, to cancel a submitted task through it.
    _executor: Optional["Executor"] = None
    # Set from the task document before the future resolves.
    _output: TaskOutput = TaskOutput()

    def __init__(self) -> None:
        super().__init__()
        # Set once the task has an id, or will never get one (its submit
        # failed, or it was cancelled before it was sent): what a dependent
        # call waits for before it is sent.
        self._sent = threading.Event()

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Met while a call's arguments are pickled: `Executor.submit` then
        # sends the call with this future as a reference to its task.
        raise _FutureInArguments()

    def output(self, timeout: Optional[float] = None) -> TaskOutput:
        """What the task wrote to ``sys.stdout``/``sys.stderr`` (`TaskOutput`),
        waiting up to `timeout` seconds for it to finish, as `exception()` does
        (raises `TimeoutError`, or `CancelledError` for a cancelled call)."""
        self.exception(timeout)
        return self._output

    @property
    def stdout(self) -> str:
        """The task's standard output as kept (waits for the task)."""
        return self.output().stdout

    @property
    def stderr(self) -> str:
        """The task's standard error as kept (waits for the task)."""
        return self.output().stderr

    def cancel(self) -> bool:
        """Cancel the call; True if it is cancelled.

        A call not yet sent is dropped here. A submitted task that is not done
        is cancelled in the service (`POST /v3/tasks/{id}/cancel`) and the
        future then resolves as cancelled (`result()` raises
        `concurrent.futures.CancelledError`). False when the task has finished
        already, or is being sent at this very moment (no task id yet).
        """
        if super().cancel():
            return True
        executor = self._executor
        if self.done() or self.task_id is None or executor is None:
            return False
        return executor._cancel_submitted(self)

    def _mark_cancelled(self) -> bool:
        """Resolve a running future as cancelled; False if it was done already."""
        # Future.cancel() refuses a running future, so the states are set here
        # as cancel() followed by set_running_or_notify_cancel() would set them.
        with self._condition:
            if self._state != concurrent.futures._base.RUNNING:
                return False
            self._state = concurrent.futures._base.CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()
        return True


class _Submission(NamedTuple):
    future: TaskFuture
    function_id: str
    payload: str
    encoded: str  # encode_payload(payload)
    blob: Optional[bytes]  # large pickled args, sent raw (pack_call)
    resource_specification: Optional[dict]  # as it was when submitted
    parents: Optional[List[TaskFuture]] = None  # futures among the arguments, in reference order


# Queued by `shutdown` after the last submission, once per submitter thread:
# each stops at the one it takes.
_STOP = object()

# Requests in flight at once: while the service stores one (for large
# arguments: hashing, writing and syncing megabytes), the next is encoded
# and sent.
SUBMIT_THREADS = 2

#: Most task ids in one status request of `reload_tasks`.
STATUS_CHUNK = 10_000


def _is_future(obj: Any) -> bool:
    return isinstance(obj, TaskFuture)


def _parents_sent(parents: List[TaskFuture], wait: bool) -> bool:
    """Whether every parent has a task id; with `wait`, first wait until each
    has one or never will."""
    for parent in parents:
        if wait:
            parent._sent.wait()
        if parent.task_id is None:
            return False
    return True


def _resolve(future: TaskFuture, doc: dict, may_unpickle: Callable[[Optional[str]], bool]) -> None:
    future._output = TaskOutput.of(doc)
    try:
        try:
            value = task_result(doc, may_unpickle)
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled by `TaskFuture.cancel` meanwhile


class Executor(concurrent.futures.Executor):
    """Runs calls on an hpfaas endpoint; futures resolve from one result stream."""

    def __init__(
        self,
        endpoint_id: Optional[str] = None,
        client: Optional[Client] = None,
        task_group_id: Optional[str] = None,
        batch_size: int = MAX_BATCH_TASKS,
        resource_specification: Optional[dict] = None,
        trust_pickled_results: bool = False,
        priority: Optional[int] = None,
        cache: bool = False,
    ):
        """`trust_pickled_results=True` decodes pickled results of an endpoint
        you do not own (adds it to the client's `trust_pickled_results_from`):
        only for an endpoint whose owner you trust with this process. Without
        it, such an endpoint is asked for JSON results first, and a result
        that still comes pickled fails its future with `UntrustedResult`.
        `cache=True` registers the functions this executor submits with
        `cache=True` (`Client.register_function`)."""
        self.client = client or Client()
        self.endpoint_id = endpoint_id or self.client.default_endpoint_id
        if not self.endpoint_id:
            raise HpfaasError(
                "no endpoint_id given, and no up.json from `hpfaas up` names one for"
                f" {self.client.url}"
            )
        if trust_pickled_results:
            self.client.trust_pickled_results_from.add(str(self.endpoint_id))
        # None until the first submit asks the client (one request).
        self._result_serializers: Optional[Tuple[Optional[List[str]]]] = None
        # Chosen here rather than by the service, so every submit names the
        # same group and the result stream can be opened by id.
        self.task_group_id = task_group_id or str(uuid.uuid4())
        self.batch_size = batch_size
        self.resource_specification = resource_specification
        self.priority = priority
        self.cache = cache

        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._registered: Dict[int, Tuple[Callable, str]] = {}
        self._register_lock = threading.Lock()
        self._submitters: List[threading.Thread] = []
        self._stream: Optional[ResultStream] = None

        # The lock guards the fields below it, shared by callers, the submitters
        # and the result thread.
        self._lock = threading.Lock()
        self._shutdown = False
        self._draining = False  # shut down without waiting; stop the stream once idle
        self._pending: Dict[str, TaskFuture] = {}  # submitted, unresolved
        # Results that came before their future; kept while `_claims` > 0.
        self._unclaimed: Dict[str, dict] = {}
        # Submits (and reloads) whose task ids are not yet tracked: a result
        # nobody expects may be theirs until they are.
        self._claims = 0
        # Tasks whose cancel request is in flight, with a result the stream
        # brought meanwhile (held until the service has answered the cancel).
        self._cancelling: Dict[str, Optional[dict]] = {}
        self._stream_failure: Optional[BaseException] = None

    @property
    def resource_specification(self) -> Optional[dict]:
        """Resources each task asks for (e.g. `{"num_nodes": 2}`), sent with every submit."""
        return self._resource_specification

    @resource_specification.setter
    def resource_specification(self, spec: Optional[dict]) -> None:
        if spec is not None and not isinstance(spec, dict):
            raise TypeError(f"resource_specification must be a dict, not {type(spec).__name__}")
        self._resource_specification = spec

    @property
    def priority(self) -> Optional[int]:
        """Priority of the tasks submitted from now on (an integer from
        `MIN_PRIORITY` to `MAX_PRIORITY`, higher first; None leaves it to
        `resource_specification` and the function's defaults, else 0). Sent
        as `"priority"` in the `resource_specification`, over its own value."""
        return self._priority

    @priority.setter
    def priority(self, value: Optional[int]) -> None:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"priority must be an int, not {type(value).__name__}")
            if not MIN_PRIORITY <= value <= MAX_PRIORITY:
                raise ValueError(
                    f"priority must be from {MIN_PRIORITY} to {MAX_PRIORITY}, not {value}"
                )
        self._priority = value

    # -- the concurrent.futures.Executor interface ------------------------

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run `fn(*args, **kwargs)` on the endpoint; registers `fn` on first use.

        A `TaskFuture` anywhere in the arguments (inside lists, tuples, dicts
        and sets too) is replaced by its task's result where the call runs:
        the call is sent at once, the service holds it until those tasks have
        succeeded, and it fails with `DependencyFailed` if one of them fails.
        """
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        # Copied now: a later change of the specification is for later submits.
        spec = self.resource_specification and dict(self.resource_specification)
        if self.priority is not None:
            spec = {**(spec or {}), "priority": self.priority}
        if isinstance(fn, MPIFunction):
            validate_resource_specification(spec)
        function_id = self._function_id(fn)
        # Shell functions are run by the manager, which reads JSON, not pickle;
        # the client that registered `fn` knows which ids are shell functions.
        as_json = self.client.is_shell_function(function_id)
        parents = None
        try:
            payload, blob = pack_call(args, kwargs, as_json=as_json)
        except _FutureInArguments:
            # Pickled again, with the futures as numbered references: calls
            # without futures never pay for a pickler written in Python.
            payload, parents = pack_call_with_parents(args, kwargs, _is_future)
            blob = None
        future = TaskFuture()
        future._executor = self
        if self._result_serializers is None:
            # Asked here, once, not by the submitters: a request on their
            # way would let the second overtake the first's calls.
            self._serializers()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if not self._submitters:
                self._submitters = [
                    threading.Thread(target=self._submit_loop, name=f"hpfaas-submit-{i}", daemon=True)
                    for i in range(SUBMIT_THREADS)
                ]
                for thread in self._submitters:
                    thread.start()
            self._queue.put(
                _Submission(
                    future,
                    function_id,
                    payload,
                    encode_payload(payload, not as_json),
                    blob,
                    spec,
                    parents,
                )
            )
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Send queued calls (or cancel them), then wait for every future if `wait`.

        With `wait=False` the result thread lives on until the futures already
        submitted have resolved, as `ThreadPoolExecutor`'s workers do.
        """
        with self._lock:
            self._shutdown = True
        if cancel_futures:
            self._cancel_queued()
        for thread in self._submitters:
            self._queue.put(_STOP)  # one each; queued after every call
        for thread in self._submitters:
            thread.join()
        if wait:
            with self._lock:
                outstanding = list(self._pending.values())
            concurrent.futures.wait(outstanding)
        with self._lock:
            self._draining = True
        self._stop_stream_if_idle()
        if wait and self._stream is not None:
            self._stream.join()

    def reload_tasks(self) -> List[TaskFuture]:
        """Futures for every task of this executor's task group, in submission order."""
        futures, new = [], []
        self._begin_claim()
        try:
            tasks = self.client.get_taskgroup_tasks(self.task_group_id)
            with self._lock:
                streaming = self._stream is not None
                for task in tasks:
                    future = self._pending.get(task["id"])
                    if future is None:
                        future = TaskFuture()
                        future._executor = self
                        future.task_id = task["id"]
                        future._sent.set()
                        future.set_running_or_notify_cancel()
                        new.append(future)
                    futures.append(future)
            # A running stream may have passed these tasks' results already:
            # they are asked for once more.
            self._track(new, ask_status=streaming)
        finally:
            self._end_claim()
        self._ensure_stream()
        return futures

    # -- submitting -------------------------------------------------------

    def _function_id(self, fn: Callable) -> str:
        # Keyed by the callable itself, so a bound method (a new object on
        # every attribute access, but equal to the last) registers once;
        # unhashable callables fall back to id(), and the entry keeps `fn`
        # alive so that id cannot be reused by another object.
        key: object = fn
        try:
            hash(fn)
        except TypeError:
            key = id(fn)
        entry = self._registered.get(key)
        if entry is None:
            with self._register_lock:
                entry = self._registered.get(key)
                if entry is None:
                    function_id = self.client.register_function(fn, cache=self.cache)
                    entry = self._registered[key] = (fn, function_id)
        return entry[1]

    def _cancel_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item.future.cancel():
                # Only this call lets `concurrent.futures.wait` see the cancellation.
                item.future.set_running_or_notify_cancel()
                item.future._sent.set()

    def _submit_loop(self) -> None:
        carried = None
        while True:
            item = carried if carried is not None else self._queue.get()
            carried = None
            if item is _STOP:
                return
            batch = self.client.create_batch(
                self.task_group_id,
                resource_specification=item.resource_specification,
                result_serializers=self._serializers(),
            )
            sent: List[_Submission] = []
            while True:
                # A dependent call goes with the ids of its parents: one whose
                # parent is still unsent (in this batch, say) starts the next
                # batch, and the first call of a batch waits for its parents'
                # submits (not for them to run). Parents were queued earlier,
                # so they never wait for it.
                if item.parents and sent and not _parents_sent(item.parents, wait=False):
                    carried = item
                    break
                ready = not item.parents or _parents_sent(item.parents, wait=True)
                # A future cancelled while queued is dropped; from here on it cannot be.
                if not item.future.set_running_or_notify_cancel():
                    item.future._sent.set()
                elif not ready:
                    item.future._sent.set()
                    item.future.set_exception(
                        HpfaasError(
                            "a future this call depends on was never submitted"
                            " (its submit failed or it was cancelled first)"
                        )
                    )
                else:
                    parent_ids = [p.task_id for p in item.parents] if item.parents else None
                    batch.add_payload(
                        item.function_id, item.payload, item.encoded, item.blob, parent_ids
                    )
                    sent.append(item)
                if len(sent) >= self.batch_size:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break  # the queue went idle: send what we have now
                # One request carries one resource specification for all its tasks.
                if (
                    item is _STOP
                    or batch.payload_size + len(item.encoded) + len(item.blob or b"")
                    > MAX_BATCH_CHARS
                    or item.resource_specification != batch.resource_specification
                ):
                    carried = item
                    break
            if sent:
                self._send(batch, sent)
            # Not held while the queue is waited on: the futures carry results.
            batch = sent = item = None

    def _send(self, batch, sent: List[_Submission]) -> None:
        self._begin_claim()
        try:
            self._send_claimed(batch, sent)
        finally:
            self._end_claim()

    def _send_claimed(self, batch, sent: List[_Submission]) -> None:
        try:
            response = self.client.batch_run(self.endpoint_id, batch)
            task_ids = {fid: iter(response["tasks"].get(fid, ())) for fid in batch.tasks}
            for item in sent:
                item.future.task_id = next(task_ids[item.function_id], None)
                if item.future.task_id is None:
                    raise HpfaasError(
                        f"the service returned too few task ids for {item.function_id}"
                    )
                item.future._sent.set()
        except Exception as exc:
            for item in sent:
                item.future._sent.set()
                item.future.set_exception(exc)
            return
        self._track([item.future for item in sent])
        self._ensure_stream()

    # -- results ----------------------------------------------------------

    def _begin_claim(self) -> None:
        with self._lock:
            self._claims += 1

    def _end_claim(self) -> None:
        with self._lock:
            self._claims -= 1
            if not self._claims:
                # No future can claim them any more: another client's tasks
                # in this group, or a cancelled task's final event.
                self._unclaimed.clear()

    def _track(self, futures: List[TaskFuture], ask_status: bool = False) -> None:
        """Start expecting results for submitted futures (within a claim).

        With `ask_status`, the service is asked for their documents too, for
        results the stream may have delivered before they were tracked.
        """
        ready, failed, tracked = [], [], []
        with self._lock:
            for future in futures:
                if future.task_id in self._unclaimed:
                    ready.append((future, self._unclaimed.pop(future.task_id)))
                elif self._stream_failure is not None:
                    failed.append(future)
                else:
                    self._pending[future.task_id] = future
                    tracked.append(future)
            failure = self._stream_failure
        for future in failed:
            future.set_exception(failure)
        if ask_status and tracked:
            ready.extend(self._finished_already(tracked))
        for future, doc in ready:
            _resolve(future, doc, self.client.may_unpickle)

    def _finished_already(self, futures: List[TaskFuture]) -> List[Tuple[TaskFuture, dict]]:
        """The tracked futures whose tasks the service has final, taken off `_pending`."""
        ready = []
        for start in range(0, len(futures), STATUS_CHUNK):
            chunk = futures[start : start + STATUS_CHUNK]
            try:
                docs = self.client.get_batch_status([f.task_id for f in chunk])
            except Exception as exc:
                docs = None
                error = exc
            with self._lock:
                for future in chunk:
                    doc = docs and docs.get(future.task_id)
                    if docs is not None and (not isinstance(doc, dict) or doc.get("pending")):
                        continue  # its result comes on the stream
                    # Whichever comes first, this or the stream, resolves it.
                    if self._pending.get(future.task_id) is future:
                        del self._pending[future.task_id]
                        if docs is None:
                            future.set_exception(error)
                        else:
                            ready.append((future, doc))
        return ready

    def _on_result(self, doc: dict) -> None:
        task_id = doc["task_id"]
        with self._lock:
            if task_id in self._cancelling:
                self._cancelling[task_id] = doc  # `_cancel_submitted` decides
                return
            future = self._pending.pop(task_id, None)
            if future is None:
                if self._claims:
                    self._unclaimed[task_id] = doc
                return
        _resolve(future, doc, self.client.may_unpickle)
        self._stop_stream_if_idle()

    def _serializers(self) -> Optional[List[str]]:
        """What results to ask for: the default (pickle) from an endpoint
        whose pickles are decoded, else JSON first."""
        if self._result_serializers is None:
            trusted = self.client.may_unpickle(self.endpoint_id)
            self._result_serializers = (None if trusted else list(JSON_FIRST),)
        return self._result_serializers[0]

    def _cancel_submitted(self, future: TaskFuture) -> bool:
        """Cancel a submitted task in the service, then resolve its future as cancelled."""
        task_id = future.task_id
        with self._lock:
            if task_id not in self._pending or task_id in self._cancelling:
                return False
            self._cancelling[task_id] = None
        try:
            self.client.cancel(task_id)
        except BaseException as exc:
            with self._lock:
                held = self._cancelling.pop(task_id)
            if held is not None:
                self._on_result(held)  # finished first: resolve with its result
            if isinstance(exc, HTTPError) and exc.status == 409:
                return False  # final already: its result is here or on its way
            raise
        with self._lock:
            self._cancelling.pop(task_id)
            # The stream carries the cancelled task too: with no future
            # waiting for it, `_on_result` drops it.
            self._pending.pop(task_id, None)
        cancelled = future._mark_cancelled()
        self._stop_stream_if_idle()
        return cancelled

    def _on_stream_failure(self, exc: BaseException) -> None:
        with self._lock:
            self._stream_failure = exc
            stranded = list(self._pending.values())
            self._pending.clear()
        for future in stranded:
            future.set_exception(exc)

    def _ensure_stream(self) -> None:
        with self._lock:
            if self._stream is None:
                self._stream = ResultStream(
                    self.client, self.task_group_id, self._on_result, self._on_stream_failure
                )
                self._stream.start()

    def _stop_stream_if_idle(self) -> None:
        with self._lock:
            idle = self._draining and not self._pending
        if idle and self._stream is not None:
            self._stream.stop()
