"""Training from a data set on disk against the same data in memory, side by side.

    mpiexec -n 2 python benchmarks/bench_input_pipeline.py [--gigabytes 2] [--steps 120] [--batch-size 512]
                                                           [--rounds 3]

Rank 0 writes a uint8 ``.npy`` file of ``--gigabytes`` GB (32x32x3 images and labels, random but
learnable) into a temporary directory (removed at the end; nothing is committed). Then every rank
trains the same MLP 3072-512-10 for ``--steps`` steps of the global batch, shuffled:

1. **file**: ``x = NpyArray(path)`` — each rank reads only its half of each global batch with
   ``preadv`` on a loader thread, ahead of the steps;
2. **memory**: ``x = np.load(path)`` — each rank holds the whole array (both cast each batch to
   float32 as it is taken).

It prints each rank's peak resident memory (``ru_maxrss``) after the first file run (before the
in-memory copy exists) and after the in-memory runs, and the median samples/s of ``--rounds``
alternated runs of each, with the ratio file / memory.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time

import numpy as np

import distnn.distributed as dist
from distnn import optimizers
from distnn.callbacks import Callback
from distnn.data import NpyArray
from distnn.layers import Dense
from distnn.models import Sequential
from distnn.utils import set_random_seed

SAMPLE_SHAPE = (32 * 32 * 3,)


def write_data(directory: str, gigabytes: float) -> tuple[str, np.ndarray]:
    """A uint8 .npy written chunk by chunk with plain writes (a memory map would leave the written
    pages in this process's resident memory), and its labels: the class is the brightest of 10
    stripes, so the model can learn it."""
    rows = int(gigabytes * 1e9) // SAMPLE_SHAPE[0]
    path = os.path.join(directory, "x.npy")
    labels = np.empty(rows, dtype=np.int64)
    rng = np.random.default_rng(0)
    stripe, chunk = SAMPLE_SHAPE[0] // 10, 8192
    with open(path, "wb") as stream:
        np.lib.format.write_array_header_1_0(stream, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (rows, *SAMPLE_SHAPE)})
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            block = rng.integers(0, 200, size=(stop - start, *SAMPLE_SHAPE), dtype=np.uint8)
            labels[start:stop] = rng.integers(0, 10, size=stop - start)
            for c in range(10):
                block[labels[start:stop] == c, c * stripe:(c + 1) * stripe] += 55
            stream.write(block.tobytes())
    return path, labels


class Timer(Callback):
    """Times the steps after the first ``skip`` (build, first reads and thread start excluded)."""

    def __init__(self, skip: int):
        super().__init__()
        self.skip, self.start, self.steps = skip, None, 0

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.skip:
            self.start = time.perf_counter()
        elif batch + 1 > self.skip:
            self.steps += 1


def train(x, y, steps: int, batch_size: int) -> float:
    """Samples per second (global) of ``steps`` shuffled steps."""
    set_random_seed(0)
    model = Sequential([Dense(512, activation="relu", input_shape=SAMPLE_SHAPE), Dense(10, activation="softmax")])
    model.compile(optimizer=optimizers.SGD(0.001), loss="sparse_categorical_crossentropy")
    timer = Timer(skip=5)
    model.fit(x, y, batch_size=batch_size, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    return timer.steps * batch_size / (time.perf_counter() - timer.start)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    comm = dist.init()
    directory = comm.bcast_obj(tempfile.mkdtemp(prefix="distnn-bench-") if comm.rank == 0 else None, root=0)
    try:
        labels = None
        if comm.rank == 0:
            start = time.perf_counter()
            path, labels = write_data(directory, args.gigabytes)
            print(f"wrote {os.path.getsize(path) / 1e9:.2f} GB ({len(labels)} samples) in "
                  f"{time.perf_counter() - start:.0f}s to {path}", flush=True)
        path, labels = comm.bcast_obj((os.path.join(directory, "x.npy"), labels), root=0)
        before = peak_mb()
        file_x = NpyArray(path)
        file_rates = [train(file_x, labels, args.steps, args.batch_size)]
        file_peak = peak_mb()  # before the in-memory copy exists
        memory_x = np.load(path)
        memory_rates = []
        for _ in range(args.rounds):  # alternated: a shared machine's load hits both alike
            memory_rates.append(train(memory_x, labels, args.steps, args.batch_size))
            if len(file_rates) < args.rounds:
                file_rates.append(train(file_x, labels, args.steps, args.batch_size))
        memory_peak = peak_mb()
        report = comm.gather_obj((comm.rank, before, file_peak, memory_peak), root=0)
        if comm.rank == 0:
            for rank, start_mb, file_mb, memory_mb in report:
                print(f"rank {rank}: peak RSS {start_mb:.0f} MB before training, {file_mb:.0f} MB after the file "
                      f"run, {memory_mb:.0f} MB after the in-memory runs")
            print(f"{comm.size} ranks, global batch {args.batch_size}, {args.steps} steps per run, shuffled; "
                  f"median of {args.rounds} alternated runs")
            file_rate, memory_rate = statistics.median(file_rates), statistics.median(memory_rates)
            for label, rate, runs in (("file (NpyArray, prefetch):", file_rate, file_rates),
                                      ("memory (np.load):         ", memory_rate, memory_rates)):
                print(f"{label} {rate:8.0f} samples/s  (runs: {', '.join(f'{r:.0f}' for r in runs)})")
            print(f"ratio file / memory:       {file_rate / memory_rate:8.2f}")
    finally:
        comm.barrier()
        if comm.rank == 0:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
