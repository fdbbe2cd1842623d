#!/usr/bin/env bash
# A real single-node Slurm for tests, on a machine without systemd.
#
#   scripts/slurm.sh up       install what is missing (root), write the config,
#                             start munged, slurmctld and slurmd, wait until the
#                             node is usable; does nothing when already up
#   scripts/slurm.sh down     cancel the test jobs left behind, stop the daemons
#                             that `up` started
#   scripts/slurm.sh status   which daemons run, and sinfo; exits 0 only when
#                             Slurm answers and its node can take jobs
#
# The node declares more CPUs than the machine has (CPUs=8, allowed by
# SlurmdParameters=config_overrides) so that several pilot jobs fit at once on
# a 2-core test machine. Packages come from apt-get; daemons are started
# directly, never through systemd or init scripts. HPFAAS_SLURMCTLD_PORT and
# HPFAAS_SLURMD_PORT (default 6817, 6818) let it run beside another Slurm.
set -euo pipefail

readonly CONF=/etc/slurm/slurm.conf
# First line of every config this script writes: how `up` knows it may
# overwrite the file without a backup.
readonly MARK="# Written by hpfaas scripts/slurm.sh; rewritten by each 'up'."
readonly PACKAGES=(slurm-wlm munge libpmix2)
readonly RUN_DIR=/run/slurm
# Names of the daemons `up` started itself, one a line: `down` stops only those,
# so a munged or Slurm the machine already ran is left alone.
readonly STARTED_FILE=$RUN_DIR/hpfaas-started
readonly MUNGE_PID=/run/munge/munged.pid
readonly CTLD_PID=$RUN_DIR/slurmctld.pid
readonly SLURMD_PID=$RUN_DIR/slurmd.pid
readonly LOG_DIR=/var/log/slurm
# Finished jobs are appended here (JobCompType=jobcomp/filetxt); `sacct -c`
# reads it, since there is no slurmdbd.
readonly JOBCOMP_LOG=$LOG_DIR/jobcomp.log
# Slurm's standard ports; set these to run beside another Slurm on the machine.
readonly CTLD_PORT=${HPFAAS_SLURMCTLD_PORT:-6817}
readonly SLURMD_PORT=${HPFAAS_SLURMD_PORT:-6818}
readonly UP_TIMEOUT=30   # seconds `up` waits for the controller and the node
readonly DOWN_TIMEOUT=30 # seconds `down` waits for jobs and daemons to end
# Jobs `down` cancels: those of hpfaas and of its integration tests.
readonly JOB_NAME_PREFIXES=(hpfaas- it-)

say() { echo "slurm.sh: $*"; }
die() {
    echo "slurm.sh: $*" >&2
    exit 1
}

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]})) || return 0
    if [[ $(id -u) -ne 0 ]]; then
        die "missing Debian packages: ${missing[*]}; run as root, or: sudo apt-get install ${missing[*]}"
    fi
    say "installing ${missing[*]}"
    # Package scripts must not start the daemons through init scripts: this
    # script starts them itself, and `down` could not stop what it did not
    # start. policy-rc.d exiting 101 is Debian's way to say so; add one for
    # the install only, unless the machine has its own.
    local policy=/usr/sbin/policy-rc.d added_policy=''
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    {
        apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    } || rc=$?
    [[ -n $added_policy ]] && rm -f "$policy"
    ((rc == 0)) || die "apt-get install ${missing[*]} failed (exit $rc)"
}

# True when the controller answers and the node can run jobs. Slurm's
# commands wait up to MessageTimeout for a dead controller, so bound them.
controller_up() {
    timeout 5 scontrol ping 2>/dev/null | grep -q "is UP"
}
node_state() {
    timeout 5 sinfo -h -N -o %T 2>/dev/null | head -n1
}
node_usable() {
    # idle, mixed or allocated (a trailing * or ~ marks a node not responding
    # or powered down; those are not usable).
    [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]
}

