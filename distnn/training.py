"""``compile`` / ``fit`` / ``evaluate`` / ``predict``: the training loop, data-parallel under MPI.

With more than one rank, every step takes the next *global* batch of the epoch's order and each
rank backpropagates its shard's per-sample losses divided by the *global* number of samples in the
step; one in-place allreduce of the flat gradient then sums the shards into exactly the
single-process gradient (docs/architecture.md). Metric states are sums too and are reduced the same way (with
a stop flag riding along), so logs, History and callbacks see global values on every rank.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

import warnings

from distnn import arguments, backend, compile_utils, data, optimizers, training_inputs
from distnn.callbacks import CallbackList, History, ProgbarLogger
from distnn.distributed import consistency, overlap, timeline
from distnn.distributed.optimizer import reduce_and_apply
from distnn.layers.base import _fused_vjp
from distnn.ops import symbolic
from distnn.ops.core import Tape, Tensor, value_of
from distnn.ops.numpy import mean as ops_mean, multiply as ops_multiply, reshape as ops_reshape, sum as ops_sum
from distnn.global_state import global_rng
from distnn.random import training_step


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
    from distnn.distributed.world import get_communicator  # noqa: PLC0415 - keeps MPI out of plain imports

    return get_communicator()


class TrainingMixin:
    """Training methods of ``Model`` (which supplies the layers, the flat buffers and ``build``)."""

    def __init__(self) -> None:
        self.optimizer: optimizers.Optimizer | None = None
        self.loss: Any = None
        self.compiled = False
        self.stop_training = False
        self.history: History | None = None
        self._compile_args: dict = {}
        self._outputs: list[compile_utils.OutputSpec] | None = None
        self._synced_with: Any = None
        self.stop_requested = False  # set (e.g. by a signal handler) to stop at the next step boundary
        self._stop_now = False
        self.progress: TrainingProgress | None = None
        self._horovod: Any = None  # the DistributedOptimizer compile() received, if any

    # -------------------------------------------------------------------------------- compile
    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, loss_weights: Any = None, metrics: Any = None,
                weighted_metrics: Any = None, run_eagerly: Any = None, steps_per_execution: int = 1,
                jit_compile: Any = "auto", auto_scale_loss: bool = True) -> None:
        """Configure training (Keras 3's arguments).

        ``loss``, ``loss_weights``, ``metrics`` and ``weighted_metrics`` take one value, a list in
        output order or a dict keyed by output name. distnn always runs eagerly, so ``run_eagerly``
        is satisfied whatever its value; ``jit_compile=True`` and ``steps_per_execution > 1`` have
        no effect and warn.
        """
        if loss is None:
            raise ValueError("compile() needs a loss, e.g. loss='categorical_crossentropy'. Received: loss=None")
        if jit_compile is True:
            warnings.warn("compile(jit_compile=True) is ignored: distnn runs eagerly on numpy/cupy", stacklevel=2)
        if steps_per_execution != 1:
            warnings.warn(f"compile(steps_per_execution={steps_per_execution}) is ignored: distnn runs one step "
                          "per execution", stacklevel=2)
        from distnn.distributed.optimizer import DistributedOptimizer  # noqa: PLC0415 - no MPI import

        # fit() reduces gradients itself: a Horovod DistributedOptimizer is unwrapped, and its
        # settings select Horovod's semantics (docs/architecture.md, "Input pipelines and data-parallel modes").
        self._horovod = optimizer if isinstance(optimizer, DistributedOptimizer) else None
        if self._horovod is not None:
            optimizer = optimizer.optimizer
        compile_utils.check_losses(loss)
        compile_utils.check_metric_specs(metrics)
        compile_utils.check_metric_specs(weighted_metrics)
        self.optimizer = optimizers.get(optimizer)
        self.loss = loss
        self._compile_args = {"loss": loss, "loss_weights": loss_weights, "metrics": metrics,
                              "weighted_metrics": weighted_metrics}
        self._outputs = None
        self.compiled = True
        if self.built:
            self._bind_buffers(list(reversed(self._bound_order())) if self._bound_variables else None)

    def _prepare_optimizer(self) -> None:
        self.optimizer.build(self.params, self._segments)

    def _require_compiled(self, what: str) -> None:
        if not self.compiled:
            raise ValueError(f"You must call `compile()` before calling `{what}`")

    def _ensure_built(self, x: Any) -> None:
        if not self.built:
            shapes = [(None, *a.shape[1:]) for a in data.leaves(x)]
            self.build(shapes[0] if not isinstance(x, (list, dict)) else
                       dict(zip(x, shapes)) if isinstance(x, dict) else shapes)
        else:
            self._ensure_bound()
            if self.compiled and not self.optimizer.built:
                self._prepare_optimizer()
        self._check_input_shapes(x)

    def _check_input_shapes(self, x: Any) -> None:
        expected_inputs = getattr(self, "inputs", None) if not isinstance(x, dict) else None
        if not expected_inputs:
            return
        arrays = data.leaves(x)
        if len(arrays) != len(expected_inputs):
            raise ValueError(f"Model {self.name!r} expects {len(expected_inputs)} input(s), but it received "
                             f"{len(arrays)} input arrays")
        for i, (tensor, array) in enumerate(zip(expected_inputs, arrays)):
            expected = tensor.shape[1:]
            if len(expected) != array.ndim - 1 or any(e is not None and e != r for e, r in zip(expected, array.shape[1:])):
                raise ValueError(f"Input {i} of model {self.name!r} is incompatible: expected shape "
                                 f"{(None, *expected)}, received x with shape {array.shape}"
                                 + (f" (expected {expected[-1]} features, found {array.shape[-1]})"
                                    if len(expected) == array.ndim - 1 and expected else ""))

    @property
    def _output_names(self) -> list[str]:
        names = getattr(self, "output_names", None)
        return list(names) if names else []

    def _resolve_outputs(self, x: Any, ys: list) -> list[compile_utils.OutputSpec]:
        """Per-output losses and metrics, resolved from one sample's outputs at the first call."""
        if self._outputs is None:
            outputs = self._flat_outputs(self(data.take(x, slice(0, 1)), training=False))
            self._clear_losses()
            names = self._output_names if len(self._output_names) == len(outputs) else \
                [f"output_{i}" for i in range(len(outputs))]
            if len(ys) != len(outputs):
                raise ValueError(f"Model {self.name!r} has {len(outputs)} output(s) {names} but received "
                                 f"{len(ys)} target array(s)")
            shapes = [(None, *value_of(o).shape[1:]) for o in outputs]
            self._outputs = compile_utils.resolve_outputs(
                names, self._compile_args["loss"], self._compile_args["loss_weights"],
                self._compile_args["metrics"], self._compile_args["weighted_metrics"], shapes,
                [y.shape for y in ys])
            self._output_shapes_seen = shapes
        for spec, y, shape in zip(self._outputs, ys, self._output_shapes_seen):
            if spec.loss is not None:
                spec.loss.check_targets(y, shape)
        return self._outputs

    @property
    def metrics_names(self) -> list[str]:
        return list(self._log_names()) if self._outputs is not None else ["loss"]

    @property
    def metrics(self) -> list:
        return [m for spec in self._outputs or [] for m in spec.metrics + spec.weighted_metrics]

    # ------------------------------------------------------------------------- forward/backward
    @staticmethod
    def _flat_outputs(outputs: Any) -> list:
        return symbolic.flatten(outputs)

    def _targets(self, y: Any) -> list:
        """Targets in output order (a dict is matched by output name)."""
        if isinstance(y, dict):
            names = self._output_names
            missing = [n for n in names if n not in y]
            if missing:
                raise ValueError(f"y is missing targets for outputs {missing}. The model's outputs are {names}; "
                                 f"received keys {sorted(y)}")
            return [y[n] for n in names]
        return list(y) if isinstance(y, list) else [y]

    def _output_gradient(self, tape: Tape, spec: compile_utils.OutputSpec, output: Any, y: Any, weights: Any,
                         global_count: int) -> Any:
        """dL/d(output) of this shard for L = weight * sum of weighted per-sample losses / global count.

        Dividing the small output gradient by the step's *global* sample count, rather than the whole
        gradient buffer afterwards, saves a pass over every parameter; the allreduce then sums shard
        gradients that are already on the single-process scale.
        """
        y_pred = value_of(output)
        scale = spec.weight / global_count
        loss = spec.loss
        if weights is not None:
            scale = weights.reshape(-1, *([1] * (y_pred.ndim - 1))) * scale
        if not loss.has_fused_gradient:
            return _tape_loss_gradient(loss, y, y_pred, scale)
        layer = output.kwargs["layer"] if isinstance(output, Tensor) and output.vjp is _fused_vjp else None
        activation = getattr(getattr(layer, "activation", None), "name", None)
        if activation and loss.fusable_with(activation) and not _consumed_on(tape, output):
            output.kwargs["fused_activation"] = True  # the layer skips its activation's backward
            grad = loss.fused_gradient(y, y_pred)
        else:
            grad = loss.gradient(y, y_pred)
        grad *= scale
        return grad.astype(y_pred.dtype, copy=False)

    def _batch_states(self, ys: list, outputs: list, weights: Any, local_count: int) -> np.ndarray:
        """[loss sum, sample count, (per-output loss sums), added-loss sum, *metric sums] of one local
        batch, on the host, float64. Added losses (``add_loss``) are batch means: weighted by the count."""
        per_output = []
        for spec, y, output in zip(self._outputs, ys, outputs):
            if spec.loss is None:
                per_output.append(0.0)
                continue
            values = _per_sample(value_of(spec.loss.call(y, output)), len(y))
            if weights is not None:
                values = values * weights.reshape(-1)
            per_output.append(float(values.sum()))
        added = sum(float(value_of(loss)) for loss in self.losses) * local_count
        parts = [np.array([sum(s.weight * v for s, v in zip(self._outputs, per_output)), float(local_count)])]
        if len(self._outputs) > 1:
            parts.append(np.array(per_output))
        parts.append(np.array([added]))
        for spec, y, output in zip(self._outputs, ys, outputs):
            parts += [m.batch_state(y, output, None) for m in spec.metrics]
            parts += [m.batch_state(y, output, weights) for m in spec.weighted_metrics]
        return np.concatenate(parts)

    def _state_size(self) -> int:
        multi = len(self._outputs) if len(self._outputs) > 1 else 0
        return 3 + multi + sum(m.state_size for m in self.metrics)

    def _log_names(self) -> list[str]:
        names = ["loss"]
        if len(self._outputs) > 1:
            names += [f"{spec.name}_loss" for spec in self._outputs]
        return names + [m.name for m in self.metrics]

    def _logs_from(self, totals: np.ndarray, prefix: str = "") -> dict[str, float]:
        count = totals[1]
        penalty = self._penalty()
        logs = {prefix + "loss": float((totals[0] + totals[2 + self._multi_offset()]) / count) + penalty
                if count else 0.0}
        if len(self._outputs) > 1:
            for i, spec in enumerate(self._outputs):
                logs[f"{prefix}{spec.name}_loss"] = float(totals[2 + i] / count) if count else 0.0
        offset = 3 + self._multi_offset()
        for m in self.metrics:
            logs[prefix + m.name] = m.result_from(totals[offset:offset + m.state_size])
            offset += m.state_size
        return logs

    def _multi_offset(self) -> int:
        return len(self._outputs) if len(self._outputs) > 1 else 0

    def _penalty(self) -> float:
        return sum(v.regularizer.penalty(v.value) for v in self._regularized)

    def _local_gradients(self, x: Any, ys: list, weights: Any, global_count: int,
                         reducer: overlap.BucketReducer | None = None) -> np.ndarray:
        """Fill ``self.grads`` with this shard's share of the step's mean gradient; return its metric states.
        A ``reducer`` starts summing buckets of it over the ranks while backward runs."""
        local_count = len(ys[0]) if ys else 0
        if not local_count:  # an empty shard in a ragged last step still joins the collectives
            self.grads[...] = 0
            layers = self._flatten_layers()
            for layer in layers:
                layer.empty_shard_forward()
            for layer in reversed(layers):
                layer.empty_shard_backward()
            return np.zeros(self._state_size())
        tape = Tape()
        with timeline.phase("forward"), tape:
            outputs = self._flat_outputs(self(x, training=True))
        seeds = [(output, self._output_gradient(tape, spec, output, y, weights, global_count))
                 for spec, output, y in zip(self._outputs, outputs, ys) if spec.loss is not None]
        share = local_count / global_count  # an added loss is a batch mean: weight it by the shard's share
        xp = backend.get_array_module(self.grads)
        seeds += [(loss, xp.full((), share, dtype=self.grads.dtype)) for loss in self.losses if isinstance(loss, Tensor)]
        with timeline.phase("backward"):
            if reducer is None:
                tape.backward(seeds, seeds_owned=True)
            else:
                tape.backward(seeds, seeds_owned=True, on_final=reducer.on_final, variables=self._bound_variables,
                              on_final_prefix=reducer.on_final_prefix if reducer.reports_within_ops else None)
        for v in self._bound_variables:  # weights the forward did not reach get a zero gradient
            if id(v) not in tape.touched:
                v.grad[...] = 0
        return self._batch_states(ys, [value_of(o) for o in outputs], weights, local_count)

    def _add_regularization_gradients(self) -> None:
        for v in self._regularized:  # identical on every rank: added after the reduction
            v.grad += v.regularizer.gradient(v.value)

    def _train_step(self, x: Any, ys: list, weights: Any, global_count: int, comm: Any) -> np.ndarray:
        """One data-parallel step on this rank's shard; returns the step's global metric states
        followed by the number of ranks that asked to stop."""
        reducer = overlap.step_reducer(self, comm)
        if reducer is not None:
            reducer.begin()
        states = np.append(self._local_gradients(x, ys, weights, global_count, reducer), float(self.stop_requested))
        if reduce_and_apply(self, comm, reducer):  # False while gradients accumulate
            for v in self._constrained:  # as Keras: each variable's constraint after every update
                v.value[...] = v.constraint(v.value)
        if comm.size == 1:
            return states
        with timeline.phase("metrics allreduce"):
            return comm.allreduce(states, op="sum")

    def compute_gradients(self, x: Any, y: Any, sample_weight: Any = None) -> tuple[float, np.ndarray]:
        """Loss and gradient of this process's batch ``(x, y)`` without updating the weights.

        Returns:
            ``(loss, grads)``: the mean loss (with regularisation) and a host copy of the flat
            gradient, laid out like ``model.params``. For custom loops and gradient checks.
        """
        self._require_compiled("compute_gradients()")
        x, ys, sample_weight = self._check_xy(x, y, sample_weight)
        states = self._local_gradients(data.take(x, slice(None), training_inputs.input_dtypes(self, x)),
                                       [backend.to_device(t) for t in ys],
                                       None if sample_weight is None else backend.to_device(sample_weight),
                                       len(ys[0]))
        self._add_regularization_gradients()
        return self._logs_from(states)["loss"], backend.to_numpy(self.grads).copy()

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
    def _check_x(self, x: Any) -> Any:
        """``x`` checked and the model built for it; it keeps its dtype (batches are cast as they are
        taken: ``training_inputs.input_dtypes``)."""
        x = data.as_structure(x, "x")
        self._ensure_built(x)
        return x

    def _check_xy(self, x: Any, y: Any, sample_weight: Any = None) -> tuple[Any, list, Any]:
        x = self._check_x(x)
        ys = [data.as_array(t, "y") for t in self._targets(data.as_structure(y, "y"))]
        sample_weight = None if sample_weight is None else data.as_array(sample_weight, "sample_weight")
        data.check_lengths(x=data.leaves(x)[0], y=ys[0], sample_weight=sample_weight)
        for t in ys[1:] + data.leaves(x)[1:]:
            data.check_lengths(x=data.leaves(x)[0], y=t)
        self._resolve_outputs(x, ys)
        return x, ys, sample_weight

    def _compiled_settings(self) -> dict:
        """What ranks must agree on from ``compile``: the optimizer, losses and metrics."""
        return {"optimizer": self.optimizer, "loss": [spec.loss for spec in self._outputs],
                "loss_weights": [spec.weight for spec in self._outputs],
                "metrics": [m.name for m in self.metrics]}

    def _class_sample_weights(self, ys: list, class_weight: dict | None, sample_weight: Any) -> Any:
        if class_weight is None:
            return sample_weight
        if len(ys) > 1:
            raise ValueError("class_weight is only supported for models with a single output; pass sample_weight")
        cw = data.class_weights_to_sample_weights(ys[0], class_weight, self._output_shapes_seen[0][-1])
        return cw if sample_weight is None else sample_weight * cw

    # ------------------------------------------------------------------------------------ fit
    def fit(self, x: Any = None, y: Any = None, batch_size: int | None = None, epochs: int = 1,
            verbose: Any = "auto", callbacks: list | None = None, validation_split: float = 0.0,
            validation_data: Any = None, shuffle: bool = True, class_weight: dict | None = None,
            sample_weight: Any = None, initial_epoch: int = 0, steps_per_epoch: int | None = None,
            validation_steps: int | None = None, validation_batch_size: int | None = None,
            validation_freq: int = 1) -> History:
        """Train for ``epochs`` epochs; ``batch_size`` is the **global** batch across ranks (default 32).

        ``x`` may be arrays (in memory, memory-mapped or ``distnn.data.NpyArray``), a ``PyDataset`` or
        a generator/iterable of batches. When every rank passes its own data (or the model was compiled
        with Horovod's ``DistributedOptimizer``), ``batch_size`` is per rank (own-shard mode,
        docs/architecture.md, "Input pipelines and data-parallel modes").

        Returns:
            A ``History`` whose ``history`` dict holds the global per-epoch logs.
        """
        self._require_compiled("fit()")
        steps_per_epoch, validation_freq = arguments.check_fit_arguments(
            epochs, validation_split, steps_per_epoch, validation_freq, validation_batch_size, initial_epoch, shuffle)
        verbose = arguments.check_verbose(verbose)
        comm = _communicator()
        inputs = training_inputs.prepare_fit(
            self, comm, x, y, sample_weight, batch_size, steps_per_epoch, shuffle, validation_split, validation_data,
            validation_steps, validation_batch_size, class_weight,
            {"epochs": epochs, "validation_freq": validation_freq, "initial_epoch": initial_epoch}, self._horovod)
        plan = inputs.plan
        self._sync_replicas(comm)
        timeline.start_from_env(comm)
        # One shuffling seed for the whole run, drawn on rank 0: every rank derives the same order.
        self._data_seed = comm.bcast_obj(int(global_rng().integers(2**31)), root=0)

        self.history = History()
        cb = CallbackList(callbacks, model=self, history=self.history,
                          progbar=ProgbarLogger(verbose) if verbose and comm.rank == 0 else None,
                          params={"epochs": epochs, "steps": plan.num_steps, "verbose": verbose,
                                  "batch_size": getattr(plan, "batch_size", None), "samples": plan.samples})
        self.stop_training = False
        self.stop_requested = False
        self._stop_now = False
        self.progress = TrainingProgress(epoch=initial_epoch, step=0, totals=np.zeros(self._state_size()))
        self._fit_arrays = inputs.arrays  # a BackupAndRestore callback fingerprints the data
        cb.on_train_begin()  # a BackupAndRestore callback may move self.progress to a saved point
        self._fit_arrays = None
        while self.progress.epoch < epochs:
            epoch = self.progress.epoch
            cb.on_epoch_begin(epoch)
            epoch_logs = self._run_epoch(plan, comm, cb)
            if self._stop_now:  # preempted mid-epoch: no epoch end, the backup resumes this epoch
                break
            if plan.ran_out:  # Keras' rule for generators that end before steps_per_epoch * epochs
                self.stop_training = True
                if comm.rank == 0:
                    warnings.warn("Your input ran out of data; interrupting training. Make sure it can generate "
                                  "at least steps_per_epoch * epochs batches", stacklevel=2)
            if inputs.validation is not None and arguments.validates_after(epoch, validation_freq):
                val = self._evaluate_checked(inputs.validation, comm=comm, callbacks=cb)
                epoch_logs.update({"val_" + k: v for k, v in val.items()})
            self.progress.next_epoch()
            cb.on_epoch_end(epoch, epoch_logs)
            if self.stop_training:
                break
        if epochs > initial_epoch and not self._stop_now:  # Keras 3: use_ema ends on the moving average
            self.optimizer.finalize_variable_values(self.params)
        cb.on_train_end()
        timeline.write_from_env(comm)
        return self.history

    @property
    def preempted(self) -> bool:
        """True when the last ``fit`` ended early because some rank asked to stop (``stop_requested``)."""
        return self._stop_now

    def _run_epoch(self, plan: Any, comm: Any, cb: CallbackList) -> dict:
        progress = self.progress
        logs = self._logs_from(progress.totals) if progress.step else {}
        steps = iter(plan.epoch(self._data_seed, progress.epoch, progress.step))
        while True:
            waited_from = time.perf_counter_ns()
            step = next(steps, None)
            if step is None:
                break
            timeline.next_step(data_since=waited_from)  # the data wait belongs to the step it feeds
            with timeline.phase("callbacks"):
                cb.on_train_batch_begin(step.index)
            # Random layers draw per global sample, from (data seed, epoch, step): N ranks = 1 process.
            with training_step(self._data_seed, (progress.epoch, step.index), offset=step.offset, count=step.count):
                states = self._train_step(step.x, step.ys, step.sample_weight, step.global_count, comm)
            progress.totals += states[:-1]
            progress.step += 1
            # A stop request (a preemption signal on any rank) is summed with the metrics, so every
            # rank agrees to stop after the same step without an extra collective.
            self._stop_now = states[-1] > 0
            logs = self._logs_from(progress.totals)
            with timeline.phase("callbacks"):
                cb.on_train_batch_end(step.index, logs)
            if self._stop_now or self.stop_training:  # Keras stops within the epoch too
                break
        return logs

    # ------------------------------------------------------------------------------- evaluate
    def evaluate(self, x: Any = None, y: Any = None, batch_size: int | None = None, verbose: Any = "auto",
                 sample_weight: Any = None, steps: int | None = None, callbacks: list | None = None,
                 return_dict: bool = False) -> Any:
        """Loss and metrics over all of ``x`` (sharded across ranks, sums reduced: the single-process values;
        in own-shard mode, over every rank's ``x`` together).

        Returns:
            ``loss`` alone without metrics, else ``[loss, *metrics]``; a dict with ``return_dict=True``.
        """
        self._require_compiled("evaluate()")
        verbose = arguments.check_verbose(verbose)
        comm = _communicator()
        inputs = training_inputs.prepare_eval(self, comm, "evaluate()", x, y, sample_weight, batch_size, steps)
        self._sync_replicas(comm)
        logs = self._evaluate_checked(inputs, comm=comm, callbacks=callbacks, verbose=verbose)
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def _evaluate_checked(self, inputs: training_inputs.EvalInputs, comm: Any, callbacks: Any = None,
                          verbose: int = 0) -> dict:
        cb = callbacks if isinstance(callbacks, CallbackList) else CallbackList(
            callbacks, model=self, progbar=ProgbarLogger(verbose) if verbose and comm.rank == 0 else None,
            params={"verbose": verbose, "epochs": 1, "steps": inputs.num_steps(comm.rank, comm.size)})
        cb.on_test_begin()
        totals = np.zeros(self._state_size())
        for step, (x, ys, weights, count) in enumerate(inputs.parts(comm.rank, comm.size)):
            cb.on_test_batch_begin(step)
            outputs = self._flat_outputs(self(x, training=False)) if count else []
            if count:
                totals += self._batch_states(ys, outputs, weights, count)
            cb.on_test_batch_end(step, self._logs_from(totals) if cb.wants_test_batch_logs else {})
        inputs.done()
        if comm.size > 1:
            comm.allreduce(totals, op="sum")
        logs = self._logs_from(totals)
        cb.on_test_end(logs)
        return logs

    # -------------------------------------------------------------------------------- predict
    def predict(self, x: Any, batch_size: int | None = None, verbose: Any = "auto", steps: int | None = None,
                callbacks: list | None = None) -> Any:
        """Predictions for every sample of ``x``, in order (sharded across ranks, then gathered).

        In own-shard mode (each rank passed its own ``x``) every rank gets the predictions of its own
        ``x``. Returns one array per output, in the structure the model returns (array, list or dict).
        """
        verbose = arguments.check_verbose(verbose)
        comm = _communicator()
        inputs = training_inputs.prepare_eval(self, comm, "predict()", x, None, None, batch_size, steps)
        self._sync_replicas(comm)
        cb = CallbackList(callbacks, model=self, progbar=ProgbarLogger(verbose) if verbose and comm.rank == 0 else None,
                          params={"verbose": verbose, "epochs": 1, "steps": inputs.num_steps(comm.rank, comm.size)})
        cb.on_predict_begin()
        lengths: list = []  # each batch's length (batch inputs in same-data mode: to restore the order)
        template = self(inputs.sample_x(), training=False)
        parts = []
        for step, (x_part, _, _, count) in enumerate(inputs.parts(comm.rank, comm.size, lengths)):
            cb.on_predict_batch_begin(step)
            parts.append([backend.to_numpy(value_of(o)) for o in self._flat_outputs(self(x_part, training=False))]
                         if count else None)
            if parts[-1] is not None:
                cb.on_predict_batch_end(step, parts[-1][0] if len(parts[-1]) == 1 else parts[-1])
        inputs.done()
        gather = comm.size > 1 and not inputs.own
        results = []
        for i, t in enumerate(self._flat_outputs(template)):
            pieces = [p[i] for p in parts if p is not None]
            local = np.concatenate(pieces) if pieces else np.zeros((0, *np.shape(value_of(t))[1:]),
                                                                   dtype=value_of(t).dtype)
            results.append(training_inputs.gather_predictions(comm, local, lengths) if gather else local)
        it = iter(results)
        predictions = symbolic.map_structure(lambda _: next(it), template)
        cb.on_predict_end()
        return predictions

    # ------------------------------------------------------------------------- on-batch methods
    def train_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None, class_weight: dict | None = None,
                       return_dict: bool = False) -> Any:
        """One optimizer step on ``(x, y)`` (a global batch under MPI); returns its loss and metrics."""
        self._require_compiled("train_on_batch()")
        x, ys, sample_weight = self._check_xy(x, y, sample_weight)
        comm = _communicator()
        # One small allgather per call (measured in docs/architecture.md, "Reliability"). Ranks that
        # pass different batches train on their concatenation (own-shard mode, Horovod's loops).
        agreement = consistency.check_ranks_agree(
            comm, "train_on_batch", data={"x": x, "y": ys, "sample_weight": sample_weight},
            settings={"class_weight": class_weight, **self._compiled_settings(), **overlap.agreed_settings(self)},
            own_data=(("x", "y", "sample_weight"),))
        sample_weight = self._class_sample_weights(ys, class_weight, sample_weight)
        if self._synced_with is not comm:
            self._sync_replicas(comm)
            self._synced_with = comm
            self._batch_seed = comm.bcast_obj(int(global_rng().integers(2**31)), root=0)  # for random layers
        if "x" in agreement.own:
            counts = agreement.lengths("x")
            start, stop, total = sum(counts[:comm.rank]), sum(counts[:comm.rank + 1]), sum(counts)
            local = slice(None)
        else:
            start, stop = data.shard_bounds(len(ys[0]), comm.rank, comm.size)
            total, local = len(ys[0]), slice(start, stop)
        timeline.next_step()
        with training_step(self._batch_seed, (self.optimizer.iterations,), offset=start, count=stop - start):
            states = self._train_step(data.take(x, local, training_inputs.input_dtypes(self, x)),
                                      [data.take(t, local) for t in ys], data.take(sample_weight, local), total, comm)
        logs = self._logs_from(states[:-1])
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def test_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None, return_dict: bool = False) -> Any:
        return self.evaluate(x, y, batch_size=max(1, data.num_samples(data.as_structure(x, "x"), "x")), verbose=0,
                             sample_weight=sample_weight, return_dict=return_dict)

    def predict_on_batch(self, x: Any) -> Any:
        return self.predict(x, batch_size=max(1, data.num_samples(data.as_structure(x, "x"), "x")), verbose=0)


