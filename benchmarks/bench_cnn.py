"""CNN training throughput: distnn vs PyTorch (when installed), one thread, the classic Keras MNIST CNN.

Model: Conv2D(32,3x3,relu) - MaxPool(2) - Conv2D(64,3x3,relu) - MaxPool(2) - Conv2D(64,3x3,relu) -
Flatten - Dense(64,relu) - Dense(10,softmax) (93,322 parameters), Adam, cross-entropy, batch 64,
28x28x1 inputs. Both frameworks train on the same batches in this one run:

    python benchmarks/bench_cnn.py                      # synthetic data, 1 thread
    python benchmarks/bench_cnn.py --data mnist --layers  # MNIST subset, plus a per-layer profile

Prints samples/s for each framework and their ratio, then where distnn's step time goes
(forward / backward / optimizer / the rest of ``fit``, and per layer with ``--layers``).
"""
from __future__ import annotations

import argparse
import functools
import os
import time

_THREADS = os.environ.setdefault("OMP_NUM_THREADS", "1")
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)  # before numpy/torch load their thread pools

import numpy as np  # noqa: E402

import torch_reference  # noqa: E402 - beside this script

MACS_PER_SAMPLE = 26 * 26 * 32 * 9 + 11 * 11 * 64 * 288 + 3 * 3 * 64 * 576 + 576 * 64 + 64 * 10  # forward


def load(kind: str, samples: int) -> tuple[np.ndarray, np.ndarray]:
    from distnn import datasets

    if kind == "mnist":
        (x, y), _ = datasets.mnist()
        x = (x / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
        reps = -(-samples // len(x))
        return np.concatenate([x] * reps)[:samples], np.concatenate([y] * reps)[:samples]
    return datasets.make_classification(n_samples=samples, n_classes=10, shape=(28, 28, 1), seed=0)


def distnn_model():
    from distnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
    from distnn.models import Sequential

    return Sequential([
        Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)), MaxPooling2D((2, 2)),
        Conv2D(64, (3, 3), activation="relu"), MaxPooling2D((2, 2)),
        Conv2D(64, (3, 3), activation="relu"), Flatten(),
        Dense(64, activation="relu"), Dense(10, activation="softmax")])


class Clock:
    """Wall-clock and process CPU time of a block. With one thread they agree on an idle machine;
    on a shared one the CPU time is the steadier measure (waiting for a core is not counted)."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def rates(self, samples: int) -> tuple[float, float]:
        """Samples per second of wall time and of CPU time."""
        return samples / self.wall, samples / self.cpu


def bench_distnn(x: np.ndarray, y: np.ndarray, batch_size: int, epochs: int) -> tuple[float, float]:
    from distnn.utils import set_random_seed, to_categorical

    set_random_seed(0)
    model = distnn_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    y1 = to_categorical(y, 10)
    model.fit(x[:batch_size * 10], y1[:batch_size * 10], batch_size=batch_size, epochs=1, verbose=0)  # warm up
    with Clock() as clock:
        model.fit(x, y1, batch_size=batch_size, epochs=epochs, verbose=0)
    return clock.rates(epochs * len(x))


def distnn_time_split(x: np.ndarray, y: np.ndarray, batch_size: int) -> dict[str, float]:
    """CPU milliseconds per step spent in each layer's forward and backward, the optimizer, and the rest.

    Times a plain ``fit`` by wrapping every layer's ``call``/``backward`` and the optimizer's
    ``apply`` with timers (instance attributes only: nothing in the library changes).
    """
    from distnn.utils import to_categorical

    model = distnn_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    y1 = to_categorical(y, 10)
    model.fit(x[:batch_size * 3], y1[:batch_size * 3], batch_size=batch_size, epochs=1, verbose=0)  # warm up
    times: dict[str, float] = {}

    def timed(key: str, fn):
        @functools.wraps(fn)  # keeps the signature: Layer.__call__ passes ``training`` only if ``call`` takes it
        def wrapper(*args, **kwargs):
            start = time.process_time()
            result = fn(*args, **kwargs)
            times[key] = times.get(key, 0.0) + (time.process_time() - start) * 1e3
            return result
        return wrapper

    for layer in model.layers:
        layer.call = timed(f"forward  {layer.name}", layer.call)
        layer.backward = timed(f"backward {layer.name}", layer.backward)
    model.optimizer.apply_update = timed("optimizer", model.optimizer.apply_update)  # the step calls it after the allreduce
    steps = len(x) // batch_size
    start = time.process_time()
    model.fit(x[:steps * batch_size], y1[:steps * batch_size], batch_size=batch_size, epochs=1, verbose=0)
    total = (time.process_time() - start) * 1e3
    split = {key: value / steps for key, value in times.items()}
    split["forward"] = sum(v for k, v in split.items() if k.startswith("forward "))
    split["backward"] = sum(v for k, v in split.items() if k.startswith("backward "))
    split["other"] = total / steps - split["forward"] - split["backward"] - split["optimizer"]
    return split


def add_distributed_options(parser: argparse.ArgumentParser) -> None:
    """``--overlap``, ``--bucket-bytes`` and ``--timeline``: the data-parallel step's settings."""
    parser.add_argument("--overlap", choices=("on", "off"), default=None,
                        help="sum gradient buckets during backward (on) or after it (off); default: DISTNN_OVERLAP")
    parser.add_argument("--bucket-bytes", default=None, help="gradient bucket size, e.g. 1M (DISTNN_BUCKET_BYTES)")
    parser.add_argument("--timeline", default=None, help="write a timeline of the run here (DISTNN_TIMELINE); "
                        "summarise it with distnn-bench anatomy")


