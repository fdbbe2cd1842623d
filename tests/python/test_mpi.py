"""`MPIFunction`: its wire form, the resource specification's rules, and a
small MPI program (built here with `mpicc`) run through `Executor` on the
endpoint of `hpfaas up` (one manager, so one node)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from hpfaas import Client, Executor, MPIFunction, ShellFunction, ShellResult, TaskExecutionFailed
from hpfaas.mpi import MPIShape, validate_resource_specification
from hpfaas.serialize import deserialize, serialize_function

#: Generous: a debug build on a busy 2-core machine.
TIMEOUT = 60.0

HELLO_C = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    printf("rank %d of %d\n", rank, size);
    MPI_Finalize();
    return 0;
}
"""


def test_wire_form_is_a_shell_function_marked_mpi():
    fn = MPIFunction("./sim {steps}", walltime=30)
    assert isinstance(fn, ShellFunction)
    buffer = serialize_function(fn)
    assert buffer.startswith("sh\n") and '"mpi": true' in buffer
    back = deserialize(buffer)
    assert isinstance(back, MPIFunction)
    assert (back.cmd, back.walltime) == ("./sim {steps}", 30)
    plain = deserialize(serialize_function(ShellFunction("echo")))
    assert not isinstance(plain, MPIFunction)


def test_local_call_runs_under_the_prefix(monkeypatch):
    monkeypatch.setenv("HPFAAS_MPI_PREFIX", "echo launched")
    result = MPIFunction("hello {n}")(n=3)
    assert result == ShellResult(0, "launched hello 3\n", "", "$HPFAAS_MPI_PREFIX hello 3")


@pytest.mark.parametrize(
    "spec, shape",
    [
        ({"num_nodes": 2, "ranks_per_node": 2}, (2, 2, 4)),
        ({"num_nodes": 3}, (3, 1, 3)),
        ({"num_nodes": 2, "num_ranks": 3}, (2, 2, 3)),
        ({"num_ranks": 4}, (1, 4, 4)),
        ({"num_ranks": 5, "ranks_per_node": 2, "launcher_options": "-x A"}, (3, 2, 5)),
    ],
)
def test_resource_specifications_resolve_to_nodes(spec, shape):
    assert validate_resource_specification(spec) == MPIShape(*shape)


@pytest.mark.parametrize(
    "spec, words",
    [
        (None, "needs a resource_specification"),
        ({}, "needs a resource_specification"),
        ({"nodes": 2}, "'nodes'"),
        ({"ranks_per_node": 2}, "needs num_nodes or num_ranks"),
        ({"num_nodes": 0}, "positive int"),
        ({"num_nodes": "2"}, "positive int"),
        ({"num_nodes": True}, "positive int"),
        ({"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 5}, "at most 4"),
        ({"num_ranks": 2, "launcher_options": ["-x"]}, "must be a str"),
    ],
)
def test_bad_specifications_are_refused_with_the_reason(spec, words):
    with pytest.raises(ValueError, match=words):
        validate_resource_specification(spec)


@pytest.fixture(scope="module")
def hello(tmp_path_factory):
    """The MPI program, or a skip (a failure under CI=true) without OpenMPI."""
    if not (shutil.which("mpicc") and shutil.which("mpiexec")):
        reason = "no mpicc/mpiexec (apt-get install openmpi-bin libopenmpi-dev)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("mpi")
    (d / "hello.c").write_text(HELLO_C)
    subprocess.run(["mpicc", "-o", str(d / "hello"), str(d / "hello.c")], check=True)
    return d / "hello"


@pytest.fixture
def executor(service):
    client = Client(service.url, service.token)
    with Executor(endpoint_id=service.endpoint_id, client=client) as ex:
        yield ex


def test_executor_refuses_an_mpi_function_without_a_specification(executor):
    with pytest.raises(ValueError, match="needs a resource_specification"):
        executor.submit(MPIFunction("hostname"))
    executor.resource_specification = {"num_nodes": 1, "num_ranks": 2, "ranks_per_node": 1}
    with pytest.raises(ValueError, match="at most 1"):
        executor.submit(MPIFunction("hostname"))


def test_mpi_function_through_the_executor(executor, hello):
    # As root, OpenMPI wants to be told; a site would put this in launcher_options too.
    executor.resource_specification = {"num_ranks": 2, "launcher_options": "--allow-run-as-root"}
    result = executor.submit(MPIFunction(f"{hello}")).result(TIMEOUT)
    assert result.returncode == 0, result
    assert sorted(result.stdout.splitlines()) == ["rank 0 of 2", "rank 1 of 2"]
    assert result.cmd.startswith("mpiexec -n 2 --host ")
    # Each submit keeps the specification it was made with.
    executor.resource_specification = {"num_ranks": 1, "launcher_options": "--allow-run-as-root"}
    one = executor.submit(MPIFunction(f"{hello}"))
    executor.resource_specification = {"num_nodes": 2}
    two_nodes = executor.submit(MPIFunction(f"{hello}"))
    assert one.result(TIMEOUT).stdout == "rank 0 of 1\n"
    # `hpfaas up` has one manager: a task needing two nodes fails at once.
    exc = two_nodes.exception(TIMEOUT)
    assert isinstance(exc, TaskExecutionFailed)
    assert exc.remote_type == "ValueError"
    assert "needs 2 nodes" in exc.remote_message and "at most 1" in exc.remote_message
