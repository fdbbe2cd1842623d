"""A submitter is protected from an endpoint's owner: pickled results of an
endpoint the caller does not own are never unpickled unless the caller trusts
that endpoint; JSON results always decode."""

from __future__ import annotations

import json
import urllib.request

import pytest
from helpers import wait_until

from hpfaas import Client, Executor, UntrustedResult

TIMEOUT = 60.0


def _share(service, users, method="POST"):
    request = urllib.request.Request(
        f"{service.url}/v3/endpoints/{service.endpoint_id}/share",
        data=json.dumps({"users": users}).encode(),
        method=method,
        headers={"Authorization": f"Bearer {service.token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
        assert answer.status == 200


@pytest.fixture
def shared(service, other_user_token):
    """The service's endpoint shared with the second user, for this test only."""
    _share(service, ["other"])
    yield other_user_token
    _share(service, ["other"], method="DELETE")


def evil(path):
    """A value whose unpickling creates `path`: what an endpoint owner could send."""

    class Evil:
        def __reduce__(self):
            return (open, (path, "w"))

    return Evil()


def as_json(x):
    return x * 2


def same(x):
    return x


def finished(client, task_id):
    return wait_until(lambda: not client.get_task(task_id).get("pending"), TIMEOUT, "the task")


def test_pickles_from_a_shared_endpoint_are_refused(service, shared, tmp_path):
    marker = tmp_path / "unpickled"
    sharer = Client(service.url, shared)
    task_id = sharer.run(str(marker), endpoint_id=service.endpoint_id, function_id=sharer.register_function(evil))
    finished(sharer, task_id)
    with pytest.raises(UntrustedResult, match="trust_pickled_results_from") as info:
        sharer.get_result(task_id)
    assert info.value.endpoint_id == service.endpoint_id
    assert not marker.exists(), "the endpoint's pickle ran code in the client"
    batch = sharer.get_batch_result([task_id])[task_id]
    assert isinstance(batch["exception"], UntrustedResult)
    assert not marker.exists()

    # The owner's own endpoint: decoded as before.
    owner = Client(service.url, service.token)
    assert owner.may_unpickle(service.endpoint_id)
    # Trusted by name: decoded (and here, the pickle does what it says).
    trusting = Client(service.url, shared, trust_pickled_results_from=[service.endpoint_id])
    trusting.get_result(task_id).close()
    assert marker.exists()


def test_json_results_always_work_and_executors_ask_for_json(service, shared):
    sharer = Client(service.url, shared)
    fid = sharer.register_function(as_json)
    batch = sharer.create_batch(result_serializers=["11\n"])
    batch.add(fid, args=(21,))
    task_id = sharer.batch_run(service.endpoint_id, batch)["tasks"][fid][0]
    finished(sharer, task_id)
    assert sharer.get_result(task_id) == 42

    with Executor(endpoint_id=service.endpoint_id, client=sharer) as ex:
        assert ex.submit(as_json, 4).result(TIMEOUT) == 8  # asked for JSON first
        with pytest.raises(UntrustedResult):
            ex.submit(same, {1, 2}).result(TIMEOUT)  # a set: only a pickle carries it
    trusting = Client(service.url, shared)
    with Executor(endpoint_id=service.endpoint_id, client=trusting, trust_pickled_results=True) as ex:
        assert ex.submit(as_json, (1, 2)).result(TIMEOUT) == (1, 2, 1, 2)
