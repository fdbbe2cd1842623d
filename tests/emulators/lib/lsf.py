"""IBM Spectrum LSF's bsub, bjobs and bkill over the local Slurm (see
README.md).

Formats follow LSF 10.1: bsub prints "Job <ID> is submitted to queue <Q>."
(or "to default queue <Q>." when no -q was given); bjobs -o prints the
requested fields separated by a space, "-" for an empty one; an id bjobs
does not know is reported as "Job <ID> is not found" on stderr after the
others are printed, and bjobs then exits 255, as bkill does for ids it cannot
kill. Finished jobs are shown for CLEAN_PERIOD seconds after they end (LSF's
default is one hour; HPFAAS_LSF_CLEAN_PERIOD changes it), then forgotten.
"""

import getopt
import os
import re
import sys
import time

import common
from common import SlurmUnavailable

DEFAULT_QUEUE = "normal"  # LSF's default queue, run in Slurm's default partition
CLEAN_PERIOD = int(os.environ.get("HPFAAS_LSF_CLEAN_PERIOD", "3600"))

# Exit codes LSF reports for jobs it ended itself: bkill's first signal is
# SIGINT (128+2), the run limit's SIGUSR2 (128+12).
EXIT_KILLED = 130
EXIT_RUNLIMIT = 140


# ------------------------------------------------------------------ bsub

# bsub's options, as getopt sees them after long_options() has rewritten
# LSF's multi-letter ones (-nnodes, -oo, -eo, -cwd, -env, -alloc_flags, ...).
BSUB_SHORT = "J:W:n:q:P:o:e:HIKw:G:u:NBxL:M:R:m:c:a:b:i:k:t:T:U:v:E:g:s:Z:X:D:F:p:S:V"
BSUB_LONG = ["nnodes=", "oo=", "eo=", "cwd=", "env=", "alloc_flags=", "app=", "outdir=", "smt=", "step_cgroup=", "ln_slots=", "csm="]

BSUB_USAGE = "Usage: bsub [-h] [-V] [-H] [-x] [-N] [-B] [-K] [-I | -Ip | -Is] [-J job_name] [-q queue_name]\n" \
    "            [-n min_processors[,max_processors]] [-W [hour:]minute] [-P project_name]\n" \
    "            [-o out_file] [-oo out_file] [-e err_file] [-eo err_file] [-cwd dir] [command [arguments] | < script]\n"


def long_options(args):
    """LSF spells its long options with one dash; getopt wants two."""
    names = {n.rstrip("=") for n in BSUB_LONG}
    return ["-" + a if a.startswith("-") and not a.startswith("--") and a[1:] in names else a for a in args]


def minutes(value):
    """bsub -W "[HH:]MM" (an optional "/host" normalises it; ignored)."""
    value = value.split("/")[0]
    h, _, m = value.rpartition(":")
    return int(h or 0) * 60 + int(m)


def lsf_to_slurm_path(path, cwd):
    """bsub's %J and %I become Slurm's %j and %a; relative to the cwd."""
    path = common.escape_slurm_path(os.path.join(cwd, path))
    return path.replace("%%J", "%j").replace("%%I", "%a")


def bsub_main(argv):
    try:
        return bsub(argv)
    except SlurmUnavailable as e:
        sys.stderr.write("LSF is down. Please wait ...\nbsub: emulator: %s\n" % e)
        return 255


