"""MPI worker for tests/test_rank_consistency.py: the last rank calls a training method with one
thing different from the others, and every rank reports what it got.

    mpiexec -n 3 python rank_mismatch.py CASE [CASE ...]     catch the error, print one line per rank
    mpiexec -n 2 python rank_mismatch.py --uncaught CASE     let it end the job

Each caught case prints ``case NAME rank R: <first line of the error>`` (or ``...: no error``) on
every rank, so the test sees that all ranks raised the same error and stayed in step for the next
case. The case ``none`` changes nothing: it trains, evaluates and predicts, and prints the results.
"""
import sys
import time

import numpy as np

import distnn.distributed as dist
from distnn import backend, optimizers
from distnn.distributed import RankMismatchError
from distnn.layers import Dense
from distnn.models import Sequential
from distnn.utils import set_random_seed, to_categorical

comm = dist.init()
odd = comm.rank == comm.size - 1  # the rank that differs
RNG = np.random.default_rng(0)
X = RNG.normal(size=(96, 6)).astype("float32")
Y = to_categorical((X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1).astype(int), 3)
# What a rank gets when it loads its "own" data, e.g. from an unseeded generator.
X_OTHER = np.random.default_rng(100 + comm.rank).normal(size=X.shape).astype("float32")


def model(optimizer=None):
    set_random_seed(0)
    m = Sequential([Dense(8, activation="relu", input_shape=(6,)), Dense(3, activation="softmax")])
    m.compile(optimizer=optimizer or optimizers.SGD(0.1), loss="categorical_crossentropy", metrics=["accuracy"])
    return m


def gathers_in(call):
    """How many allgather_obj calls ``call()`` makes on this rank (the check's and the model hash's)."""
    count = [0]
    gather = comm.allgather_obj

    def counting(obj):
        count[0] += 1
        return gather(obj)

    comm.allgather_obj = counting
    try:
        call()
    finally:
        comm.allgather_obj = gather
    return count[0]


def matching_run():
    m = model()
    history = []
    per_fit = [gathers_in(lambda: history.append(m.fit(X, Y, batch_size=16, epochs=epochs, validation_split=0.25,
                                                         class_weight={0: 1.0, 1: 2.0, 2: 1.0}, verbose=0)))
               for epochs in (1, 3)]  # 4 steps, then 12 steps and 3 validations: the same gathers
    weights = comm.allgather_obj(backend.to_numpy(m.params).copy())
    same = all(np.array_equal(w, weights[0]) for w in weights)
    predictions = m.predict(X, verbose=0)
    loss = m.evaluate(X, Y, verbose=0)[0]
    m.train_on_batch(X[:16], Y[:16])
    losses = history[0].history["loss"] + history[1].history["loss"]
    return f"loss {losses[0]:.4f} -> {losses[-1]:.4f}, same weights {same}, predictions {predictions.shape}, " \
           f"evaluate {loss:.4f}, gathers per fit {per_fit[0]} and {per_fit[1]}"


def own_shards_run():
    """Each rank its own data (different lengths and content): own-shard mode, no error."""
    m = model()
    history = m.fit(X_OTHER[:96 - comm.rank], Y[:96 - comm.rank], batch_size=16, verbose=0)
    weights = comm.allgather_obj(backend.to_numpy(m.params).copy())
    same = all(np.array_equal(w, weights[0]) for w in weights)
    return f"own-shard mode, {m.history.params['steps']} steps, same weights {same}" if history else "no history"


CASES = {
    "len_x": lambda: model().fit(X[:96 - odd], Y[:96 - odd], verbose=0),
    "batch_size": lambda: model().fit(X, Y, batch_size=64 if odd else 32, verbose=0),
    "epochs": lambda: model().fit(X, Y, epochs=3 if odd else 2, verbose=0),
    "steps_per_epoch": lambda: model().fit(X, Y, steps_per_epoch=3 if odd else 2, verbose=0),
    "learning_rate": lambda: model(optimizers.SGD(0.2 if odd else 0.1)).fit(X, Y, verbose=0),
    "data_content": lambda: model().fit(X_OTHER if odd else X, Y, verbose=0),
    "shuffle": lambda: model().fit(X, Y, shuffle=not odd, verbose=0),
    "class_weight": lambda: model().fit(X, Y, class_weight={0: 1.0, 1: 2.0, 2: 1.0} if odd else None, verbose=0),
    "validation_split": lambda: model().fit(X, Y, validation_split=0.25 if odd else 0.2, verbose=0),
    "optimizer_class": lambda: model("sgd" if odd else "adam").fit(X, Y, verbose=0),
    "predict_length": lambda: model().predict(X[:50 - odd], verbose=0),
    "evaluate_length": lambda: model().evaluate(X[:40 + odd], Y[:40 + odd], verbose=0),
    "train_on_batch": lambda: model().train_on_batch(X[:16 + odd], Y[:16 + odd]),
    "validation_dtype": lambda: model().fit(X, Y, validation_data=(X[:8].astype("float64" if odd else "float32"),
                                                                   Y[:8]), verbose=0),
    "predict_dtype": lambda: model().predict(X.astype("float64" if odd else "float32"), verbose=0),
    "own_shards": own_shards_run,
    "none": matching_run,
}

if sys.argv[1] == "--uncaught":
    CASES[sys.argv[2]]()
    print(f"unreachable: rank {comm.rank} finished {sys.argv[2]}", flush=True)
    sys.exit(0)

for name in sys.argv[1:]:
    start = time.perf_counter()
    try:
        outcome = f"no error: {CASES[name]()}"
    except RankMismatchError as exc:
        outcome = str(exc).splitlines()[0]
    print(f"case {name} rank {comm.rank}: {outcome} [{time.perf_counter() - start:.3f}s]", flush=True)
