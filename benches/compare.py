"""hpfaas against Parsl's HighThroughputExecutor, side by side: runs every
workload through each system, each in its own subprocess, and prints one table.

    benches/run.sh [--smoke] [--only noop,latency] [--systems hpfaas,htex] [--out FILE]

This file owns the workloads' timing and correctness checks, the two systems'
set-up (`hpfaas up --workers 2`; HTEX with LocalProvider and 2 workers), the
engine benchmarks (`broker_bench` example), the table, and the results JSON.
The function bodies both systems run are in benches/workloads.py; what each
workload measures is in docs/benchmarks.md.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
sys.path.insert(0, str(BENCHES))

import workloads  # noqa: E402

MIB = 1 << 20
WORKERS = 2
SLEEP_S = 0.01
SYSTEMS = ("hpfaas", "htex")
WORKLOADS = ("startup", "noop", "latency", "sleep", "payload", "shell", "chain", "fanin",
             "dispatch", "scale")
ENGINE_WORKLOADS = ("dispatch", "scale")  # hpfaas only: the broker_bench example

# Task counts per workload; `shell_htex` is the bash_app count on HTEX.
SIZES = {
    "full": {"noop": 20_000, "noop_runs": 3, "latency": 500, "sleep": 2_000, "payload": 200,
             "shell": 20_000, "shell_htex": 20_000, "spawn_s": 3.0, "timeout": 900,
             "chain": 10_000, "fanin": 10_000},
    "smoke": {"noop": 500, "noop_runs": 1, "latency": 50, "sleep": 100, "payload": 20,
              "shell": 500, "shell_htex": 500, "spawn_s": 0.5, "timeout": 120,
              "chain": 100, "fanin": 100},
}
# broker_bench arguments: processes, managers per process, slots, tasks.
BROKER = {
    "full": {"dispatch": (2, 2, 64, 1_000_000), "scale": (4, 256, 128, 1_000_000)},
    "smoke": {"dispatch": (1, 4, 8, 20_000), "scale": (1, 4, 8, 20_000)},
}

# A child that loops spawning and reaping /bin/true: "<spawns> <seconds>".
SPAWN_LOOP = """
import os, sys, time
end = time.perf_counter() + float(sys.argv[1])
n, t0 = 0, time.perf_counter()
while time.perf_counter() < end:
    os.waitpid(os.posix_spawn("/bin/true", ["true"], os.environ), 0)
    n += 1
print(n, time.perf_counter() - t0)
"""


SLEEP_LOOP = """
import sys, time
n = int(sys.argv[1])
t0 = time.perf_counter()
for _ in range(n):
    time.sleep(0.01)
