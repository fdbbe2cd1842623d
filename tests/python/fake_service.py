"""An in-process stand-in for the hpfaas service, for testing the SDK without the Rust binary.

It serves the REST routes and the result stream of docs/api.md that the SDK
uses, and runs tasks on a thread with the worker runtime's `TaskRunner` (shell
functions with `ShellFunction`, as the manager would). Knobs let a test hold
tasks back, fail submits, drop or repeat stream events.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple

from hpfaas.serialize import SHELL_FUNCTION, deserialize, unpack
from hpfaas.worker import TaskRunner

TOKEN = "test-token"


class FakeService:
    """The service's REST routes and result stream, with tasks run in-process."""

    def __init__(self) -> None:
        self.endpoint_id = str(uuid.uuid4())
        self.functions: Dict[str, dict] = {}
        self.tasks: Dict[str, dict] = {}
        self.groups: Dict[str, List[str]] = {}
        self.results: List[Tuple[int, str, str]] = []  # (seq, task group, task id)
        self.changed = threading.Condition()
        self.stopping = False

        #: Cleared, tasks wait before running (they stay pending).
        self.run_tasks = threading.Event()
        self.run_tasks.set()
        #: (status, code, message) to answer every submit with.
        self.fail_submits: Optional[Tuple[int, str, str]] = None
        #: Close a stream connection after sending this many events.
        self.drop_stream_after: Optional[int] = None
        #: Send every event twice (delivery is at least once).
        self.repeat_events = False
        #: (status, code, message) to answer every stream request with.
        self.fail_streams: Optional[Tuple[int, str, str]] = None
        #: Cleared, submit requests wait (after setting `submit_arrived`) before being handled.
        self.accept_submits = threading.Event()
        self.accept_submits.set()
        self.submit_arrived = threading.Event()

        self.submit_bodies: List[dict] = []
        self.stream_last_event_ids: List[Optional[str]] = []
        self.connections = 0

        self._work: "queue.Queue[Optional[str]]" = queue.Queue()
        self._runner = threading.Thread(target=self._run_tasks, daemon=True)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._serving = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._runner.start()
        self._serving.start()

    def stop(self) -> None:
        with self.changed:
            self.stopping = True
            self.changed.notify_all()
        self.run_tasks.set()
        self.accept_submits.set()
        self._work.put(None)
        self._server.shutdown()
        self._server.server_close()

    # -- task execution ---------------------------------------------------

    def _run_tasks(self) -> None:
        runner = TaskRunner()
        while True:
            task_id = self._work.get()
            if task_id is None:
                return
            self.run_tasks.wait()
            task = self.tasks[task_id]
            task["status"] = "running"
            code = self.functions[task["function_id"]]["function_code"]
            if unpack(code)[0].startswith(SHELL_FUNCTION):
                reply = self._run_shell(task, code)
            else:
                reply = runner.run(
                    {
                        "task_id": task_id,
                        "function_id": task["function_id"],
                        "function_code": code,
                        "payload": task["payload"],
                        "result_serializers": task["result_serializers"],
                    }
                )
            self._finish(task, reply)

    @staticmethod
    def _run_shell(task: dict, code: str) -> dict:
        # The manager reads shell arguments as JSON: insist on it, as it must.
        args, kwargs = unpack(task["payload"])
        assert args.startswith("11\n") and kwargs.startswith("11\n"), task["payload"]
        result = deserialize(unpack(code)[0])(**deserialize(kwargs))
        return {"ok": True, "result": "sr\n" + json.dumps(dataclasses.asdict(result))}

    def _finish(self, task: dict, reply: dict) -> None:
        task.pop("payload")
        task["pending"] = False
        task["completion_t"] = f"{time.time():.6f}"
        if reply["ok"]:
            task.update(status="success", result=reply["result"])
        else:
            exc = reply["exception"]
            task.update(
                status="failed",
                exception=exc["traceback"],
                exception_type=exc["type"],
                exception_message=exc["message"],
            )
        with self.changed:
            self.results.append((len(self.results) + 1, task["task_group_id"], task["task_id"]))
            self.changed.notify_all()

    # -- routes -------------------------------------------------------------

    def submit(self, endpoint_id: str, body: dict) -> dict:
        self.submit_bodies.append(body)
        task_group_id = body.get("task_group_id") or str(uuid.uuid4())
        ids: Dict[str, List[str]] = {}
        for function_id, payloads in body["tasks"].items():
            for payload in payloads:
                task_id = str(uuid.uuid4())
                self.tasks[task_id] = {
                    "task_id": task_id,
                    "status": "waiting-for-launch",
                    "pending": True,
                    "task_group_id": task_group_id,
                    "function_id": function_id,
                    "endpoint_id": endpoint_id,
                    "created_t": f"{time.time():.6f}",
                    "payload": payload,
                    "result_serializers": body.get("result_serializers") or [],
                }
                self.groups.setdefault(task_group_id, []).append(task_id)
                ids.setdefault(function_id, []).append(task_id)
                self._work.put(task_id)
        return {
            "request_id": str(uuid.uuid4()),
            "task_group_id": task_group_id,
            "endpoint_id": endpoint_id,
            "tasks": ids,
        }

    def results_after(self, seq: int) -> Optional[List[Tuple[int, str, str]]]:
        """Wait for results stored after `seq` and return them; None once stopping."""
        with self.changed:
            # Sequence numbers count from 1, so result `seq` sits at index `seq - 1`.
            self.changed.wait_for(lambda: self.stopping or len(self.results) > seq)
            return None if self.stopping else self.results[seq:]

    def public(self, task_id: str) -> dict:
        """The task document as the service shows it."""
        task = self.tasks.get(task_id)
        if task is None:
            return {
                "task_id": task_id,
                "status": "unknown",
                "pending": False,
                "reason": "unknown task id",
            }
        return {k: v for k, v in task.items() if k not in ("payload", "result_serializers")}