write_config() {
    local host
    host=$(hostname -s)
    # slurmd -C prints this machine's figures as a NodeName line; keep its
    # memory and board count, and declare 8 single-thread cores on one socket.
    local detected mem boards
    detected=$(slurmd -C | head -n1)
    mem=$(grep -o 'RealMemory=[0-9]*' <<<"$detected" | cut -d= -f2)
    boards=$(grep -o 'Boards=[0-9]*' <<<"$detected" | cut -d= -f2)
    [[ -n $mem ]] || die "could not read RealMemory from 'slurmd -C': $detected"

    local new
    new=$(
        cat <<EOF
$MARK
# A single-node test cluster for hpfaas; see scripts/slurm.sh.
ClusterName=hpfaas-test
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
MailProg=/bin/true
# Schedule a submitted job at once (the default waits ~3 s per job).
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# No slurmdbd: finished jobs go to a text file that 'sacct -c' reads.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP_LOG
# Finished jobs stay visible to squeue/scontrol for MinJobAge seconds, so
# tests of "the scheduler forgot the job" take half a minute, not five.
MinJobAge=30
# Seconds between SIGTERM and SIGKILL when a job is cancelled or runs out of
# time: short, so tests of cancellation do not wait.
KillWait=5
InactiveLimit=0
# Generous: a loaded 2-core machine (a parallel cargo build) can keep slurmd
# from answering for a while, and a node marked down fails every test.
SlurmdTimeout=120
SlurmctldTimeout=120
# Let the node declare more CPUs than the machine has.
SlurmdParameters=config_overrides
NodeName=${host} NodeAddr=127.0.0.1 CPUs=8 Boards=${boards:-1} SocketsPerBoard=1 CoresPerSocket=8 ThreadsPerCore=1 RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=other Nodes=ALL Default=NO MaxTime=INFINITE State=UP
EOF
    )
    mkdir -p "$(dirname "$CONF")"
    if [[ -f $CONF ]]; then
        if [[ $(head -n1 "$CONF") != "$MARK" ]]; then
            local backup
            backup="$CONF.hpfaas-backup.$(date +%Y%m%d%H%M%S)"
            cp -p "$CONF" "$backup"
            say "kept the existing $CONF as $backup"
        elif [[ $(cat "$CONF") == "$new" ]]; then
            return 0
        fi
    fi
    printf '%s\n' "$new" >"$CONF.tmp.$$"
    chmod 644 "$CONF.tmp.$$"
    mv -f "$CONF.tmp.$$" "$CONF"
}

make_dirs() {
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
    install -d -o slurm -g slurm -m 755 "$RUN_DIR" "$LOG_DIR" /var/spool/slurmctld
    install -d -o root -g root -m 755 /var/spool/slurmd
    touch "$JOBCOMP_LOG"
    chown slurm:slurm "$JOBCOMP_LOG"
    # The emulated PBS and LSF tools, and tests, read this as any user.
    chmod 644 "$JOBCOMP_LOG"
}

ensure_munge_key() {
    local key=/etc/munge/munge.key
    [[ -s $key ]] && return 0
    say "generating $key"
    install -d -o munge -g munge -m 700 /etc/munge
    mungekey --create --keyfile="$key" 2>/dev/null ||
        dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
    chown munge:munge "$key"
    chmod 400 "$key"
}

# True when the pid file names a live process (a zombie, killed but not yet
# reaped by its parent, is not alive).
pid_alive() {
    [[ -s $1 ]] || return 1
    local pid state
    pid=$(cat "$1")
    kill -0 "$pid" 2>/dev/null || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z ]]
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A daemon that cannot bind its port exits at once, with the reason only in
# its log; say it up front, naming the way out.
check_port_free() {
    local name=$1 pidfile=$2 port=$3 var=$4
    pid_alive "$pidfile" && return 0
    if port_taken "$port"; then
        die "port $port, which $name needs, is taken by another process (another Slurm?); stop it, or set $var to a free port"
    fi
}