def apply_distributed_options(args: argparse.Namespace) -> None:
    """Sets the environment variables the options stand for (before fit reads them)."""
    for value, variable in ((args.overlap and str(int(args.overlap == "on")), "DISTNN_OVERLAP"),
                            (args.bucket_bytes, "DISTNN_BUCKET_BYTES"), (args.timeline, "DISTNN_TIMELINE")):
        if value is not None:
            os.environ[variable] = value


def bench_torch(x: np.ndarray, y: np.ndarray, batch_size: int, epochs: int) -> tuple[float, float] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(int(_THREADS))
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # PyTorch's layout
    epoch = torch_reference.epoch_runner(model, opt, x_nchw, y, batch_size)

    epoch(batch_size * 10)  # warm up
    with Clock() as clock:
        for _ in range(epochs):
            epoch(len(x))
    return clock.rates(epochs * len(x))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("synthetic", "mnist"), default="synthetic")
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternate the frameworks this many times and keep each one's best")
    parser.add_argument("--layers", action="store_true", help="also print distnn's time per layer")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    add_distributed_options(parser)
    args = parser.parse_args(argv)
    apply_distributed_options(args)

    x, y = load(args.data, args.samples)
    ours: tuple[float, float] = (0.0, 0.0)
    theirs: tuple[float, float] | None = None
    for _ in range(args.repeats):  # alternating runs share the machine's noise fairly
        ours = tuple(map(max, ours, bench_distnn(x, y, args.batch_size, args.epochs)))
        rates = None if args.no_torch else bench_torch(x, y, args.batch_size, args.epochs)
        if rates is not None:
            theirs = rates if theirs is None else tuple(map(max, theirs, rates))
    split = distnn_time_split(x[:args.batch_size * 40], y[:args.batch_size * 40], args.batch_size)

    flops = 3 * 2 * MACS_PER_SAMPLE  # forward + two backward GEMMs per layer
    print(f"Classic Keras CNN (93,322 params), Adam, batch {args.batch_size}, {len(x)} {args.data} samples x "
          f"{args.epochs} epoch(s), {_THREADS} thread(s), best of {args.repeats}")
    print("samples/s by wall clock (by CPU time)")
    print(f"distnn : {ours[0]:7.0f} ({ours[1]:7.0f}) samples/s  {ours[1] * flops / 1e9:5.1f} GFLOP/s")
    if theirs is not None:
        print(f"pytorch: {theirs[0]:7.0f} ({theirs[1]:7.0f}) samples/s  {theirs[1] * flops / 1e9:5.1f} GFLOP/s")
        print(f"ratio distnn / pytorch: {ours[0] / theirs[0]:.2f}x by wall clock, "
              f"{ours[1] / theirs[1]:.2f}x by CPU time")
    elif not args.no_torch:
        print("pytorch: not installed (pip install torch to compare)")
    phases = ("forward", "backward", "optimizer", "other")
    total = sum(split[key] for key in phases)
    print(f"distnn step {total:.2f} ms CPU: " + ", ".join(f"{key} {split[key]:.2f} ms ({split[key] / total:.0%})"
                                                     for key in phases))
    if args.layers:
        for key, value in split.items():
            if key.startswith(("forward ", "backward ")):
                print(f"  {key:<32} {value:6.2f} ms")

if __name__ == "__main__":
    main()