def bsub(argv):
    try:
        opts, command = getopt.getopt(long_options(argv), BSUB_SHORT, BSUB_LONG)
    except getopt.GetoptError as e:
        sys.stderr.write("bsub: %s\n%s" % (e, BSUB_USAGE))
        return 255
    if ("-V", "") in opts:
        sys.stderr.write("IBM Spectrum LSF 10.1.0.13, emulated over Slurm\n")
        return 0

    if command:
        # "bsub [options] command args": LSF runs the command line.
        import shlex

        script = "#!/bin/sh\n" + " ".join(shlex.quote(a) for a in command) + "\n"
        d_opts = []
    else:
        script = sys.stdin.read()
        if not script.strip():
            sys.stderr.write("bsub: no command or job script given\n%s" % BSUB_USAGE)
            return 255
        try:
            d_opts, _ = getopt.getopt(long_options(common.directive_lines(script, "#BSUB")), BSUB_SHORT, BSUB_LONG)
        except getopt.GetoptError as e:
            sys.stderr.write("bsub: #BSUB directive: %s\n" % e)
            return 255

    # Directives first, the command line after: the command line wins.
    o = {}
    for flag, val in d_opts + opts:
        if flag in ("-I", "-K", "-w"):
            sys.stderr.write("bsub: emulator: option %s is not supported\n" % flag)
            return 255
        o[flag] = val

    cwd = os.path.join(os.getcwd(), o["--cwd"]) if "--cwd" in o else os.getcwd()
    name = o.get("-J", (command[0] if command else "") or "NONAME")
    if "[" in name:
        sys.stderr.write("bsub: emulator: job arrays are not supported\n")
        return 255

    names, default_partition = common.partitions()
    queue = o.get("-q", DEFAULT_QUEUE)
    if queue == DEFAULT_QUEUE:
        partition = default_partition
    elif queue in names:
        partition = queue
    else:
        sys.stderr.write("%s: No such queue. Job not submitted.\n" % queue)
        return 255

    options = ["-J", name, "-p", partition, "-D", cwd, "--export=NONE"]
    if "--nnodes" in o:
        # Summit (CSM): whole nodes; here, one task on each.
        options += ["-N", o["--nnodes"]]
    elif "-n" in o:
        options += ["-n", o["-n"].split(",")[0]]
    if "-W" in o:
        options += ["-t", str(minutes(o["-W"]))]
    if "-H" in o:
        options.append("-H")

    # LSF appends to -o/-e files (-oo/-eo overwrite); without either it mails
    # the output, which here goes to a file in the state directory instead.
    out = o.get("--oo") or o.get("-o")
    err = o.get("--eo") or o.get("-e")
    if out:
        options += ["-o", lsf_to_slurm_path(out, cwd)]
    else:
        options += ["-o", os.path.join(common.state_dir("lsf"), "output", "%j.out")]
        os.makedirs(os.path.join(common.state_dir("lsf"), "output"), exist_ok=True)
    if err:
        options += ["-e", lsf_to_slurm_path(err, cwd)]
    options.append("--open-mode=%s" % ("truncate" if "--oo" in o or "--eo" in o else "append"))

    env = common.submitter_environment() if o.get("--env", "all") != "none" else {}
    variables = {}
    for item in o.get("--env", "").split(","):
        k, eq, v = item.partition("=")
        if eq:
            variables[k.strip()] = v
    host = common.short_hostname()
    spec = {
        "system": "lsf",
        "name": name,
        "queue": queue,
        "script": script,
        "cwd": cwd,
        "submit_env": env,
        "variables": variables,
        "submit_host": host,
    }
    submitted_at = int(time.time())
    try:
        job_id = common.sbatch(options, common.job_batch_script(spec))
    except SlurmUnavailable as e:
        # LSF's form for a refused submission ("<reason>. Job not submitted.").
        sys.stderr.write("%s. Job not submitted.\n" % str(e).rstrip("."))
        return 255
    common.save_job_meta(
        "lsf",
        job_id,
        {
            "submitted_at": submitted_at,
            "name": name,
            "queue": queue,
            "project": o.get("-P", "default"),
            "user": common.user_info()[0],
            "from_host": host,
        },
    )
    print("Job <%d> is submitted to %squeue <%s>." % (job_id, "" if "-q" in o else "default ", queue))
    try:
        common.prune_state("lsf", common.queued_ids())
    except SlurmUnavailable:
        pass
    return 0


# ------------------------------------------------------------------ status


