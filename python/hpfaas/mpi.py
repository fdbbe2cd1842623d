"""MPI programs as functions: `MPIFunction`, a shell command run under the endpoint's MPI launcher.

As in Globus Compute, the command runs as ``$HPFAAS_MPI_PREFIX <cmd>`` (also
``$PARSL_MPI_PREFIX``), the prefix being the launcher aimed at the nodes the
endpoint reserved for the task. How many nodes and ranks is the executor's
``resource_specification``::

    ex.resource_specification = {"num_nodes": 2, "ranks_per_node": 2}
    ex.submit(MPIFunction("./hello {n}"), n=3).result()   # a ShellResult
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from hpfaas.shell import ShellFunction, ShellResult

#: Keys a resource specification may hold (Globus Compute's and Parsl's names).
RESOURCE_KEYS = ("num_nodes", "ranks_per_node", "num_ranks", "launcher_options", "walltime")
_EXAMPLE = '{"num_nodes": 2, "ranks_per_node": 2} or {"num_ranks": 4}'


class MPIShape(NamedTuple):
    """Nodes and ranks a resource specification asks for."""

    num_nodes: int
    ranks_per_node: int
    num_ranks: int


class MPIFunction(ShellFunction):
    """A shell command line run as ``$HPFAAS_MPI_PREFIX <cmd>`` on reserved nodes."""

    _kind = "MPIFunction"

    def to_dict(self) -> dict:
        """The wire form: a shell function the manager runs under the MPI launcher."""
        return {**super().to_dict(), "mpi": True}

    def __call__(self, **kwargs) -> ShellResult:
        """Run here as on an endpoint: the prefix is whatever `$HPFAAS_MPI_PREFIX` holds."""
        return self.run_line("$HPFAAS_MPI_PREFIX " + self.render(**kwargs))


def validate_resource_specification(spec: Optional[dict]) -> MPIShape:
    """The nodes and ranks `spec` asks for; `ValueError` saying what is wrong otherwise.

    The endpoint applies the same rules: `num_nodes` with `ranks_per_node`
    (default 1) or `num_ranks` spread over them; `num_ranks` alone is one node
    running every rank, or `ceil(num_ranks / ranks_per_node)` nodes.
    """
    if not spec:
        raise ValueError(f"an MPIFunction needs a resource_specification, e.g. {_EXAMPLE}")
    if not isinstance(spec, dict):
        raise ValueError(f"resource_specification must be a dict, not {type(spec).__name__}")
    unknown = sorted(set(spec) - set(RESOURCE_KEYS))
    if unknown:
        raise ValueError(
            f"resource_specification has unknown key(s) {', '.join(map(repr, unknown))};"
            f" MPI tasks take {', '.join(RESOURCE_KEYS)}"
        )

    def count(key: str) -> Optional[int]:
        value = spec.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"resource_specification {key} must be a positive int, not {value!r}")
        return value

    nodes, per_node, ranks = count("num_nodes"), count("ranks_per_node"), count("num_ranks")
    options = spec.get("launcher_options")
    if options is not None and not isinstance(options, str):
        raise ValueError(
            f"resource_specification launcher_options must be a str, not {type(options).__name__}"
        )
    if nodes is not None:
        if per_node is None:
            per_node = -(-ranks // nodes) if ranks is not None else 1
        total = nodes * per_node if ranks is None else ranks
        # Every reserved node must get a rank, or it is held for nothing.
        if not (nodes - 1) * per_node < total <= nodes * per_node:
            raise ValueError(
                f"resource_specification num_ranks = {total} does not fit num_nodes = {nodes}"
                f" with ranks_per_node = {per_node}: it must be more than"
                f" {(nodes - 1) * per_node} and at most {nodes * per_node}"
            )
        return MPIShape(nodes, per_node, total)
    if ranks is not None:
        per_node = min(per_node or ranks, ranks)
        return MPIShape(-(-ranks // per_node), per_node, ranks)
    raise ValueError(f"resource_specification needs num_nodes or num_ranks, e.g. {_EXAMPLE}")
