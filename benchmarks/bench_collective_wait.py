"""Cost of stall inspection per training step: monitored collectives vs blocking MPI calls.

    mpiexec -n 2 python benchmarks/bench_collective_wait.py

distnn's communicators start every collective non-blocking and complete it in a polling loop that
keeps a deadline and lets signal handlers run (distnn/distributed/stall.py). This measures, in one
run and interleaved so that machine noise hits both alike, the two collectives of one step of the
MLP of bench_mlp.py (784-512-512-10, global batch 256): the gradient allreduce (669,706 float32,
the ring) and the metric-state allreduce (3 float64, MPI's allreduce), each

- monitored: ``communicator.allreduce`` as ``fit`` calls it;
- blocking: the same algorithm with blocking calls (``Sendrecv`` in the ring, ``MPI_Allreduce``),
  i.e. distnn without stall inspection.

It prints the median time of each, and the difference as a fraction of the median time of one
training step of that MLP on these ranks (fit, measured here too): the overhead on a normal step.
"""
from __future__ import annotations

import argparse
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its thread pools

import numpy as np  # noqa: E402

import distnn  # noqa: E402,F401 - first: starts MPI under the launcher
from distnn import distributed  # noqa: E402
from distnn.distributed.ring import AutoCommunicator  # noqa: E402

GRADIENTS, STATES = 669_706, 3


class BlockingAuto(AutoCommunicator):
    """The `auto` communicator's algorithms with blocking MPI calls: the reference."""

    def _sendrecv(self, data, into, outgoing):
        byte = self._MPI.BYTE
        self.comm.Sendrecv([data, byte], self._right, 0, [into, byte], self._left, 0)
        return into

    def blocking_allreduce(self, flat: np.ndarray) -> None:
        if flat.size >= self._ring_min_count[flat.dtype]:
            self._reduce(flat, "sum")
        else:
            self.comm.Allreduce(self._MPI.IN_PLACE, flat, op=self._MPI.SUM)


def step_time(comm, batch_size: int, steps: int) -> float:
    """Median seconds per training step of bench_mlp.py's MLP (fit, global batch `batch_size`)."""
    from distnn.layers import Dense
    from distnn.models import Sequential
    from distnn.optimizers import SGD
    from distnn.utils import to_categorical

    rng = np.random.default_rng(0)
    x = rng.random((batch_size * steps, 784), dtype=np.float32)
    y = to_categorical(rng.integers(10, size=len(x)), 10)
    model = Sequential([Dense(512, activation="relu", input_shape=(784,)), Dense(512, activation="relu"),
                        Dense(10, activation="softmax")])
    model.compile(optimizer=SGD(0.01), loss="categorical_crossentropy")
    times = []
    for _ in range(3):
        comm.barrier()
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
        times.append((time.perf_counter() - start) / steps)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=300, help="timed calls of each kind")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)

    comm = distributed.init()
    if comm.size < 2:
        raise SystemExit("run it on several ranks: mpiexec -n 2 python benchmarks/bench_collective_wait.py")
    reference = BlockingAuto()
    buffers = {"gradients": np.zeros(GRADIENTS, np.float32), "states": np.zeros(STATES, np.float64)}
    kinds = {"monitored": lambda b: comm.allreduce(b, op="sum"), "blocking": reference.blocking_allreduce}
    times = {(kind, name): [] for kind in kinds for name in buffers}
    for i in range(args.iters + 10):
        for kind in (list(kinds) if i % 2 else list(kinds)[::-1]):
            for name, buffer in buffers.items():
                reference.barrier()
                start = time.perf_counter()
                kinds[kind](buffer)
                if i >= 10:  # warm-up calls are not counted
                    times[kind, name].append(time.perf_counter() - start)
    step = step_time(comm, args.batch_size, steps=40)
    slowest = reference.gather_obj({key: float(np.median(values)) for key, values in times.items()})
    if comm.rank != 0:
        return
    median = {key: max(rank[key] for rank in slowest) for key in times}
    print(f"{comm.size} ranks; median of {args.iters} calls, slowest rank; one MLP step (global batch "
          f"{args.batch_size}) takes {step * 1e3:.2f} ms")
    for name in buffers:
        mon, ref = median["monitored", name], median["blocking", name]
        print(f"{name:9s} allreduce: monitored {mon * 1e6:8.1f} us  blocking {ref * 1e6:8.1f} us  "
              f"ratio {mon / ref:5.2f}x")
    extra = sum(median["monitored", n] - median["blocking", n] for n in buffers)
    print(f"overhead per step: {extra * 1e6:+.1f} us = {extra / step:+.2%} of a step")


if __name__ == "__main__":
    main()
