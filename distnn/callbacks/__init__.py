"""Keras callbacks: ``History``, the progress bar, ``EarlyStopping``, ``ModelCheckpoint``,
``LearningRateScheduler``, ``ReduceLROnPlateau``, ``CSVLogger``, ``TerminateOnNaN``, ``LambdaCallback``.

Logs passed to callbacks hold *global* values on every rank (the training loop reduces metric sums
across ranks), so decisions such as early stopping agree everywhere. Callbacks that write files do
so on rank 0 only (``Callback.is_root``), as Horovod recommends.
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from typing import Any, Callable

import numpy as np

from distnn.callbacks.callback import HOOKS, Callback, CallbackList  # noqa: F401 - the public names
from distnn.callbacks.tensorboard import TensorBoard  # noqa: F401 - tensorboard itself is imported when training begins


def __getattr__(name: str) -> Any:
    # BackupAndRestore lives with the distributed machinery it needs; Keras users import it from here.
    if name in ("BackupAndRestore", "PREEMPTED_EXIT_CODE"):
        from distnn.distributed import checkpoint  # noqa: PLC0415

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'distnn.callbacks' has no attribute {name!r}")


class History(Callback):
    """Records the logs of every epoch in ``history`` (``{"loss": [...], "accuracy": [...]}``)."""

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


def _format_logs(logs: dict) -> str:
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())


class ProgbarLogger(Callback):
    """Progress output on rank 0: a per-step bar with ETA and running metrics (``verbose=1`` on a
    terminal, via tqdm) or one line per epoch (``verbose=2``, or ``verbose=1`` into a file or pipe,
    where a redrawn bar would only fill the log)."""

    def __init__(self, verbose: int = 1, file: Any = None):
        super().__init__()
        self.verbose = verbose
        self.file = file
        self._bar: Any = None
        self._in_fit = False  # fit's validation runs evaluate silently: its results join the epoch line
        self._seen = 0  # batches so far (the count when a generator's steps are not known in advance)

    def on_train_begin(self, logs=None):
        self._in_fit = True

    def on_train_end(self, logs=None):
        self._in_fit = False

    def on_test_begin(self, logs=None):
        if not self._in_fit:  # in fit, the epoch's clock keeps running
            self._start = time.perf_counter()
            self._seen = 0

    def on_test_batch_begin(self, batch, logs=None):  # (not _end: that would make evaluate compute batch logs)
        if not self._in_fit:
            self._seen = batch + 1

    def on_predict_batch_begin(self, batch, logs=None):
        self._seen = batch + 1

    def on_test_end(self, logs=None):
        if not self._in_fit:
            self._print_summary(logs or {})

    def on_predict_begin(self, logs=None):
        self._start = time.perf_counter()
        self._seen = 0

    def on_predict_end(self, logs=None):
        self._print_summary({})

    def _print_summary(self, logs: dict) -> None:
        """``steps/steps - 3s - 12ms/step - loss: ...``, Keras' closing line."""
        elapsed = time.perf_counter() - self._start
        steps = max(1, self.params["steps"] or self._seen)  # a generator without steps: those it ran
        print(" - ".join(filter(None, [f"{steps}/{steps}", f"{elapsed:.0f}s", f"{1000 * elapsed / steps:.0f}ms/step",
                                       _format_logs(logs)])), file=self.file or sys.stdout, flush=True)

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._seen = 0
        out = self.file or sys.stdout
        print(f"Epoch {epoch + 1}/{self.params['epochs']}", file=out, flush=True)
        if self.verbose == 1 and getattr(out, "isatty", lambda: False)():
            from tqdm.auto import tqdm  # noqa: PLC0415 - only where a bar is shown

            self._bar = tqdm(total=self.params["steps"], file=out, leave=True, ncols=110, ascii=" =",
                             bar_format="{n_fmt}/{total_fmt} [{bar:25}] {elapsed}<{remaining} {desc}",
                             mininterval=0.1)

    def on_train_batch_end(self, batch, logs=None):
        self._seen = batch + 1
        if self._bar is not None:
            self._bar.n = batch + 1
            if time.perf_counter() - self._bar.last_print_t >= self._bar.mininterval:
                self._bar.set_description_str("- " + _format_logs(logs or {}), refresh=False)
                self._bar.refresh()

    def on_epoch_end(self, epoch, logs=None):
        if self._bar is not None:
            self._bar.n = max(1, self.params["steps"] or self._seen)
            self._bar.set_description_str("- " + _format_logs(logs or {}), refresh=True)
            self._bar.close()
            self._bar = None
        else:
            self._print_summary(logs or {})


