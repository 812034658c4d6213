"""LSTM training throughput: distnn vs PyTorch's ``torch.nn.LSTM`` (when importable), one thread.

Model: LSTM(128) over 28 steps of 28 features (MNIST read row by row) -> Dense(10) softmax,
SGD(0.01), cross-entropy, batch 64, random data. Both frameworks are timed in this one run:

    python benchmarks/bench_lstm.py [--samples 3200] [--repeats 3]
    /work/wt/torchvenv/bin/python benchmarks/bench_lstm.py     # a venv that has torch

Prints samples/s of each, their ratio, and the single-thread float32 GEMM rate with the fraction of it
each framework reaches, counting the nominal GEMM FLOPs of one training step: forward
(input projection + one recurrent product per step), and backward (three GEMMs each for the input
projection and the recurrent products: the weight gradient, the input or state gradient) — the work
that bounds both implementations. Each rate is the best of ``--repeats`` timed epochs.
"""
from __future__ import annotations

import argparse
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load their thread pools

import numpy as np  # noqa: E402

import torch_reference  # noqa: E402 - beside this script

STEPS, FEATURES, UNITS, CLASSES = 28, 28, 128, 10
# Per sample and step: the input projection and the recurrent product forward, each twice more in
# backward (weights and input/state gradient); the classifier is negligible (28 * 4 * 128 * 128 FLOPs
# of recurrent product per sample dwarf 128 * 10).
FLOPS_PER_SAMPLE = 3 * 2 * STEPS * 4 * UNITS * (FEATURES + UNITS)


def sgemm_gflops(seconds: float = 1.0) -> float:
    """Best single-thread float32 GEMM rate at the recurrent product's shape (64 x 128 x 512)."""
    a = np.random.rand(64, UNITS).astype(np.float32)
    b = np.random.rand(UNITS, 4 * UNITS).astype(np.float32)
    out = np.empty((64, 4 * UNITS), np.float32)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        for _ in range(50):
            np.matmul(a, b, out=out)
        best = max(best, 50 * 2 * a.shape[0] * a.shape[1] * b.shape[1] / (time.perf_counter() - t))
    return best / 1e9


def data(samples: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((samples, STEPS, FEATURES), dtype=np.float32), rng.integers(CLASSES, size=samples)


def best_rate(run_epoch, samples: int, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        run_epoch()
        best = max(best, samples / (time.perf_counter() - start))
    return best


def bench_distnn(x: np.ndarray, y: np.ndarray, batch_size: int, repeats: int) -> float:
    from distnn.layers import LSTM, Dense, Input
    from distnn.models import Sequential
    from distnn.optimizers import SGD
    from distnn.utils import set_random_seed

    set_random_seed(0)
    model = Sequential([Input((STEPS, FEATURES)), LSTM(UNITS), Dense(CLASSES, activation="softmax")])
    model.compile(optimizer=SGD(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x[:batch_size * 4], y[:batch_size * 4], batch_size=batch_size, epochs=1, verbose=0)  # warm up
    return best_rate(lambda: model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0), len(x), repeats)


def bench_torch(x: np.ndarray, y: np.ndarray, batch_size: int, repeats: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    torch.manual_seed(0)

    class RowLSTM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(FEATURES, UNITS, batch_first=True)
            self.head = torch.nn.Linear(UNITS, CLASSES)

        def forward(self, inputs: "torch.Tensor") -> "torch.Tensor":
            _, (h, _) = self.lstm(inputs)
            return self.head(h[-1])

    model = RowLSTM()
    epoch = torch_reference.epoch_runner(model, torch.optim.SGD(model.parameters(), lr=0.01), x, y, batch_size)
    epoch(batch_size * 4)  # warm up
    return best_rate(lambda: epoch(len(x)), len(x), repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per framework; the best counts")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    args = parser.parse_args(argv)

    x, y = data(args.samples)
    ceiling = sgemm_gflops()
    ours = bench_distnn(x, y, args.batch_size, args.repeats)
    theirs = None if args.no_torch else bench_torch(x, y, args.batch_size, args.repeats)
    print(f"LSTM {FEATURES}->{UNITS} over {STEPS} steps + Dense({CLASSES}), SGD, batch {args.batch_size}, "
          f"{args.samples} samples, {os.environ['OMP_NUM_THREADS']} thread(s), best of {args.repeats}")
    print(f"sgemm ceiling (1 thread, 64x128x512): {ceiling:7.1f} GFLOP/s")
    print(f"distnn : {ours:8.0f} samples/s  {ours * FLOPS_PER_SAMPLE / 1e9:6.1f} GFLOP/s "
          f"= {ours * FLOPS_PER_SAMPLE / 1e9 / ceiling:.0%} of sgemm")
    if theirs is not None:
        print(f"pytorch: {theirs:8.0f} samples/s  {theirs * FLOPS_PER_SAMPLE / 1e9:6.1f} GFLOP/s "
              f"= {theirs * FLOPS_PER_SAMPLE / 1e9 / ceiling:.0%} of sgemm")
        print(f"ratio distnn / pytorch: {ours / theirs:.2f}x")
    elif not args.no_torch:
        print("pytorch: not installed (pip install torch to compare)")


if __name__ == "__main__":
    main()
