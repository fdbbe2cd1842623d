"""hpfaas: call Python functions, shell commands and MPI programs on HPC endpoints.

The names mirror Globus Compute's SDK, so moving between the two is a
search-and-replace::

    from hpfaas import Executor

    def double(x):
        return 2 * x

    with Executor() as ex:          # the endpoint `hpfaas up` started
        print(list(ex.map(double, range(10))))
"""

import importlib
from typing import TYPE_CHECKING

from hpfaas.version import __version__

if TYPE_CHECKING:
    from hpfaas.client import Client, TaskOutput
    from hpfaas.errors import (
        DependencyFailed,
        HpfaasError,
        HTTPError,
        IncompatibleService,
        ResultExpired,
        TaskCancelled,
        TaskExecutionFailed,
        TaskPending,
        UntrustedResult,
    )
    from hpfaas.executor import Executor
    from hpfaas.mpi import MPIFunction
    from hpfaas.progress_display import progress
    from hpfaas.shell import ShellFunction, ShellResult

# The SDK's names are imported on first use: a worker imports `hpfaas.worker`
# through this package, and should not pay for http.client and friends
# (about 30 ms) at every start.
_EXPORTS = {
    "Client": "hpfaas.client",
    "DependencyFailed": "hpfaas.errors",
    "Executor": "hpfaas.executor",
    "HpfaasError": "hpfaas.errors",
    "HTTPError": "hpfaas.errors",
    "IncompatibleService": "hpfaas.errors",
    "ResultExpired": "hpfaas.errors",
    "TaskCancelled": "hpfaas.errors",
    "MPIFunction": "hpfaas.mpi",
    "progress": "hpfaas.progress_display",
    "ShellFunction": "hpfaas.shell",
    "ShellResult": "hpfaas.shell",
    "TaskExecutionFailed": "hpfaas.errors",
    "TaskOutput": "hpfaas.client",
    "TaskPending": "hpfaas.errors",
    "UntrustedResult": "hpfaas.errors",
}

__all__ = [
    "Client",
    "DependencyFailed",
    "Executor",
    "HpfaasError",
    "HTTPError",
    "IncompatibleService",
    "MPIFunction",
    "ResultExpired",
    "ShellFunction",
    "ShellResult",
    "TaskCancelled",
    "TaskExecutionFailed",
    "TaskOutput",
    "TaskPending",
    "UntrustedResult",
    "__version__",
    "progress",
]


def __getattr__(name: str):
    """Import an exported name on first access (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hpfaas' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
