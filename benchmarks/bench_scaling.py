"""Data-parallel scaling: global samples/s of `fit` on this job's ranks, for the MLP or the MNIST CNN.

Run it on 1 rank and on N ranks back to back and divide (`benchmarks/emulated_scaling.sh` does this
on the emulated two-node cluster, at several link rates, with and without overlap):

    python benchmarks/bench_scaling.py --model cnn                       # the 1-rank reference
    mpiexec -n 2 python benchmarks/bench_scaling.py --model cnn --overlap on --timeline t.json
    distnn-bench anatomy t.json                                          # exposed communication

The global batch is the same on any number of ranks (distnn's `fit(batch_size=B)` splits it), so
the work per epoch is the same and the ratio of rates is the speed-up. One BLAS thread per rank.
Prints one line from rank 0: `model=... ranks=N overlap=... samples/s=R` (wall clock, best of
`--repeats` epochs after a warm-up epoch, each timed between barriers so the slowest rank counts).
"""
from __future__ import annotations

import argparse
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its thread pool

import numpy as np  # noqa: E402

from bench_cnn import add_distributed_options, apply_distributed_options, distnn_model  # noqa: E402
from bench_mlp import SIZES  # noqa: E402


def build(kind: str):
    """The model and random data of the same shapes as its benchmark's."""
    from distnn.layers import Dense  # noqa: PLC0415 - after the thread settings
    from distnn.models import Sequential  # noqa: PLC0415

    rng = np.random.default_rng(0)
    if kind == "cnn":  # the classic Keras MNIST CNN, Adam (benchmarks/bench_cnn.py)
        model = distnn_model()
        model.compile(optimizer="adam", loss="categorical_crossentropy")
        return model, rng.random((1, 28, 28, 1), dtype=np.float32)
    model = Sequential([Dense(SIZES[1], activation="relu", input_shape=(SIZES[0],)),
                        Dense(SIZES[2], activation="relu"), Dense(SIZES[3], activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy")  # SGD(0.01), as benchmarks/bench_mlp.py
    return model, rng.random((1, SIZES[0]), dtype=np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (default: mlp 256, cnn 128)")
    parser.add_argument("--samples", type=int, default=None, help="samples per epoch (default: 64 global batches)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs; the best counts")
    add_distributed_options(parser)
    args = parser.parse_args(argv)
    apply_distributed_options(args)

    from distnn import distributed  # noqa: PLC0415
    from distnn.utils import set_random_seed, to_categorical  # noqa: PLC0415

    set_random_seed(0)
    model, sample = build(args.model)
    batch_size = args.batch_size or (128 if args.model == "cnn" else 256)
    samples = args.samples or 64 * batch_size
    rng = np.random.default_rng(1)
    x = rng.random((samples, *sample.shape[1:]), dtype=np.float32)
    y = to_categorical(rng.integers(10, size=samples), 10)
    model.fit(x[:batch_size * 4], y[:batch_size * 4], batch_size=batch_size, epochs=1, verbose=0)  # warm up
    best = 0.0
    for _ in range(args.repeats):
        distributed.barrier()
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
        distributed.barrier()
        best = max(best, samples / (time.perf_counter() - start))
    if distributed.is_root():
        overlap = os.environ.get("DISTNN_OVERLAP", "1")
        print(f"model={args.model} ranks={distributed.size()} batch={batch_size} overlap={overlap} "
              f"samples/s={best:.0f}", flush=True)


if __name__ == "__main__":
    main()
