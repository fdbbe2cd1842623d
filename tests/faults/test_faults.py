"""Fault injection with real processes and real signals (issue 5, "Crash recovery").

For each component -- worker, manager, endpoint agent, service -- a run of
HPFAAS_FAULT_TASKS tasks (default 20,000) through the Python SDK's Executor,
with that component killed with SIGKILL once about a third of the results are
in, and restarted where that is the component's recovery path (agent: `hpfaas
endpoint start` again; service: the same port and data dir; a lost manager is
replaced by the endpoint itself). Every future must resolve exactly once, every
task of the group must be final in the service, successes + failures naming the
lost component must add up to the task count, and with a retry budget of 1
there must be no failures at all.

Run by hand:  .venv/bin/python -m pytest tests/faults -q -s
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(REPO / "tests" / "python"))  # the suites' shared helpers

from hpfaas import Client, Executor  # noqa: E402
from helpers import wait_until  # noqa: E402

TASKS = int(os.environ.get("HPFAAS_FAULT_TASKS", "20000"))
#: A debug build on a busy 2-core machine: generous.
RUN_TIMEOUT = float(os.environ.get("HPFAAS_FAULT_TIMEOUT", "600"))
STARTUP_TIMEOUT = 60.0
BINARY = Path(os.environ.get("HPFAAS_BIN") or REPO / "target" / "debug" / "hpfaas")

ROWS: list = []


def noop(x, log):
    """The task: record this execution, then return the argument."""
    import os
    import time

    time.sleep(0.0005)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"%d\n" % x)
    finally:
        os.close(fd)
    return x


# -- processes ---------------------------------------------------------------



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmdline(pid: int) -> list:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def children_map() -> dict:
    """ppid -> [pid] for every live, non-zombie process."""
    kids = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        kids[int(fields[1])].append(int(entry))
    return kids


def descendants(pid: int) -> list:
    kids, out, todo = children_map(), [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, ()):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Rig:
    """A service on a fixed port and data dir, and one local endpoint."""

    def __init__(self, tmp: Path, retries: int):
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = tmp / "service"
        self.data_dir.mkdir()
        self.home = tmp / "home"
        self.name = "faults"
        self.service = None
        self.service_log = open(tmp / "service.log", "ab")
        self.start_service()
        done = subprocess.run(
            [str(BINARY), "token", "create", "--user", "alice", "--data-dir", str(self.data_dir)],
            capture_output=True, text=True, timeout=STARTUP_TIMEOUT, stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr
        self.token = done.stdout.strip()
        ep = self.home / "endpoints" / self.name
        ep.mkdir(parents=True)
        (ep / "config.toml").write_text(
            "[engine]\nmax_workers_per_node = 2\nheartbeat_period = 0.5\n"
            f"heartbeat_threshold = 5.0\nmax_retries_on_system_failure = {retries}\n"
            '[provider]\ntype = "local"\ninit_blocks = 1\nmin_blocks = 1\nmax_blocks = 1\n'
        )
        self.ep_dir = ep
        self.retries = retries
        self.seen_pids: set = set()
        self.start_endpoint()
        self.endpoint_id = json.loads((ep / "endpoint.json").read_text())["endpoint_id"]

    # service
    def start_service(self):
        self.service = subprocess.Popen(
            [str(BINARY), "service", "--listen", f"127.0.0.1:{self.port}",
             "--data-dir", str(self.data_dir)],
            stdin=subprocess.DEVNULL, stdout=self.service_log, stderr=subprocess.STDOUT,
        )

        def up():
            assert self.service.poll() is None, f"service exited: {self.log_tail('service.log')}"
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return True
            except OSError:
                return False

        wait_until(up, STARTUP_TIMEOUT, "the service to listen")

    # endpoint
    def env(self):
        return {**os.environ, "HPFAAS_HOME": str(self.home), "HPFAAS_URL": self.url,
                "HPFAAS_TOKEN": self.token}

    def start_endpoint(self):
        done = subprocess.run(
            [str(BINARY), "endpoint", "start", self.name], env=self.env(),
            capture_output=True, text=True, timeout=STARTUP_TIMEOUT, stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, f"endpoint start failed: {done.stdout}{done.stderr}"
        wait_until(lambda: self.agent_pid() and alive(self.agent_pid()), STARTUP_TIMEOUT,
                   "the agent")

    def agent_state(self):
        try:
            return json.loads((self.ep_dir / "agent.json").read_text())["state"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def agent_pid(self):
        try:
            return int(json.loads((self.ep_dir / "agent.json").read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def managers(self):
        """Live `hpfaas manager` processes of this endpoint (they may outlive the agent)."""
        out = []
        for p in list(self.seen_pids) + descendants(self.agent_pid() or -1):
            args = cmdline(p)
            if alive(p) and len(args) > 1 and args[1] == "manager":
                out.append(p)
        self.seen_pids.update(out)
        return sorted(set(out))

    def workers(self):
        return [w for m in self.managers() for w in descendants(m)
                if "python" in " ".join(cmdline(w)[:2])]

    def log_tail(self, name, lines=30):
        try:
            return "".join((self.tmp / name).read_text(errors="replace").splitlines(True)[-lines:])
        except OSError:
            return "(no log)"

    def close(self):
        subprocess.run([str(BINARY), "endpoint", "stop", self.name], env=self.env(),
                       capture_output=True, timeout=STARTUP_TIMEOUT, stdin=subprocess.DEVNULL)
        for p in self.managers():
            for w in descendants(p):
                os.kill(w, signal.SIGKILL) if alive(w) else None
            os.kill(p, signal.SIGKILL)
        pid = self.agent_pid()
        if pid and alive(pid) and "endpoint" in cmdline(pid):
            os.kill(pid, signal.SIGKILL)
        self.service.kill()
        self.service.wait()
        self.service_log.close()


class CountingExecutor(Executor):
    """Counts every result the stream hands the SDK, before its de-duplication."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.deliveries = collections.Counter()

    def _on_result(self, doc):
        self.deliveries[doc["task_id"]] += 1
        super()._on_result(doc)


