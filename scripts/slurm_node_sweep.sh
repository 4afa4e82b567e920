#!/usr/bin/env bash
# The nodes axis on SLURM. Submitit fixes a sweep's resources (nodes, tasks per node) once
# per submission, so each node count is its own multirun; the sweeps land side by side and
# report.py folds them together:
#   DEVICES=4 scripts/slurm_node_sweep.sh outputs/sweeps/cluster "1 2 4 8" model=small,medium,large data.dir=DIR
#   python report.py 'sweep_dir=[outputs/sweeps/cluster/nodes1,outputs/sweeps/cluster/nodes2,...]'
# DEVICES (GPUs per node) is required: SLURM's tasks and GPUs per node need a number, not "auto".
set -euo pipefail
usage="usage: DEVICES=<GPUs per node> $0 SWEEP_ROOT \"NODE COUNTS\" [overrides...]"
devices=${DEVICES:?$usage}
root=${1:?$usage}
counts=${2:?$usage}
shift 2
for n in $counts; do
  python train.py -m hydra/launcher=slurm trainer=ddp trainer.devices="$devices" \
    trainer.num_nodes="$n" hydra.sweep.dir="$root/nodes$n" "$@"
done
