"""What the emulated PBS Pro and LSF commands share: their state directory,
the local Slurm they hand jobs to, and small parsing helpers.

Each emulated job is a real Slurm job. Its Slurm id is its PBS or LSF id
(PBS adds ".<server>"). The submit commands keep one small JSON file per job
under the state directory (what Slurm does not know: the PBS or LSF name of
the queue, the requested resources as written, paths); the status commands
join those files with what Slurm reports. A Slurm job without such a file was
not submitted through the emulator, and the emulated tools do not know it, as
a real PBS or LSF would not.

Only the Python standard library is used; Slurm is reached through its
command-line tools (squeue --json, sacct -c, sbatch, scancel), so SLURM_CONF
and PATH select the Slurm exactly as they do for sbatch.
"""

import base64
import json
import os
import pwd
import re
import socket
import subprocess
import sys
import time

# Slurm states of a job that is over. Everything else is waiting or running.
FINISHED_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "OUT_OF_MEMORY",
    "SPECIAL_EXIT",
    "REVOKED",
}
HELD_REASONS = {"JobHeldUser", "JobHeldAdmin"}

# Metadata of jobs older than this is deleted at the next submission. Real
# PBS keeps history for two weeks by default (job_history_duration); tests
# never look that far back.
METADATA_MAX_AGE = 7 * 24 * 3600
# A metadata file names a Slurm job only if Slurm's submit time is this close
# to the time the file records: guards against a Slurm whose job ids started
# again from 1 (its state wiped) meeting files of old jobs with the same ids.
SUBMIT_TIME_SLACK = 120

LIB_DIR = os.path.dirname(os.path.abspath(__file__))


class SlurmUnavailable(Exception):
    """Slurm's commands failed (controller down, no config)."""


def state_dir(system):
    """The emulator's state directory for `system` ("pbs" or "lsf")."""
    # Not the shared /tmp by default: another user could make the directory
    # first and read or plant job files. A directory of the user's own, as a
    # real scheduler's spool is the scheduler's own.
    root = os.environ.get("HPFAAS_EMULATOR_STATE") or os.path.join(
        os.path.expanduser("~"), ".cache", "hpfaas-emulators"
    )
    path = os.path.join(root, system)
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(root)
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise SystemExit(
            "emulator state %s is not a directory only you can write (owner uid %d, mode %o); "
            "set HPFAAS_EMULATOR_STATE to one" % (root, st.st_uid, st.st_mode & 0o777)
        )
    return path


