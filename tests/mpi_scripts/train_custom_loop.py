"""MPI worker for tests/test_distributed_training.py: a Horovod-style custom training loop.

    mpiexec -n 3 python train_custom_loop.py OUT.npz

Every rank starts from *different* random weights; ``broadcast_weights`` must make them rank 0's.
Each step, every rank takes an equal contiguous share of the global batch, computes its mean
gradient with ``model.compute_gradients`` and ``DistributedOptimizer.apply`` averages the shares,
which is the mean over the global batch: the run equals a single process on the whole batches.
``MetricAverage`` is checked on rank-dependent logs. Rank 0 writes the initial and final weights.
"""
import argparse

import numpy as np

import distnn.distributed as dist
from distnn import backend, optimizers
from distnn.datasets import make_classification
from distnn.layers import Dense
from distnn.models import Sequential
from distnn.utils import set_random_seed, to_categorical

GLOBAL_BATCH = 12  # divisible by 1, 2, 3 and 4 ranks: equal shares, so the mean of means is exact
STEPS = 8


def all_equal(array):
    gathered = dist.allgather_object(backend.to_numpy(array).copy())
    return all(np.array_equal(g, gathered[0]) for g in gathered)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    args = parser.parse_args()

    comm = dist.init()
    set_random_seed(100 + comm.rank)
    x, y = make_classification(GLOBAL_BATCH * STEPS, n_classes=3, shape=(6,), seed=3)
    y = to_categorical(y, 3)
    model = Sequential([Dense(8, activation="tanh", input_shape=(6,)), Dense(3, activation="softmax")])
    optimizer = dist.DistributedOptimizer(optimizers.Adam(0.05))
    model.compile(optimizer=optimizer, loss="categorical_crossentropy")
    if comm.size > 1 and all_equal(model.params):
        raise AssertionError("ranks drew identical initial weights: the broadcast check would prove nothing")
    dist.broadcast_weights(model)
    if not all_equal(model.params):
        raise AssertionError(f"rank {comm.rank}: weights differ after broadcast_weights")
    initial = backend.to_numpy(model.params).copy()

    share = GLOBAL_BATCH // comm.size
    for step in range(STEPS):
        lo = step * GLOBAL_BATCH + comm.rank * share
        model.compute_gradients(x[lo:lo + share], y[lo:lo + share])
        optimizer.apply(model.params, model.grads)
    if not all_equal(model.params):
        raise AssertionError(f"rank {comm.rank}: weights differ after the custom loop")

    logs = {"loss": float(comm.rank), "accuracy": 2.0 * comm.rank, "note": "kept"}
    dist.MetricAverage().on_epoch_end(0, logs)
    expected = (comm.size - 1) / 2
    if logs != {"loss": expected, "accuracy": 2 * expected, "note": "kept"}:
        raise AssertionError(f"rank {comm.rank}: MetricAverage gave {logs}, expected mean loss {expected}")

    if comm.rank == 0:
        np.savez(args.out, initial=initial, final=backend.to_numpy(model.params))
    print(f"custom_loop OK rank={comm.rank} size={comm.size}", flush=True)


if __name__ == "__main__":
    main()
