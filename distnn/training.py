"""``compile`` / ``fit`` / ``evaluate`` / ``predict``: the training loop, data-parallel under MPI.

With more than one rank, every step takes the next *global* batch of the epoch's order and each
rank backpropagates its shard's per-sample losses divided by the *global* number of samples in the
step; one in-place allreduce of the flat gradient then sums the shards into exactly the
single-process gradient (DESIGN.md). Metric states are sums too and are reduced the same way (with
a stop flag riding along), so logs, History and callbacks see global values on every rank.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from distnn import backend, data, losses, metrics as metrics_module, optimizers
from distnn.callbacks import CallbackList, History, ProgbarLogger
from distnn.utils import global_rng


@dataclasses.dataclass
class TrainingProgress:
    """Where ``fit`` stands: the epoch, the next step within it and the epoch's metric sums so far.

    Checkpoints save it and a restoring callback sets it, so a resumed run continues at the exact step.
    """

    epoch: int
    step: int
    totals: np.ndarray

    def next_epoch(self) -> None:
        self.epoch += 1
        self.step = 0
        self.totals = np.zeros_like(self.totals)


def _communicator() -> Any:
    from distnn.distributed import get_communicator  # noqa: PLC0415 - keeps MPI out of plain imports

    return get_communicator()


class TrainingMixin:
    """Training methods of ``Sequential`` (which supplies layers, buffers and ``build``)."""

    def __init__(self) -> None:
        self.optimizer: optimizers.Optimizer | None = None
        self.loss: losses.Loss | None = None
        self.compiled = False
        self.stop_training = False
        self.history: History | None = None
        self._metric_specs: list[Any] = []
        self._metrics: list[metrics_module.Metric] | None = None
        self._synced_with: Any = None
        self.stop_requested = False  # set (e.g. by a signal handler) to stop at the next step boundary
        self._stop_now = False
        self.progress: TrainingProgress | None = None

    # -------------------------------------------------------------------------------- compile
    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, metrics: list | None = None,
                loss_weights: Any = None, run_eagerly: Any = None, jit_compile: Any = None) -> None:
        """Configure training (Keras' arguments; ``loss_weights``, ``run_eagerly`` and ``jit_compile``
        are accepted for compatibility and have no effect on a single-output model)."""
        if loss is None:
            raise ValueError("compile() needs a loss, e.g. loss='categorical_crossentropy'. Received: loss=None")
        from distnn.distributed.optimizer import DistributedOptimizer  # noqa: PLC0415 - no MPI import

        # fit() already averages gradients exactly over the global batch: a Horovod-style
        # DistributedOptimizer is unwrapped rather than reducing a second time.
        if isinstance(optimizer, DistributedOptimizer):
            optimizer = optimizer.optimizer
        self.optimizer = optimizers.get(optimizer)
        self.loss = losses.get(loss)
        if metrics is not None and not isinstance(metrics, (list, tuple)):
            metrics = [metrics]
        self._metric_specs = list(metrics or [])
        for spec in self._metric_specs:  # fail now, not at the first batch, on a misspelt name
            if isinstance(spec, str) and spec not in metrics_module.VALID_NAMES:
                raise ValueError(f"Unknown metric {spec!r}. Valid names: {metrics_module.VALID_NAMES}")
        self._metrics = None
        self.compiled = True
        if self.built:
            self._bind_buffers()
            self._prepare_optimizer()

    def _prepare_optimizer(self) -> None:
        self.optimizer.build(self.params, self._segments)
        for layer in self._layers:  # a layer that stopped being last (add after compile) is unfused
            layer.fused_output_activation = False
        last = self._layers[-1]
        activation = getattr(getattr(last, "activation", None), "name", None)
        # Softmax + cross-entropy (and sigmoid + binary cross-entropy): the loss gives dL/dlogits.
        last.fused_output_activation = bool(activation and self.loss.fusable_with(activation))

    def _require_compiled(self, what: str) -> None:
        if not self.compiled:
            raise ValueError(f"You must call `compile()` before calling `{what}`")

    def _ensure_built(self, x: np.ndarray) -> None:
        if not self.built:
            self.build((None, *x.shape[1:]))  # prepares the optimizer too when compiled
        elif self.compiled and not self.optimizer.built:
            self._prepare_optimizer()
        expected = self._input_shape[1:]
        if len(expected) != x.ndim - 1 or any(e is not None and e != r for e, r in zip(expected, x.shape[1:])):
            raise ValueError(f"Input 0 of model {self.name!r} is incompatible: expected shape "
                             f"{(None, *expected)}, received x with shape {x.shape}"
                             + (f" (expected {expected[-1]} features, found {x.shape[-1]})"
                                if len(expected) == x.ndim - 1 else ""))

    def _build_metrics(self, y: np.ndarray) -> list[metrics_module.Metric]:
        if self._metrics is None:
            self._metrics = [metrics_module.get(spec, self.loss.name, self.output_shape, y.ndim)
                             for spec in self._metric_specs]
        return self._metrics

    @property
    def metrics_names(self) -> list[str]:
        return ["loss", *[m.name for m in self._metrics or []]]

    # ------------------------------------------------------------------------- forward/backward
    def _forward(self, x: Any, training: bool) -> Any:
        for layer in self._layers:
            x = layer.call(x, training=training)
        return x

    def _backward(self, grad: Any) -> None:
        for layer in reversed(self._layers):
            grad = layer.backward(grad)
            if grad is None:
                break

    def _output_gradient(self, y: Any, y_pred: Any, weights: Any, global_count: int) -> Any:
        """dL/dy_pred of this shard for L = sum of weighted per-sample losses / global_count.

        Dividing the small output gradient by the step's *global* sample count, rather than the
        whole gradient buffer afterwards, saves a pass over every parameter; the allreduce then
        sums shard gradients that are already on the single-process scale.
        """
        if self._layers[-1].fused_output_activation:
            grad = self.loss.fused_gradient(y, y_pred)
        else:
            grad = self.loss.gradient(y, y_pred)
        scale = 1.0 / global_count
        if weights is not None:
            scale = weights.reshape(-1, *([1] * (grad.ndim - 1))) * scale
        grad *= scale
        return grad.astype(y_pred.dtype, copy=False)

    def _batch_states(self, y: Any, y_pred: Any, weights: Any, metric_list: list) -> np.ndarray:
        """[loss sum, sample count, *metric sums] of one local batch, on the host, float64."""
        per_sample = self.loss.call(y, y_pred)
        if weights is not None:
            per_sample = per_sample * weights.reshape(-1)
        parts = [np.array([float(per_sample.sum()), float(len(y_pred))])]
        parts += [m.batch_state(y, y_pred, weights) for m in metric_list]
        return np.concatenate(parts)

    def _state_size(self, metric_list: list) -> int:
        return 2 + sum(m.state_size for m in metric_list)

    def _logs_from(self, totals: np.ndarray, metric_list: list, prefix: str = "") -> dict[str, float]:
        logs = {prefix + "loss": float(totals[0] / totals[1]) + self._penalty() if totals[1] else 0.0}
        offset = 2
        for m in metric_list:
            logs[prefix + m.name] = m.result_from(totals[offset:offset + m.state_size])
            offset += m.state_size
        return logs

    def _penalty(self) -> float:
        return sum(v.regularizer.penalty(v.value) for v in self._regularized)

    def _local_gradients(self, x: Any, y: Any, weights: Any, global_count: int, metric_list: list) -> np.ndarray:
        """Fill ``self.grads`` with this shard's share of the step's mean gradient; return its metric states."""
        if not len(x):  # an empty shard in a ragged last step still joins the collectives
            self.grads[...] = 0
            for layer in self._layers:
                layer.empty_shard_forward()
            for layer in reversed(self._layers):
                layer.empty_shard_backward()
            return np.zeros(self._state_size(metric_list))
        y_pred = self._forward(x, training=True)
        self._backward(self._output_gradient(y, y_pred, weights, global_count))
        return self._batch_states(y, y_pred, weights, metric_list)

    def _add_regularization_gradients(self) -> None:
        for v in self._regularized:  # identical on every rank: added after the reduction
            v.grad += v.regularizer.gradient(v.value)

    def _train_step(self, x: Any, y: Any, weights: Any, global_count: int, comm: Any,
                    metric_list: list) -> np.ndarray:
        """One data-parallel step on this rank's shard; returns the step's global metric states
        followed by the number of ranks that asked to stop."""
        states = np.append(self._local_gradients(x, y, weights, global_count, metric_list), float(self.stop_requested))
        comm.allreduce(self.grads, op="sum")
        self._add_regularization_gradients()
        self.optimizer.apply(self.params, self.grads)
        return comm.allreduce(states, op="sum") if comm.size > 1 else states

    def compute_gradients(self, x: Any, y: Any, sample_weight: Any = None) -> tuple[float, np.ndarray]:
        """Loss and gradient of this process's batch ``(x, y)`` without updating the weights.

        Returns:
            ``(loss, grads)``: the mean loss (with regularisation) and a host copy of the flat
            gradient, laid out like ``model.params``. For custom loops and gradient checks.
        """
        self._require_compiled("compute_gradients()")
        x, y, sample_weight = self._check_xy(x, y, sample_weight)
        states = self._local_gradients(backend.to_device(x), backend.to_device(y),
                                       None if sample_weight is None else backend.to_device(sample_weight),
                                       len(x), [])
        self._add_regularization_gradients()
        return self._logs_from(states, [])["loss"], backend.to_numpy(self.grads).copy()

    # ------------------------------------------------------------------------ replica syncing
    def _sync_replicas(self, comm: Any) -> None:
        """Before training: same model on every rank (hash check), then rank 0's weights and state."""
        if comm.size == 1:
            return
        hashes = comm.allgather_obj(self.structure_hash())
        if len(set(hashes)) != 1:
            differing = [r for r, h in enumerate(hashes) if h != hashes[0]]
            raise ValueError(f"Ranks built different models: ranks {differing} differ from rank 0. Every rank "
                             "must build the same architecture (layers, units, input shape) before training")
        comm.bcast(self.params, root=0)
        if self.state.size:
            comm.bcast(self.state, root=0)
        if self.optimizer is not None and self.optimizer.built:
            for slot in self.optimizer.slots.values():
                comm.bcast(slot, root=0)
            self.optimizer.iterations = comm.bcast_obj(self.optimizer.iterations, root=0)

    # ------------------------------------------------------------------------------- checking
    def _check_xy(self, x: Any, y: Any, sample_weight: Any = None) -> tuple[np.ndarray, np.ndarray, Any]:
        x = data.as_array(x, "x")
        y = data.as_array(y, "y")
        sample_weight = None if sample_weight is None else data.as_array(sample_weight, "sample_weight")
        data.check_lengths(x=x, y=y, sample_weight=sample_weight)
        self._ensure_built(x)
        self.loss.check_targets(y, self.output_shape)
        return x.astype(self.params.dtype, copy=False), y, sample_weight

    # ------------------------------------------------------------------------------------ fit
    def fit(self, x: Any = None, y: Any = None, batch_size: int | None = None, epochs: int = 1,
            verbose: Any = "auto", callbacks: list | None = None, validation_split: float = 0.0,
            validation_data: Any = None, shuffle: bool = True, class_weight: dict | None = None,
            sample_weight: Any = None, initial_epoch: int = 0, steps_per_epoch: int | None = None,
            validation_batch_size: int | None = None, validation_freq: int = 1) -> History:
        """Train for ``epochs`` epochs; ``batch_size`` is the **global** batch across ranks (default 32).

        Returns:
            A ``History`` whose ``history`` dict holds the global per-epoch logs.
        """
        self._require_compiled("fit()")
        batch_size = data.check_batch_size(32 if batch_size is None else batch_size)
        if not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer. Received: epochs={epochs!r}")
        if not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1). Received: validation_split={validation_split}")
        x, y, sample_weight = self._check_xy(x, y, sample_weight)
        if validation_split and validation_data is None:
            split = int(len(x) * (1 - validation_split))
            if split == 0 or split == len(x):
                raise ValueError(f"validation_split={validation_split} leaves no training or validation samples "
                                 f"out of {len(x)}")
            validation_data = (x[split:], y[split:]) if sample_weight is None else (
                x[split:], y[split:], sample_weight[split:])
            x, y = x[:split], y[:split]
            sample_weight = None if sample_weight is None else sample_weight[:split]
        if class_weight:
            cw = data.class_weights_to_sample_weights(y, class_weight, self.output_shape[-1])
            sample_weight = cw if sample_weight is None else sample_weight * cw

        comm = _communicator()
        self._sync_replicas(comm)
        metric_list = self._build_metrics(y)
        num_steps = data.steps_per_epoch(len(x), batch_size)
        if steps_per_epoch is not None:
            num_steps = min(num_steps, int(steps_per_epoch))
        # One shuffling seed for the whole run, drawn on rank 0: every rank derives the same order.
        self._data_seed = comm.bcast_obj(int(global_rng().integers(2**31)), root=0)

        self.history = History()
        verbose = 1 if verbose == "auto" else int(verbose)
        cb = CallbackList(callbacks, model=self, history=self.history,
                          progbar=ProgbarLogger(verbose) if verbose and comm.rank == 0 else None,
                          params={"epochs": epochs, "steps": num_steps, "verbose": verbose,
                                  "batch_size": batch_size, "samples": len(x)})
        self.stop_training = False
        self.stop_requested = False
        self._stop_now = False
        self.progress = TrainingProgress(epoch=initial_epoch, step=0, totals=np.zeros(self._state_size(metric_list)))
        self._fit_arrays = (x, y, sample_weight)  # a BackupAndRestore callback fingerprints the data
        cb.on_train_begin()  # a BackupAndRestore callback may move self.progress to a saved point
        self._fit_arrays = None
        while self.progress.epoch < epochs:
            epoch = self.progress.epoch
            cb.on_epoch_begin(epoch)
            epoch_logs = self._run_epoch(x, y, sample_weight, batch_size, num_steps, shuffle, comm, metric_list, cb)
            if self._stop_now:  # preempted mid-epoch: no epoch end, the backup resumes this epoch
                break
            if validation_data is not None and (epoch + 1) % validation_freq == 0:
                val = self.evaluate(*validation_data, batch_size=validation_batch_size or batch_size, verbose=0,
                                    return_dict=True, _comm=comm)
                epoch_logs.update({"val_" + k: v for k, v in val.items()})
            self.progress.next_epoch()
            cb.on_epoch_end(epoch, epoch_logs)
            if self.stop_training:
                break
        cb.on_train_end()
        return self.history

    @property
    def preempted(self) -> bool:
        """True when the last ``fit`` ended early because some rank asked to stop (``stop_requested``)."""
        return self._stop_now

    def _run_epoch(self, x, y, sample_weight, batch_size, num_steps, shuffle, comm, metric_list, cb) -> dict:
        progress = self.progress
        order = data.epoch_order(len(x), shuffle, self._data_seed, progress.epoch)
        logs = self._logs_from(progress.totals, metric_list) if progress.step else {}
        for batch in data.global_batches(order[:num_steps * batch_size], batch_size, progress.step):
            step = progress.step
            cb.on_train_batch_begin(step)
            start, stop = data.shard_bounds(len(batch), comm.rank, comm.size)
            local = batch[start:stop]
            states = self._train_step(data.take(x, local), data.take(y, local), data.take(sample_weight, local),
                                      len(batch), comm, metric_list)
            progress.totals += states[:-1]
            progress.step += 1
            # A stop request (a preemption signal on any rank) is summed with the metrics, so every
            # rank agrees to stop after the same step without an extra collective.
            self._stop_now = states[-1] > 0
            logs = self._logs_from(progress.totals, metric_list)
            cb.on_train_batch_end(step, logs)
            if self._stop_now or self.stop_training:  # Keras stops within the epoch too
                break
        return logs

    # ------------------------------------------------------------------------------- evaluate
    def evaluate(self, x: Any = None, y: Any = None, batch_size: int | None = None, verbose: Any = "auto",
                 sample_weight: Any = None, return_dict: bool = False, callbacks: list | None = None,
                 _comm: Any = None) -> Any:
        """Loss and metrics over all of ``x`` (sharded across ranks, sums reduced: the single-process values).

        Returns:
            ``loss`` alone without metrics, else ``[loss, *metrics]``; a dict with ``return_dict=True``.
        """
        self._require_compiled("evaluate()")
        batch_size = data.check_batch_size(32 if batch_size is None else batch_size)
        x, y, sample_weight = self._check_xy(x, y, sample_weight)
        comm = _comm or _communicator()
        if _comm is None:
            self._sync_replicas(comm)
        metric_list = self._build_metrics(y)
        start, stop = data.shard_bounds(len(x), comm.rank, comm.size)
        totals = np.zeros(self._state_size(metric_list))
        for lo in range(start, stop, batch_size):
            index = slice(lo, min(lo + batch_size, stop))
            y_part = data.take(y, index)
            weights = data.take(sample_weight, index)
            totals += self._batch_states(y_part, self._forward(data.take(x, index), training=False), weights,
                                         metric_list)
        if comm.size > 1:
            comm.allreduce(totals, op="sum")
        logs = self._logs_from(totals, metric_list)
        if verbose and _comm is None and comm.rank == 0:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()), flush=True)
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    # -------------------------------------------------------------------------------- predict
    def predict(self, x: Any, batch_size: int | None = None, verbose: Any = "auto", callbacks: list | None = None) -> np.ndarray:
        """Predictions for every sample of ``x``, in order (sharded across ranks, then gathered)."""
        batch_size = data.check_batch_size(32 if batch_size is None else batch_size)
        x = data.as_array(x, "x")
        self._ensure_built(x)
        x = x.astype(self.params.dtype, copy=False)
        comm = _communicator()
        self._sync_replicas(comm)
        start, stop = data.shard_bounds(len(x), comm.rank, comm.size)
        parts = [backend.to_numpy(self._forward(data.take(x, slice(lo, min(lo + batch_size, stop))), training=False))
                 for lo in range(start, stop, batch_size)]
        local = np.concatenate(parts) if parts else np.zeros((0, *self.output_shape[1:]), dtype=self.params.dtype)
        return comm.allgather(local) if comm.size > 1 else local

    # ------------------------------------------------------------------------- on-batch methods
    def train_on_batch(self, x: Any, y: Any, sample_weight: Any = None, class_weight: dict | None = None,
                       return_dict: bool = False) -> Any:
        """One optimizer step on ``(x, y)`` (a global batch under MPI); returns its loss and metrics."""
        self._require_compiled("train_on_batch()")
        x, y, sample_weight = self._check_xy(x, y, sample_weight)
        if class_weight:
            cw = data.class_weights_to_sample_weights(y, class_weight, self.output_shape[-1])
            sample_weight = cw if sample_weight is None else sample_weight * cw
        comm = _communicator()
        if self._synced_with is not comm:
            self._sync_replicas(comm)
            self._synced_with = comm
        metric_list = self._build_metrics(y)
        start, stop = data.shard_bounds(len(x), comm.rank, comm.size)
        local = slice(start, stop)
        states = self._train_step(data.take(x, local), data.take(y, local), data.take(sample_weight, local),
                                  len(x), comm, metric_list)
        logs = self._logs_from(states[:-1], metric_list)
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def test_on_batch(self, x: Any, y: Any, sample_weight: Any = None, return_dict: bool = False) -> Any:
        return self.evaluate(x, y, batch_size=max(1, len(x)), verbose=0, sample_weight=sample_weight,
                             return_dict=return_dict)

    def predict_on_batch(self, x: Any) -> np.ndarray:
        return self.predict(x, batch_size=max(1, len(x)), verbose=0)