record_started() { echo "$1" >>"$STARTED_FILE"; }

start_daemons() {
    check_port_free slurmctld "$CTLD_PID" "$CTLD_PORT" HPFAAS_SLURMCTLD_PORT
    check_port_free slurmd "$SLURMD_PID" "$SLURMD_PORT" HPFAAS_SLURMD_PORT
    # Only a credential that encodes proves munged works; a pid file can lie.
    if timeout 5 munge -n </dev/null >/dev/null 2>&1; then
        say "munged already runs"
    else
        runuser -u munge -- /usr/sbin/munged --force
        record_started munged
    fi
    if pid_alive "$CTLD_PID"; then
        say "slurmctld already runs; asking it to reread $CONF"
        timeout 10 scontrol reconfigure || true
    else
        # State (job ids, jobs) is kept across restarts on purpose: a new
        # controller that started numbering at 1 again would hand out ids
        # that 'sacct -c' already reports for old jobs.
        /usr/sbin/slurmctld
        record_started slurmctld
    fi
    if pid_alive "$SLURMD_PID"; then
        say "slurmd already runs"
    else
        /usr/sbin/slurmd
        record_started slurmd
    fi
}

show_logs() {
    local f
    for f in /var/log/munge/munged.log "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
        [[ -f $f ]] || continue
        echo "--- last lines of $f" >&2
        tail -n 20 "$f" >&2
    done
}

wait_until_usable() {
    local deadline=$((SECONDS + UP_TIMEOUT)) resumed='' state
    local started=$SECONDS
    while ((SECONDS < deadline)); do
        # A daemon that exits at once (bad config, a port in use) says why in
        # its log; do not wait the whole timeout for it. They write their
        # pid files within a moment of starting.
        if ((SECONDS - started >= 2)) && ! { pid_alive "$CTLD_PID" && pid_alive "$SLURMD_PID"; }; then
            pid_alive "$CTLD_PID" || echo "slurm.sh: slurmctld is not running" >&2
            pid_alive "$SLURMD_PID" || echo "slurm.sh: slurmd is not running" >&2
            return 1
        fi
        if controller_up; then
            state=$(node_state)
            case $state in
                idle | mixed | allocated | completing) return 0 ;;
                drain* | down* | fail*)
                    # A node that was down or drained before a restart stays
                    # so; this machine is the whole cluster, so put it back.
                    if [[ -z $resumed ]]; then
                        say "node is $state; resuming it"
                        timeout 5 scontrol update nodename="$(hostname -s)" state=resume || true
                        resumed=1
                    fi
                    ;;
            esac
        fi
        sleep 0.2
    done
    return 1
}

cmd_up() {
    local start=$SECONDS
    if command -v scontrol >/dev/null && controller_up; then
        if node_usable; then
            say "already up; node is $(node_state)"
            if [[ -f $CONF && $(head -n1 "$CONF") != "$MARK" ]]; then
                say "note: $CONF was not written by this script; tests expect its partitions and CPUs=8"
            fi
            return 0
        fi
        # A Slurm answers but its node cannot take jobs. Ours (a restart left
        # it drained): put it back. Someone else's: not ours to change.
        if ! pid_alive "$CTLD_PID" || [[ $(head -n1 "$CONF" 2>/dev/null) != "$MARK" ]]; then
            die "a Slurm not started by this script runs here, and its node is $(node_state); fix or stop it first"
        fi
        [[ $(id -u) -eq 0 ]] || die "the node is $(node_state), and only root can resume it"
        wait_until_usable || {
            echo "slurm.sh: the node stayed $(node_state) for ${UP_TIMEOUT} s" >&2
            show_logs
            exit 1
        }
        say "up in $((SECONDS - start)) s; node is $(node_state)"
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        local missing
        missing=$(missing_packages | tr '\n' ' ')
        [[ -n $missing ]] && echo "slurm.sh: missing Debian packages: $missing" >&2
        die "Slurm is not running and only root can start it"
    fi
    install_packages
    write_config
    make_dirs
    ensure_munge_key
    start_daemons
    if ! wait_until_usable; then
        echo "slurm.sh: Slurm did not become usable within ${UP_TIMEOUT} s (node: $(node_state || true))" >&2
        show_logs
        exit 1
    fi
    # The node's state may be the one saved before a restart, reported before
    # slurmd has registered: only a job that ran proves that munge, the
    # controller and slurmd work together. (Skipped when recovered jobs keep
    # the node busy: the probe would wait behind them.)
    if [[ $(node_state) == idle ]] && ! timeout 20 srun -J hpfaas-slurm-probe -t 1 -n 1 true; then
        echo "slurm.sh: a probe job (srun true) did not run" >&2
        show_logs
        exit 1
    fi
    say "up in $((SECONDS - start)) s; node is $(node_state)"
}

