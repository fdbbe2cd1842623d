"""Runs inside the Slurm job of an emulated PBS or LSF job, as its batch
script (see common.job_batch_script): gives the user's script the environment,
working directory and node list the real batch system would, runs it, and ends
the way it ended, so that Slurm records the same exit code or signal.

PBS jobs start in $HOME with a fresh, minimal environment (only what -v or -V
asked for is carried over); LSF jobs start in the submission directory with a
copy of the submission environment. Neither sees Slurm's variables.
"""

import base64
import json
import os
import resource
import secrets
import signal
import stat
import subprocess
import sys

sys.dont_write_bytecode = True
import common  # noqa: E402  (path set up by the batch script)

# Signals that end a job: Slurm sends them (on scancel, at the time limit)
# to every process of the job, the user's script included. This wrapper only
# outlives them to clean up and report the script's end; passing them on
# would make the script see each twice (and run its traps twice).
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def cpus_per_node(value, count):
    """SLURM_JOB_CPUS_PER_NODE ("8", "2(x3),1") as one number per node."""
    out = []
    for part in (value or "").split(","):
        if not part:
            continue
        n, _, rep = part.partition("(x")
        out.extend([int(n)] * (int(rep.rstrip(")")) if rep else 1))
    return out or [1] * count


def main(blob):
    spec = json.loads(base64.b64decode(blob))
    job_id = int(os.environ["SLURM_JOB_ID"])
    hosts = common.expand_hostlist(os.environ.get("SLURM_JOB_NODELIST", "")) or [common.short_hostname()]
    cpus = cpus_per_node(os.environ.get("SLURM_JOB_CPUS_PER_NODE"), len(hosts))

    run_dir = common.run_dir_for(spec["system"], job_id)
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    script_path = os.path.join(run_dir, "script")
    with open(script_path, "w") as f:
        f.write(spec["script"])
    os.chmod(script_path, stat.S_IRWXU)

    if spec["system"] == "pbs":
        env, argv, cwd = pbs_job(spec, job_id, hosts, cpus, run_dir, script_path)
    else:
        env, argv, cwd = lsf_job(spec, job_id, hosts, cpus, run_dir, script_path)
    try:
        os.chdir(cwd)
    except OSError:
        # Both systems fall back when the directory does not exist there.
        os.chdir("/tmp")

    # A Python handler, unlike SIG_IGN, is not inherited by the script.
    for s in ENDING_SIGNALS:
        signal.signal(s, lambda _signum, _frame: None)
    child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, close_fds=True)
    status = child.wait()
    common.remove_tree(run_dir)
    if status < 0:
        # Die of the same signal, so that Slurm records it as such (without
        # leaving a core file of this wrapper in the job's directory).
        sig = -status
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL: its action cannot be changed, nor needs to be
        os.kill(os.getpid(), sig)
        sys.exit(128 + sig)  # only if the signal does not end a process
    sys.exit(status)


def pbs_job(spec, job_id, hosts, cpus, run_dir, script_path):
    full_id = "%d.%s" % (job_id, spec["server"])
    nodefile = os.path.join(run_dir, "nodefile")
    # One line per MPI process: mpiprocs per chunk, each chunk one node here.
    with open(nodefile, "w") as f:
        for host in hosts:
            f.write((host + "\n") * spec["mpiprocs"])
    tmpdir = os.path.join(run_dir, "tmp")
    os.makedirs(tmpdir, exist_ok=True)
    user, home, login_shell = common.user_info()

    if spec["export_all"]:
        env = dict(spec["submit_env"])
    else:
        # What PBS's MoM gives every job before the user's own settings.
        env = {
            "HOME": home,
            "LOGNAME": user,
            "USER": user,
            "SHELL": login_shell,
            "PATH": "/bin:/usr/bin",
            "MAIL": "/var/mail/" + user,
        }
        if spec["pbs_o"].get("PBS_O_LANG"):
            env["LANG"] = spec["pbs_o"]["PBS_O_LANG"]
    env.update(spec["variables"])  # qsub -v
    env.update(spec["pbs_o"])
    ncpus = cpus[0] if cpus else 1
    env.update(
        {
            "PBS_ENVIRONMENT": "PBS_BATCH",
            "ENVIRONMENT": "BATCH",
            "PBS_JOBID": full_id,
            "PBS_JOBNAME": spec["name"],
            "PBS_QUEUE": spec["queue"],
            "PBS_NODEFILE": nodefile,
            "PBS_JOBDIR": home,
            "PBS_TASKNUM": "1",
            "PBS_NODENUM": "0",
            "PBS_MOMPORT": "15003",
            "PBS_JOBCOOKIE": secrets.token_hex(16).upper(),
            "TMPDIR": tmpdir,
            "NCPUS": str(ncpus),
            "OMP_NUM_THREADS": str(ncpus),
        }
    )
    # PBS runs the script with the user's login shell (or qsub -S), whatever
    # its #! line says.
    shell = spec["shell"] or login_shell
    return env, [shell, script_path], home


def lsf_job(spec, job_id, hosts, cpus, run_dir, script_path):
    slots = []
    for host, n in zip(hosts, cpus):
        slots.extend([host] * n)
    hostfile = os.path.join(run_dir, "hostfile")
    with open(hostfile, "w") as f:
        f.write("".join(h + "\n" for h in slots))
    env = dict(spec["submit_env"])
    env.update(spec["variables"])
    env.update(
        {
            "LSB_JOBID": str(job_id),
            "LSB_BATCH_JID": str(job_id),
            "LSB_JOBNAME": spec["name"],
            "LSB_QUEUE": spec["queue"],
            "LSB_JOBINDEX": "0",
            "LSB_HOSTS": " ".join(slots),
            "LSB_MCPU_HOSTS": " ".join("%s %d" % (h, n) for h, n in zip(hosts, cpus)),
            "LSB_DJOB_HOSTFILE": hostfile,
            "LSB_DJOB_NUMPROC": str(len(slots)),
            "LSB_MAX_NUM_PROCESSORS": str(len(slots)),
            "LSB_SUB_HOST": spec["submit_host"],
            "LS_SUBCWD": spec["cwd"],
            "LSB_JOBFILENAME": script_path,
            "LSFUSER": common.user_info()[0],
        }
    )
    # LSF runs a spooled script by its #! line, else with /bin/sh.
    if spec["script"].startswith("#!"):
        argv = [script_path]
    else:
        argv = ["/bin/sh", script_path]
    return env, argv, spec["cwd"]
