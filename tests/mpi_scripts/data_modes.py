"""MPI worker for tests/test_data_parallel_modes.py: every input kind in both data-parallel modes.

    mpiexec -n N python data_modes.py OUT.npz

Runs each case below on every rank and, on rank 0, saves what the test compares with one process
(final weights, the run's data seed, evaluate results, this rank's predictions). Every rank checks
that all ranks end with identical weights. Cases whose data depends on the rank (own shards) use
the first half of MNIST-5k's training images on rank 0 and the rest on rank 1.
"""
import sys

import numpy as np

import distnn
import distnn.datasets
import distnn.distributed as hvd
from distnn import backend, layers, models, optimizers
from distnn.utils import PyDataset, set_random_seed

OUT = sys.argv[1]
comm = hvd.init()
RANK, SIZE = comm.rank, comm.size
(X_ALL, Y_ALL), _ = distnn.datasets.mnist()
X_ALL = (X_ALL.reshape(len(X_ALL), -1) / 255).astype("float32")
results: dict = {}


def mlp(optimizer=None, dropout=0.2):
    set_random_seed(0)
    model = models.Sequential([layers.Dense(32, activation="relu", input_shape=(784,)), layers.Dropout(dropout),
                               layers.Dense(10, activation="softmax")])
    model.compile(optimizer=optimizer or optimizers.SGD(0.05), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def weights(model):
    params = backend.to_numpy(model.params).copy()
    gathered = comm.allgather_obj(params)
    if not all(np.array_equal(p, params) for p in gathered):
        raise AssertionError(f"rank {RANK}: ranks hold different weights")
    return params


def shard(split):
    bounds = [0, split, len(X_ALL)]
    return X_ALL[bounds[RANK]:bounds[RANK + 1]], Y_ALL[bounds[RANK]:bounds[RANK + 1]]


class Batches(PyDataset):
    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[rows], self.y[rows]


class BatchList:
    """A re-iterable of batches (not an iterator): iterated afresh each epoch."""

    def __init__(self, x, y, batch_size):
        self.x, self.y, self.batch_size = x, y, batch_size

    def __iter__(self):
        for start in range(0, len(self.x), self.batch_size):
            yield self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]


# ------------------------------------------------------------------------------ own shards
if SIZE == 2:
    for name, split, batch_size, epochs in (("even", 2000, 64, 2), ("uneven", 2001, 64, 2), ("ragged", 2001, 1000, 2)):
        x, y = shard(split)
        model = mlp()
        history = model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
        results[f"own_{name}_params"] = weights(model)
        results[f"own_{name}_seed"] = model._data_seed
        results[f"own_{name}_steps"] = model.history.params["steps"]
        results[f"own_{name}_loss"] = history.history["loss"]
        results[f"own_{name}_evaluate"] = model.evaluate(x, y, verbose=0)
        predictions = model.predict(x, verbose=0)
        results[f"own_{name}_predictions"] = np.concatenate(comm.allgather_obj(predictions))

    # A generator per rank, of different lengths and no steps_per_epoch: 5 and 3 batches of 100.
    x, y = shard(2000)
    count = 5 if RANK == 0 else 3
    model = mlp()
    model.fit((b for b in [(x[i * 100:(i + 1) * 100], y[i * 100:(i + 1) * 100]) for i in range(count)]),
              epochs=1, verbose=0)
    results["own_generator_params"] = weights(model)
    results["own_generator_seed"] = model._data_seed

    # train_on_batch with each rank's own batch (a Horovod custom loop): the concatenation's step.
    model = mlp()
    rows = slice(0, 48) if RANK == 0 else slice(100, 120)
    model.train_on_batch(X_ALL[rows], Y_ALL[rows])
    results["own_train_on_batch_params"] = weights(model)
    results["own_train_on_batch_seed"] = model._batch_seed

    # Horovod's semantics: identical data, DistributedOptimizer: batch_size per rank, own orders.
    model = mlp(hvd.DistributedOptimizer(optimizers.SGD(0.05)))
    model.fit(X_ALL[:1000], Y_ALL[:1000], batch_size=50, epochs=2, verbose=0)
    results["horovod_params"] = weights(model)
    results["horovod_seed"] = model._data_seed
    results["horovod_steps"] = model.history.params["steps"]

    # Same-data mode holds only while the batches stay identical: a diverging generator is refused.
    def diverging():
        yield X_ALL[:32], Y_ALL[:32]
        yield X_ALL[32 + RANK:64 + RANK], Y_ALL[32 + RANK:64 + RANK]

    try:
        mlp().fit(diverging(), epochs=1, verbose=0)
        results["diverged"] = "no error"
    except hvd.RankMismatchError as exc:
        results["diverged"] = str(exc).splitlines()[0]

# --------------------------------------------------------------- same data, every input kind
x, y = X_ALL[:1000], Y_ALL[:1000]
for kind in ("arrays", "py_dataset", "py_dataset_threads", "generator", "iterable"):
    model = mlp()
    if kind == "arrays":
        model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    elif kind == "py_dataset":
        model.fit(Batches(x, y, 64), epochs=2, shuffle=False, verbose=0)
    elif kind == "py_dataset_threads":
        model.fit(Batches(x, y, 64, workers=3, max_queue_size=4), epochs=2, shuffle=False, verbose=0)
    elif kind == "generator":
        def stream():
            while True:
                yield from BatchList(x, y, 64)
        model.fit(stream(), steps_per_epoch=16, epochs=2, verbose=0)
    else:
        model.fit(BatchList(x, y, 64), epochs=2, verbose=0)
    results[f"same_{kind}_params"] = weights(model)
    arrays = kind == "arrays"
    results[f"same_{kind}_evaluate"] = model.evaluate(x, y, batch_size=100, verbose=0) if arrays else \
        model.evaluate(Batches(x, y, 100), verbose=0)
    results[f"same_{kind}_predict"] = model.predict(x[:250], verbose=0) if arrays else \
        model.predict(BatchList(x[:250], y[:250], 64), verbose=0)

# ------------------------------------------------------------------- gradient accumulation
# 15 batches of 64 = 60 micro-batches of 16: 4 micro-batches per update, every one full.
x, y = X_ALL[:960], Y_ALL[:960]
# Horovod's batch_size is per rank: rank r brings its 64 / SIZE rows of every batch of 64, so
# 4 micro-batches of 16 / SIZE rows per rank make the same 64 rows.
part = 64 // SIZE
mine = np.concatenate([np.arange(64 * k + RANK * part, 64 * k + (RANK + 1) * part) for k in range(15)])
for name, optimizer in (("sgd", lambda **kw: optimizers.SGD(0.05, momentum=0.9, **kw)),
                        ("adam", lambda **kw: optimizers.Adam(0.002, **kw))):
    big = mlp(optimizer(), dropout=0.0)
    big.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    results[f"accumulate_{name}_big"] = weights(big)
    small = mlp(optimizer(gradient_accumulation_steps=4), dropout=0.0)
    small.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    results[f"accumulate_{name}_keras"] = weights(small)
    results[f"accumulate_{name}_iterations"] = small.optimizer.iterations
    wrapped = mlp(hvd.DistributedOptimizer(optimizer(), backward_passes_per_step=4, average_aggregated_gradients=True),
                  dropout=0.0)
    wrapped.fit(x[mine], y[mine], batch_size=16 // SIZE, epochs=2, shuffle=False, verbose=0)
    results[f"accumulate_{name}_horovod"] = weights(wrapped)

if RANK == 0:
    np.savez(OUT, **{k: np.asarray(v) for k, v in results.items()})
print(f"rank {RANK}: done", flush=True)