def lsf_stat(job):
    if job.state == "COMPLETED":
        return "DONE"
    if job.finished:
        return "EXIT"
    if job.state == "SUSPENDED":
        return "SSUSP" if "preempt" in job.reason.lower() else "USUSP"
    if job.held:
        return "PSUSP"
    if job.state == "PENDING":
        return "PEND"
    # RUNNING, and COMPLETING: LSF shows a job as running until it is gone.
    return "RUN"


def lsf_exit_code(job):
    """Exit code bjobs shows for an EXIT job, or None for "-"."""
    if lsf_stat(job) != "EXIT" or not job.ran:
        return None
    if job.state in ("CANCELLED", "PREEMPTED"):
        return EXIT_KILLED
    if job.state in ("TIMEOUT", "DEADLINE"):
        return EXIT_RUNLIMIT
    if job.signal:
        return 128 + job.signal
    return job.exit_code


def lsf_time(epoch):
    return time.strftime("%b %d %H:%M", time.localtime(epoch)) if epoch else None


def field_value(field, job_id, job, meta):
    stat = lsf_stat(job)
    values = {
        "jobid": str(job_id),
        "stat": stat,
        "exit_code": lsf_exit_code(job),
        "job_name": meta["name"],
        "queue": meta["queue"],
        "user": meta["user"],
        "proj_name": meta["project"],
        "from_host": meta["from_host"],
        "exec_host": ":".join(job.nodes) if job.ran else None,
        "submit_time": lsf_time(job.submit_time),
        "start_time": lsf_time(job.start_time) if job.ran else None,
        "finish_time": lsf_time(job.end_time) if job.finished else None,
        "slots": str(job.cpus) if job.cpus else None,
        "nreq_slot": str(job.cpus) if job.cpus else None,
    }
    value = values[field]
    return "-" if value is None else str(value)


# bjobs -o field names and their aliases.
FIELD_ALIASES = {
    "id": "jobid",
    "st": "stat",
    "name": "job_name",
    "proj": "proj_name",
    "project": "proj_name",
    "exit": "exit_code",
}
HEADERS = {
    "jobid": "JOBID",
    "stat": "STAT",
    "exit_code": "EXIT_CODE",
    "job_name": "JOB_NAME",
    "queue": "QUEUE",
    "user": "USER",
    "proj_name": "PROJ_NAME",
    "from_host": "FROM_HOST",
    "exec_host": "EXEC_HOST",
    "submit_time": "SUBMIT_TIME",
    "start_time": "START_TIME",
    "finish_time": "FINISH_TIME",
    "slots": "SLOTS",
    "nreq_slot": "NREQ_SLOT",
}


def parse_format(spec):
    """bjobs -o "field[:[-]width] ... [delimiter='c']" as ([(field, width,
    right-justified)], delimiter)."""
    delimiter = " "
    m = re.search(r"delimiter=(['\"])(.*?)\1", spec)
    if m:
        delimiter = m.group(2)
        spec = spec[: m.start()] + spec[m.end() :]
    fields = []
    for word in spec.split():
        name, _, width = word.partition(":")
        name = FIELD_ALIASES.get(name.lower(), name.lower())
        if name not in HEADERS:
            raise ValueError(name)
        right = width.startswith("-")
        width = width.lstrip("-")
        fields.append((name, int(width) if width.isdigit() else None, right))
    return fields, delimiter


def render(value, width, right):
    if width is None:
        return value
    value = value[:width]
    return value.rjust(width) if right else value.ljust(width)


def bjobs_main(argv):
    try:
        return bjobs(argv)
    except SlurmUnavailable as e:
        sys.stderr.write("LSF is down. Please wait ...\nbjobs: emulator: %s\n" % e)
        return 255


