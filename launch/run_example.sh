#!/usr/bin/env bash
# Train one of the launch/ examples on NP ranks, checkpointing to BACKUP_DIR:
#   launch/run_example.sh iris|mnist [extra arguments for launch/train_<name>.py]
# After a crash or preemption, run the same command again: training resumes from the newest
# valid checkpoint in BACKUP_DIR. run_iris.sh and run_mnist.sh call this with their defaults.
set -euo pipefail

EXAMPLE=${1:?usage: run_example.sh iris|mnist [train script arguments]}
shift
NP=${NP:-2}                                # ranks (processes)
EPOCHS=${EPOCHS:-5}
BATCH_SIZE=${BATCH_SIZE:-64}               # global batch, split across the ranks
OPTIMIZER=${OPTIMIZER:-adam}
SEED=${SEED:-0}
BACKUP_DIR=${BACKUP_DIR:-./backups/$EXAMPLE}  # checkpoints; delete it to start from scratch
HOSTS=${HOSTS:-}                           # e.g. node1:2,node2:2 (needs distnn-run)
MPI_ARGS=${MPI_ARGS:-}                     # extra launcher options, e.g. --allow-run-as-root
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT="$HERE/train_$EXAMPLE.py"
[[ -f $SCRIPT ]] || { echo "run_example.sh: no training script $SCRIPT; expected iris or mnist, received $EXAMPLE" >&2; exit 2; }
TRAIN=("$PYTHON" "$SCRIPT" --epochs "$EPOCHS" --batch-size "$BATCH_SIZE"
       --optimizer "$OPTIMIZER" --seed "$SEED" --backup-dir "$BACKUP_DIR" "$@")

if command -v distnn-run >/dev/null; then
    # distnn-run sets OMP_NUM_THREADS/BLAS threads to cores per rank and speaks any MPI.
    exec distnn-run -np "$NP" ${HOSTS:+-H "$HOSTS"} --mpi-args "$MPI_ARGS" -- "${TRAIN[@]}"
fi
if [[ -n $HOSTS ]]; then
    echo "run_example.sh: HOSTS needs distnn-run (pip install distnn); received HOSTS=$HOSTS" >&2
    exit 2
fi
# Plain mpirun on this machine: give each rank its share of the cores, as distnn-run would.
THREADS=$(( $(nproc) / NP )); (( THREADS > 0 )) || THREADS=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$THREADS}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$OMP_NUM_THREADS}
export MKL_NUM_THREADS=${MKL_NUM_THREADS:-$OMP_NUM_THREADS}
# shellcheck disable=SC2086  # MPI_ARGS is a list of words on purpose
exec "${MPIRUN:-mpirun}" -n "$NP" $MPI_ARGS "${TRAIN[@]}"
