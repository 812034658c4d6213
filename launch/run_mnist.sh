#!/usr/bin/env bash
# Train the MNIST CNN (launch/train_mnist.py) on NP ranks with backups; rerun to resume.
#   NP=4 EPOCHS=10 launch/run_mnist.sh   (variables: see run_example.sh)
export EPOCHS=${EPOCHS:-5} BATCH_SIZE=${BATCH_SIZE:-128}
exec "$(dirname "${BASH_SOURCE[0]}")/run_example.sh" mnist "$@"
