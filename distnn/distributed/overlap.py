"""Gradient buckets reduced while backward is still running (docs/architecture.md, "Gradient buckets
and overlap").

The flat gradient buffer is laid out in the order backward completes it (distnn.models.model), so
cutting it into contiguous buckets gives buckets that become final one after another. The tape reports
each variable whose gradient is final (``Tape.backward(on_final=...)``; a ``Dense`` or convolution
reports its weights before computing dL/dx) and, when the ranks span nodes, the leading rows of a
kernel gradient as a GEMM run in pieces writes them (``on_final_prefix``); when the last element of
the next bucket is final the bucket's sum over the ranks starts as a non-blocking ``MPI_Iallreduce``,
and every later report (and poll between pieces) tests the transfers in flight with ``MPI_Test``.
After backward the main thread completes what is left in the stall monitor's wait loop (reported as
an ``allreduce`` of the gradient), so stall reports and aborts work as for any collective.

Why ``Iallreduce`` polled from the backward walk, measured with 2 ranks on this 2-core machine
(MPICH 4 wheel, shared memory; a 1-4 MiB float32 sum overlapped with 30 ms of GEMMs, medians of 10):
without MPI calls during the computation MPICH makes no progress (3-4 ms of the transfer remain
after it); polled with ``MPI_Test`` between GEMMs it is completely hidden (35.6 ms per step against
39-40 ms blocking); a Python thread running a blocking ``MPI_Allreduce`` under
``MPI_THREAD_MULTIPLE`` hides less (37-38 ms: its polling competes with the GEMMs for the core and
the interpreter lock); MPICH's own progress thread (``MPIR_CVAR_ASYNC_PROGRESS=1``) spins a core
and made every variant slower (48 ms).

Buckets travel on a communicator of their own and always start in index order on every rank (a bucket that is final before the one before it
waits), because MPI collectives on one communicator must be issued in the same order everywhere.
The summed values do not depend on the bucket size: each element is the same sum over ranks.
"""
from __future__ import annotations

import os
import time
import weakref
from typing import Any

import numpy as np

from distnn import backend
from distnn.distributed import timeline
from distnn.distributed.backends import create_communicator
from distnn.distributed.ring import parse_bytes

OVERLAP_ENV = "DISTNN_OVERLAP"
BUCKET_ENV = "DISTNN_BUCKET_BYTES"
# Measured with benchmarks/bench_mlp.py --batch-size 256 on 2 ranks (docs/architecture.md,
# "Gradient buckets and overlap"): 1 MiB splits the MLP's 2.7 MB into its last two layers and
# its first, so the first layer's weight-gradient GEMM hides the first bucket's transfer.
DEFAULT_BUCKET_BYTES = 1 << 20
_TRUE, _FALSE = ("1", "true", "on", "yes"), ("0", "false", "off", "no", "")


def overlap_from_env() -> bool:
    """``DISTNN_OVERLAP`` (default on) as a bool, with a clear error for anything else."""
    text = os.environ.get(OVERLAP_ENV, "1").strip().lower()
    if text not in _TRUE + _FALSE:
        raise ValueError(f"{OVERLAP_ENV} must be 1/0 (true/false, on/off). Received: {OVERLAP_ENV}={text!r}")
    return text in _TRUE


def bucket_bytes_from_env() -> int:
    """``DISTNN_BUCKET_BYTES`` (e.g. ``"1M"``) or the measured default."""
    text = os.environ.get(BUCKET_ENV)
    value = DEFAULT_BUCKET_BYTES if not text else parse_bytes(text)
    return check_bucket_bytes(value, BUCKET_ENV)


