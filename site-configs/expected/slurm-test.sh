#!/bin/bash
#SBATCH --job-name=hpfaas-slurm-test-1
#SBATCH --nodes=1
#SBATCH --time=00:10:00
#SBATCH --partition=debug
#SBATCH --output=/home/user/.hpfaas/endpoints/slurm-test/blocks/block-1.out
#SBATCH --error=/home/user/.hpfaas/endpoints/slurm-test/blocks/block-1.err

# hpfaas block 1 (hpfaas-slurm-test-1), written by the endpoint agent
export HPFAAS_HOME=/home/user/.hpfaas
export HPFAAS_JOB_ENV=/home/user/.hpfaas/endpoints/slurm-test/blocks/block-1.env
(umask 077; env -0 > "$HPFAAS_JOB_ENV")
srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --cpu-bind=none --overlap --kill-on-bad-exit=1 /opt/hpfaas/bin/hpfaas manager --broker tcp://10.1.2.3:55001 --prefetch 8 --worker-python python3 --block-id 1
