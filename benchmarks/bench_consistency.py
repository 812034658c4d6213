"""Cost of the rank consistency check against the work it guards, measured side by side.

    mpiexec -n 2 python benchmarks/bench_consistency.py [--rows 1000000] [--features 784]

Prints, on rank 0:
  * ``train_on_batch`` (MLP 784-128-10, global batch 64, SGD): the median time of one check and of
    one whole call, and their ratio — the check runs on every call there;
  * ``fit`` on a memory-mapped float32 file of ``rows x features`` (3.1 GB by default, sparse on
    disk): the check's time against one epoch of 64-sample steps over 1 % of it, since the check
    runs once per ``fit`` call and never reads the whole array;
  * ``data.fingerprint`` alone on that file.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

import distnn.distributed as dist
from distnn import data, optimizers
from distnn.distributed import consistency
from distnn.layers import Dense
from distnn.models import Sequential


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mlp(features: int) -> Sequential:
    model = Sequential([Dense(128, activation="relu", input_shape=(features,)), Dense(10, activation="softmax")])
    model.compile(optimizer=optimizers.SGD(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=784)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    comm = dist.init()
    rng = np.random.default_rng(0)
    model = mlp(args.features)
    x = rng.normal(size=(64, args.features)).astype(np.float32)
    y = rng.integers(0, 10, size=64)
    model.train_on_batch(x, y)  # build and sync once

    def check_batch():
        consistency.check_ranks_agree(comm, "train_on_batch", data={"x": x, "y": y, "sample_weight": None},
                                      settings={"class_weight": None, "optimizer": model.optimizer,
                                                "loss": model.loss, "metrics": ["accuracy"]})

    check = median_seconds(check_batch, args.repeats)
    step = median_seconds(lambda: model.train_on_batch(x, y), args.repeats)
    if comm.rank == 0:
        print(f"train_on_batch: check {check * 1e6:.0f} us, whole call {step * 1e6:.0f} us "
              f"(check = {100 * check / step:.1f} % of the call)")

    directory = tempfile.mkdtemp(dir=os.environ.get("BENCH_TMP"))
    path = os.path.join(directory, f"big-{comm.rank}.npy")
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.rows, args.features))
    big[:: max(1, args.rows // 1000)] = 1.0  # some non-zero rows, the rest sparse
    del big
    big = np.load(path, mmap_mode="r")
    labels = np.zeros(args.rows, dtype=np.int64)
    fingerprint = median_seconds(lambda: data.fingerprint(big), 20)

    def check_fit():
        consistency.check_ranks_agree(comm, "fit", data={"x": big, "y": labels, "sample_weight": None,
                                                         "validation_data": None},
                                      settings={"batch_size": 64, "epochs": 1, "optimizer": model.optimizer,
                                                "loss": model.loss, "metrics": ["accuracy"]})

    fit_check = median_seconds(check_fit, 20)
    part = args.rows // 100
    start = time.perf_counter()
    model.fit(big[:part], labels[:part], batch_size=64, epochs=1, shuffle=False, verbose=0)
    epoch = time.perf_counter() - start
    if comm.rank == 0:
        size_gb = args.rows * args.features * 4 / 1e9
        print(f"fingerprint of a {size_gb:.1f} GB memory-mapped array: {fingerprint * 1e3:.2f} ms")
        print(f"fit: check {fit_check * 1e3:.2f} ms once per call; one epoch over {part} rows {epoch:.2f} s "
              f"(check = {100 * fit_check / epoch:.3f} % of it)")
    os.remove(path)
    os.rmdir(directory)


if __name__ == "__main__":
    main()