def bjobs(argv):
    argv = ["--noheader" if a == "-noheader" else a for a in argv]
    try:
        opts, operands = getopt.getopt(argv, "ado:prswWu:q:J:lAX", ["noheader"])
    except getopt.GetoptError as e:
        sys.stderr.write("bjobs: %s\n" % e)
        return 255
    flags = dict(opts)
    if "-l" in flags:
        sys.stderr.write("bjobs: emulator: -l is not supported; use -o\n")
        return 255
    noheader = "--noheader" in flags
    try:
        fmt = parse_format(flags["-o"]) if "-o" in flags else None
    except ValueError as e:
        sys.stderr.write("%s: Illegal field name.\n" % e)
        return 255
    show_finished = "-a" in flags or "-d" in flags

    now = time.time()
    shown, missing = [], []
    ids = [int(o) for o in operands if o.isdigit()]
    missing = [o for o in operands if not o.isdigit()]
    candidates = ids or common.all_job_ids("lsf")
    jobs = common.query_jobs(candidates) if candidates else {}
    for job_id in candidates:
        meta = common.load_job_meta("lsf", job_id)
        job = jobs.get(job_id)
        forgotten = job is not None and job.finished and (job.end_time or 0) < now - CLEAN_PERIOD
        if not common.matches(meta, job) or forgotten:
            if ids:
                missing.append(str(job_id))
            continue
        stat = lsf_stat(job)
        if not ids:
            # Without ids: unfinished jobs, finished ones only with -a/-d.
            if job.finished and not show_finished:
                continue
            if "-d" in flags and not job.finished:
                continue
            if "-r" in flags and stat != "RUN" or "-p" in flags and stat not in ("PEND", "PSUSP"):
                continue
            if "-s" in flags and stat not in ("USUSP", "SSUSP"):
                continue
            if "-J" in flags and meta["name"] != flags["-J"]:
                continue
            if "-q" in flags and meta["queue"] != flags["-q"]:
                continue
        shown.append((job_id, job, meta))

    if fmt:
        fields, delimiter = fmt
        if not noheader and shown:
            print(delimiter.join(render(HEADERS[f], w, r) for f, w, r in fields).rstrip())
        for job_id, job, meta in shown:
            print(delimiter.join(render(field_value(f, job_id, job, meta), w, r) for f, w, r in fields))
    elif shown:
        if not noheader:
            print("JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME")
        for job_id, job, meta in shown:
            name = meta["name"] if len(meta["name"]) <= 10 else "*" + meta["name"][-9:]
            print(
                "%-7d %-7.7s %-5.5s %-10.10s %-11.11s %-11.11s %-10.10s %s"
                % (
                    job_id,
                    meta["user"],
                    lsf_stat(job),
                    meta["queue"],
                    meta["from_host"],
                    job.nodes[0] if job.ran else "",
                    name,
                    lsf_time(job.submit_time),
                )
            )
    for m in missing:
        sys.stderr.write("Job <%s> is not found\n" % m)
    if not operands and not shown:
        sys.stderr.write("No %s job found\n" % ("" if show_finished else "unfinished"))
        return 255
    return 255 if missing else 0


# ------------------------------------------------------------------ bkill


def bkill_main(argv):
    try:
        return bkill(argv)
    except SlurmUnavailable as e:
        sys.stderr.write("LSF is down. Please wait ...\nbkill: emulator: %s\n" % e)
        return 255


def bkill(argv):
    try:
        opts, operands = getopt.getopt(argv, "s:rlJ:q:u:")
    except getopt.GetoptError as e:
        sys.stderr.write("bkill: %s\n" % e)
        return 255
    if not operands or "0" in operands:
        sys.stderr.write("bkill: emulator: give job ids (\"bkill 0\" is not supported)\n")
        return 255
    ids = [int(o) for o in operands if o.isdigit()]
    jobs = common.query_jobs(ids) if ids else {}
    failed = False
    cancel = []
    for op in operands:
        job_id = int(op) if op.isdigit() else None
        meta = common.load_job_meta("lsf", job_id) if job_id is not None else None
        job = jobs.get(job_id)
        if job_id is None or not common.matches(meta, job):
            sys.stderr.write("Job <%s>: No matching job found\n" % op)
            failed = True
        elif job.finished:
            sys.stderr.write("Job <%s>: Job has already finished\n" % op)
            failed = True
        else:
            cancel.append(job_id)
            print("Job <%d> is being terminated" % job_id)
    common.scancel(cancel)
    return 255 if failed else 0
