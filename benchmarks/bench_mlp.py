"""MLP training throughput: distnn vs PyTorch (when installed) vs the machine's sgemm ceiling.

Model 784 -> 512 -> 512 -> 10 (relu, relu, softmax), SGD(0.01), cross-entropy, batch 128, random
data, one BLAS/OpenMP thread. All figures are measured side by side in this one run:

    python benchmarks/bench_mlp.py                  # single process, 1 thread
    mpiexec -n 2 python benchmarks/bench_mlp.py --batch-size 256 --no-torch   # data-parallel scaling
    mpiexec -n 2 python benchmarks/bench_mlp.py --batch-size 256 --no-torch --overlap off --timeline t.json

Prints samples/s for each framework, the ratio distnn / PyTorch, the single-thread float32 GEMM
rate and the fraction of it that distnn's training reaches, counting the nominal 6 × 669,706
FLOPs per sample. Both frameworks skip the first layer's input gradient (a third of the backward
GEMMs of that layer), so the nominal fraction can pass 100%. Each rate is the best of
``--repeats`` timed epochs, by wall clock and by process CPU time (the steadier measure on a
machine shared with other work: waiting for a core is not counted).
"""
from __future__ import annotations

import argparse
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load their thread pools

import numpy as np  # noqa: E402

import torch_reference  # noqa: E402 - beside this script
from bench_cnn import Clock, add_distributed_options, apply_distributed_options  # noqa: E402 - beside this script

SIZES = (784, 512, 512, 10)
PARAMS = sum(a * b + b for a, b in zip(SIZES[:-1], SIZES[1:]))  # 669,706
FLOPS_PER_SAMPLE = 6 * PARAMS


def sgemm_gflops(seconds: float = 1.0) -> float:
    """Best single-thread float32 GEMM rate at this MLP's shapes (the training ceiling), by CPU time."""
    a = np.random.rand(128, 512).astype(np.float32)
    b = np.random.rand(512, 512).astype(np.float32)
    out = np.empty((128, 512), np.float32)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.process_time()
        for _ in range(20):
            np.matmul(a, b, out=out)
        best = max(best, 20 * 2 * 128 * 512 * 512 / max(time.process_time() - t, 1e-9))
    return best / 1e9


def data(samples: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((samples, SIZES[0]), dtype=np.float32), rng.integers(SIZES[-1], size=samples)


def best_rate(run_epochs, samples: int, repeats: int) -> tuple[float, float]:
    """Best samples/s by wall clock and by CPU time over ``repeats`` timed calls of ``run_epochs()``
    (each trains ``samples``): the least disturbed measurements on a machine shared with other work."""
    best = (0.0, 0.0)
    for _ in range(repeats):
        with Clock() as clock:
            run_epochs()
        best = tuple(map(max, best, clock.rates(samples)))
    return best


def bench_distnn(x: np.ndarray, y: np.ndarray, batch_size: int, epochs: int, repeats: int) -> tuple[float, float]:
    from distnn.layers import Dense
    from distnn.models import Sequential
    from distnn.optimizers import SGD
    from distnn.utils import set_random_seed, to_categorical

    set_random_seed(0)
    model = Sequential([Dense(SIZES[1], activation="relu", input_shape=(SIZES[0],)),
                        Dense(SIZES[2], activation="relu"), Dense(SIZES[3], activation="softmax")])
    model.compile(optimizer=SGD(0.01), loss="categorical_crossentropy")
    y1 = to_categorical(y, SIZES[-1])
    model.fit(x[:batch_size * 20], y1[:batch_size * 20], batch_size=batch_size, epochs=1, verbose=0)  # warm up
    return best_rate(lambda: model.fit(x, y1, batch_size=batch_size, epochs=epochs, verbose=0), epochs * len(x),
                     repeats)


def bench_torch(x: np.ndarray, y: np.ndarray, batch_size: int, epochs: int,
                repeats: int) -> tuple[float, float] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    epoch = torch_reference.epoch_runner(model, opt, x, y, batch_size)

    epoch(batch_size * 20)  # warm up
    return best_rate(lambda: [epoch(len(x)) for _ in range(epochs)], epochs * len(x), repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per framework; the best counts")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    add_distributed_options(parser)
    args = parser.parse_args(argv)
    apply_distributed_options(args)

    from distnn import distributed

    comm = distributed.get_communicator()
    x, y = data(args.samples)
    ceiling = sgemm_gflops()
    ours = bench_distnn(x, y, args.batch_size, args.epochs, args.repeats)
    theirs = None if args.no_torch or comm.size > 1 else bench_torch(x, y, args.batch_size, args.epochs,
                                                                     args.repeats)
    if comm.rank != 0:
        return
    print(f"MLP 784-512-512-10, SGD, global batch {args.batch_size}, {args.samples} samples, "
          f"{comm.size} rank(s) x {os.environ['OMP_NUM_THREADS']} thread(s), best of {args.repeats}")
    print(f"sgemm ceiling (1 thread, 128x512x512): {ceiling:8.1f} GFLOP/s")
    gflops = [rate * FLOPS_PER_SAMPLE / 1e9 for rate in ours]
    print("samples/s by wall clock (by CPU time)")
    print(f"distnn : {ours[0]:8.0f} ({ours[1]:8.0f}) samples/s  {gflops[1]:6.1f} GFLOP/s of CPU time "
          f"= {gflops[1] / (ceiling * comm.size):.0%} of {comm.size} x sgemm")
    if theirs is not None:
        print(f"pytorch: {theirs[0]:8.0f} ({theirs[1]:8.0f}) samples/s  {theirs[1] * FLOPS_PER_SAMPLE / 1e9:6.1f} "
              f"GFLOP/s of CPU time = {theirs[1] * FLOPS_PER_SAMPLE / 1e9 / ceiling:.0%} of sgemm")
        print(f"ratio distnn / pytorch: {ours[0] / theirs[0]:.2f}x by wall clock, {ours[1] / theirs[1]:.2f}x by CPU time")
    elif comm.size == 1 and not args.no_torch:
        print("pytorch: not installed (pip install torch to compare)")


if __name__ == "__main__":
    main()
