"""``Callback``, the base class of every callback, and ``CallbackList``, which calls their hooks.

Kept apart from the built-in callbacks (``distnn.callbacks``), which also re-export
``BackupAndRestore`` from ``distnn.distributed.checkpoint``: modules that subclass ``Callback`` import
it from here, so that they do not depend on that re-export (docs/architecture.md, "Modules and
dependencies").
"""
from __future__ import annotations

from typing import Any


class Callback:
    """Base class with Keras' hooks; ``self.model`` and ``self.params`` are set by ``fit``,
    ``evaluate`` and ``predict``.

    The epoch and train-batch hooks get global logs, identical on every rank. ``evaluate`` and
    ``predict`` work through each rank's shard in local batches (a rank may have one batch more
    than another), so their batch hooks see this rank's batches, and ``on_test_batch_end`` this
    rank's running values; ``on_test_end`` gets the global results.
    """

    def __init__(self) -> None:
        self.model: Any = None
        self.params: dict = {}

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_params(self, params: dict) -> None:
        self.params = params

    @property
    def is_root(self) -> bool:
        """True on rank 0 (and in a single process): the rank that prints and writes files."""
        from distnn.distributed.world import rank  # noqa: PLC0415 - keeps MPI out of plain imports

        return rank() == 0

    def on_train_begin(self, logs: dict | None = None) -> None: ...
    def on_train_end(self, logs: dict | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None: ...

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.on_batch_begin(batch, logs)  # Keras' older name still fires, unless a subclass overrides this

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.on_batch_end(batch, logs)

    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_batch_end(self, batch: int, logs: dict | None = None) -> None: ...
    def on_test_begin(self, logs: dict | None = None) -> None: ...
    def on_test_end(self, logs: dict | None = None) -> None: ...
    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None: ...
    def on_predict_begin(self, logs: dict | None = None) -> None: ...
    def on_predict_end(self, logs: dict | None = None) -> None: ...
    def on_predict_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None: ...


HOOKS = tuple(name for name in vars(Callback) if name.startswith("on_"))


class CallbackList:
    """Calls every callback's hook in order: the user's, then History (so it records what they add to
    the logs, such as ``learning_rate``), then the progress bar — Keras' order."""

    def __init__(self, callbacks: list | None, model: Any, history: Callback | None = None, progbar: Any = None,
                 params: dict | None = None):
        callbacks = list(callbacks or [])
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be Callback instances. Received: {cb!r}")
        self.callbacks = [*callbacks, *(cb for cb in (history, progbar) if cb is not None)]
        for cb in self.callbacks:
            cb.set_model(model)
            cb.set_params(params or {})
        # Per-batch evaluate logs cost a regularization penalty over the weights: made only when used.
        self.wants_test_batch_logs = any(
            "on_test_batch_end" in vars(cb) or type(cb).on_test_batch_end is not Callback.on_test_batch_end
            for cb in self.callbacks)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def on_train_begin(self) -> None:
        self._call("on_train_begin", {})

    def on_train_end(self) -> None:
        self._call("on_train_end", {})

    def on_epoch_begin(self, epoch: int) -> None:
        self._call("on_epoch_begin", epoch, {})

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self._call("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, step: int) -> None:
        self._call("on_train_batch_begin", step, {})

    def on_train_batch_end(self, step: int, logs: dict) -> None:
        self._call("on_train_batch_end", step, logs)

    def on_test_begin(self) -> None:
        self._call("on_test_begin", {})

    def on_test_end(self, logs: dict) -> None:
        self._call("on_test_end", logs)

    def on_test_batch_begin(self, step: int) -> None:
        self._call("on_test_batch_begin", step, {})

    def on_test_batch_end(self, step: int, logs: dict) -> None:
        self._call("on_test_batch_end", step, logs)

    def on_predict_begin(self) -> None:
        self._call("on_predict_begin", {})

    def on_predict_end(self) -> None:
        self._call("on_predict_end", {})

    def on_predict_batch_begin(self, step: int) -> None:
        self._call("on_predict_batch_begin", step, {})

    def on_predict_batch_end(self, step: int, outputs: Any) -> None:
        self._call("on_predict_batch_end", step, {"outputs": outputs})