def _per_sample(values: Any, count: int) -> Any:
    """A loss's values reduced to one per sample (the mean over any further axes, as Keras reduces)."""
    return values if values.ndim == 1 else values.reshape(count, -1).mean(axis=1)


def _consumed_on(tape: Tape, tensor: Tensor) -> bool:
    """Whether any op on ``tape`` used ``tensor`` (an output that also feeds other layers)."""
    return any(parent[-1] is tensor for node in tape.nodes for parent in node.parents)


def _tape_loss_gradient(loss: Any, y_true: Any, y_pred: Any, scale: Any) -> Any:
    """dL/dy_pred of ``sum(per-sample loss * scale)`` for a loss written with ``distnn.ops``."""
    with Tape() as tape:
        leaf = Tensor(y_pred, tape)
        values = loss.call(y_true, leaf)
        if not isinstance(values, Tensor):
            raise ValueError(f"Loss {loss.name!r} returned a value that does not depend on y_pred through "
                             "distnn.ops, so it has no gradient: write it with distnn.ops (or operators on "
                             "its arguments), not numpy functions")
        if values.ndim > 1:
            values = ops_mean(ops_reshape(values, (len(y_pred), -1)), axis=1)
        total = ops_sum(ops_multiply(values, np.reshape(scale, (-1,)) if np.ndim(scale) else scale))
    xp = backend.get_array_module(y_pred)
    tape.backward([(total, xp.ones((), dtype=y_pred.dtype))])
    if leaf.grad is None:
        return xp.zeros_like(y_pred)
    return leaf.grad.astype(y_pred.dtype, copy=False)
