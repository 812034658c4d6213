"""Horovod's ``DistributedOptimizer`` and the gradient reduction of the data-parallel step.

In a custom loop the wrapper averages each rank's gradient before the update::

    opt = dist.DistributedOptimizer(distnn.optimizers.Adam(1e-3))
    dist.broadcast_weights(model)                        # once, before the first step
    loss, grads = model.compute_gradients(x_local, y_local)
    model.grads[...] = grads
    opt.apply(model.params, model.grads)                 # averages over ranks, then updates

``compile(optimizer=DistributedOptimizer(...))`` unwraps it: ``fit`` reduces exactly over the
global batch itself (``reduce_and_apply``), and the wrapper's presence selects Horovod's
semantics, ``batch_size`` per rank (docs/architecture.md, "Input pipelines and data-parallel modes").
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn.distributed import compression as compression_lib
from distnn.distributed import overlap as overlap_lib
from distnn.distributed import timeline
from distnn.distributed.backends import create_communicator
from distnn.distributed.world import get_communicator
from distnn.optimizers import Optimizer

# Horovod's reduction operations (``hvd.Average``, ``hvd.Sum``, ``hvd.Adasum``).
Average, Sum, Adasum = "average", "sum", "adasum"


def check_op(op: Any, average: Any = None) -> str:
    """Horovod's ``op``/``average`` keywords as ``"average"`` or ``"sum"`` (``average`` is the
    deprecated spelling: True is ``Average``, False is ``Sum``)."""
    if average is not None and op is not None:
        raise ValueError(f"Pass either op or average, not both. Received: op={op!r}, average={average!r}")
    if average is not None:
        return Average if average else Sum
    op = Average if op is None else op
    if op == Adasum:
        raise ValueError("hvd.Adasum is not supported by distnn: its reduction depends on the order in which ranks "
                         "combine and cannot keep distnn's N ranks = 1 process contract. Use op=hvd.Average "
                         "(default) or op=hvd.Sum")
    if op not in (Average, Sum):
        raise ValueError(f"op must be hvd.Average or hvd.Sum. Received: op={op!r}")
    return op


def broadcast_weights(model: Any, root: int = 0) -> None:
    """Copy ``root``'s weights, non-trainable state and optimizer state to every rank (collective)."""
    comm = get_communicator()
    model._require_built("broadcast_weights()")
    comm.bcast(model.params, root=root)
    if model.state.size:
        comm.bcast(model.state, root=root)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        for slot in optimizer.slots.values():
            comm.bcast(slot, root=root)
        optimizer.iterations = comm.bcast_obj(optimizer.iterations, root=root)


class DistributedOptimizer:
    """Wraps an optimizer so that ``apply`` first reduces the gradient over all ranks (Horovod's class).

    Every other attribute (``learning_rate``, ``iterations``, state...) is the wrapped optimizer's.

    Args:
        optimizer: the optimizer to wrap.
        name: accepted for Horovod scripts; the wrapper has no name of its own.
        compression: ``hvd.Compression.none`` or ``.fp16`` (float16 on the wire).
        op: ``hvd.Average`` (default) or ``hvd.Sum``; ``hvd.Adasum`` is refused.
        backward_passes_per_step: accumulate this many gradients locally before one reduction and
            update (``gradient_accumulation_steps`` of the wrapped optimizer).
        average_aggregated_gradients: average the accumulated gradients (True) or add them
            (False, Horovod's default).
        gradient_predivide_factor, sparse_as_dense, device_dense, device_sparse, num_groups,
            groups: Horovod's placement and numerics options. distnn's flat gradient is dense, on
            one device and reduced in one exactly-summed buffer, so they cannot change the
            result; they are accepted so scripts run unchanged.
        backend: communicator for ``apply``'s allreduce in custom loops (``None``: the process-wide one).
        overlap: in ``fit``, sum the gradient in buckets started while backward runs (True) or in one
            allreduce after it (False); ``None``: env ``DISTNN_OVERLAP`` (default on).
        bucket_bytes: the buckets' size in bytes (``"1M"`` works too); ``None``: env
            ``DISTNN_BUCKET_BYTES`` or the measured default (docs/architecture.md, "Gradient buckets
            and overlap").

    In ``fit`` the gradient is the global batch's mean (each rank's loss sum divided by the step's
    total sample count). Under Horovod it is the mean of the ranks' batch means; the two are equal
    whenever the ranks' batches are equally large (every step but a ragged last one).
    ``op=hvd.Sum`` multiplies it by the number of ranks, Horovod's sum of the ranks' means.
    """

    def __init__(self, optimizer: Optimizer, name: str | None = None, device_dense: str = "",
                 device_sparse: str = "", compression: Any = None, sparse_as_dense: bool = False,
                 backward_passes_per_step: int = 1, op: Any = Average, gradient_predivide_factor: float = 1.0,
                 average_aggregated_gradients: bool = False, num_groups: int = 0, groups: Any = None,
                 backend: Any = None, process_set: Any = None, overlap: bool | None = None,
                 bucket_bytes: int | str | None = None):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"DistributedOptimizer wraps a distnn Optimizer. Received: optimizer={optimizer!r}")
        if process_set is not None:
            raise ValueError("distnn has one process set, the whole job: process_set must be None. "
                             f"Received: process_set={process_set!r}")
        if isinstance(backward_passes_per_step, bool) or not isinstance(backward_passes_per_step, (int, np.integer)) \
                or backward_passes_per_step < 1:
            raise ValueError("backward_passes_per_step must be a positive integer. Received: "
                             f"backward_passes_per_step={backward_passes_per_step!r}")
        if not gradient_predivide_factor > 0:
            raise ValueError(f"gradient_predivide_factor must be > 0. Received: {gradient_predivide_factor!r}")
        if overlap is not None and not isinstance(overlap, bool):
            raise ValueError(f"overlap must be None, True or False. Received: overlap={overlap!r}")
        self.overlap = overlap
        self.bucket_bytes = None if bucket_bytes is None else overlap_lib.check_bucket_bytes(bucket_bytes)
        self.op = check_op(op)
        self.compression = compression_lib.get(compression)
        self.optimizer = optimizer
        if backward_passes_per_step > 1:
            if optimizer.built and optimizer.gradient_accumulation_steps != backward_passes_per_step:
                raise ValueError("DistributedOptimizer(backward_passes_per_step=...) needs an optimizer that has not "
                                 "been used yet (its accumulator is allocated when it is built)")
            optimizer.gradient_accumulation_steps = int(backward_passes_per_step)
            optimizer.average_accumulated_gradients = bool(average_aggregated_gradients)
        self.backward_passes_per_step = int(backward_passes_per_step)
        self._comm = backend
        self._compressed: dict[int, Any] = {}

    def gradient_communicator(self, comm: Any) -> Any:
        """``comm``, or a communicator on the same ranks with this wrapper's compression (created
        collectively at the first use, then kept)."""
        if comm.size == 1 or type(self.compression) is type(comm.compression):
            return comm
        if id(comm) not in self._compressed:
            self._compressed[id(comm)] = create_communicator(comm.name, comm=comm.comm, compression=self.compression)
        return self._compressed[id(comm)]

    def apply(self, params: Any, grads: Any) -> None:
        """Reduce ``grads`` over the ranks still training (see ``join``), then update ``params``."""
        if not self.optimizer.accumulate(grads):  # communicate once per update, as Horovod does
            return
        comm = self.gradient_communicator(self._comm or get_communicator())
        if comm.size > 1:
            active = _training_round(comm, grads)
            comm.allreduce(grads, op="sum")
            if self.op == Average:
                grads /= active
        self.optimizer.apply_update(params, grads)

    def __getattr__(self, name: str) -> Any:
        if name == "optimizer":  # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.optimizer, name)