def _handler_for(service: FakeService):
    routes = [
        ("POST", r"/v3/functions", "register"),
        ("GET", r"/v2/functions/([^/]+)", "get_function"),
        ("POST", r"/v3/endpoints/([^/]+)/submit", "submit"),
        ("GET", r"/v2/tasks/([^/]+)", "get_task"),
        ("POST", r"/v2/batch_status", "batch_status"),
        ("GET", r"/v2/taskgroup/([^/]+)", "taskgroup"),
        ("GET", r"/v3/taskgroup/([^/]+)/stream", "stream"),
        ("GET", r"/v2/endpoints/([^/]+)/status", "endpoint_status"),
    ]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes

        def setup(self):
            super().setup()
            service.connections += 1

        def log_message(self, *args):
            pass

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def _route(self, method):
            path = self.path.split("?", 1)[0]
            body = None
            if method == "POST":
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._json(401, {"code": "unauthorized", "error": "bad token"})
            for route_method, pattern, name in routes:
                match = re.fullmatch(pattern, path)
                if match and route_method == method:
                    return getattr(self, name)(*match.groups(), body=body)
            self._json(404, {"code": "not_found", "error": f"no route {method} {path}"})

        def _json(self, status, doc):
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def register(self, body):
            function_id = str(uuid.uuid4())
            service.functions[function_id] = body
            self._json(200, {"function_uuid": function_id})

        def get_function(self, function_id, body):
            if function_id not in service.functions:
                return self._json(404, {"code": "not_found", "error": f"function {function_id}"})
            self._json(200, {"function_uuid": function_id, **service.functions[function_id]})

        def submit(self, endpoint_id, body):
            service.submit_arrived.set()
            service.accept_submits.wait()
            if service.fail_submits:
                status, code, error = service.fail_submits
                return self._json(status, {"code": code, "error": error})
            self._json(200, service.submit(endpoint_id, body))

        def get_task(self, task_id, body):
            if task_id not in service.tasks:
                return self._json(404, {"code": "not_found", "error": f"task {task_id}"})
            self._json(200, service.public(task_id))

        def batch_status(self, body):
            results = {tid: service.public(tid) for tid in body["task_ids"]}
            self._json(200, {"response": "batch", "results": results})

        def taskgroup(self, task_group_id, body):
            tasks = [
                {"id": tid, "function_id": t["function_id"], "status": t["status"]}
                for tid, t in ((tid, service.tasks[tid]) for tid in service.groups[task_group_id])
            ]
            self._json(200, {"taskgroup_id": task_group_id, "tasks": tasks})

        def endpoint_status(self, endpoint_id, body):
            self._json(200, {"status": "online", "details": {}})

        def stream(self, task_group_id, body):
            if service.fail_streams:
                status, code, error = service.fail_streams
                return self._json(status, {"code": code, "error": error})
            last_event_id = self.headers.get("Last-Event-ID")
            service.stream_last_event_ids.append(last_event_id)
            last = int(last_event_id or 0)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(b": keep-alive\n\n")
            sent = 0
            while True:
                new = service.results_after(last)
                if new is None:
                    return
                last = new[-1][0]
                for seq, _, task_id in (r for r in new if r[1] == task_group_id):
                    event = (
                        f"id: {seq}\nevent: result\ndata: {json.dumps(service.public(task_id))}\n\n"
                    )
                    self.wfile.write(event.encode() * (2 if service.repeat_events else 1))
                    self.wfile.flush()
                    sent += 1
                    if service.drop_stream_after and sent >= service.drop_stream_after:
                        return

    return Handler
