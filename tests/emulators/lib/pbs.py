"""PBS Pro's qsub, qstat and qdel over the local Slurm (see README.md).

Formats and exit codes follow PBS Pro 2022 (OpenPBS): a job id is
"<sequence>.<server>"; qstat -f -F json prints the server's attributes of
each job; an error for one job id is printed on stderr and the command goes
on with the others, exiting with the last PBS error number modulo 256
(15001 unknown job -> 153, 15139 finished job without -x -> 35, 15016 job
already exiting -> 168).
"""

import getopt
import json
import math
import os
import re
import socket
import sys
import time

import common
from common import SlurmUnavailable

SERVER = os.environ.get("HPFAAS_PBS_SERVER") or "hpfaas-pbs"
PBS_VERSION = "2022.1.3"
DEFAULT_QUEUE = "workq"  # PBS's default queue, run in Slurm's default partition

# PBS error numbers, and the exit codes they become (errno & 0xff).
PBSE_UNKJOBID = 15001  # -> 153 "Unknown Job Id"
PBSE_HISTJOBID = 15139  # -> 35 "Job has finished"
PBSE_UNKQUE = 15018  # -> 170 "Unknown queue"
PBSE_BADSTATE = 15016  # -> 168 "Request invalid for state of job"

# Exit_status values PBS gives a job it ended itself (OpenPBS job.h).
JOB_EXEC_FAIL2 = -2  # failed after it started (node lost), not retried
JOB_EXEC_KILL_MEM = -27  # exceeded its memory
JOB_EXEC_KILL_WALLTIME = -29  # exceeded its walltime
SIGTERM, SIGKILL = 15, 9

# substate numbers qstat -f shows (OpenPBS job.h).
SUBSTATE = {"Q": 10, "H": 20, "R": 42, "S": 43, "E": 51, "F_ok": 92, "F_del": 91, "F_fail": 93}


def exit_code(errno):
    return errno & 0xFF


# ------------------------------------------------------------------ qsub

QSUB_USAGE = """usage: qsub [-a date_time] [-A account_string] [-c interval]
\t[-C directive_prefix] [-e path] [-f ] [-h ] [-I [-X]] [-j oe|eo] [-J X-Y[:Z]]
\t[-k keep] [-l resource_list] [-m mail_options] [-M user_list]
\t[-N jobname] [-o path] [-p priority] [-P project] [-q queue] [-r y|n]
\t[-R o|e|oe] [-S path] [-u user_list] [-W otherattributes=value...]
\t[-v variable_list] [-V ] [-z] [script | -- command [arg1 ...]]
       qsub --version
"""

# Options that change nothing here, accepted as PBS accepts them.
QSUB_IGNORED = {"-a", "-c", "-C", "-k", "-m", "-M", "-p", "-r", "-R", "-u", "-z", "-f"}


def parse_resources(value, res):
    """One -l argument ("walltime=1:00:00,select=1:ncpus=2") into `res`."""
    # select's chunks contain ':' and '+', never ','; split on commas that
    # start a new name=value.
    for item in re.split(r",(?=[A-Za-z_]+=)", value):
        name, _, val = item.partition("=")
        res[name.strip()] = val.strip()


def walltime_seconds(value):
    """PBS duration: "[[HH:]MM:]SS[.ms]" or plain seconds."""
    parts = value.split(":")
    secs = 0.0
    for p in parts:
        secs = secs * 60 + float(p or 0)
    return int(math.ceil(secs))


def parse_select(select):
    """select=N:ncpus=C:mpiprocs=M[+...] as (chunks, ncpus, mpiprocs), the
    figures of the first chunk kind (one kind is all this emulator runs)."""
    first = select.split("+")[0]
    parts = first.split(":")
    chunks = int(parts[0]) if parts[0].isdigit() else 1
    attrs = dict(p.split("=", 1) for p in parts if "=" in p)
    ncpus = int(attrs.get("ncpus", 1))
    mpiprocs = int(attrs.get("mpiprocs", 1))
    return chunks, ncpus, mpiprocs


