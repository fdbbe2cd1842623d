#!/bin/sh
# hpfaas block 1 (hpfaas-laptop-1)
export HPFAAS_HOME=/home/user/.hpfaas
exec /opt/hpfaas/bin/hpfaas manager --broker tcp://10.1.2.3:55001 --prefetch 8 --worker-python python3 --block-id 1