def atomic_write(path, text, mode=0o600):
    """Writes a whole file or nothing: concurrent readers never see half of it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def save_job_meta(system, job_id, meta):
    atomic_write(os.path.join(state_dir(system), "jobs", "%d.json" % job_id), json.dumps(meta, indent=1))


def load_job_meta(system, job_id):
    try:
        with open(os.path.join(state_dir(system), "jobs", "%d.json" % job_id)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def delete_job_meta(system, job_id):
    try:
        os.unlink(os.path.join(state_dir(system), "jobs", "%d.json" % job_id))
    except FileNotFoundError:
        pass


def all_job_ids(system):
    """Ids of every job the emulator of `system` has metadata for."""
    try:
        names = os.listdir(os.path.join(state_dir(system), "jobs"))
    except FileNotFoundError:
        return []
    return sorted(int(n[:-5]) for n in names if re.fullmatch(r"\d+\.json", n))


def prune_state(system, live_ids):
    """Deletes metadata older than METADATA_MAX_AGE, and per-job runtime files
    (node files, temporary directories) whose job is no longer in Slurm's
    queue: a job killed with SIGKILL cannot remove its own."""
    jobs_dir = os.path.join(state_dir(system), "jobs")
    now = time.time()
    for job_id in all_job_ids(system):
        path = os.path.join(jobs_dir, "%d.json" % job_id)
        try:
            if now - os.stat(path).st_mtime > METADATA_MAX_AGE:
                os.unlink(path)
        except FileNotFoundError:
            pass
    # Output of LSF jobs submitted without -o (real LSF mails it).
    out_dir = os.path.join(state_dir(system), "output")
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        path = os.path.join(out_dir, name)
        try:
            if now - os.stat(path).st_mtime > METADATA_MAX_AGE:
                os.unlink(path)
        except FileNotFoundError:
            pass
    run_dir = os.path.join(state_dir(system), "run")
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return
    for name in names:
        if name.isdigit() and int(name) not in live_ids:
            remove_tree(os.path.join(run_dir, name))


def remove_tree(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def run_dir_for(system, job_id):
    """Per-job runtime directory (node file, TMPDIR, spooled script)."""
    return os.path.join(state_dir(system), "run", str(job_id))


# ---------------------------------------------------------------- Slurm


class SlurmJob:
    """One Slurm job as the emulators need it, from squeue or sacct -c."""

    def __init__(self, **kw):
        self.id = kw["id"]
        self.name = kw.get("name", "")
        self.state = kw.get("state", "PENDING")  # Slurm base state name
        self.reason = kw.get("reason", "None")
        self.exit_code = kw.get("exit_code")  # process exit code, when it exited
        self.signal = kw.get("signal")  # signal that ended it, when one did
        self.nodes = kw.get("nodes", [])  # hostnames, when it got some
        self.cpus = kw.get("cpus", 0)
        self.partition = kw.get("partition", "")
        self.submit_time = kw.get("submit_time")  # epoch seconds, or None
        self.start_time = kw.get("start_time")
        self.end_time = kw.get("end_time")
        self.in_queue = kw.get("in_queue", False)  # still known to squeue

    @property
    def finished(self):
        return self.state in FINISHED_STATES

    @property
    def held(self):
        return self.state == "PENDING" and self.reason in HELD_REASONS

    @property
    def ran(self):
        """Whether the job ever started on a node."""
        return bool(self.nodes)


def _slurm(args, what):
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SlurmUnavailable("%s not found on PATH" % args[0])
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable("%s did not answer within 60 s" % args[0])
    if p.returncode != 0:
        raise SlurmUnavailable("%s failed: %s" % (what, (p.stderr or p.stdout).strip()))
    return p.stdout


def expand_hostlist(expr):
    """Slurm's compact host list ("vm", "n[1-3,5]", "a1,b[01-02]") as names."""
    hosts = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", expr or ""):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            if part and part not in ("(null)", "None assigned"):
                hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            for n in range(int(lo), int(hi or lo) + 1):
                hosts.append("%s%0*d%s" % (prefix, len(lo), n, suffix))
    return hosts