def qsub_main(argv):
    try:
        return qsub(argv)
    except SlurmUnavailable as e:
        common.die("qsub", str(e), 1)


QSUB_OPTIONS = "a:A:c:C:e:fhIj:J:k:l:m:M:N:o:p:P:q:r:R:S:u:v:VW:Xz"

# Stands for the job's sequence number in an output path until it is known.
SEQ = "\0SEQ\0"


def qsub(argv):
    if argv == ["--version"]:
        print("pbs_version = %s" % PBS_VERSION)
        return 0
    if "--" in argv:
        common.die("qsub", "emulator: '-- command' jobs are not supported; give a script", 2)
    try:
        opts, args = getopt.getopt(argv, QSUB_OPTIONS)
    except getopt.GetoptError:
        sys.stderr.write(QSUB_USAGE)
        return 2
    if len(args) > 1:
        sys.stderr.write(QSUB_USAGE)
        return 2

    if args:
        script_name = args[0]
        try:
            with open(script_name) as f:
                script = f.read()
        except OSError as e:
            common.die("qsub", "could not open script file %s: %s" % (script_name, e.strerror), 1)
        default_name = os.path.basename(script_name)
    else:
        script = sys.stdin.read()
        default_name = "STDIN"

    # Directives in the script first, then the command line, which wins.
    try:
        d_opts, _ = getopt.getopt(common.directive_lines(script, "#PBS"), QSUB_OPTIONS)
    except getopt.GetoptError as e:
        common.die("qsub", "directive error: %s" % e, 2)

    o = {"resources": {}, "variables": {}, "hold": False, "export_all": False}
    for flag, val in d_opts + opts:
        if flag == "-l":
            parse_resources(val, o["resources"])
        elif flag == "-v":
            for item in re.split(r",(?=[A-Za-z_][A-Za-z0-9_]*(?:=|,|$))", val):
                name, eq, value = item.partition("=")
                o["variables"][name] = value if eq else os.environ.get(name, "")
        elif flag == "-V":
            o["export_all"] = True
        elif flag == "-h":
            o["hold"] = True
        elif flag in ("-I", "-X"):
            common.die("qsub", "emulator: interactive jobs are not supported", 2)
        elif flag == "-J":
            common.die("qsub", "emulator: job arrays (-J) are not supported", 2)
        elif flag == "-W":
            name, _, value = val.partition("=")
            if name in ("depend", "block", "stagein", "stageout", "run_count"):
                common.die("qsub", "emulator: -W %s is not supported" % name, 2)
            # group_list, umask, sandbox, ...: nothing to do here.
        elif flag in QSUB_IGNORED:
            pass
        else:
            o[flag] = val

    name = o.get("-N", default_name)
    cwd = os.getcwd()
    user, home, login_shell = common.user_info()
    host = common.short_hostname()

    names, default_partition = common.partitions()
    queue = o.get("-q", DEFAULT_QUEUE).split("@")[0] or DEFAULT_QUEUE
    if queue == DEFAULT_QUEUE:
        partition = default_partition
    elif queue in names:
        partition = queue
    else:
        common.die("qsub", "Unknown queue", exit_code(PBSE_UNKQUE))

    res = o["resources"]
    if "select" in res:
        chunks, ncpus, mpiprocs = parse_select(res["select"])
    else:
        # Old-style -l nodes=N:ppn=P, or -l ncpus=C, or nothing.
        m = re.match(r"(\d+)(?::ppn=(\d+))?", res.get("nodes", ""))
        chunks = int(m.group(1)) if m else 1
        ncpus = int(m.group(2)) if m and m.group(2) else int(res.get("ncpus", 1))
        mpiprocs = ncpus if m and m.group(2) else 1
        res["select"] = "%d:ncpus=%d" % (chunks, ncpus) + (":mpiprocs=%d" % mpiprocs if mpiprocs > 1 else "")
    res.setdefault("place", "free")
    res["ncpus"] = str(chunks * ncpus)
    res["nodect"] = str(chunks)
    walltime = None
    if "walltime" in res:
        walltime = walltime_seconds(res["walltime"])
        res["walltime"] = common.fmt_hms(walltime)

    # Output files: PBS writes <name>.o<seq> and <name>.e<seq> to the submit
    # directory unless -o/-e say otherwise; -j oe joins stderr into stdout.
    join = o.get("-j", "n")
    out_path = output_path(o.get("-o"), cwd, name, "o")
    err_path = output_path(o.get("-e"), cwd, name, "e")

    options = ["-J", name, "-p", partition, "-D", home, "--export=NONE"]
    options += ["-N", str(chunks), "--ntasks-per-node", str(mpiprocs)]
    options += ["--cpus-per-task", str(max(1, math.ceil(ncpus / mpiprocs)))]
    if walltime is not None:
        options += ["-t", "%d:%02d:%02d" % (walltime // 3600, walltime // 60 % 60, walltime % 60)]
    if join == "n":
        options += ["-o", slurm_path(out_path), "-e", slurm_path(err_path)]
    else:
        # Both streams into one file: -j oe keeps stdout's, -j eo stderr's.
        options += ["-o", slurm_path(out_path if join == "oe" else err_path)]
    if o["hold"]:
        options.append("-H")

    pbs_o = {
        "PBS_O_HOME": home,
        "PBS_O_LOGNAME": user,
        "PBS_O_PATH": os.environ.get("PATH", ""),
        "PBS_O_MAIL": os.environ.get("MAIL", "/var/mail/" + user),
        "PBS_O_SHELL": os.environ.get("SHELL", login_shell),
        "PBS_O_WORKDIR": cwd,
        "PBS_O_SYSTEM": os.uname().sysname,
        "PBS_O_QUEUE": queue,
        "PBS_O_HOST": host,
    }
    if os.environ.get("LANG"):
        pbs_o["PBS_O_LANG"] = os.environ["LANG"]
    spec = {
        "system": "pbs",
        "server": SERVER,
        "name": name,
        "queue": queue,
        "script": script,
        "shell": o.get("-S"),
        "mpiprocs": mpiprocs,
        "export_all": o["export_all"],
        "submit_env": common.submitter_environment() if o["export_all"] else {},
        "variables": o["variables"],
        "pbs_o": pbs_o,
    }
    submitted_at = int(time.time())
    job_id = common.sbatch(options, common.job_batch_script(spec))
    variable_list = dict(pbs_o)
    variable_list.update(o["variables"])
    meta = {
        "submitted_at": submitted_at,
        "name": name,
        "owner": "%s@%s" % (user, host),
        "queue": queue,
        "account": o.get("-A"),
        "project": o.get("-P", "_pbs_project_default"),
        "resources": res,
        "output_path": "%s:%s" % (host, (err_path if join == "eo" else out_path).replace(SEQ, str(job_id))),
        "error_path": "%s:%s" % (host, (out_path if join == "oe" else err_path).replace(SEQ, str(job_id))),
        "join": join,
        "variables": variable_list,
        "submit_args": " ".join(argv),
        "submit_host": host,
        "home": home,
    }
    common.save_job_meta("pbs", job_id, meta)
    print("%d.%s" % (job_id, SERVER))
    try:
        common.prune_state("pbs", common.queued_ids())
    except SlurmUnavailable:
        pass
    return 0


def output_path(given, cwd, name, kind):
    """Where PBS would write the job's stdout (kind "o") or stderr ("e"),
    with SEQ standing for the sequence number."""
    if not given:
        return os.path.join(cwd, "%s.%s%s" % (name, kind, SEQ))
    # "host:path" names the host to copy the file to; it is this one.
    path = given.split(":", 1)[1] if re.match(r"^[\w.-]+:", given) else given
    path = os.path.join(cwd, path)
    if os.path.isdir(path):
        # A directory: PBS names the file after the job, <seq>.<server>.OU/ER.
        return os.path.join(path, "%s.%s.%s" % (SEQ, SERVER, "OU" if kind == "o" else "ER"))
    return path


def slurm_path(path):
    """An output path as sbatch's -o/-e take it (% starts a pattern there)."""
    return common.escape_slurm_path(path).replace(SEQ, "%j")


# ------------------------------------------------------------------ status


def job_state(job, meta):
    """PBS job_state letter for a Slurm job."""
    if job.finished:
        return "F"
    if job.state == "COMPLETING":
        return "E"
    if job.state == "SUSPENDED":
        return "S"
    if job.state in ("RUNNING", "CONFIGURING", "SIGNALING", "STAGE_OUT"):
        return "R"
    if job.held:
        return "H"
    return "Q"


def pbs_exit_status(job):
    """Exit_status PBS would record, or None for a job that never ran."""
    if not job.ran:
        return None
    if job.state == "COMPLETED":
        return 0
    if job.state in ("TIMEOUT", "DEADLINE"):
        return JOB_EXEC_KILL_WALLTIME
    if job.state == "OUT_OF_MEMORY":
        return JOB_EXEC_KILL_MEM
    if job.state in ("NODE_FAIL", "BOOT_FAIL"):
        return JOB_EXEC_FAIL2
    if job.state in ("CANCELLED", "PREEMPTED"):
        # qdel: SIGTERM first, SIGKILL if the job outlives the grace time.
        return 256 + (SIGKILL if job.signal == SIGKILL else SIGTERM)
    if job.signal:
        return 256 + job.signal
    return job.exit_code if job.exit_code is not None else 1


def pbs_time(epoch):
    return time.ctime(epoch) if epoch else None


def job_attributes(job, meta):
    """The attributes qstat -f shows, in PBS's order."""
    state = job_state(job, meta)
    host = common.short_hostname()
    now = int(time.time())
    submit = job.submit_time or meta["submitted_at"]
    ncpus = int(meta["resources"].get("ncpus", 1))
    exec_vnode = "+".join("(%s:ncpus=%d)" % (h, max(1, ncpus // max(1, len(job.nodes)))) for h in job.nodes)
    a = {"Job_Name": meta["name"], "Job_Owner": meta["owner"]}
    if job.ran and job.start_time:
        end = job.end_time if job.finished or state == "E" else now
        a["resources_used"] = {
            "cpupercent": 0,
            "cput": "00:00:00",
            "mem": "0kb",
            "ncpus": ncpus,
            "vmem": "0kb",
            "walltime": common.fmt_hms((end or now) - job.start_time),
        }
    a["job_state"] = state
    a["queue"] = meta["queue"]
    a["server"] = SERVER
    if meta.get("account"):
        a["Account_Name"] = meta["account"]
    a["Checkpoint"] = "u"
    a["ctime"] = pbs_time(submit)
    a["Error_Path"] = meta["error_path"]
    if job.ran:
        a["exec_host"] = "+".join("%s/0*%d" % (h, max(1, ncpus // len(job.nodes))) for h in job.nodes)
        a["exec_vnode"] = exec_vnode
    a["Hold_Types"] = "u" if state == "H" else "n"
    a["Join_Path"] = meta["join"]
    a["Keep_Files"] = "n"
    a["Mail_Points"] = "a"
    # Slurm's end time of a running job is when its time limit ends.
    a["mtime"] = pbs_time((job.end_time if job.finished else None) or job.start_time or submit)
    a["Output_Path"] = meta["output_path"]
    a["Priority"] = 0
    a["qtime"] = pbs_time(submit)
    a["Rerunable"] = "True"
    a["Resource_List"] = dict(sorted(meta["resources"].items()))
    if job.ran and job.start_time:
        a["stime"] = pbs_time(job.start_time)
    if state == "F" and job.end_time:
        a["obittime"] = pbs_time(job.end_time)
    if state in ("R", "S", "E"):
        a["jobdir"] = meta["home"]
    exit_status = pbs_exit_status(job) if state == "F" else None
    if state == "F":
        a["substate"] = SUBSTATE["F_del" if job.state == "CANCELLED" else "F_ok" if exit_status == 0 else "F_fail"]
    else:
        a["substate"] = SUBSTATE[state]
    a["Variable_List"] = dict(meta["variables"])
    comment = job_comment(job, state, exit_status, exec_vnode)
    if comment:
        a["comment"] = comment
    a["etime"] = pbs_time(submit)
    a["umask"] = 22
    if job.ran:
        a["run_count"] = 1
    a["eligible_time"] = "00:00:00"
    if exit_status is not None:
        a["Exit_status"] = exit_status
    a["Submit_arguments"] = meta["submit_args"]
    if state == "F":
        a["history_timestamp"] = job.end_time or now
    a["project"] = meta["project"]
    a["Submit_Host"] = meta["submit_host"]
    return a


def job_comment(job, state, exit_status, exec_vnode):
    if job.ran and job.start_time:
        at = time.strftime("%a %b %d at %H:%M", time.localtime(job.start_time))
        run = "Job run at %s on %s" % (at, exec_vnode)
        if state != "F":
            return run
        if job.state == "CANCELLED":
            return run + " and terminated"
        return run + (" and finished" if exit_status == 0 else " and failed")
    if state == "Q" and job.reason not in ("None", "", None):
        return "Not Running: %s" % job.reason
    if state == "F":
        return "Job deleted"
    return None


def parse_job_id(operand):
    """(sequence number, full id) of a job id operand, or None if it is not one.
    Like qstat, "123" means "123.<default server>"."""
    m = re.fullmatch(r"(\d+)(?:\.(.+))?", operand)
    if not m:
        return None
    seq, server = int(m.group(1)), m.group(2) or SERVER
    return seq, "%d.%s" % (seq, server), server


def lookup(operands):
    """[(operand, seq, full id, Slurm job or None, meta or None)]."""
    parsed = []
    for op in operands:
        p = parse_job_id(op)
        if p is None:
            parsed.append((op, None, op, None, None))
        else:
            parsed.append((op,) + p[:2] + (p[2],))
    wanted = [p[1] for p in parsed if p[1] is not None and p[3] == SERVER]
    jobs = common.query_jobs(wanted) if wanted else {}
    out = []
    for op, seq, full, server in parsed:
        if seq is None or server != SERVER:
            out.append((op, seq, full, None, None))
            continue
        meta = common.load_job_meta("pbs", seq)
        job = jobs.get(seq)
        if not common.matches(meta, job):
            job = meta = None
        out.append((op, seq, full, job, meta))
    return out


def auto_type(value):
    """PBS's JSON writes values that read as numbers as numbers."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?", value) and not re.match(r"-?0\d", value):
        return float(value) if "." in value else int(value)
    if isinstance(value, dict):
        return {k: auto_type(v) for k, v in value.items()}
    return value


def qstat_main(argv):
    try:
        return qstat(argv)
    except SlurmUnavailable as e:
        sys.stderr.write("Connection refused\nqstat: cannot connect to server %s (errno=15010)\n" % SERVER)
        sys.stderr.write("qstat: emulator: %s\n" % e)
        return 1


def qstat(argv):
    try:
        opts, operands = getopt.getopt(argv, "fF:xHwn1sJtpiaru:D:ETGM")
    except getopt.GetoptError:
        sys.stderr.write(
            "usage: \nqstat [-f] [-J] [-p] [-t] [-x] [-E] [-F format | -w] [-D delim] [ job_identifier... | destination... ]\n"
        )
        return 2
    flags = dict(opts)
    full = "-f" in flags
    fmt = flags.get("-F", "default").lower()
    history = "-x" in flags or "-H" in flags
    if fmt not in ("default", "json", "dsv") or (fmt != "default" and not full):
        sys.stderr.write("qstat: conflicting options.\n")
        return 2
    if fmt == "dsv":
        common.die("qstat", "emulator: -F dsv is not supported", 2)

    errno = 0
    shown = []  # (full id, job, meta)
    if not operands:
        ids = common.all_job_ids("pbs")
        jobs = common.query_jobs(ids) if ids else {}
        for seq in ids:
            meta = common.load_job_meta("pbs", seq)
            job = jobs.get(seq)
            if common.matches(meta, job) and (history or not job.finished):
                shown.append(("%d.%s" % (seq, SERVER), job, meta))
    else:
        for op, seq, fid, job, meta in lookup(operands):
            if seq is None:
                sys.stderr.write("qstat: Unknown queue destination %s\n" % op)
                errno = PBSE_UNKQUE
            elif job is None:
                sys.stderr.write("qstat: Unknown Job Id %s\n" % fid)
                errno = PBSE_UNKJOBID
            elif job.finished and not history:
                sys.stderr.write(
                    "qstat: %s Job has finished, use -x or -H to obtain historical job information\n" % fid
                )
                errno = PBSE_HISTJOBID
            else:
                shown.append((fid, job, meta))

    if fmt == "json":
        doc = {"timestamp": int(time.time()), "pbs_version": PBS_VERSION, "pbs_server": SERVER}
        if shown:
            doc["Jobs"] = {fid: auto_type(job_attributes(job, meta)) for fid, job, meta in shown}
        sys.stdout.write(json.dumps(doc, indent=4, separators=(",", ":"), ensure_ascii=False) + "\n")
    elif full:
        for fid, job, meta in shown:
            print_full(fid, job_attributes(job, meta))
    elif shown:
        print_table(shown)
    return exit_code(errno)


def print_full(fid, attrs):
    """qstat -f's text format."""
    lines = ["Job Id: %s" % fid]
    for name, value in attrs.items():
        if isinstance(value, dict):
            if name == "Variable_List":
                lines.append("    %s = %s" % (name, ",".join("%s=%s" % kv for kv in value.items())))
            else:
                for res, v in value.items():
                    lines.append("    %s.%s = %s" % (name, res, v))
        else:
            lines.append("    %s = %s" % (name, value))
    sys.stdout.write("\n".join(lines) + "\n\n")


def print_table(shown):
    """qstat's default one-line-per-job format."""
    print("Job id            Name             User              Time Use S Queue")
    print("----------------  ---------------- ----------------  -------- - -----")
    for fid, job, meta in shown:
        attrs = job_attributes(job, meta)
        used = attrs.get("resources_used", {}).get("cput", "0")
        print(
            "%-17s %-16s %-16s  %8s %s %s"
            % (trunc(fid, 17), trunc(meta["name"], 16), trunc(meta["owner"].split("@")[0], 16), used, attrs["job_state"], meta["queue"])
        )


def trunc(value, width):
    return value if len(value) <= width else value[: width - 1] + "*"


# ------------------------------------------------------------------ qdel


def qdel_main(argv):
    try:
        return qdel(argv)
    except SlurmUnavailable as e:
        sys.stderr.write("qdel: cannot connect to server %s (errno=15010)\nqdel: emulator: %s\n" % (SERVER, e))
        return 1


def qdel(argv):
    try:
        opts, operands = getopt.getopt(argv, "W:xt")
    except getopt.GetoptError:
        sys.stderr.write("usage: qdel [-W force|suppress_email=<N>] [-x] job_identifier...\n")
        return 2
    if not operands:
        sys.stderr.write("usage: qdel [-W force|suppress_email=<N>] [-x] job_identifier...\n")
        return 2
    delete_history = "-x" in dict(opts)
    errno = 0
    cancel = []
    for op, seq, fid, job, meta in lookup(operands):
        if seq is None:
            sys.stderr.write("qdel: illegally formed job identifier: %s\n" % op)
            errno = 1
        elif job is None:
            sys.stderr.write("qdel: Unknown Job Id %s\n" % fid)
            errno = PBSE_UNKJOBID
        elif job.finished:
            if delete_history:
                common.delete_job_meta("pbs", seq)
            else:
                sys.stderr.write("qdel: Job has finished %s\n" % fid)
                errno = PBSE_HISTJOBID
        elif job_state(job, meta) == "E":
            # Already being killed: PBS refuses a second delete.
            sys.stderr.write("qdel: Request invalid for state of job %s\n" % fid)
            errno = PBSE_BADSTATE
        else:
            cancel.append(seq)
    common.scancel(cancel)
    return exit_code(errno)