# Cancels the jobs of hpfaas and its tests, and waits until they have left the
# queue (bounded), so no job outlives the Slurm that ran it.
cancel_test_jobs() {
    controller_up || return 0
    local ids=() id name prefix
    while read -r id name; do
        for prefix in "${JOB_NAME_PREFIXES[@]}"; do
            [[ $name == "$prefix"* ]] && ids+=("$id") && break
        done
    done < <(timeout 10 squeue -h -o '%A %j' 2>/dev/null || true)
    ((${#ids[@]})) || return 0
    say "cancelling ${#ids[@]} leftover job(s): ${ids[*]}"
    timeout 10 scancel "${ids[@]}" 2>/dev/null || true
    local deadline=$((SECONDS + DOWN_TIMEOUT)) left
    while ((SECONDS < deadline)); do
        left=$(timeout 10 squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING -j "$(
            IFS=,
            echo "${ids[*]}"
        )" -o %A 2>/dev/null | wc -l || true)
        ((left == 0)) && return 0
        sleep 0.5
    done
    say "warning: $left job(s) still in the queue after ${DOWN_TIMEOUT} s"
}

stop_daemon() {
    local name=$1 pidfile=$2 pid
    [[ -s $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid"
    local deadline=$((SECONDS + DOWN_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "warning: $name (pid $pid) ignored SIGTERM for ${DOWN_TIMEOUT} s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped $name"
}

cmd_down() {
    [[ $(id -u) -eq 0 ]] || die "only root can stop the daemons"
    if [[ ! -s $STARTED_FILE ]]; then
        say "no daemons started by 'slurm.sh up' are recorded; nothing to stop"
        return 0
    fi
    cancel_test_jobs
    # Reverse order of start: slurmd, then the controller, then munged
    # (which both use to authenticate until they are gone).
    grep -qx slurmd "$STARTED_FILE" && stop_daemon slurmd "$SLURMD_PID"
    grep -qx slurmctld "$STARTED_FILE" && stop_daemon slurmctld "$CTLD_PID"
    grep -qx munged "$STARTED_FILE" && stop_daemon munged "$MUNGE_PID"
    rm -f "$STARTED_FILE"
}

cmd_status() {
    local name pidfile
    for name in munged slurmctld slurmd; do
        case $name in
            munged) pidfile=$MUNGE_PID ;;
            slurmctld) pidfile=$CTLD_PID ;;
            slurmd) pidfile=$SLURMD_PID ;;
        esac
        if pid_alive "$pidfile"; then
            echo "$name: running (pid $(cat "$pidfile"))"
        else
            echo "$name: not running"
        fi
    done
    if command -v sinfo >/dev/null && controller_up; then
        timeout 5 sinfo || true
        node_usable && return 0
    else
        echo "slurmctld does not answer"
    fi
    return 1
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
