"""The soak benchmark: a steady stream of no-op tasks through the SDK into
`hpfaas up --workers 2` for M minutes, to show what grows with the number of
tasks and what does not.

    benches/run.sh --only soak [--minutes M] [--hpfaas-bin PATH] [--out FILE] [-- UP_FLAGS...]

One child process is the SDK: one `Executor`, `map` over batches of calls
again and again, its running count of finished tasks in a file. This process
samples every few seconds the RSS of every process (the SDK; `hpfaas up`; its
managers; their workers), the size of every file under the test's
HPFAAS_HOME (the database, its WAL, the audit log and its rotated files,
payload files, the endpoint's files), and the count. It prints one row per
minute (tasks/s in that minute) and, for each series, its slope against the
tasks done (bytes per task) over the whole run and over its second half:
memory should be flat (within noise) and disk should stop growing once the
fetched-results retention (`hpfaas up --fetched-retention`, 2m) is reached.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
sys.path.insert(0, str(BENCHES))

from compare import machine, start_up, stop_up  # noqa: E402

SAMPLE_S = 5.0
BATCH = 5_000
SMALL_FILE = 256 << 10

# The SDK child: one executor, map after map, the count written after each.
SDK_LOOP = """
import os, sys
sys.path.insert(0, sys.argv[2])
from hpfaas import Executor
from workloads import ident
count_file, done = sys.argv[1], 0
with Executor() as ex:
    while True:
        assert sum(ex.map(ident, range({batch}))) == {total}
        done += {batch}
        with open(count_file + ".tmp", "w") as f:
            f.write(str(done))
        os.replace(count_file + ".tmp", count_file)
""".replace("{batch}", str(BATCH)).replace("{total}", str(BATCH * (BATCH - 1) // 2))


def rss_bytes(pid):
    """Resident set size of `pid` in bytes; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def descendants(root):
    """Every live process below `root`, with its command line."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            found.append((child, cmdline.decode(errors="replace")))
            todo.append(child)
    return found


def memory(up_pid, sdk_pid):
    """RSS by role: the SDK, `hpfaas up`, managers, workers (bytes, summed per role)."""
    roles = {"sdk": rss_bytes(sdk_pid), "hpfaas up": rss_bytes(up_pid),
             "managers": 0, "workers": 0}
    for pid, cmdline in descendants(up_pid):
        role = "managers" if " manager " in f" {cmdline} " else "workers"
        roles[role] += rss_bytes(pid)
    return roles


def disk(home):
    """Size of every file under `home`, by path relative to it; rotated
    audit logs and payload files summed under one name each."""
    sizes = {}
    for path in home.rglob("*"):
        try:
            if not path.is_file() or path.is_symlink():
                continue
            size = path.stat().st_size
        except OSError:
            continue  # removed meanwhile
        name = str(path.relative_to(home))
        if name.startswith("up/payloads/"):
            name = "up/payloads/*"
        elif name.startswith("up/endpoint/runtime/"):
            name = "up/endpoint/runtime/*"
        elif ".log." in name and name.rsplit(".", 1)[1].isdigit():
            name = name.rsplit(".", 1)[0] + ".N"
        sizes[name] = sizes.get(name, 0) + size
    return sizes


def slope(points):
    """Least-squares slope of (x, y) points; None with fewer than two x values."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def read_count(path):
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


