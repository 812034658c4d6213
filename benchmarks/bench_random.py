"""Cost of a dropout mask from distnn.random's counter-based stream against the per-rank generator
it replaced, measured side by side.

    python benchmarks/bench_random.py [--shape 256 512] [--repeats 300]

Prints the median time (us) of one float32 mask of ``shape`` at rate 0.5:
  * ``numpy Generator``: the previous way, ``rng.random(shape, float32) >= rate`` scaled (PCG64);
  * ``distnn.random, training step``: ``dropout_mask`` inside ``training_step`` at the second rank's
    offset of a 2-rank step (key hash + Philox jump + 32 bits per value);
  * ``distnn.random, SeedGenerator``: the same outside a step (an eager call);
and each one's ratio to the first, plus the fixed cost of deriving one key.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from distnn import random


def median_us(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--rate", type=float, default=0.5)
    args = parser.parse_args()
    shape, rate = tuple(args.shape), args.rate
    x = np.ones(shape, dtype=np.float32)
    rng = np.random.default_rng(0)
    generator = random.SeedGenerator(1)

    def numpy_generator():
        keep = rng.random(shape, dtype=np.float32) >= rate
        return keep.astype(np.float32) * (1.0 / (1.0 - rate))

    def in_step():
        with random.training_step(7, (3, 11), offset=shape[0], count=shape[0]):
            return random.dropout_mask(x, rate, seed=generator)

    def eager():
        return random.dropout_mask(x, rate, seed=generator)

    reference = median_us(numpy_generator, args.repeats)
    print(f"# float32 dropout mask of shape {shape}, rate {rate}: median of {args.repeats}")
    print(f"{'method':34s} {'us':>9s} {'x numpy':>8s}")
    for name, fn in [("numpy Generator (previous)", numpy_generator), ("distnn.random, training step", in_step),
                     ("distnn.random, SeedGenerator", eager)]:
        us = reference if fn is numpy_generator else median_us(fn, args.repeats)
        print(f"{name:34s} {us:9.1f} {us / reference:8.2f}")
    print(f"{'(of which: one key hash)':34s} {median_us(lambda: random._key(2, 7, 0, 2, 3, 11), args.repeats):9.1f}")


if __name__ == "__main__":
    main()