def _epoch(value):
    """Epoch seconds from squeue's integers or sacct's local ISO times."""
    if isinstance(value, int):
        return value or None
    if not value or value in ("Unknown", "None"):
        return None
    try:
        return int(time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def query_jobs(ids):
    """{id: SlurmJob} for those of `ids` Slurm still knows (in its queue, or
    finished and written to the job completion log that sacct -c reads)."""
    ids = set(ids)
    found = {}
    data = json.loads(_slurm(["squeue", "--json"], "squeue"))
    for j in data.get("jobs", []):
        jid = j.get("job_id")
        if jid not in ids:
            continue
        status = j.get("exit_code") or 0
        state = j.get("job_state", "PENDING")
        job = SlurmJob(
            id=jid,
            name=j.get("name", ""),
            state=state,
            reason=j.get("state_reason", "None"),
            nodes=expand_hostlist(j.get("nodes", "")),
            cpus=j.get("cpus") or 0,
            partition=j.get("partition", ""),
            submit_time=_epoch(j.get("submit_time")),
            start_time=_epoch(j.get("start_time")),
            end_time=_epoch(j.get("end_time")),
            in_queue=True,
        )
        if state in FINISHED_STATES and job.ran:
            # A wait status: low 7 bits the signal, next byte the exit code.
            job.signal = (status & 0x7F) or None
            job.exit_code = None if job.signal else (status >> 8) & 0xFF
        found[jid] = job
    rest = ids - set(found)
    if rest:
        found.update(_query_completed(rest))
    return found


def _query_completed(ids):
    fields = "jobid,jobname,state,exitcode,submit,start,end,nodelist,partition,ncpus"
    # sacct -c reads the whole file; with arrays it also complains on stderr
    # about fields it cannot parse (Slurm 22.05), which is harmless.
    try:
        out = _slurm(
            ["sacct", "-c", "-P", "-n", "--format=" + fields, "-j", ",".join(str(i) for i in sorted(ids))],
            "sacct -c",
        )
    except SlurmUnavailable:
        return {}
    found = {}
    for line in out.splitlines():
        cols = line.split("|")
        if len(cols) < 10 or not cols[0].isdigit():
            continue
        jid = int(cols[0])
        if jid not in ids:
            continue
        code, _, sig = cols[3].partition(":")
        job = SlurmJob(
            id=jid,
            name=cols[1],
            # "CANCELLED by 0" in some versions: keep the first word.
            state=cols[2].split()[0] if cols[2] else "COMPLETED",
            nodes=expand_hostlist(cols[7]),
            partition=cols[8],
            cpus=int(cols[9]) if cols[9].isdigit() else 0,
            submit_time=_epoch(cols[4]),
            start_time=_epoch(cols[5]),
            end_time=_epoch(cols[6]),
        )
        if job.ran:
            job.signal = int(sig) if sig.isdigit() and int(sig) else None
            job.exit_code = None if job.signal else (int(code) if code.isdigit() else 0)
        # The log is appended to: the last record of an id is the newest.
        found[jid] = job
    return found


def queued_ids():
    """Ids of the jobs Slurm holds in its queue (any state)."""
    data = json.loads(_slurm(["squeue", "--json"], "squeue"))
    return {j["job_id"] for j in data.get("jobs", [])}


def matches(meta, job):
    """Whether metadata written at submission describes this Slurm job."""
    if job is None or meta is None:
        return False
    if job.submit_time is None or "submitted_at" not in meta:
        return True
    return abs(job.submit_time - meta["submitted_at"]) <= SUBMIT_TIME_SLACK


def partitions():
    """(names of Slurm's partitions, name of the default one)."""
    out = _slurm(["sinfo", "-h", "-o", "%P"], "sinfo")
    names, default = [], None
    for p in out.split():
        if p.endswith("*"):
            p = p[:-1]
            default = p
        names.append(p)
    return names, default or (names[0] if names else None)


def sbatch(options, batch_script):
    """Submits `batch_script` (text) with sbatch `options`; returns the id."""
    try:
        p = subprocess.run(
            ["sbatch", "--parsable"] + options,
            input=batch_script,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:
        raise SlurmUnavailable("sbatch not found on PATH")
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable("sbatch did not answer within 60 s")
    if p.returncode != 0:
        raise SlurmUnavailable(p.stderr.strip().replace("sbatch: error: ", ""))
    return int(p.stdout.strip().split(";")[0])


def scancel(ids):
    if ids:
        subprocess.run(["scancel"] + [str(i) for i in ids], capture_output=True, timeout=60)


def job_batch_script(spec):
    """The batch script Slurm runs: this machine's Python starting jobstart.py
    with the job's whole description embedded, so the job needs no file that
    could disappear between submission and start."""
    blob = base64.b64encode(json.dumps(spec).encode()).decode()
    return (
        "#!%s\n"
        "# Emulated %s job, submitted by tests/emulators; see README.md there.\n"
        "import sys\n"
        "sys.dont_write_bytecode = True\n"
        "sys.path.insert(0, %r)\n"
        "import jobstart\n"
        "jobstart.main(%r)\n"
    ) % (sys.executable, spec["system"].upper(), LIB_DIR, blob)


def submitter_environment():
    """The submitting process's environment as PBS -V and LSF copy it, without
    Slurm's own variables: a real PBS or LSF job would not see them, and
    OpenMPI would take them for a Slurm allocation."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}


def user_info():
    pw = pwd.getpwuid(os.getuid())
    return pw.pw_name, pw.pw_dir, pw.pw_shell or "/bin/sh"


def short_hostname():
    return socket.gethostname().split(".")[0]


def escape_slurm_path(path):
    """A literal path for sbatch --output/--error, where % starts a pattern."""
    return path.replace("%", "%%")


def directive_lines(script, prefix):
    """Arguments of the `prefix` directives (e.g. "#PBS") of a job script,
    in order. Like the real tools, reading stops at the first line that is
    neither blank nor a comment."""
    import shlex

    args = []
    for i, line in enumerate(script.splitlines()):
        stripped = line.strip()
        if i == 0 and stripped.startswith("#!"):
            continue
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        if stripped.startswith(prefix) and (len(stripped) == len(prefix) or stripped[len(prefix)].isspace()):
            body = stripped[len(prefix) :]
            # A directive ends at a comment that follows it.
            try:
                words = shlex.split(body, comments=True)
            except ValueError:
                words = body.split()
            args.extend(words)
    return args


def fmt_hms(seconds):
    seconds = max(0, int(seconds))
    return "%02d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)


def die(tool, message, code):
    sys.stderr.write("%s: %s\n" % (tool, message))
    sys.exit(code)