def reduce_and_apply(model: Any, comm: Any, buckets: Any = None) -> bool:
    """The data-parallel step after backward: accumulate this rank's share (``backward_passes_per_step``
    / ``gradient_accumulation_steps``), and when an update is due sum the shares over the ranks
    (exactly the global batch's mean gradient), add regularisation and update. Returns whether it
    updated. ``buckets``: the ``overlap.BucketReducer`` that started the sum during backward."""
    horovod, optimizer = getattr(model, "_horovod", None), model.optimizer
    if buckets is not None:
        buckets.finish()
    elif not optimizer.accumulate(model.grads):
        return False
    elif comm.size > 1:
        reducer = horovod.gradient_communicator(comm) if horovod is not None else comm
        with timeline.phase("allreduce"):
            reducer.allreduce(model.grads, op="sum")
    # Under Horovod each rank's and each micro-batch's loss carries the regularisation: summing
    # gradients (op=Sum, average_aggregated_gradients=False) sums it as often.
    repeats = 1
    if horovod is not None and horovod.op == Sum and comm.size > 1:
        model.grads *= comm.size
        repeats *= comm.size
    if (optimizer.gradient_accumulation_steps or 1) > 1 and not optimizer.average_accumulated_gradients:
        repeats *= optimizer.gradient_accumulation_steps
    with timeline.phase("optimizer"):
        for _ in range(repeats):
            model._add_regularization_gradients()
        optimizer.apply_update(model.params, model.grads)
    return True


# --------------------------------------------------------------------------------------- join
# Each reduction of ``DistributedOptimizer.apply`` is preceded by a round in which every rank says
# whether it still trains and how large its gradient is; a rank inside ``join`` says no and adds
# zeros of that size, so ranks with more batches than others never wait on a missing partner.
_ROUND = 3  # [ranks still training, gradient length, 1 if float64]


def _training_round(comm: Any, grads: Any) -> float:
    status = np.array([1.0, float(grads.size), float(grads.dtype == np.float64)])
    comm.allreduce(status, op="sum")
    return status[0]


def join(comm: Any = None) -> int:
    """Horovod's ``hvd.join()``: this rank has no more batches. Until every rank has joined it
    answers the other ranks' ``DistributedOptimizer.apply`` reductions with zero gradients (they
    average over the ranks still training). Returns the rank that joined last.

    Other collectives issued by ranks still training (a metric allreduce of your own) are not
    answered: call them before ``join``. ``fit`` needs no ``join``: in own-shard mode it already
    gives ranks whose data ran out empty steps.
    """
    comm = comm or get_communicator()
    rounds = 0
    while comm.size > 1:
        status = np.zeros(_ROUND)
        comm.allreduce(status, op="sum")
        training = int(round(status[0]))
        if training == 0:
            break
        width = int(round(status[1] / training))  # every training rank reported the same length
        zeros = np.zeros(width, dtype=np.float64 if status[2] else np.float32)
        comm.allreduce(zeros, op="sum")
        rounds += 1
    if comm.size == 1:
        return 0
    # The last rank to join answered the fewest rounds (ties: the highest rank, as any would do).
    answered = comm.allgather(np.array([rounds], dtype=np.int64))
    fewest = int(answered.min())
    return int(max(r for r in range(comm.size) if answered[r] == fewest))
