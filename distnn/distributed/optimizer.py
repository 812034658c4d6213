"""Horovod-style helpers for people who write their own training loops.

``Model.fit`` is already data-parallel (docs/architecture.md); these are for custom loops::

    opt = dist.DistributedOptimizer(distnn.optimizers.Adam(1e-3))
    dist.broadcast_weights(model)                        # once, before the first step
    loss, grads = model.compute_gradients(x_local, y_local)
    model.grads[...] = grads
    opt.apply(model.params, model.grads)                 # averages over ranks, then updates
"""
from __future__ import annotations

from typing import Any

from distnn.distributed.world import get_communicator
from distnn.optimizers import Optimizer


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
    """Wraps an optimizer so that ``apply`` first averages the gradient over all ranks.

    Every other attribute (``learning_rate``, ``iterations``, state...) is the wrapped optimizer's.
    ``compile`` unwraps it: ``fit`` already reduces gradients exactly over the global batch, so
    averaging again would only cost a second allreduce.

    Args:
        optimizer: the optimizer to wrap.
        backend: communicator for the gradient allreduce (``None``: the process-wide one).
    """

    def __init__(self, optimizer: Optimizer, backend: Any = None):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"DistributedOptimizer wraps a distnn Optimizer. Received: optimizer={optimizer!r}")
        self.optimizer = optimizer
        self._comm = backend

    def apply(self, params: Any, grads: Any) -> None:
        comm = self._comm or get_communicator()
        comm.allreduce(grads, op="average")
        self.optimizer.apply(params, grads)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)
