"""Horovod's Keras callbacks for distnn: small pieces of distributed behaviour.

``fit`` already broadcasts rank 0's weights and reduces metrics exactly; these callbacks keep
Horovod scripts working unchanged and serve custom training loops.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from distnn.callbacks import Callback
from distnn.distributed import timeline
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


# ------------------------------------------------------------------- Horovod's callback names
class BroadcastGlobalVariablesCallback(BroadcastWeights):
    """Horovod's name for ``BroadcastWeights``: ``root_rank``'s weights and optimizer state at the
    start of training (``fit`` starts from rank 0's anyway; another ``root_rank`` is honoured).

    Args:
        root_rank: the rank whose values every rank takes.
        device: Horovod's device for the broadcast; accepted, distnn picks it from the array.
    """

    def __init__(self, root_rank: int = 0, device: str = ""):
        super().__init__(root_rank)


class MetricAverageCallback(MetricAverage):
    """Horovod's name for ``MetricAverage``. ``fit``'s logs are already global (every metric is
    reduced over all ranks' samples), so averaging them leaves them as they are; scripts keep it."""

    def __init__(self, device: str = ""):
        super().__init__()


class LearningRateScheduleCallback(Callback):
    """Horovod's schedule: ``lr = initial_lr * multiplier(epoch)`` from ``start_epoch`` up to
    ``end_epoch``.

    Args:
        initial_lr: the base rate.
        multiplier: a number, or a function of the epoch (fractional with ``staircase=False``).
        start_epoch, end_epoch: the epochs it applies to (``end_epoch`` excluded; ``None``: no end).
        staircase: change the rate at each epoch's first batch (True) or at every batch with the
            fractional epoch (False).
        momentum_correction: while the rate changes, scale the optimizer's ``momentum`` by
            new rate / old rate for that step (Goyal et al., 2017), as Horovod does.
        steps_per_epoch: batches per epoch for ``staircase=False`` (default: fit's steps).
    """

    def __init__(self, initial_lr: float, multiplier: Any, start_epoch: int = 0, end_epoch: int | None = None,
                 staircase: bool = True, momentum_correction: bool = True, steps_per_epoch: int | None = None):
        super().__init__()
        if initial_lr is None or not initial_lr > 0:
            raise ValueError(f"initial_lr must be a positive number. Received: initial_lr={initial_lr!r}")
        self.initial_lr, self.start_epoch, self.end_epoch = float(initial_lr), start_epoch, end_epoch
        self.multiplier = multiplier if callable(multiplier) else (lambda epoch: multiplier)
        self.staircase, self.momentum_correction, self.steps_per_epoch = staircase, momentum_correction, steps_per_epoch
        self._epoch = 0
        self._restore_momentum: float | None = None

    def on_train_begin(self, logs=None):
        if not self.staircase and not self.steps_per_epoch:
            self.steps_per_epoch = self.params.get("steps")
            if not self.steps_per_epoch:
                raise ValueError(f"{type(self).__name__} with staircase=False needs steps_per_epoch when fit does "
                                 "not know its steps (a generator without steps_per_epoch)")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self._epoch < self.start_epoch or (self.end_epoch is not None and self._epoch >= self.end_epoch):
            return
        if not self.staircase:
            self._set_rate(self._epoch + batch / self.steps_per_epoch)
        elif batch == 0:
            self._set_rate(self._epoch)

    def on_train_batch_end(self, batch, logs=None):
        if self._restore_momentum is not None:
            self.model.optimizer.momentum = self._restore_momentum
            self._restore_momentum = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.model.optimizer.learning_rate)

    def _set_rate(self, epoch: float) -> None:
        optimizer = self.model.optimizer
        old, new = float(optimizer.learning_rate), self.initial_lr * float(self.multiplier(epoch))
        optimizer.learning_rate = new
        if self.momentum_correction and getattr(optimizer, "momentum", 0) and old > 0:
            self._restore_momentum = optimizer.momentum
            optimizer.momentum = optimizer.momentum * new / old


class LearningRateWarmupCallback(LearningRateScheduleCallback):
    """Horovod's warmup: the rate rises linearly from ``initial_lr / size`` to ``initial_lr`` over
    ``warmup_epochs`` epochs, batch by batch (the recipe of Goyal et al., 2017, for a learning rate
    scaled by the number of ranks).

    Args:
        initial_lr: the rate at the end of the warmup (the scaled rate).
        warmup_epochs: its length in epochs.
        momentum_correction: see ``LearningRateScheduleCallback``.
        steps_per_epoch: batches per epoch (default: fit's steps).
        verbose: print the rate at the end of the warmup (rank 0).
    """

    def __init__(self, initial_lr: float, warmup_epochs: int = 5, momentum_correction: bool = True,
                 steps_per_epoch: int | None = None, verbose: int = 0):
        def multiplier(epoch: float) -> float:
            size = get_communicator().size
            epoch += 1.0 / self.steps_per_epoch  # the last batch of the warmup reaches 1 exactly
            return (epoch * (size - 1) / warmup_epochs + 1) / size

        super().__init__(initial_lr, multiplier, start_epoch=0, end_epoch=warmup_epochs, staircase=False,
                         momentum_correction=momentum_correction, steps_per_epoch=steps_per_epoch)
        self.verbose = verbose

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if epoch == self.end_epoch - 1 and self.verbose and get_communicator().rank == 0:
            print(f"\nEpoch {epoch + 1}: finished gradual learning rate warmup to "
                  f"{float(self.model.optimizer.learning_rate):g}.", flush=True)


class Timeline(Callback):
    """Records a timeline of this ``fit`` (every rank) and writes it to ``path`` at its end.

    Args:
        path: the Chrome-trace JSON file rank 0 writes (format: distnn.distributed.timeline).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ValueError(f"Timeline needs a non-empty file path. Received: path={path!r}")
        self.path = os.fspath(path)

    def on_train_begin(self, logs: Any = None) -> None:
        timeline.start(self.path, get_communicator())

    def on_train_end(self, logs: Any = None) -> None:
        timeline.write(get_communicator())
        timeline.stop()
