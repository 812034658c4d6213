#!/usr/bin/env bash
# Train the iris MLP (launch/train_iris.py) on NP ranks with backups; rerun to resume.
#   NP=4 EPOCHS=100 launch/run_iris.sh   (variables: see run_example.sh)
export EPOCHS=${EPOCHS:-50} BATCH_SIZE=${BATCH_SIZE:-16}
exec "$(dirname "${BASH_SOURCE[0]}")/run_example.sh" iris "$@"