def run(args):
    """The soak itself: samples until `--minutes` have passed; returns the
    samples and what the service's purges did."""
    home = Path(tempfile.mkdtemp(prefix="hpfaas-soak-"))
    os.environ["HPFAAS_HOME"] = str(home)
    os.environ.pop("HPFAAS_URL", None)
    os.environ.pop("HPFAAS_TOKEN", None)
    up = sdk = None
    samples = []
    purged = None
    try:
        up = start_up(args.hpfaas_bin, home, 60, args.up_flags)
        count_file = home / "sdk-count"
        env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
        sdk = subprocess.Popen([sys.executable, "-c", SDK_LOOP, str(count_file), str(BENCHES)],
                               env=env)
        started = time.monotonic()
        end = started + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(SAMPLE_S)
            if sdk.poll() is not None:
                raise RuntimeError(f"the SDK process exited with {sdk.returncode}")
            if up.poll() is not None:
                raise RuntimeError(f"hpfaas up exited with {up.returncode}")
            samples.append({"t": time.monotonic() - started, "tasks": read_count(count_file),
                            "rss": memory(up.pid, sdk.pid), "disk": disk(home)})
            last = samples[-1]
            print(f"  {last['t']:6.0f} s  {last['tasks']:>10,} tasks", flush=True)
    finally:
        if sdk is not None and sdk.poll() is None:
            sdk.send_signal(signal.SIGKILL)
            sdk.wait()
        if up is not None:
            stop_up(up)
            purged = purges(home / "up.log")
        shutil.rmtree(home, ignore_errors=True)
    return samples, purged


