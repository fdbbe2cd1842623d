#!/usr/bin/env bash
# Checks the emulated PBS Pro and LSF tools against the local Slurm: submits
# small jobs through each, follows them to the end, and compares what the tools
# print, and their exit codes, with what the real tools do (README.md here).
# Needs a running Slurm (scripts/slurm.sh up). Takes about 15 s.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export PATH="$here/bin:$PATH"
# Own state and working directories, so this run neither sees nor disturbs
# the jobs of tests running at the same time.
work=$(mktemp -d /tmp/hpfaas-emu-selftest.XXXXXX)
export HPFAAS_EMULATOR_STATE=$work/state
export HPFAAS_PBS_SERVER=hpfaas-pbs
mkdir -p "$work/submit"
cd "$work/submit"

readonly WAIT=60 # seconds any one job may take to reach the state awaited
checks=0
submitted=() # Slurm ids of this run's jobs, cancelled on exit if still there

cleanup() {
    ((${#submitted[@]} == 0)) || scancel "${submitted[@]}" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "selftest: FAIL: $*" >&2
    exit 1
}
ok() {
    checks=$((checks + 1))
    echo "  ok: $*"
}

# expect_eq WHAT EXPECTED ACTUAL
expect_eq() {
    [[ $3 == "$2" ]] || fail "$1: expected '$2', got '$3'"
    ok "$1"
}
# expect_match WHAT REGEX ACTUAL
expect_match() {
    [[ $3 =~ $2 ]] || fail "$1: '$3' does not match /$2/"
    ok "$1"
}

# Runs a command; sets OUT, ERR and RC without stopping the script.
run() {
    RC=0
    OUT=$("$@" 2>"$work/stderr") || RC=$?
    ERR=$(cat "$work/stderr")
}

# A field of a job in `qstat -f -F json -x` output: json_field JSON ID NAME.
json_field() {
    python3 -c '
import json, sys
doc = json.loads(sys.argv[1])
job = doc.get("Jobs", {}).get(sys.argv[2], {})
value = job.get(sys.argv[3], "")
print(json.dumps(value) if isinstance(value, (dict, list)) else value)
' "$@"
}

# wait_pbs ID STATE: polls qstat until the job is in STATE (bounded).
wait_pbs() {
    local deadline=$((SECONDS + WAIT)) state=
    while ((SECONDS < deadline)); do
        run qstat -f -F json -x "$1"
        state=$(json_field "$OUT" "$1" job_state)
        [[ $state == "$2" ]] && return 0
        sleep 0.2
    done
    fail "PBS job $1 did not reach state $2 within ${WAIT} s (last: '$state')"
}

# wait_lsf ID STAT: polls bjobs until the job's STAT is STAT (bounded).
wait_lsf() {
    local deadline=$((SECONDS + WAIT)) line=
    while ((SECONDS < deadline)); do
        run bjobs -noheader -o 'jobid stat' "$1"
        line=$OUT
        [[ $line == "$1 $2" ]] && return 0
        sleep 0.2
    done
    fail "LSF job $1 did not reach $2 within ${WAIT} s (last: '$line')"
}

command -v sbatch >/dev/null || fail "sbatch not found: is Slurm installed (scripts/slurm.sh up)?"
timeout 10 squeue -h >/dev/null 2>&1 || fail "Slurm does not answer: run scripts/slurm.sh up"
host=$(hostname -s)

echo "PBS Pro (qsub, qstat, qdel)"
cat >pbs-job.sh <<'EOF'
#!/bin/bash
#PBS -N it-emu-pbs
#PBS -l select=1:ncpus=1:mpiprocs=2
#PBS -l walltime=00:05:00
#PBS -l filesystems=home
#PBS -A someproject
#PBS -j oe
echo "cwd=$PWD"
echo "jobid=$PBS_JOBID"
echo "workdir=$PBS_O_WORKDIR"
echo "nodes=$(tr '\n' ' ' <"$PBS_NODEFILE")"
echo "path=$PATH"
echo "slurm_vars=$(env | grep -c '^SLURM_' || true)"
exit 3
EOF
run qsub pbs-job.sh
expect_eq "qsub exits 0" 0 "$RC"
expect_match "qsub prints <seq>.<server>" '^[0-9]+\.hpfaas-pbs$' "$OUT"
pbs_id=$OUT
seq=${pbs_id%%.*}
submitted+=("$seq")
wait_pbs "$pbs_id" F
expect_eq "a finished job's Exit_status is its script's exit code" 3 "$(json_field "$OUT" "$pbs_id" Exit_status)"
expect_eq "queue is PBS's default" workq "$(json_field "$OUT" "$pbs_id" queue)"
expect_match "Resource_List keeps what was asked" '"select": "1:ncpus=1:mpiprocs=2".*"walltime": "00:05:00"' \
    "$(json_field "$OUT" "$pbs_id" Resource_List)"
expect_match "JSON is PBS's (4-space indent, no space after colons)" '^\{
    "timestamp":[0-9]+,
    "pbs_version":"[0-9.]+",
    "pbs_server":"hpfaas-pbs",
    "Jobs":\{' "$OUT"

output=$work/submit/it-emu-pbs.o$seq
[[ -f $output ]] || fail "no output file $output (PBS's <name>.o<seq> in the submit directory)"
ok "output in <name>.o<seq> in the submit directory"
expect_eq "job starts in \$HOME" "cwd=$HOME" "$(grep '^cwd=' "$output")"
expect_eq "PBS_JOBID is the full id" "jobid=$pbs_id" "$(grep '^jobid=' "$output")"
expect_eq "PBS_O_WORKDIR is the submit directory" "workdir=$work/submit" "$(grep '^workdir=' "$output")"
expect_eq "PBS_NODEFILE lists the node once per MPI process" "nodes=$host $host " "$(grep '^nodes=' "$output")"
expect_eq "PATH is minimal" "path=/bin:/usr/bin" "$(grep '^path=' "$output")"
expect_eq "no Slurm variables in the job" "slurm_vars=0" "$(grep '^slurm_vars=' "$output")"

run qstat "$pbs_id"
expect_eq "qstat without -x: a finished job exits 35" 35 "$RC"
expect_eq "qstat without -x: says so" \
    "qstat: $pbs_id Job has finished, use -x or -H to obtain historical job information" "$ERR"

run qstat -f -F json -x "$pbs_id" 999999 "$seq"
expect_eq "qstat with an unknown id exits 153" 153 "$RC"
expect_eq "qstat names the unknown id on stderr" "qstat: Unknown Job Id 999999.hpfaas-pbs" "$ERR"
expect_eq "qstat still prints the known ones" F "$(json_field "$OUT" "$pbs_id" job_state)"

printf '#!/bin/sh\n#PBS -N it-emu-pbs-long\nsleep 300\n' >pbs-long.sh
run qsub pbs-long.sh
long_id=$OUT
submitted+=("${long_id%%.*}")
wait_pbs "$long_id" R
ok "a running job is R"
run qdel "$long_id"
expect_eq "qdel exits 0" 0 "$RC"
wait_pbs "$long_id" F
expect_eq "a qdel'd running job's Exit_status is 271 (256+SIGTERM)" 271 "$(json_field "$OUT" "$long_id" Exit_status)"

run qdel 999999
expect_eq "qdel of an unknown id exits 153" 153 "$RC"
expect_eq "qdel names the unknown id" "qdel: Unknown Job Id 999999.hpfaas-pbs" "$ERR"
run qdel "$pbs_id"
expect_eq "qdel of a finished job exits 35" 35 "$RC"
expect_eq "qdel says it has finished" "qdel: Job has finished $pbs_id" "$ERR"

run qsub -h -N it-emu-pbs-held pbs-long.sh
held_id=$OUT
submitted+=("${held_id%%.*}")
wait_pbs "$held_id" H
ok "a held job is H"
run qdel "$held_id"
wait_pbs "$held_id" F
expect_eq "a job deleted before it ran has no Exit_status" "" "$(json_field "$OUT" "$held_id" Exit_status)"

echo "LSF (bsub, bjobs, bkill)"
cat >lsf-job.sh <<'EOF'
#!/bin/bash
#BSUB -J it-emu-lsf
#BSUB -W 5
#BSUB -n 2
#BSUB -P someproject
#BSUB -o lsf.%J.out
echo "cwd=$PWD"
echo "jobid=$LSB_JOBID"
echo "hosts=$LSB_HOSTS"
echo "mcpu=$LSB_MCPU_HOSTS"
echo "inherited=$HPFAAS_SELFTEST_VAR"
echo "slurm_vars=$(env | grep -c '^SLURM_' || true)"
EOF
HPFAAS_SELFTEST_VAR=carried run bsub <lsf-job.sh
expect_eq "bsub exits 0" 0 "$RC"
expect_match "bsub prints LSF's line" '^Job <[0-9]+> is submitted to default queue <normal>\.$' "$OUT"
lsf_id=$(sed -E 's/^Job <([0-9]+)>.*/\1/' <<<"$OUT")
submitted+=("$lsf_id")
wait_lsf "$lsf_id" DONE
run bjobs -noheader -o 'jobid stat exit_code' "$lsf_id"
expect_eq "bjobs -o 'jobid stat exit_code' of a DONE job" "$lsf_id DONE -" "$OUT"
output=$work/submit/lsf.$lsf_id.out
[[ -f $output ]] || fail "no output file $output (-o with %J)"
ok "output where -o said, %J replaced"
expect_eq "job starts in the submit directory" "cwd=$work/submit" "$(grep '^cwd=' "$output")"
expect_eq "LSB_JOBID" "jobid=$lsf_id" "$(grep '^jobid=' "$output")"
expect_eq "LSB_HOSTS lists one host per slot" "hosts=$host $host" "$(grep '^hosts=' "$output")"
expect_eq "LSB_MCPU_HOSTS" "mcpu=$host 2" "$(grep '^mcpu=' "$output")"
expect_eq "the submission environment is carried over" "inherited=carried" "$(grep '^inherited=' "$output")"
expect_eq "no Slurm variables in the job" "slurm_vars=0" "$(grep '^slurm_vars=' "$output")"

run bsub -q other -J it-emu-lsf-fail -o /dev/null sh -c 'exit 3'
expect_match "bsub -q names the queue" '^Job <[0-9]+> is submitted to queue <other>\.$' "$OUT"
fail_id=$(sed -E 's/^Job <([0-9]+)>.*/\1/' <<<"$OUT")
submitted+=("$fail_id")
wait_lsf "$fail_id" EXIT
run bjobs -noheader -o "jobid stat exit_code" "$fail_id"
expect_eq "a failed job is EXIT with its exit code" "$fail_id EXIT 3" "$OUT"

run bjobs -noheader -o 'jobid stat' "$lsf_id" 999999
expect_eq "bjobs with an unknown id exits 255" 255 "$RC"
expect_eq "bjobs names the unknown id on stderr" "Job <999999> is not found" "$ERR"
expect_eq "bjobs still prints the known ones" "$lsf_id DONE" "$OUT"

run bsub -J it-emu-lsf-long -o /dev/null sleep 300
long_id=$(sed -E 's/^Job <([0-9]+)>.*/\1/' <<<"$OUT")
submitted+=("$long_id")
wait_lsf "$long_id" RUN
ok "a running job is RUN"
run bkill "$long_id"
expect_eq "bkill prints LSF's line" "Job <$long_id> is being terminated" "$OUT"
wait_lsf "$long_id" EXIT
run bjobs -noheader -o 'jobid stat exit_code' "$long_id"
expect_eq "a killed job is EXIT 130" "$long_id EXIT 130" "$OUT"
run bkill 999999
expect_eq "bkill of an unknown id exits 255" 255 "$RC"
expect_eq "bkill names it" "Job <999999>: No matching job found" "$ERR"

echo "selftest: all $checks checks passed"
