#!/bin/bash
# Data-parallel training of a digits model on a Slurm cluster: one chainrule process (MPI rank) per
# task, `--batch-size` shared out among them (see "Beyond one machine" in README.md).
#
#   sbatch deploy/slurm-train.sh                                 # 2 nodes x 4 ranks, the mlp preset
#   sbatch --nodes=8 --ntasks-per-node=16 deploy/slurm-train.sh  # any shape: the #SBATCH lines are defaults
#   CHAINRULE_ARGS="--model cnn --batch-size 512 --lr 4e-3" sbatch deploy/slurm-train.sh
#   CHAINRULE_OUT=runs/digits-slurm-123 CHAINRULE_ARGS=--resume sbatch deploy/slurm-train.sh   # continue
#
# Needs on every node: Python with `pip install 'chainrule[mpi]'` (mpi4py and Open MPI's mpirun; a
# site's own Open MPI works too, with mpi4py built against it), MNIST under $CHAINRULE_DATA, and the
# output folder on a filesystem that the first node writes and all can read.
#SBATCH --job-name=chainrule-digits
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=1
#SBATCH --time=02:00:00
#SBATCH --output=chainrule-digits-%j.out
set -euo pipefail

out="${CHAINRULE_OUT:-runs/digits-slurm-$SLURM_JOB_ID}"
# shellcheck disable=SC2206  # the extra options are meant to split into words
args=(${CHAINRULE_ARGS:---model mlp})
# Each rank's BLAS uses the cores Slurm gave its task, no more: ranks sharing a node would
# otherwise each start a thread per core and slow each other down.
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"

# Open MPI's mpirun reads the allocation from Slurm (nodes, tasks per node) and starts one rank per
# task, bound to its task's cores; -x hands each rank the settings it needs.
export_vars=(-x OMP_NUM_THREADS)
if [ -n "${CHAINRULE_DATA:-}" ]; then
    export_vars+=(-x CHAINRULE_DATA)
fi
mpirun -np "$SLURM_NTASKS" --map-by "slot:PE=$OMP_NUM_THREADS" "${export_vars[@]}" \
    chainrule digits train --out "$out" --quiet "${args[@]}"