print(time.perf_counter() - t0)
"""


class CheckFailed(Exception):
    """A workload returned wrong results."""


class NothingToRun(Exception):
    """No workload needs the service."""


def check(condition, message):
    """Raises CheckFailed with `message` unless `condition` holds."""
    if not condition:
        raise CheckFailed(message)


def say(system, text):
    """One progress line on stdout, flushed, tagged with the system."""
    print(f"[{system}] {text}", flush=True)


# -- the workloads, the same for both systems ---------------------------------


class Runner:
    """What a workload needs from a system: submit calls, map a function, run a shell task."""

    def __init__(self, name, submit, submit_shell, shell_returncode, timeout, map_all=None):
        self.name = name
        self.submit = submit  # (fn, *args) -> concurrent.futures.Future
        self.submit_shell = submit_shell  # () -> Future of the `true` command
        self.shell_returncode = shell_returncode  # the shell future's result -> exit status
        self.timeout = timeout
        self.map_all = map_all  # (fn, items) -> results, when the system has its own map

    def map(self, fn, items):
        """Submits `fn(item)` for every item at once, then waits for all results in order."""
        if self.map_all is not None:
            return self.map_all(fn, items)
        futures = [self.submit(fn, item) for item in items]
        return [f.result(timeout=self.timeout) for f in futures]

    def call(self, fn, *args):
        """One submit-and-wait round trip."""
        return self.submit(fn, *args).result(timeout=self.timeout)


def timed_map(runner, fn, n, what):
    """Seconds from the first submit to the last result of `fn` over range(n),
    after one warm-up call; every result must equal its input."""
    runner.call(fn, -1)
    t0 = time.perf_counter()
    results = runner.map(fn, range(n))
    seconds = time.perf_counter() - t0
    check(results == list(range(n)), f"{what}: a result differs from its input")
    return seconds


def run_noop(runner, sizes, _):
    """`noop`: N identity calls submitted at once, first submit to last result;
    repeated, and the median run reported (this machine's noise is ±10 %)."""
    n = sizes["noop"]
    runs = [round(n / timed_map(runner, workloads.ident, n, "noop"), 1)
            for _ in range(sizes["noop_runs"])]
    return {"tasks": n, "runs_tasks_per_s": runs, "tasks_per_s": statistics.median(runs),
            "seconds": n / statistics.median(runs)}


def run_latency(runner, sizes, _):
    """`latency`: sequential submit-and-wait round trips of a no-op: p50 and p99."""
    n = sizes["latency"]
    runner.call(workloads.ident, -1)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        result = runner.call(workloads.ident, i)
        times.append(time.perf_counter() - t0)
        check(result == i, f"latency: call {i} returned {result!r}")
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return {"calls": n, "p50_ms": statistics.median(times) * 1e3, "p99_ms": cuts[98] * 1e3,
            "max_ms": max(times) * 1e3}


def run_sleep(runner, sizes, ceilings):
    """`sleep`: N 10 ms sleeps on 2 workers; overhead over the ideal N*10ms/2.

    hpfaas also measures the floor: the same sleeps in 2 local loops, which
    overshoot the ideal by the machine's timer slack alone.
    """
    n = sizes["sleep"]
    seconds = timed_map(runner, workloads.sleep_10ms, n, "sleep")
    ideal = n * SLEEP_S / WORKERS
    out = {"tasks": n, "seconds": seconds, "ideal_s": ideal,
           "overhead_pct": (seconds / ideal - 1) * 100}
    if ceilings:
        out["floor_pct"] = (measure_sleep_floor(n // WORKERS) / ideal - 1) * 100
    return out


def local_loops(what, program, arg, timeout):
    """The outputs of 2 local processes running `program arg` at once (no framework)."""
    procs = [subprocess.Popen([sys.executable, "-c", program, str(arg)],
                              stdout=subprocess.PIPE, text=True) for _ in range(WORKERS)]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        check(proc.returncode == 0, f"{what}: the local loop failed")
        outputs.append(out)
    return outputs


def measure_sleep_floor(sleeps):
    """Seconds 2 local processes take for `sleeps` 10 ms sleeps each (the slower one)."""
    outputs = local_loops("sleep floor", SLEEP_LOOP, sleeps, sleeps * SLEEP_S + 60)
    return max(float(out) for out in outputs)


def run_payload(runner, sizes, _):
    """`payload`: N calls each sending 1 MiB of bytes and returning its length."""
    n = sizes["payload"]
    data = os.urandom(MIB)
    check(runner.call(workloads.length, data) == MIB, "payload: warm-up length wrong")
    t0 = time.perf_counter()
    results = runner.map(workloads.length, [data] * n)
    seconds = time.perf_counter() - t0
    check(all(r == MIB for r in results), "payload: a returned length is not 1 MiB")
    return {"tasks": n, "seconds": seconds, "mib_per_s": n / seconds}


def run_shell(runner, sizes, ceilings):
    """`shell`: N `true` commands at once; hpfaas also measures the spawn ceiling."""
    n = sizes["shell_htex" if runner.name == "htex" else "shell"]
    check(runner.shell_returncode(runner.submit_shell().result(timeout=runner.timeout)) == 0,
          "shell: warm-up exit status not 0")
    t0 = time.perf_counter()
    futures = [runner.submit_shell() for _ in range(n)]
    codes = [runner.shell_returncode(f.result(timeout=runner.timeout)) for f in futures]
    seconds = time.perf_counter() - t0
    bad = sum(code != 0 for code in codes)
    check(bad == 0, f"shell: {bad} of {n} commands exited non-zero")
    out = {"tasks": n, "seconds": seconds, "tasks_per_s": n / seconds}
    if ceilings:
        ceiling = measure_spawn_ceiling(sizes["spawn_s"])
        out.update(spawn_ceiling_per_s=ceiling, pct_of_ceiling=100 * out["tasks_per_s"] / ceiling)
    return out


def measure_spawn_ceiling(seconds):
    """Spawns/s of 2 processes each spawning and reaping /bin/true in a tight loop."""
    outputs = local_loops("spawn ceiling", SPAWN_LOOP, seconds, seconds + 60)
    return sum(int(spawns) / float(elapsed) for spawns, elapsed in map(str.split, outputs))


def run_chain(runner, sizes, _):
    """`chain`: N tasks each taking the one before's future as its argument,
    all submitted at once (none waits for a result on the client); first
    submit to the last result. Each link is one dependent dispatch."""
    n = sizes["chain"]
    runner.call(workloads.inc, -1)
    t0 = time.perf_counter()
    future = runner.submit(workloads.inc, 0)
    for _ in range(n - 1):
        future = runner.submit(workloads.inc, future)
    result = future.result(timeout=runner.timeout)
    seconds = time.perf_counter() - t0
    check(result == n, f"chain: the last link returned {result!r}, not {n}")
    return {"tasks": n, "seconds": seconds, "tasks_per_s": n / seconds}


def run_fanin(runner, sizes, _):
    """`fanin`: N identity calls and one task taking all N futures as its
    arguments; first submit to the fan-in's result."""
    n = sizes["fanin"]
    runner.call(workloads.ident, -1)
    t0 = time.perf_counter()
    parents = [runner.submit(workloads.ident, i) for i in range(n)]
    result = runner.submit(workloads.count_args, *parents).result(timeout=runner.timeout)
    seconds = time.perf_counter() - t0
    check(result == n, f"fanin: the last task saw {result!r} results, not {n}")
    return {"tasks": n + 1, "seconds": seconds, "tasks_per_s": (n + 1) / seconds}


TIMED = {"noop": run_noop, "latency": run_latency, "sleep": run_sleep,
         "payload": run_payload, "shell": run_shell, "chain": run_chain, "fanin": run_fanin}


def run_timed(runner, selected, sizes, ceilings, results):
    """Runs the selected timed workloads in order, recording each figure or error."""
    for name, fn in TIMED.items():
        if name not in selected:
            continue
        say(runner.name, f"{name} ...")
        results[name] = attempt(lambda: fn(runner, sizes, ceilings))
        say(runner.name, f"{name}: {summary(results[name])}")


def attempt(fn):
    """`fn()`'s figures with ok=True, or ok=False and the error."""
    try:
        return {"ok": True, **fn()}
    except Exception as exc:  # recorded and reported; the other workloads still run
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def summary(figures):
    """A short text of a workload's figures for the progress lines."""
    if not figures.get("ok"):
        return figures.get("status") or f"FAILED: {figures.get('error')}"
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in figures.items() if k not in ("ok", "binary", "command"))


# -- hpfaas -------------------------------------------------------------------


def start_up(binary, home, timeout, extra=()):
    """Launches `hpfaas up --workers 2` (and `extra` flags) with HPFAAS_HOME=home
    and waits for up.json."""
    log = open(home / "up.log", "wb")
    proc = subprocess.Popen([binary, "up", "--workers", str(WORKERS), *extra],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            json.loads((home / "up.json").read_text())
            return proc
        except (OSError, ValueError):
            pass  # not written yet (or half-written)
        if proc.poll() is not None:
            raise RuntimeError(f"hpfaas up exited with {proc.returncode}: {tail(home / 'up.log')}")
        time.sleep(0.002)
    proc.kill()
    raise RuntimeError(f"hpfaas up wrote no up.json within {timeout} s: {tail(home / 'up.log')}")


def tail(path, lines=20):
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_up(proc):
    """Stops `hpfaas up` with SIGINT, as Ctrl-C would; SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_hpfaas(args, selected, sizes, mode):
    """Every selected workload through `hpfaas up`, then the engine benchmarks."""
    sys.path.insert(0, str(REPO / "python"))
    home = Path(tempfile.mkdtemp(prefix="hpfaas-bench-"))
    os.environ["HPFAAS_HOME"] = str(home)
    os.environ.pop("HPFAAS_URL", None)
    os.environ.pop("HPFAAS_TOKEN", None)
    from hpfaas import Client, Executor, ShellFunction  # imported before the clock starts

    results, proc, ex = {}, None, None
    try:
        if not set(selected) - set(ENGINE_WORKLOADS):
            raise NothingToRun
        t0 = time.perf_counter()
        proc = start_up(args.hpfaas_bin, home, sizes["timeout"])
        ex = Executor(client=Client())
        check(ex.submit(workloads.ident, 1).result(timeout=sizes["timeout"]) == 1,
              "startup: the first result is wrong")
        if "startup" in selected:
            results["startup"] = {"ok": True, "seconds": time.perf_counter() - t0}
            say("hpfaas", f"startup: {summary(results['startup'])}")
        true = ShellFunction("true")
        runner = Runner("hpfaas", ex.submit, lambda: ex.submit(true),
                        lambda result: result.returncode, sizes["timeout"],
                        lambda fn, items: list(ex.map(fn, items, timeout=sizes["timeout"])))
        run_timed(runner, selected, sizes, True, results)
    except NothingToRun:
        pass
    except Exception as exc:  # the service did not come up: every workload failed
        error = f"{type(exc).__name__}: {exc}"
        say("hpfaas", f"FAILED: {error}")
        for name in selected:
            if name not in ENGINE_WORKLOADS:
                results.setdefault(name, {"ok": False, "error": error})
    finally:
        if ex is not None:
            ex.shutdown(wait=False, cancel_futures=True)
        if proc is not None:
            stop_up(proc)
        if any(r.get("ok") is False for r in results.values()):
            print(f"[hpfaas] hpfaas up log (last lines):\n{tail(home / 'up.log')}", flush=True)
        shutil.rmtree(home, ignore_errors=True)
    for name in ENGINE_WORKLOADS:
        if name in selected:
            say("hpfaas", f"{name} (broker_bench) ...")
            results[name] = run_broker_bench(args, *BROKER[mode][name], sizes["timeout"] * 2)
            say("hpfaas", f"{name}: {summary(results[name])}")
    return results


def find_broker_bench(hpfaas_bin):
    """The broker_bench example built with the hpfaas binary (`<its dir>/examples/`), or None.

    Only that one: an example from another profile may not match the binary's flags.
    """
    path = Path(hpfaas_bin).resolve().parent / "examples" / "broker_bench"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def first_error(stderr):
    """What of a Rust program's stderr to print: up to its backtrace, at most 1,500 chars."""
    return stderr.split("stack backtrace:")[0].strip()[-1500:]


def run_broker_bench(args, processes, managers, slots, tasks, timeout):
    """The engine ceiling: broker_bench's one JSON line, or status "not built"."""
    binary = find_broker_bench(args.hpfaas_bin)
    if binary is None:
        return {"ok": None, "status": "not built"}
    cmd = [str(binary), "--hpfaas", str(Path(args.hpfaas_bin).resolve()),
           "--processes", str(processes), "--managers-per-process", str(managers),
           "--slots", str(slots), "--tasks", str(tasks)]

    def run():
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        check(done.returncode == 0,
              f"broker_bench exited with {done.returncode}: {first_error(done.stderr)}")
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        check(lines, f"broker_bench printed no JSON line: {done.stdout[-2000:]}")
        figures = json.loads(lines[-1])
        check(figures.get("tasks") == tasks,
              f"broker_bench ran {figures.get('tasks')} of {tasks} tasks")
        return {**figures, "binary": str(binary), "command": shlex.join(cmd)}

    return attempt(run)


# -- Parsl HTEX ---------------------------------------------------------------


def htex_config(run_dir):
    """HTEX, LocalProvider, one block of 2 workers, all on loopback, no scaling."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    htex = HighThroughputExecutor(
        label="htex",
        max_workers_per_node=WORKERS,
        address="127.0.0.1",
        loopback_address="127.0.0.1",
        encrypted=False,  # hpfaas on loopback is plain HTTP too
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
    )
    # The initial block is launched at the first strategy poll: every 0.1 s
    # rather than the default 5 s, or startup would be 5 s longer.
    return Config(executors=[htex], strategy="none", strategy_period=0.1, usage_tracking=0,
                  run_dir=str(run_dir))


def run_htex(args, selected, sizes, mode):
    """Every selected workload (but the engine ones) through Parsl's HTEX."""
    # The interchange and the worker pool are scripts next to this interpreter;
    # the workers import benches/workloads.py by name.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(BENCHES), os.environ.get("PYTHONPATH")]))
    import parsl

    run_dir = Path(tempfile.mkdtemp(prefix="hpfaas-bench-parsl-"))
    results, loaded = {}, False
    try:
        apps = {}

        def submit(fn, *fn_args):
            """Calls `fn` as a python_app on the htex executor."""
            app = apps.get(fn)
            if app is None:
                app = apps[fn] = parsl.python_app(fn, executors=["htex"])
            return app(*fn_args)

        bash_true = parsl.bash_app(workloads.true_cmd, executors=["htex"])
        t0 = time.perf_counter()
        parsl.load(htex_config(run_dir))
        loaded = True
        check(submit(workloads.ident, 1).result(timeout=sizes["timeout"]) == 1,
              "startup: the first result is wrong")
        if "startup" in selected:
            results["startup"] = {"ok": True, "seconds": time.perf_counter() - t0}
            say("htex", f"startup: {summary(results['startup'])}")
        runner = Runner("htex", submit, bash_true, lambda code: code, sizes["timeout"])
        run_timed(runner, selected, sizes, False, results)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        say("htex", f"FAILED: {error} (Parsl logs in {run_dir})")
        for name in selected:
            if name not in ENGINE_WORKLOADS:
                results.setdefault(name, {"ok": False, "error": error})
    finally:
        if loaded:
            parsl.dfk().cleanup()
        parsl.clear()
    if all(r.get("ok") for r in results.values()):
        shutil.rmtree(run_dir, ignore_errors=True)
    return results


def child_main(args):
    """`--system S --json OUT`: runs one system's workloads and writes their figures."""
    mode = "smoke" if args.smoke else "full"
    sizes = dict(SIZES[mode])
    if args.htex_shell_tasks:
        sizes["shell_htex"] = args.htex_shell_tasks
    selected = selected_workloads(args)
    run = run_hpfaas if args.system == "hpfaas" else run_htex
    results = run(args, selected, sizes, mode)
    out = {"system": args.system, "sizes": sizes, "workloads": results}
    if args.system == "htex":
        out["parsl_version"] = importlib.metadata.version("parsl")
    Path(args.json).write_text(json.dumps(out, indent=2))


# -- the parent: machine, children, table -------------------------------------


def selected_workloads(args):
    """The workloads named by --only (all when absent), in the canonical order."""
    if not args.only:
        return list(WORKLOADS)
    names = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = names - set(WORKLOADS)
    if unknown:
        sys.exit(f"unknown workload(s): {', '.join(sorted(unknown))};"
                 f" known: {', '.join(WORKLOADS)}")
    return [w for w in WORKLOADS if w in names]


def machine():
    """This machine, this run: cores, CPU, RAM, load, date, versions, command line."""
    cpu = "unknown"
    mem_gib = None
    try:
        cpu = next(line.split(":", 1)[1].strip()
                   for line in open("/proc/cpuinfo") if line.startswith("model name"))
        kib = next(int(line.split()[1])
                   for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        mem_gib = round(kib / 2**20, 1)
    except (OSError, StopIteration):
        pass
    try:
        parsl_version = importlib.metadata.version("parsl")
    except importlib.metadata.PackageNotFoundError:
        parsl_version = "not installed"
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    return {
        "nproc": len(os.sched_getaffinity(0)), "cpu": cpu, "ram_gib": mem_gib,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([os.environ.get("HPFAAS_BENCH_COMMAND", "") or sys.argv[0]]
                              + sys.argv[1:]),
        "python": platform.python_version(), "parsl": parsl_version,
        "os": platform.platform(), "commit": commit,
    }


def run_child(args, system, json_path):
    """Runs one system in its own interpreter; its results, or a failure for each workload."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--system", system,
           "--json", str(json_path), "--hpfaas-bin", args.hpfaas_bin]
    for flag in ("only", "htex_shell_tasks"):
        if getattr(args, flag):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.smoke:
        cmd.append("--smoke")
    limit = 900 if args.smoke else 7200
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    try:
        return json.loads(Path(json_path).read_text())
    except (OSError, ValueError):
        error = f"the {system} run exited with {proc.returncode} and wrote no results"
        return {"system": system, "workloads": {
            w: {"ok": False, "error": error} for w in selected_workloads(args)
            if system == "hpfaas" or w not in ENGINE_WORKLOADS}}


def cell(figures, key, fmt):
    """A table cell: the figure, 'not built', 'FAILED', or '—' when not run."""
    if figures is None:
        return "—", None
    if figures.get("ok") is None:
        return figures.get("status", "—"), None
    if not figures.get("ok"):
        return "FAILED", None
    value = figures.get(key)
    return (fmt.format(value), value) if value is not None else ("—", None)


def rows(results, mode):
    """The table's rows: workload, figure, hpfaas, HTEX, ratio (>1: hpfaas better), target, met."""
    engine = {name: "P={} M={} S={} N={:,}".format(*sizes) for name, sizes in BROKER[mode].items()}
    managers = {name: sizes[0] * sizes[1] for name, sizes in BROKER[mode].items()}
    hp = results.get("hpfaas", {}).get("workloads", {})
    ht = results.get("htex", {}).get("workloads", {})
    htex_shell = results.get("htex", {}).get("sizes", {}).get("shell_htex")
    hp_shell = results.get("hpfaas", {}).get("sizes", {}).get("shell")
    shell_label = "tasks/s" + (f" (HTEX: {htex_shell:,} calls)"
                               if htex_shell and hp_shell and htex_shell != hp_shell else "")
    # workload, figure label, key, format, higher is better?, target text, target test(hp, ratio)
    spec = [
        ("startup", "s, launch to first result", "seconds", "{:.2f}", False, "≤ 1 s",
         lambda v, r: v <= 1),
        ("noop", "tasks/s", "tasks_per_s", "{:,.0f}", True, "≥ 10× HTEX",
         lambda v, r: None if r is None else r >= 10),
        ("latency", "p50 ms", "p50_ms", "{:.2f}", False, "≤ 1 ms", lambda v, r: v <= 1),
        ("latency", "p99 ms", "p99_ms", "{:.2f}", False, "≤ 5 ms", lambda v, r: v <= 5),
        ("sleep", "overhead %", "overhead_pct", "{:.2f}", False, "≤ 2 %", lambda v, r: v <= 2),
        ("sleep", "floor % (same sleeps, 2 local loops)", "floor_pct", "{:.2f}", False, "",
         None),
        ("payload", "MiB/s (1 MiB args)", "mib_per_s", "{:,.0f}", True, "≥ 300 MiB/s",
         lambda v, r: v >= 300),
        ("shell", shell_label, "tasks_per_s", "{:,.0f}", True, "", None),
        ("shell", "spawn ceiling/s (2 procs)", "spawn_ceiling_per_s", "{:,.0f}", True, "", None),
        ("shell", "% of spawn ceiling", "pct_of_ceiling", "{:.1f}", True, "≥ 80 %",
         lambda v, r: v >= 80),
        ("chain", "tasks/s (each the next's argument)", "tasks_per_s", "{:,.0f}", True, "",
         None),
        ("fanin", "tasks/s (one task on all results)", "tasks_per_s", "{:,.0f}", True, "",
         None),
        ("dispatch", f"tasks/s ({engine['dispatch']})", "tasks_per_s", "{:,.0f}", True,
         "≥ 200,000",
         lambda v, r: v >= 200_000),
        ("dispatch", "broker peak RSS MiB", "broker_peak_rss_mib", "{:,.0f}", False, "< 2 GiB",
         lambda v, r: v < 2048),
        ("scale", f"tasks/s ({engine['scale']})", "tasks_per_s", "{:,.0f}", True, "", None),
        ("scale", f"register s ({managers['scale']:,} managers)", "register_s", "{:.2f}",
         False, "", None),
        ("scale", "broker peak RSS MiB", "broker_peak_rss_mib", "{:,.0f}", False, "< 2 GiB",
         lambda v, r: v < 2048),
    ]
    out = []
    for workload, label, key, fmt, higher, target, test in spec:
        if workload not in hp and workload not in ht:
            continue
        if key in ("pct_of_ceiling", "spawn_ceiling_per_s", "floor_pct"):
            ht_fig = None  # measured on the hpfaas side only
        else:
            ht_fig = ht.get(workload)
        hp_text, hp_value = cell(hp.get(workload), key, fmt)
        ht_text, ht_value = cell(ht_fig, key, fmt)
        ratio = None
        if hp_value is not None and ht_value is not None and hp_value > 0 and ht_value > 0:
            ratio = hp_value / ht_value if higher else ht_value / hp_value
        met = "—"
        if test is not None and hp_value is not None:
            verdict = test(hp_value, ratio)
            met = "—" if verdict is None else ("yes" if verdict else "NO")
        out.append([workload, label, hp_text, ht_text,
                    f"{ratio:,.2f}×" if ratio is not None else "—", target or "—", met])
    return out


def table(body):
    """A Markdown table with padded columns."""
    head = ["workload", "figure", "hpfaas", "HTEX", "hpfaas/HTEX", "target", "met"]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in body])


def failures(results):
    """(system, workload, error) of every workload that failed."""
    return [(system, name, figures.get("error"))
            for system, result in results.items()
            for name, figures in result.get("workloads", {}).items()
            if figures.get("ok") is False]


def header(info, args, systems):
    """The lines above the table: machine, date, commit, command line, versions, mode."""
    mode = "smoke (tiny sizes, no Parsl: correctness only)" if args.smoke else "full"
    return "\n".join([
        f"machine: {info['nproc']} cores ({info['cpu']}), {info['ram_gib']} GiB RAM, "
        f"load {info['loadavg']} at start, {info['os']}",
        f"date: {info['date']}   commit: {info['commit']}",
        f"command: {info['command']}",
        f"python {info['python']}, parsl {info['parsl']}, hpfaas binary {args.hpfaas_bin}",
        f"mode: {mode}; systems: {', '.join(systems)}",
    ])


def parent_main(args):
    """Runs each system in its own subprocess, prints the table, writes the JSON."""
    systems = ["hpfaas"] if args.smoke else [
        s.strip() for s in args.systems.split(",") if s.strip()]
    bad = set(systems) - set(SYSTEMS)
    if bad:
        sys.exit(f"unknown system(s): {', '.join(bad)}; known: {', '.join(SYSTEMS)}")
    if not set(selected_workloads(args)) - set(ENGINE_WORKLOADS):
        systems = [s for s in systems if s == "hpfaas"]  # HTEX has no engine workloads
    info = machine()
    print(f"running {', '.join(systems)}; the table follows", flush=True)
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="hpfaas-bench-json-") as tmp:
        for system in systems:
            results[system] = run_child(args, system, Path(tmp) / f"{system}.json")
    elapsed = time.perf_counter() - started

    body = rows(results, "smoke" if args.smoke else "full")
    print()
    print(header(info, args, systems))
    print()
    print(table(body))
    print()
    print("hpfaas/HTEX > 1 means hpfaas is better (higher throughput or lower time). "
          "Targets are for hpfaas.")
    if args.smoke:
        print("smoke mode: the sizes are too small for the figures to mean anything.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "mode": "smoke" if args.smoke else "full",
                               "seconds": elapsed, "results": results,
                               "table": body}, indent=2))
    print(f"full results: {out}   (run took {elapsed:.0f} s)")
    failed = failures(results)
    for system, name, error in failed:
        print(f"FAILED: {system} {name}: {error}", file=sys.stderr)
    return 1 if failed else 0


def main():
    """Parses the command line: the parent by default, one system's child with --system."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, hpfaas only: checks correctness, not speed")
    parser.add_argument("--hpfaas-bin", default=str(REPO / "target/release/hpfaas"))
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--systems", default="hpfaas,htex", help="comma-separated: hpfaas,htex")
    parser.add_argument("--htex-shell-tasks", type=int,
                        help="bash_app calls on HTEX for the shell workload (default: as hpfaas)")
    parser.add_argument("--out", default=str(BENCHES / "results" / "latest.json"),
                        help="where to write the full results as JSON")
    parser.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not Path(args.hpfaas_bin).is_file():
        sys.exit(f"no hpfaas binary at {args.hpfaas_bin}: cargo build --release --bin hpfaas")
    if args.system:
        child_main(args)
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
