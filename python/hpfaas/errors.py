"""Exceptions the SDK raises: one base class, and one class per kind of failure."""

from __future__ import annotations

from typing import Any, Optional


class HpfaasError(Exception):
    """Base class of every error raised by hpfaas."""


class TaskPending(HpfaasError):
    """The task has no result yet."""

    def __init__(self, task_id: str, status: str):
        super().__init__(f"task {task_id} is still pending (status: {status})")
        self.task_id = task_id
        self.status = status

    def __reduce__(self):
        return (type(self), (self.task_id, self.status))


class TaskExecutionFailed(HpfaasError):
    """The task ran and failed: the remote exception's type, message and traceback.

    ``output`` is what the task printed before it failed (an
    `hpfaas.client.TaskOutput`) when the error comes from a task document.
    """

    #: What the task wrote to sys.stdout/sys.stderr (`hpfaas.client.TaskOutput`), if known.
    output: Optional[Any] = None

    def __init__(
        self,
        remote_type: str,
        remote_message: str,
        remote_traceback: str,
        completion_t: Optional[str] = None,
    ):
        text = f"{remote_type}: {remote_message}"
        if remote_traceback:
            text += "\n--- remote traceback ---\n" + remote_traceback.rstrip("\n")
        super().__init__(text)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.completion_t = completion_t

    @property
    def remote_data(self) -> str:
        """The remote traceback text (Globus Compute's attribute name)."""
        return self.remote_traceback

    def __reduce__(self):
        return (
            type(self),
            (self.remote_type, self.remote_message, self.remote_traceback, self.completion_t),
        )


class HTTPError(HpfaasError):
    """The service answered with a non-2xx status (carrying its JSON error), or with a
    body that is not JSON (`code` "not_json")."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"HTTP {status} ({code}): {message}")
        self.status = status
        self.code = code
        self.message = message

    def __reduce__(self):
        return (type(self), (self.status, self.code, self.message))


class IncompatibleService(HpfaasError):
    """The service speaks another REST API version than this SDK, or refuses SDKs this old.

    Raised at first contact, before anything is sent that the service could
    misread; `str()` names both sides' versions and what to do.
    """

    def __init__(self, url: str, reason: str, service_version: Optional[str] = None):
        super().__init__(f"the hpfaas service at {url} cannot be used by this SDK: {reason}")
        self.url = url
        self.reason = reason
        self.service_version = service_version

    def __reduce__(self):
        return (type(self), (self.url, self.reason, self.service_version))


class TaskCancelled(TaskExecutionFailed):
    """The task was cancelled (`Client.cancel`, a task group's cancel) before it finished.

    A `TaskExecutionFailed`, so code that handles failed tasks handles it too;
    `remote_message` says who cancelled it and when.
    """


class ResultExpired(TaskExecutionFailed):
    """The task finished, but nobody fetched its result in time and the service purged it."""


class UntrustedResult(HpfaasError):
    """A task's result is a pickle from an endpoint the caller does not own.

    Unpickling runs whatever code the pickle names, so it would hand the
    endpoint's owner the caller's process. JSON results are decoded whatever
    the endpoint; pickles only from the caller's own endpoints and those named
    in `Client(trust_pickled_results_from=[...])`.
    """

    def __init__(self, task_id: str, endpoint_id: Optional[str]):
        super().__init__(
            f"task {task_id} ran on endpoint {endpoint_id}, which you do not own, and its"
            " result is a pickle: unpickling it would run code of the endpoint owner's"
            " choosing. Ask for JSON results (result_serializers=['11\\n']), or trust this"
            f" endpoint: Client(trust_pickled_results_from=[{endpoint_id!r}])"
            " or Executor(..., trust_pickled_results=True)"
        )
        self.task_id = task_id
        self.endpoint_id = endpoint_id

    def __reduce__(self):
        return (type(self), (self.task_id, self.endpoint_id))


class DependencyFailed(TaskExecutionFailed):
    """A task this one depends on (a future passed as an argument) failed, so
    it never ran; the message names that task and its error."""


#: The `TaskExecutionFailed` subclass raised for a task's `exception_type`.
EXCEPTION_TYPES = {
    "TaskCancelled": TaskCancelled,
    "ResultExpired": ResultExpired,
    "DependencyFailed": DependencyFailed,
}
