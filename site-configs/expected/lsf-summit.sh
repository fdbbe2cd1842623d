#!/bin/bash
#BSUB -J hpfaas-lsf-summit-1
#BSUB -nnodes 2
#BSUB -W 2:00
#BSUB -q batch
#BSUB -P ABC123
#BSUB -o /home/user/.hpfaas/endpoints/lsf-summit/blocks/block-1.out
#BSUB -e /home/user/.hpfaas/endpoints/lsf-summit/blocks/block-1.err

# hpfaas block 1 (hpfaas-lsf-summit-1), written by the endpoint agent
export HPFAAS_HOME=/home/user/.hpfaas
module load python/3.8-anaconda3
cd /home/user/.hpfaas/endpoints/lsf-summit/blocks || exit 1
export HPFAAS_JOB_ENV=/home/user/.hpfaas/endpoints/lsf-summit/blocks/block-1.env
(umask 077; env -0 > "$HPFAAS_JOB_ENV")
jsrun --nrs 2 --rs_per_host 1 --tasks_per_rs 1 --cpu_per_rs ALL_CPUS --gpu_per_rs ALL_GPUS --bind none /opt/hpfaas/bin/hpfaas manager --broker tcp://10.1.2.3:55001 --prefetch 8 --worker-python python3 --block-id 1
