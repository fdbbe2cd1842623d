#!/bin/bash
#PBS -N hpfaas-pbs-polaris-1
#PBS -S /bin/bash
#PBS -q debug
#PBS -A MyProject
#PBS -l select=2:system=polaris
#PBS -l place=scatter
#PBS -l walltime=01:00:00
#PBS -o /home/user/.hpfaas/endpoints/pbs-polaris/blocks/block-1.out
#PBS -e /home/user/.hpfaas/endpoints/pbs-polaris/blocks/block-1.err
#PBS -l filesystems=home:eagle

# hpfaas block 1 (hpfaas-pbs-polaris-1), written by the endpoint agent
export HPFAAS_HOME=/home/user/.hpfaas
module use /soft/modulefiles
module load conda
conda activate base
cd /home/user/.hpfaas/endpoints/pbs-polaris/blocks || exit 1
export HPFAAS_JOB_ENV=/home/user/.hpfaas/endpoints/pbs-polaris/blocks/block-1.env
(umask 077; env -0 > "$HPFAAS_JOB_ENV")
mpiexec -n 2 --ppn 1 --cpu-bind none /opt/hpfaas/bin/hpfaas manager --broker tcp://10.1.2.3:55001 --prefetch 8 --worker-python python3 --block-id 1