def _monitor_mode(monitor: str, mode: str) -> Callable[[float, float], bool]:
    """Whether ``current`` improves on ``best`` (with ``min_delta`` folded in by the caller)."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max'. Received: mode={mode!r}")
    if mode == "auto":
        mode = "max" if any(word in monitor for word in ("acc", "auc", "precision", "recall")) else "min"
    return np.greater if mode == "max" else np.less


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has stopped improving for ``patience`` epochs.

    Args:
        monitor: the log to watch (default ``"val_loss"``).
        min_delta: smallest change that counts as an improvement.
        patience: epochs without improvement before stopping.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (from the monitor's name).
        baseline: a value the monitor must beat.
        restore_best_weights: put back the weights of the best epoch when stopping.
        start_from_epoch: epochs to wait before watching.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, verbose: int = 0,
                 mode: str = "auto", baseline: float | None = None, restore_best_weights: bool = False,
                 start_from_epoch: int = 0):
        super().__init__()
        if patience < 0:
            raise ValueError(f"patience must be >= 0. Received: patience={patience}")
        self.monitor, self.patience, self.verbose = monitor, int(patience), verbose
        self.baseline, self.restore_best_weights, self.start_from_epoch = baseline, restore_best_weights, start_from_epoch
        self.monitor_op = _monitor_mode(monitor, mode)
        self.min_delta = abs(min_delta) if self.monitor_op is np.greater else -abs(min_delta)

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch, self.best_epoch = 0, 0, 0
        self.best = -math.inf if self.monitor_op is np.greater else math.inf
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which is not in the logs "
                             f"{sorted(logs or {})}: add validation data or monitor another key")
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.model.get_weights(), epoch
        self.wait += 1
        if self.monitor_op(current - self.min_delta, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            # As Keras 3: the best epoch is tracked always, but patience restarts only above the baseline.
            if self.baseline is None or self.monitor_op(current - self.min_delta, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch and self.verbose and self.is_root:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping (best epoch {self.best_epoch + 1})")
        # Keras 3 restores the best weights at the end of training, whether or not it stopped early.
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model (or its weights) after every epoch or every ``save_freq`` steps, on rank 0.

    Args:
        filepath: path template filled with ``epoch`` (1-based, as Keras) and the logs, e.g.
            ``"ckpt-{epoch:02d}-{val_loss:.3f}.distnn"``.
        monitor, mode, save_best_only: keep only files that improve ``monitor``.
        save_weights_only: write ``save_weights`` files instead of whole models.
        save_freq: ``"epoch"`` or a number of steps.
    """

    def __init__(self, filepath: str, monitor: str = "val_loss", verbose: int = 0, save_best_only: bool = False,
                 save_weights_only: bool = False, mode: str = "auto", save_freq: Any = "epoch",
                 initial_value_threshold: float | None = None):
        super().__init__()
        if save_freq != "epoch" and (not isinstance(save_freq, int) or save_freq <= 0):
            raise ValueError(f"save_freq must be 'epoch' or a positive integer. Received: save_freq={save_freq!r}")
        self.filepath, self.monitor, self.verbose = os.fspath(filepath), monitor, verbose
        self.save_best_only, self.save_weights_only, self.save_freq = save_best_only, save_weights_only, save_freq
        self.monitor_op = _monitor_mode(monitor, mode)
        default = -math.inf if self.monitor_op is np.greater else math.inf
        self.best = default if initial_value_threshold is None else initial_value_threshold
        self._epoch = 0
        self._steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self.save_freq != "epoch" and self._steps % self.save_freq == 0:
            self._save(self._epoch, logs or {}, batch)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, logs or {})

    def _save(self, epoch: int, logs: dict, batch: int | None = None) -> None:
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                raise ValueError(f"ModelCheckpoint monitors {self.monitor!r}, which is not in the logs {sorted(logs)}")
            if not self.monitor_op(current, self.best):
                return
            self.best = current
        if not self.is_root:  # rank 0 alone writes; the values it formats are global
            return
        try:
            path = self.filepath.format(epoch=epoch + 1, batch=batch, **logs)
        except KeyError as exc:
            raise KeyError(f"ModelCheckpoint filepath {self.filepath!r} uses {exc}, which is not in the logs "
                           f"{sorted(logs)}") from None
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        from distnn.distributed import timeline  # noqa: PLC0415 - the package imports these callbacks

        with timeline.phase("checkpoint"):
            if self.save_weights_only:
                self.model.save_weights(path)
            else:
                self.model.save(path)
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved model to {path}")


