#!/bin/bash
#SBATCH --job-name=hpfaas-slurm-cpu-1
#SBATCH --nodes=2
#SBATCH --time=01:00:00
#SBATCH --partition=compute
#SBATCH --account=abc123
#SBATCH --qos=normal
#SBATCH --constraint=cpu
#SBATCH --output=/home/user/.hpfaas/endpoints/slurm-cpu/blocks/block-1.out
#SBATCH --error=/home/user/.hpfaas/endpoints/slurm-cpu/blocks/block-1.err
#SBATCH --exclusive

# hpfaas block 1 (hpfaas-slurm-cpu-1), written by the endpoint agent
export HPFAAS_HOME=/home/user/.hpfaas
module load python/3.11
source ~/venvs/science/bin/activate
export HPFAAS_JOB_ENV=/home/user/.hpfaas/endpoints/slurm-cpu/blocks/block-1.env
(umask 077; env -0 > "$HPFAAS_JOB_ENV")
srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpu-bind=none --overlap --kill-on-bad-exit=1 /opt/hpfaas/bin/hpfaas manager --broker tcp://10.1.2.3:55001 --prefetch 8 --worker-python python3 --block-id 1