def check_bucket_bytes(value: Any, name: str = "bucket_bytes") -> int:
    if isinstance(value, str):
        value = parse_bytes(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive byte count such as 1048576 or '1M'. Received: {name}={value!r}")
    return int(value)


class BucketReducer:
    """Sums a model's flat gradient over the ranks in buckets, started as backward completes them.

    Args:
        comm: the gradient communicator (an MPI one, with the compression to apply).
        grads: the model's flat gradient buffer.
        variables: the trainable variables, in buffer order (each ``grad`` a view of ``grads``).
        sizes: each variable's element count.
        bucket_bytes: each bucket's size (the last one may be smaller).
    """

    def __init__(self, comm: Any, grads: np.ndarray, variables: list, sizes: list[int], bucket_bytes: int) -> None:
        self.comm, self.grads = comm, grads
        # Equal slices of the buffer, cutting through variables. Slices, rather than whole variables,
        # keep each transfer in the size range where MPI_Iallreduce is fast (a large first-layer
        # kernel would be one slow multi-MiB bucket, finished last).
        step = max(1, bucket_bytes // grads.itemsize)
        self._step = step
        self.bounds = [(lo, min(lo + step, grads.size)) for lo in range(0, grads.size, step)]
        # Where each variable's gradient lies in the buffer (the variables tile it). A bucket is final
        # once all of its elements are: the tape reports whole variables, and the leading rows of a
        # kernel gradient that a fused layer writes in pieces (on_final_prefix).
        self._layout: dict[int, tuple[int, int]] = {}
        offset = 0
        for v, size in zip(variables, sizes):
            self._layout[id(v)] = (offset, size)
            offset += size
        # Whether backward should also report and poll from inside long fused GEMMs (run in pieces;
        # Tape.backward's on_final_prefix): only when the ranks span nodes. Across a network a transfer
        # moves on between MPI calls once each call has fed it; over shared memory the polls do the
        # copying themselves, on the core the GEMM needs. Measured with the MLP on 2 ranks
        # (docs/architecture.md, "Gradient buckets and overlap"): on 2 emulated nodes at 4 Gbit/s the
        # exposed communication per step fell from 2.38 ms to 1.36-1.38 ms (3.76-3.87 ms blocking);
        # on one node the 2-rank rate fell 7 % (1.52x to 1.43x one rank, medians of 6 pairs).
        self.reports_within_ops = comm.cross_size > 1
        wire_dtype = comm.compression.wire_dtype(grads.dtype)
        self._wire = None if wire_dtype == grads.dtype else comm.buffer("bucket-wire", wire_dtype, grads.size)
        self._pending: list[int] = []  # per bucket, elements not yet final
        self._reported: dict[int, int] = {}  # per variable, leading elements already reported final
        self._requests: list[Any] = []
        self._started: list[int] = []
        self._finished: list[int | None] = []
        self._next = 0

    def begin(self) -> None:
        """Before backward: every bucket waits for all of its elements."""
        self._pending = [hi - lo for lo, hi in self.bounds]
        self._reported = {}
        self._requests, self._started, self._finished, self._next = [], [], [], 0

    def on_final(self, variables: list) -> None:
        """The tape's report: ``variables`` hold their final gradients. Starts the buckets now
        ready (in order) and polls those in flight (MPICH advances a transfer only inside MPI calls)."""
        for v in variables:
            self._mark_final(v, self._layout[id(v)][1])
        self._advance()

    def on_final_prefix(self, variable: Any, elements: int) -> None:
        """The tape's report from inside a fused layer's VJP: the first ``elements`` of ``variable``'s
        gradient are final (the rest follows, at the latest with ``on_final``)."""
        self._mark_final(variable, elements)
        self._advance()

    def _mark_final(self, variable: Any, elements: int) -> None:
        offset, _ = self._layout[id(variable)]
        done = self._reported.get(id(variable), 0)
        if elements <= done:
            return
        self._reported[id(variable)] = elements
        lo, hi = offset + done, offset + elements
        for index in range(lo // self._step, (hi - 1) // self._step + 1):
            bucket_lo, bucket_hi = self.bounds[index]
            self._pending[index] -= min(hi, bucket_hi) - max(lo, bucket_lo)

    def _advance(self) -> None:
        while self._next < len(self.bounds) and self._pending[self._next] == 0:
            self._start(self._next)
        for index, request in enumerate(self._requests):
            if self._finished[index] is None and self.comm.poll(request):
                self._finished[index] = time.perf_counter_ns()

    def finish(self) -> None:
        """After backward: start what has not started (an empty shard reports nothing), then wait
        for every bucket in the stall monitor's loop and copy compressed sums back."""
        while self._next < len(self.bounds):
            self._start(self._next)
        waited = time.perf_counter_ns()
        self.comm.complete(self._requests, self.grads)
        if self._wire is not None:
            np.copyto(self.grads, self._wire)
        recorder = timeline.recorder()
        if recorder is not None:
            done = time.perf_counter_ns()
            recorder.add("allreduce wait", waited, done)
            for index, (started, finished) in enumerate(zip(self._started, self._finished)):
                lo, hi = self.bounds[index]
                recorder.add(f"bucket {index}", started, finished or done, track="allreduce",
                             bytes=(hi - lo) * self.grads.itemsize)

    def _start(self, index: int) -> None:
        lo, hi = self.bounds[index]
        wire = None if self._wire is None else self._wire[lo:hi]
        self._requests.append(self.comm.start_sum(self.grads[lo:hi], wire))
        self._started.append(time.perf_counter_ns())
        self._finished.append(None)
        self._next = index + 1


# Each model's reducer with the settings it was made for; weak, so a model is not kept alive by it.
_reducers: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()


def _settings(model: Any) -> tuple[bool, int]:
    """``(overlap, bucket_bytes)`` in effect for ``model``: its ``DistributedOptimizer``'s, else the environment's."""
    horovod = getattr(model, "_horovod", None)
    overlap = overlap_from_env() if horovod is None or horovod.overlap is None else horovod.overlap
    bucket_bytes = bucket_bytes_from_env() if horovod is None or horovod.bucket_bytes is None else horovod.bucket_bytes
    return overlap, bucket_bytes


def agreed_settings(model: Any) -> dict:
    """The settings ranks must agree on, for ``fit``'s and ``train_on_batch``'s consistency check
    (its one digest exchange): a rank reducing in buckets and one that does not issue different
    collectives."""
    overlap, bucket_bytes = _settings(model)
    return {f"gradient buckets ({OVERLAP_ENV}, {BUCKET_ENV})": (overlap, bucket_bytes)}


def step_reducer(model: Any, comm: Any) -> BucketReducer | None:
    """The model's bucket reducer for this step, or ``None`` for the blocking allreduce after
    backward: one process, overlap off, or gradient accumulation (which sums locally first)."""
    if comm.size == 1:
        return None
    optimizer, horovod = model.optimizer, getattr(model, "_horovod", None)
    key = (id(comm), id(model.grads), optimizer.gradient_accumulation_steps, os.environ.get(OVERLAP_ENV),
           os.environ.get(BUCKET_ENV), None if horovod is None else (horovod.overlap, horovod.bucket_bytes))
    cached = _reducers.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    overlap, bucket_bytes = _settings(model)  # the ranks agreed on them (agreed_settings)
    reducer = None
    # Device gradients take one allreduce through distributed/device_collectives: the buckets' requests
    # are host MPI ones (docs/architecture.md, "Devices").
    if overlap and (optimizer.gradient_accumulation_steps or 1) == 1 and not backend.is_device_array(model.grads):
        gradient_comm = horovod.gradient_communicator(comm) if horovod is not None else comm
        # The buckets get a communicator of their own: collectives issued during backward (synchronized
        # BatchNormalization's) come after some buckets on ranks with samples, but before all of them on
        # a rank whose shard is empty (it runs no backward); on one communicator they would mismatch.
        bucket_comm = create_communicator(gradient_comm.name, comm=gradient_comm.comm,
                                          compression=gradient_comm.compression)
        reducer = BucketReducer(bucket_comm, model.grads, model._bound_variables,
                                [size for _, size in model._segments], bucket_bytes)
    _reducers[model] = (key, reducer)
    return reducer
