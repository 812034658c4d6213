"""erf without scipy (distnn.ops.math.erf_values, used by the exact GELU) against the alternatives.

    python benchmarks/bench_erf.py [--size 1000000] [--repeats 5]

Prints the best time of each over normally distributed float64 values, and its ratio to
``math.erf`` applied through ``numpy.frompyfunc`` (the scipy-free fallback) measured in the same
run; scipy's erf is included when scipy is installed.
"""
import argparse
import math
import time

import numpy as np

from distnn.ops.math import erf_values


def best_time(fn, x, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    x = np.random.default_rng(0).normal(size=args.size)
    python_erf = np.frompyfunc(math.erf, 1, 1)
    candidates = {"distnn erf_values": erf_values,
                  "math.erf via frompyfunc": lambda a: python_erf(a).astype(np.float64)}
    try:
        from scipy.special import erf as scipy_erf
        candidates["scipy.special.erf"] = scipy_erf
    except ImportError:
        pass
    seconds_of = {name: best_time(fn, x, args.repeats) for name, fn in candidates.items()}
    reference = seconds_of["math.erf via frompyfunc"]
    for name, seconds in seconds_of.items():
        print(f"{name:26s} {seconds * 1e3:8.2f} ms  {reference / seconds:5.2f}x the speed of math.erf via frompyfunc")


if __name__ == "__main__":
    main()