class LearningRateScheduler(Callback):
    """Set the optimizer's rate at the start of each epoch from ``schedule(epoch, lr)``."""

    def __init__(self, schedule: Callable[[int, float], float], verbose: int = 0):
        super().__init__()
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        try:
            lr = float(self.schedule(epoch, self.model.optimizer.learning_rate))
        except TypeError:  # Keras also accepts the older one-argument form schedule(epoch)
            lr = float(self.schedule(epoch))
        if not math.isfinite(lr):
            raise ValueError(f"The schedule returned a learning rate that is not finite: {lr}")
        self.model.optimizer.learning_rate = lr
        if self.verbose and self.is_root:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self.model.optimizer.learning_rate


class ReduceLROnPlateau(Callback):
    """Multiply the rate by ``factor`` when ``monitor`` has not improved for ``patience`` epochs."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, verbose: int = 0,
                 mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0):
        super().__init__()
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau does not support a factor >= 1.0. Received: factor={factor}")
        self.monitor, self.factor, self.patience, self.verbose = monitor, factor, patience, verbose
        self.min_delta, self.cooldown, self.min_lr = min_delta, cooldown, min_lr
        self.monitor_op = _monitor_mode(monitor, mode)
        self.wait = self.cooldown_counter = 0
        self.best = -math.inf if self.monitor_op is np.greater else math.inf

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["learning_rate"] = self.model.optimizer.learning_rate
        current = logs.get(self.monitor)
        if current is None:
            raise ValueError(f"ReduceLROnPlateau monitors {self.monitor!r}, which is not in the logs {sorted(logs)}")
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        delta = self.min_delta if self.monitor_op is np.greater else -self.min_delta
        if self.monitor_op(current - delta, self.best):
            self.best, self.wait = current, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = self.model.optimizer.learning_rate
                new = max(old * self.factor, self.min_lr)
                if old - new > 1e-12:
                    self.model.optimizer.learning_rate = new
                    if self.verbose and self.is_root:
                        print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}")
                self.cooldown_counter, self.wait = self.cooldown, 0


class CSVLogger(Callback):
    """Stream each epoch's logs to a CSV file (rank 0 only)."""

    def __init__(self, filename: str, separator: str = ",", append: bool = False):
        super().__init__()
        self.filename, self.separator, self.append = os.fspath(filename), separator, append
        self._writer: Any = None
        self._file: Any = None

    def on_train_begin(self, logs=None):
        if self.is_root:
            exists = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
            self._file = open(self.filename, "a" if self.append else "w", newline="")
            self._header_written = exists

    def on_epoch_end(self, epoch, logs=None):
        if self._file is None:
            return
        row = {"epoch": epoch, **(logs or {})}
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=list(row), delimiter=self.separator)
            if not self._header_written:
                self._writer.writeheader()
        self._writer.writerow(row)
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file, self._writer = None, None


class TerminateOnNaN(Callback):
    """Stop training as soon as the loss becomes NaN or infinite."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            if self.is_root:
                print(f"Batch {batch}: invalid loss, terminating training")
            self.model.stop_training = True
            self.model.stop_requested = True


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``; any
    hook of ``Callback`` may be given by name (``on_test_end=...``, ``on_predict_batch_end=...``)."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None, on_train_end=None,
                 on_train_batch_begin=None, on_train_batch_end=None, **kwargs: Any):
        super().__init__()
        unknown = sorted(set(kwargs) - set(HOOKS))
        if unknown:
            raise TypeError(f"LambdaCallback got unexpected arguments: {unknown}. Valid hooks: {sorted(HOOKS)}")
        hooks = {"on_epoch_begin": on_epoch_begin, "on_epoch_end": on_epoch_end, "on_train_begin": on_train_begin,
                 "on_train_end": on_train_end, "on_train_batch_begin": on_train_batch_begin,
                 "on_train_batch_end": on_train_batch_end, **kwargs}
        for name, fn in hooks.items():
            if fn is not None:
                setattr(self, name, fn)
        for when in ("begin", "end"):  # both spellings given: both fire, as each would alone
            train_fn, batch_fn = hooks.get(f"on_train_batch_{when}"), hooks.get(f"on_batch_{when}")
            if train_fn is not None and batch_fn is not None:
                setattr(self, f"on_train_batch_{when}", _call_both(train_fn, batch_fn))


def _call_both(first: Callable, second: Callable) -> Callable:
    def hook(batch: int, logs: dict | None = None) -> None:
        first(batch, logs)
        second(batch, logs)

    return hook
