#!/usr/bin/env bash
# The nodes axis on SLURM. Submitit fixes a sweep's resources (nodes, tasks per node) once
# per submission, so each node count is its own multirun; the sweeps land side by side and
# report.py folds them together:
#   scripts/slurm_node_sweep.sh outputs/sweeps/cluster "1 2 4 8" model=small,medium,large data.dir=DIR
#   python report.py 'sweep_dir=[outputs/sweeps/cluster/nodes1,outputs/sweeps/cluster/nodes2,...]'
set -euo pipefail
root=${1:?usage: $0 SWEEP_ROOT "NODE COUNTS" [overrides...]}
counts=${2:?usage: $0 SWEEP_ROOT "NODE COUNTS" [overrides...]}
shift 2
for n in $counts; do
  python train.py -m hydra/launcher=slurm trainer=ddp trainer.num_nodes="$n" \
    hydra.sweep.dir="$root/nodes$n" "$@"
done