# -- the kills ---------------------------------------------------------------


def kill_worker(rig):
    workers = wait_until(rig.workers, 30, "a worker")
    print(f"\nkilling worker {workers[0]}: {' '.join(cmdline(workers[0]))[:150]}")
    os.kill(workers[0], signal.SIGKILL)
    # The manager replaces it: the kill really took a worker away.
    wait_until(lambda: workers[0] not in rig.workers() and len(rig.workers()) == len(workers),
               30, "the manager to replace the killed worker")


def kill_manager(rig):
    managers = wait_until(rig.managers, 30, "a manager")
    assert len(managers) == 1, managers
    print(f"\nkilling manager {managers[0]}: {' '.join(cmdline(managers[0]))[:150]}")
    os.kill(managers[0], signal.SIGKILL)
    wait_until(lambda: [m for m in rig.managers() if m != managers[0]], 60,
               "the endpoint to start a new manager")


def kill_agent(rig):
    pid = rig.agent_pid()
    os.kill(pid, signal.SIGKILL)
    # Gone from /proc, not just a zombie: `endpoint start` takes a zombie for a live agent.
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, "the agent to be reaped")
    rig.start_endpoint()


def kill_service(rig):
    rig.service.kill()
    rig.service.wait()
    # The outage lasts until the agent has noticed it (and backs off to
    # reconnect), so the restart exercises its reconnect path.
    wait_until(lambda: rig.agent_state() == "connecting", STARTUP_TIMEOUT,
               "the agent to notice the service is gone")
    rig.start_service()


KILLS = {"worker": kill_worker, "manager": kill_manager, "agent": kill_agent,
         "service": kill_service}
LOST = {"worker": "WorkerLost", "manager": "ManagerLost"}


@pytest.fixture
def rig(request):
    if not BINARY.exists():
        pytest.fail(f"hpfaas binary not found at {BINARY} (cargo build --bin hpfaas, or set HPFAAS_BIN)")
    with tempfile.TemporaryDirectory(prefix="hpfaas-faults-") as tmp:
        r = Rig(Path(tmp), retries=request.param)
        try:
            yield r
        finally:
            r.close()


# (component, retry budget): with budget 1 nothing may fail; with budget 0 a
# task in the lost process's hands fails, naming it (WorkerLost, ManagerLost).
CASES = [("worker", 1), ("manager", 1), ("agent", 1), ("service", 1), ("worker", 0),
         ("manager", 0)]


