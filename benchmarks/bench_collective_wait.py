"""Cost of stall inspection on a training step: monitored collectives vs blocking MPI calls.

    mpiexec -n 2 python benchmarks/bench_collective_wait.py

distnn's communicators start every collective non-blocking and complete it in a polling loop that
keeps a deadline and lets signal handlers run (distnn/distributed/stall.py). This trains the MLP of
bench_mlp.py (784-512-512-10, SGD, global batch 256) with three communicators that differ only in
how the two allreduces of each step (669,706 float32 gradients by the ring, 3 float64 metric sums
by MPI's allreduce) wait:

- monitored: distnn's communicator, as ``fit`` uses it;
- blocking: the same algorithms with blocking calls (``Sendrecv`` in the ring, ``MPI_Allreduce``),
  i.e. distnn without stall inspection: the reference;
- arrival: monitored, plus the design distnn did not take: each rank telling rank 0 that it
  arrived at every collective (a 16-byte message; rank 0 receives one per rank and collective),
  so that rank 0 always knows who has joined.

Short fits with each communicator are interleaved and rotated, so that machine noise and order
effects hit all three alike; it prints the median and best time per step of each and their ratio
to the reference.
"""
from __future__ import annotations

import argparse
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its thread pools

import numpy as np  # noqa: E402

import distnn  # noqa: E402,F401 - first: starts MPI under the launcher
from distnn.distributed import world  # noqa: E402
from distnn.distributed.ring import AutoCommunicator, RingCommunicator  # noqa: E402
from distnn.layers import Dense  # noqa: E402
from distnn.models import Sequential  # noqa: E402
from distnn.optimizers import SGD  # noqa: E402
from distnn.utils import to_categorical  # noqa: E402


class BlockingAuto(AutoCommunicator):
    """The `auto` communicator's allreduce with blocking MPI calls and no bookkeeping: the reference."""

    def _sendrecv(self, data, into, outgoing):
        byte = self._MPI.BYTE
        self.comm.Sendrecv([data, byte], self._right, 0, [into, byte], self._left, 0)
        return into

    def _allreduce(self, flat: np.ndarray, op: str) -> None:
        if flat.size >= self._ring_min_count[flat.dtype]:
            RingCommunicator._reduce(self, flat, op)
            return
        self.comm.Allreduce(self._MPI.IN_PLACE, flat, op=self._MPI.SUM)
        if op == "average":
            np.divide(flat, self._size, out=flat)


class ArrivalAuto(AutoCommunicator):
    """distnn's communicator plus a 16-byte "arrived" message to rank 0 per collective."""

    def __init__(self) -> None:
        super().__init__()
        self._arrivals = self.comm.Dup()
        self._outgoing = np.zeros(2, np.int64)
        self._incoming = np.zeros((self._size, 2), np.int64)

    def _allreduce(self, flat: np.ndarray, op: str) -> None:
        self._outgoing[0] += 1
        if self._rank == 0:
            requests = [self._arrivals.Irecv(self._incoming[r], r, 7) for r in range(1, self._size)]
        else:
            requests = [self._arrivals.Isend(self._outgoing, 0, 7)]
        super()._allreduce(flat, op)
        self._MPI.Request.Waitall(requests)  # long arrived: the collective needed every rank


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="fits per communicator, interleaved")
    parser.add_argument("--steps", type=int, default=40, help="training steps per fit")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)

    monitored = world.init()
    if monitored.size < 2:
        raise SystemExit("run it on several ranks: mpiexec -n 2 python benchmarks/bench_collective_wait.py")
    communicators = {"monitored": monitored, "blocking": BlockingAuto(), "arrival": ArrivalAuto()}
    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size * args.steps, 784), dtype=np.float32)
    y = to_categorical(rng.integers(10, size=len(x)), 10)
    model = Sequential([Dense(512, activation="relu", input_shape=(784,)), Dense(512, activation="relu"),
                        Dense(10, activation="softmax")])
    model.compile(optimizer=SGD(0.01), loss="categorical_crossentropy")
    model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)  # warm up
    order = list(communicators)
    step_times = {kind: [] for kind in order}
    for i in range(args.rounds):
        for kind in order[i % len(order):] + order[:i % len(order)]:
            # fit takes the process-wide communicator: swap it for this fit (benchmark only).
            world._communicator = communicators[kind]
            monitored.barrier()
            start = time.perf_counter()
            model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
            step_times[kind].append((time.perf_counter() - start) / args.steps)
    world._communicator = monitored
    slowest = monitored.gather_obj(step_times)
    if monitored.rank != 0:
        return
    # Per fit, the slowest rank's time: the job's.
    per_fit = {kind: np.max([rank[kind] for rank in slowest], axis=0) for kind in order}
    reference_median, reference_best = np.median(per_fit["blocking"]), np.min(per_fit["blocking"])
    print(f"MLP 784-512-512-10, global batch {args.batch_size}, {monitored.size} ranks: ms per step over "
          f"{args.rounds} interleaved fits of {args.steps} steps each (slowest rank)")
    for kind in order:
        median, best = np.median(per_fit[kind]), np.min(per_fit[kind])
        print(f"{kind:9s}  median {median * 1e3:7.3f} ms ({median / reference_median - 1:+6.1%})   "
              f"best {best * 1e3:7.3f} ms ({best / reference_best - 1:+6.1%})")


if __name__ == "__main__":
    main()
