"""Horovod's Keras callbacks for distnn: small pieces of distributed behaviour.

``fit`` already broadcasts rank 0's weights and reduces metrics exactly; these callbacks keep
Horovod scripts working unchanged and serve custom training loops.
"""
from __future__ import annotations


import numpy as np

from distnn.callbacks import Callback
from distnn.distributed.optimizer import broadcast_weights
from distnn.distributed.world import get_communicator


class BroadcastWeights(Callback):
    """Broadcast ``root_rank``'s weights and optimizer state at the start of training."""

    def __init__(self, root_rank: int = 0):
        super().__init__()
        self.root_rank = root_rank

    def on_train_begin(self, logs=None):
        broadcast_weights(self.model, root=self.root_rank)


class MetricAverage(Callback):
    """Average every numeric log over ranks at the end of each epoch (in sorted key order, so every
    rank issues the same collective)."""

    def on_epoch_end(self, epoch, logs=None):
        if not logs:
            return
        comm = get_communicator()
        keys = sorted(k for k, v in logs.items() if isinstance(v, (int, float, np.floating)))
        values = np.array([float(logs[k]) for k in keys])
        comm.allreduce(values, op="average")
        logs.update(zip(keys, values.tolist()))


class LearningRateWarmup(Callback):
    """Ramp the learning rate linearly over the first ``warmup_epochs`` epochs (per step).

    Large global batches train better when the rate starts small (Goyal et al., 2017): it goes from
    ``initial_lr * start_factor`` (default ``1 / size``) to ``initial_lr``.

    Args:
        initial_lr: the rate reached at the end of the warmup (default: the optimizer's at start).
        warmup_epochs: length of the ramp in epochs.
        start_factor: fraction of ``initial_lr`` to start from.
        verbose: print the rate when the warmup ends (rank 0).
    """

    def __init__(self, initial_lr: float | None = None, warmup_epochs: float = 5, start_factor: float | None = None,
                 verbose: int = 0):
        super().__init__()
        if warmup_epochs <= 0:
            raise ValueError(f"warmup_epochs must be > 0. Received: warmup_epochs={warmup_epochs}")
        self.initial_lr, self.warmup_epochs, self.start_factor, self.verbose = initial_lr, warmup_epochs, start_factor, verbose
        self._epoch = 0

    def on_train_begin(self, logs=None):
        if self.initial_lr is None:
            self.initial_lr = self.model.optimizer.learning_rate
        if self.start_factor is None:
            self.start_factor = 1.0 / get_communicator().size

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        progress = (self._epoch + batch / max(1, self.params.get("steps", 1))) / self.warmup_epochs
        if progress <= 1:
            factor = self.start_factor + (1 - self.start_factor) * progress
            self.model.optimizer.learning_rate = self.initial_lr * factor

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == int(np.ceil(self.warmup_epochs)):
            self.model.optimizer.learning_rate = self.initial_lr
            if self.verbose and self.is_root:
                print(f"Epoch {epoch + 1}: finished learning-rate warmup to {self.initial_lr}")