def minutes(samples):
    """One row per whole minute: the last sample in it, and tasks/s between
    it and the previous row's sample (their real times, not 60 s). The run's
    tail after its last whole minute gets no row: a few seconds' rate, with
    the count moving by whole maps, would be noise printed as a minute."""
    rows, before = [], {"t": 0.0, "tasks": 0}
    for minute in range(1, int(samples[-1]["t"] // 60) + 1):
        inside = [s for s in samples if s["t"] <= minute * 60]
        if not inside or inside[-1] is before:
            continue
        last = inside[-1]
        rate = (last["tasks"] - before["tasks"]) / max(last["t"] - before["t"], 1e-9)
        rows.append((minute, last, rate))
        before = last
    return rows


def throughput_line(rows):
    """Minute 1 against the last minute, the spread, and the least-squares
    trend of tasks/s over the minutes after the first (which holds the
    start-up)."""
    if not rows:
        return "tasks/s: the run was shorter than a minute"
    first, last = rows[0][2], rows[-1][2]
    rates = [rate for _, _, rate in rows]
    text = (f"tasks/s: minute 1 {first:,.0f}, minute {rows[-1][0]} {last:,.0f}"
            f" ({100 * last / max(first, 1e-9):.0f} % of minute 1);"
            f" lowest {min(rates):,.0f} (minute {rows[rates.index(min(rates))][0]}),"
            f" highest {max(rates):,.0f}")
    trend = slope([(m, rate) for m, _, rate in rows[1:]])
    if trend is not None:
        text += f"; trend over minutes 2-{rows[-1][0]}: {trend:+,.0f} tasks/s per minute"
    return text


def purges(home_log):
    """What the service's purge did, from its log lines: rows deleted and
    the seconds its writer jobs took (the `purged ...` lines of hpfaas up)."""
    rows = seconds = lines = 0
    timed = False
    try:
        text = home_log.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if "purged expired results and old records" not in line:
            continue
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        try:
            rows += int(fields.get("tasks", 0))
            seconds += float(fields.get("writer_seconds", 0))
        except ValueError:
            continue
        timed = timed or "writer_seconds" in fields
        lines += 1
    # An hpfaas older than the writer_seconds field: the rows only.
    return {"log_lines": lines, "tasks": rows, "writer_seconds": seconds if timed else None}


def mib(n):
    return f"{n / 2**20:,.1f}"


def report(samples, purged, info, args):
    """The per-minute table and the slopes, as markdown; and the same as a dict."""
    rss_keys = list(samples[-1]["rss"])
    disk_keys = sorted({k for s in samples for k in s["disk"]})
    up_command = f"hpfaas up --workers 2 {' '.join(args.up_flags)}".rstrip()
    lines = [f"soak: `{info['command']}`: {args.minutes:g} min of"
             f" `Executor.map(ident, range({BATCH}))` in a loop against `{up_command}`",
             f"machine: {info['nproc']} cores, {info['cpu']}, {info['ram_gib']} GiB;"
             f" load average before {info['loadavg']}, after {info['loadavg_after']};"
             f" {info['date']}; commit {info['commit']}", ""]
    head = ["min", "tasks", "tasks/s"] + [f"{k} RSS MiB" for k in rss_keys] + \
        ["data dir MiB"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for minute, s, rate in minutes(samples):
        cells = [str(minute), f"{s['tasks']:,}", f"{rate:,.0f}"] + \
            [mib(s["rss"][k]) for k in rss_keys] + [mib(sum(s["disk"].values()))]
        lines.append("| " + " | ".join(cells) + " |")
    series = {f"RSS {k}": [(s["tasks"], s["rss"][k]) for s in samples] for k in rss_keys}
    # Files that stay small are summed: the endpoint's records, the runtime.
    big = [k for k in disk_keys if max(s["disk"].get(k, 0) for s in samples) >= SMALL_FILE]
    series.update({f"file {k}": [(s["tasks"], s["disk"].get(k, 0)) for s in samples]
                   for k in big})
    series[f"other files (each < {SMALL_FILE >> 10} KiB)"] = [
        (s["tasks"], sum(v for k, v in s["disk"].items() if k not in big)) for s in samples]
    series["files, all"] = [(s["tasks"], sum(s["disk"].values())) for s in samples]
    rows = minutes(samples)
    lines += ["", throughput_line(rows)]
    if purged is not None and purged["log_lines"] == 0:
        lines.append("purges: none logged (nothing was due yet)")
    elif purged is not None and purged["writer_seconds"] is None:
        lines.append(f"purges: {purged['tasks']:,} tasks deleted, in {purged['log_lines']}"
                     " logged purges (this hpfaas does not log their writer time)")
    elif purged is not None:
        total_s = samples[-1]["t"]
        lines.append(
            f"purges: {purged['tasks']:,} tasks deleted, {purged['writer_seconds']:.1f} s of"
            f" writer time ({100 * purged['writer_seconds'] / max(total_s, 1e-9):.1f} % of the"
            f" run; {purged['tasks'] / max(purged['writer_seconds'], 1e-9):,.0f} rows per writer"
            f" second), in {purged['log_lines']} logged sweeps")
    half = len(samples) // 2
    slopes = {}
    lines += ["", "| series | bytes/task, whole run | bytes/task, second half | at the end |",
              "|---|---|---|---|"]
    for name, points in series.items():
        whole, second = slope(points), slope(points[half:])
        slopes[name] = {"whole": whole, "second_half": second, "end": points[-1][1]}
        fmt = lambda v: "n/a" if v is None else f"{v:,.2f}"  # noqa: E731
        lines.append(f"| {name} | {fmt(whole)} | {fmt(second)} | {mib(points[-1][1])} MiB |")
    return "\n".join(lines), {"slopes": slopes, "purges": purged,
                               "tasks_per_s": [[m, rate] for m, _, rate in rows]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="soak", help=argparse.SUPPRESS)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--hpfaas-bin", default=str(REPO / "target/release/hpfaas"))
    parser.add_argument("--out", default=str(BENCHES / "results" / "soak.json"))
    parser.add_argument("up_flags", nargs="*", help="more flags for `hpfaas up` (after --)")
    args = parser.parse_args()
    if args.only != "soak":
        sys.exit("soak.py runs only the soak (benches/run.sh --only soak)")
    if not Path(args.hpfaas_bin).is_file():
        sys.exit(f"no hpfaas binary at {args.hpfaas_bin}: cargo build --release --bin hpfaas")
    info = machine()
    print(f"soak for {args.minutes} min; a sample every {SAMPLE_S:.0f} s", flush=True)
    samples, purged = run(args)
    if len(samples) < 2:
        sys.exit("too short a run for a table")
    info["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text, figures = report(samples, purged, info, args)
    print()
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "python": platform.python_version(),
                               "finished": datetime.datetime.now(datetime.timezone.utc)
                               .isoformat(timespec="seconds"),
                               "args": vars(args), "samples": samples, **figures,
                               "table": text}, indent=1))
    print(f"\nfull samples: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
