"""The SDK checks the service's version at first contact: a fake service answering
incompatible versions (a tiny http.server here), and the real one (compatible)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, List

import pytest

from hpfaas import Client, HTTPError, IncompatibleService, __version__
from hpfaas.version import API_VERSION


class FakeService:
    """Answers `GET /v2/version?service=all` with `versions` (JSON unless bytes, or
    404 when None) and every other route with `other`; records the paths asked."""

    def __init__(self, versions: Any, other: bytes = b"[]"):
        self.versions = versions
        self.paths: List[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                fake.paths.append(self.path)
                if self.path.startswith("/v2/version"):
                    if fake.versions is None:
                        return self._answer(404, b'{"code": "not_found", "error": "no route"}')
                    body = fake.versions
                    return self._answer(200, body if isinstance(body, bytes) else json.dumps(body))
                return self._answer(200, other)

            def _answer(self, status, body):
                body = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass  # quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def fake():
    services: List[FakeService] = []

    def start(versions: Any, other: bytes = b"[]") -> FakeService:
        services.append(FakeService(versions, other))
        return services[-1]

    yield start
    for service in services:
        service.close()


def versions(**changes: Any) -> dict:
    """A compatible answer of this SDK's own release, with `changes`."""
    answer = {
        "api": __version__,
        "hpfaas": __version__,
        "min_sdk_version": "0.0.1",
        "min_ep_version": "0.0.1",
        "protocol_version": 1,
        "api_version": API_VERSION,
    }
    answer.update(changes)
    return {k: v for k, v in answer.items() if v is not None}


def refused(service: FakeService) -> str:
    """The error of the first call that contacts `service`, which must send nothing else."""
    with pytest.raises(IncompatibleService) as info:
        Client(service.url, "a-token").get_endpoints()
    assert all(p.startswith("/v2/version") for p in service.paths), service.paths
    message = str(info.value)
    assert service.url in message, message
    return message


def test_another_rest_api_version_is_refused_naming_both_versions(fake):
    message = refused(fake(versions(hpfaas="7.3.0", api_version=API_VERSION + 1)))
    assert "hpfaas 7.3.0 (REST API version 2)" in message, message
    assert f"hpfaas {__version__} (REST API version {API_VERSION})" in message, message


def test_a_service_that_names_no_release_is_refused_saying_so(fake):
    message = refused(fake(versions(hpfaas=None, api_version=API_VERSION + 1)))
    assert "hpfaas (an unnamed release) (REST API version 2)" in message, message
    assert "None" not in message, message


def test_a_service_without_api_version_is_refused(fake):
    message = refused(fake(versions(hpfaas="0.0.9", api_version=None)))
    assert "hpfaas 0.0.9" in message and "api_version" in message, message
    assert __version__ in message, message


def test_a_service_that_wants_a_newer_sdk_is_refused(fake):
    message = refused(fake(versions(min_sdk_version="99.0.0")))
    assert "99.0.0" in message and f"hpfaas {__version__}" in message, message


@pytest.mark.parametrize(
    "answer",
    [
        None,
        b"<html>not json</html>",
        b"\xff\xfe",
        "0.1.0",
        versions(api_version="1"),
        versions(min_sdk_version=3),
    ],
    ids=["404", "not-json", "not-utf8", "a-bare-string", "api-version-a-string", "min-sdk-number"],
)
def test_an_answer_that_is_no_hpfaas_version_is_refused(fake, answer):
    refused(fake(answer))


def test_a_compatible_service_is_asked_once_and_streams_check_too(fake):
    service = fake(versions(hpfaas="0.1.9"))
    client = Client(service.url, "a-token")
    assert client.get_endpoints() == [] and client.get_endpoints() == []
    assert service.paths == ["/v2/version?service=all", "/v2/endpoints", "/v2/endpoints"]
    # A stream may be a client's first contact too.
    incompatible = fake(versions(api_version=API_VERSION + 1))
    with pytest.raises(IncompatibleService):
        Client(incompatible.url, "a-token").open_stream("/v2/anything", {}, 5.0)
    assert incompatible.paths == ["/v2/version?service=all"]


def test_version_answers_even_an_incompatible_service(fake):
    service = fake(versions(api_version=API_VERSION + 1))
    assert Client(service.url, "a-token").version()["api_version"] == API_VERSION + 1


def test_the_real_service_is_compatible(service):
    client = Client(service.url, service.token)
    answer = client.version()
    assert answer["api_version"] == API_VERSION, answer
    assert answer["hpfaas"] == __version__, "the SDK and the binary are released together"
    client.check_service()
    assert service.endpoint_id in {e["endpoint_id"] for e in client.get_endpoints()}


def test_an_answer_that_is_not_json_is_an_error_naming_the_route(fake):
    # A proxy in between that answers with its own login page.
    service = fake(versions(), other=b"<html>Sign in to the cluster portal</html>")
    with pytest.raises(HTTPError) as info:
        Client(service.url, "a-token").get_endpoints()
    assert info.value.code == "not_json" and info.value.status == 200, info.value
    assert "GET /v2/endpoints" in str(info.value) and "Sign in" in str(info.value), info.value


def test_a_submit_waits_out_a_service_that_drops_it_twice():
    """A service restarting: the first two submits are cut off without an answer,
    the third is answered; the caller sees the answer, and every try carried the
    same idempotency key, so nothing could be created twice."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    keys: List[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = json.dumps(versions()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            keys.append(self.headers["Idempotency-Key"])
            if len(keys) <= 2:
                self.close_connection = True
                self.connection.shutdown(2)  # no answer at all
                return
            body = json.dumps({"request_id": "r", "task_group_id": "g", "endpoint_id": "e", "tasks": {}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = Client(f"http://127.0.0.1:{server.server_address[1]}", "a-token")
        answer = client.batch_run("e", client.create_batch())
        assert answer["request_id"] == "r"
        assert len(keys) == 3 and len(set(keys)) == 1, keys
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
