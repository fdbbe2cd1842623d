#!/bin/bash
#SBATCH --job-name=hpfaas-slurm-gpu-1
#SBATCH --nodes=1
#SBATCH --time=02:00:00
#SBATCH --partition=gpu
#SBATCH --account=abc123
#SBATCH --output=/home/user/.hpfaas/endpoints/slurm-gpu/blocks/block-1.out
#SBATCH --error=/home/user/.hpfaas/endpoints/slurm-gpu/blocks/block-1.err
#SBATCH --gres=gpu:4
#SBATCH --exclusive

# hpfaas block 1 (hpfaas-slurm-gpu-1), written by the endpoint agent
export HPFAAS_HOME=/home/user/.hpfaas
module load cuda/12.2 python/3.11
export HPFAAS_JOB_ENV=/home/user/.hpfaas/endpoints/slurm-gpu/blocks/block-1.env
(umask 077; env -0 > "$HPFAAS_JOB_ENV")
srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --cpu-bind=none --overlap --kill-on-bad-exit=1 /opt/hpfaas/bin/hpfaas manager --broker tcp://10.1.2.3:55001 --prefetch 8 --worker-python python3 --block-id 1