@pytest.mark.parametrize(
    "component,rig", CASES, indirect=["rig"], ids=[f"{c}-retries{b}" for c, b in CASES]
)
def test_kill_mid_run(rig, component):
    retries = int(rig.retries)
    runs = rig.tmp / "executions"
    client = Client(url=rig.url, token=rig.token)
    start = time.monotonic()
    ex = CountingExecutor(endpoint_id=rig.endpoint_id, client=client)
    futures = [ex.submit(noop, i, str(runs)) for i in range(TASKS)]

    done_count = lambda: sum(f.done() for f in futures)  # noqa: E731
    wait_until(lambda: done_count() >= TASKS // 3, RUN_TIMEOUT, "a third of the results")
    at_kill = done_count()
    KILLS[component](rig)

    done, not_done = concurrent.futures.wait(futures, timeout=RUN_TIMEOUT)
    elapsed = time.monotonic() - start
    assert not not_done, (
        f"{len(not_done)} of {TASKS} futures unresolved after {RUN_TIMEOUT} s\n"
        f"service log:\n{rig.log_tail('service.log')}"
    )
    ex.shutdown(wait=True)

    values, failures = collections.Counter(), collections.Counter()
    for f in futures:
        exc = f.exception()
        if exc is None:
            values[f.result()] += 1
        else:
            failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
    task_ids = [f.task_id for f in futures]
    docs = client.get_taskgroup_tasks(ex.task_group_id)
    statuses = collections.Counter(d.get("status") for d in docs)
    executions = collections.Counter(int(x) for x in runs.read_text().split())
    dup_deliveries = sum(c - 1 for c in ex.deliveries.values() if c > 1)
    named = LOST.get(component)
    named_failures = sum(n for msg, n in failures.items() if named and named in msg)
    lost = TASKS - sum(values.values()) - named_failures

    ROWS.append((f"{component} (retries {retries})", 1, TASKS, sum(values.values()) + sum(failures.values()),
                 named_failures, sum(c - 1 for c in values.values() if c > 1) + dup_deliveries,
                 lost, elapsed))
    print(
        f"\n[{component}, retries {retries}] done at kill {at_kill}/{TASKS}; {elapsed:.1f} s; "
        f"service statuses {dict(statuses)}; failures {dict(failures)}; "
        f"executions {sum(executions.values())} (re-run {sum(c - 1 for c in executions.values())}); "
        f"stream deliveries {sum(ex.deliveries.values())} (repeats dropped by SDK {dup_deliveries})"
    )

    assert len(set(task_ids)) == TASKS, "a task id was handed out twice"
    assert len(docs) == TASKS and {d["id"] for d in docs} == set(task_ids)
    assert set(values) <= set(range(TASKS))
    assert all(c == 1 for c in values.values()), "a value came back for two tasks"
    assert all(d["id"] in task_ids for d in docs)
    if retries:
        # Retry budget 1 and a single kill: nothing may fail.
        assert not failures, f"failures with retry budget 1: {dict(failures)}"
        assert sorted(values) == list(range(TASKS))
        assert set(executions) == set(range(TASKS)), "a task never ran"
    else:
        # Budget 0: only failures naming the lost component, and every other task succeeded.
        assert named_failures == sum(failures.values()), f"unexpected failures: {dict(failures)}"
        assert sum(values.values()) + named_failures == TASKS
        assert set(executions) >= set(values), "a result for a task that never ran"
    assert lost == 0
    assert all(statuses.get(s) is None for s in ("waiting-for-ep", "waiting-for-nodes",
                                                  "waiting-for-launch", "running")), statuses


def inc(x):
    return x + 1


def total(values):
    return sum(values)


@pytest.mark.parametrize("rig", [1], indirect=True, ids=["service-retries1"])
def test_kill_service_with_held_dependents(rig):
    """Chains of dependent tasks and a fan-in over their ends, with the
    service killed (SIGKILL) and restarted mid-run: held dependents and
    their links are in its database, so every chain still ends with the
    right value, and the fan-in sees every end."""
    chains, length = 40, 25
    client = Client(url=rig.url, token=rig.token)
    start = time.monotonic()
    ex = Executor(endpoint_id=rig.endpoint_id, client=client)
    ends = [ex.submit(inc, i * 1000) for i in range(chains)]
    futures = list(ends)
    for _ in range(length - 1):
        ends = [ex.submit(inc, f) for f in ends]
        futures.extend(ends)
    fan_in = ex.submit(total, ends)
    futures.append(fan_in)

    done_count = lambda: sum(f.done() for f in futures)  # noqa: E731
    wait_until(lambda: done_count() >= len(futures) // 3, RUN_TIMEOUT, "a third of the results")
    held = sum(
        1 for d in client.get_taskgroup_tasks(ex.task_group_id)
        if d.get("status") == "waiting-for-dependencies"
    )
    kill_service(rig)
    done, not_done = concurrent.futures.wait(futures, timeout=RUN_TIMEOUT)
    assert not not_done, (
        f"{len(not_done)} of {len(futures)} futures unresolved after {RUN_TIMEOUT} s\n"
        f"service log:\n{rig.log_tail('service.log')}"
    )
    ex.shutdown(wait=True)
    elapsed = time.monotonic() - start
    assert [f.result() for f in ends] == [i * 1000 + length for i in range(chains)]
    assert fan_in.result() == sum(i * 1000 + length for i in range(chains))
    print(f"\n[service, dependencies] {len(futures)} tasks, {held} held at the kill; {elapsed:.1f} s")
    ROWS.append(("service (dependencies)", 1, len(futures), len(done), 0, 0, 0, elapsed))


def teardown_module(module):
    if ROWS:
        print("\n| component | kills | tasks | results | of which failures naming it"
              " | duplicates | lost | run time |")
        print("|---|---|---|---|---|---|---|---|")
        for c, k, t, r, f, d, lost, s in ROWS:
            print(f"| {c} | {k} | {t} | {r} | {f} | {d} | {lost} | {s:.1f} s |")
