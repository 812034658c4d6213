"""Recurrent layers: the shared machinery of ``SimpleRNN``, ``LSTM`` and ``GRU`` (docs/architecture.md,
"Sequence layers"); the cells themselves are in ``distnn.layers.recurrent_cells``.

Each layer has two implementations of the same computation:

- ``_reference_call``: the cell written step by step with ``distnn.ops`` (Keras 3's cell code, one
  matrix product per gate), differentiated by the tape. It is the reference the tests compare
  against, and it is what runs when training with ``recurrent_dropout`` (Keras then draws one mask
  per gate, which the fused loop does not implement).
- ``call``/``backward``: the fused path that trains. The input projection of all time steps is one
  GEMM before the loop, each step is one GEMM for all gates plus in-place element-wise work on
  preallocated time-major buffers, and backward through time keeps one GEMM per step; the weight
  gradients are then one GEMM each over all steps.

Masks follow Keras 3: at a masked step every state keeps its previous value and the output repeats
the previous state (zeros with ``zero_output_for_mask``, which ``Bidirectional`` sets when it returns
sequences).
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from distnn import activations, backend, initializers, random, regularizers
from distnn.layers.base import Layer, _fused_vjp, record_layer_node
from distnn.ops import core as tape_core
from distnn.ops import nn as ops_nn
from distnn.ops import numpy as ops_np
from distnn.ops.core import defop, value_of

_STATEFUL_MESSAGE = (
    "stateful=True is not supported: distnn splits every global batch across the ranks (and a ragged last "
    "batch across fewer samples per rank), so the state rows a rank would carry to the next batch do not "
    "belong to the samples it receives next, and fit() shuffles the sample order by default. Feed whole "
    "sequences instead, or carry the state yourself with return_state=True and initial_state=...")


def check_rate(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a float in [0, 1). Received: {name}={value!r}")
    return float(value)


@defop
def apply_activation(x, activation=None):
    """An ``ActivationFunction`` as a differentiable op (the reference path's custom activations)."""
    return activation(x)


@apply_activation.defvjp
def _(node, g):
    return (node.kwargs["activation"].backward(g.copy(), node.inputs[0], node.value),)


def activate(activation: Any, x: Any) -> Any:
    """``activation(x)`` on the tape: the ops of ``distnn.ops`` for the common activations."""
    if activation.name == "linear":
        return x
    simple = {"tanh": ops_np.tanh, "sigmoid": ops_nn.sigmoid, "relu": ops_nn.relu}.get(activation.name)
    return simple(x) if simple is not None else apply_activation(x, activation=activation)


def _recurrent_vjp(node: Any, grad: Any) -> tuple:
    """A recurrent layer's fused node: ``backward`` gives dL/dx; the initial states' gradients follow."""
    (dx,) = _fused_vjp(node, grad)
    return (dx, *node.kwargs["layer"]._initial_state_grads)


class Recurrent(Layer):
    """Base of ``SimpleRNN``, ``LSTM`` and ``GRU``: arguments, states, masks, dropout, outputs and the
    fused driver. Subclasses define the weights and the cell (``_reference_step``, ``_forward_loop``,
    ``_backward_loop``)."""

    gate_count = 1  # matrices per weight: the width of the kernels is gate_count * units
    state_count = 1
    per_gate_dropout = False  # Keras' implementation 1: one mask per gate when recurrent_dropout > 0

    def __init__(self, units: int, activation: Any = "tanh", recurrent_activation: Any = "sigmoid",
                 use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                 recurrent_initializer: Any = "orthogonal", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, recurrent_regularizer: Any = None, bias_regularizer: Any = None,
                 dropout: float = 0.0, recurrent_dropout: float = 0.0, seed: int | None = None,
                 return_sequences: bool = False, return_state: bool = False, go_backwards: bool = False,
                 stateful: bool = False, unroll: bool = False, zero_output_for_mask: bool = False,
                 use_cudnn: Any = "auto", **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f"Received an invalid value for argument `units`, expected a positive integer. "
                             f"Received: units={units!r}")
        if stateful:
            raise ValueError(_STATEFUL_MESSAGE + f" Received: stateful={stateful!r}")
        if use_cudnn not in ("auto", False):
            raise ValueError(f"distnn has no cuDNN kernels: use_cudnn must be 'auto' or False. "
                             f"Received: use_cudnn={use_cudnn!r}")
        if unroll:
            warnings.warn(f"{type(self).__name__}(unroll=True) has no effect in distnn: the loop over time runs "
                          "in Python with one fused GEMM per step either way", stacklevel=3)
        self.units = int(units)
        self.activation = activations.get(activation)
        self.recurrent_activation = activations.get(recurrent_activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.dropout = check_rate(dropout, "dropout")
        self.recurrent_dropout = check_rate(recurrent_dropout, "recurrent_dropout")
        self.seed = seed
        # Masks per global sample (distnn.random), so N ranks train like one process.
        self.seed_generator = random.SeedGenerator(seed, name=f"{self.name}/seed_generator")
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = False
        self.unroll = bool(unroll)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.use_cudnn = use_cudnn
        self.supports_masking = True
        self._initial_state_grads: list = []

    # ----------------------------------------------------------------------------- weights
    def _bias_shape(self) -> tuple:
        return (self.gate_count * self.units,)

    def _bias_initializer(self) -> Any:
        return self.bias_initializer

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(f"{self.name}: expected input of shape (batch, timesteps, features) with known "
                             f"features. Received: input_shape={tuple(input_shape)}")
        width = self.gate_count * self.units
        self.kernel = self.add_weight(shape=(input_shape[-1], width), initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer, name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, width), initializer=self.recurrent_initializer,
                                                regularizer=self.recurrent_regularizer, name="recurrent_kernel")
        self.bias = (self.add_weight(shape=self._bias_shape(), initializer=self._bias_initializer(),
                                     regularizer=self.bias_regularizer, name="bias") if self.use_bias else None)
        self.built = True

    def _input_bias(self, array: Any) -> Any:
        """The part of the bias (value or gradient) added to the input projection."""
        return array

    # ------------------------------------------------------------------------------ shapes
    def compute_output_shape(self, input_shape, initial_state_shape=None):
        batch, steps = input_shape[0], input_shape[1]
        output = (batch, steps, self.units) if self.return_sequences else (batch, self.units)
        if self.return_state:
            return [output] + [(batch, self.units)] * self.state_count
        return output

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        output_mask = mask if self.return_sequences else None
        return [output_mask] + [None] * self.state_count if self.return_state else output_mask

    # ------------------------------------------------------------------------------- calls
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) > 2 or (len(args) == 2 and "initial_state" in kwargs):
            raise TypeError(f"{self.name}: call the layer as layer(sequences, initial_state=None, mask=None, "
                            f"training=None); received {len(args)} positional arguments")
        if len(args) == 2:  # Keras: layer(sequences, initial_state)
            args, kwargs = args[:1], {**kwargs, "initial_state": args[1]}
        return super().__call__(*args, **kwargs)

    def _uses_reference(self, training: bool) -> bool:
        return bool(training) and self.recurrent_dropout > 0

    def _fused_call(self, tape: Any, inputs: Any, kwargs: dict) -> Any:
        """One tape node for the whole sequence, with the initial states as further inputs; with
        ``return_state`` the node's value packs the output and the final states, which are sliced out."""
        if self._uses_reference(kwargs.get("training")):
            return self._reference_call(inputs, **kwargs)
        states = self._state_list(kwargs.get("initial_state"))
        candidates = [inputs, *(states or [])]
        parents = tuple((i, t) for i, t in enumerate(candidates)
                        if isinstance(t, tape_core.Tensor) and t.tape is tape)
        raw = [value_of(t) for t in candidates]
        outputs = self.call(raw[0], **{**kwargs, "initial_state": raw[1:] or None})
        if not parents and not any(v.grad is not None for v in self._variables):
            return outputs
        packed = self._pack(outputs) if self.return_state else outputs
        node = record_layer_node(tape, self, packed, tuple(raw), _recurrent_vjp, parents)
        return self._unpack(node, raw[0].shape[1]) if self.return_state else node

    def _pack(self, outputs: list) -> Any:
        xp = backend.get_array_module(outputs[0])
        y, states = outputs[0], outputs[1:]
        if self.return_sequences:
            return xp.concatenate([y] + [s[:, None] for s in states], axis=1)
        return xp.stack([y, *states], axis=1)

    def _unpack(self, node: Any, steps: int) -> list:
        first = steps if self.return_sequences else 1
        y = ops_np.getitem(node, (slice(None), slice(0, steps)) if self.return_sequences else (slice(None), 0))
        return [y] + [ops_np.getitem(node, (slice(None), first + k)) for k in range(self.state_count)]

    def _state_list(self, initial_state: Any) -> list | None:
        if initial_state is None:
            return None
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        if len(states) != self.state_count:
            raise ValueError(f"{self.name} has {self.state_count} state(s), so initial_state must hold "
                             f"{self.state_count} tensor(s) of shape (batch, {self.units}). "
                             f"Received: {len(states)} tensors")
        return states

    def _initial_states(self, initial_state: Any, batch: int, xp: Any) -> list:
        states = self._state_list(initial_state)
        if states is None:
            return [xp.zeros((batch, self.units), dtype=self.dtype) for _ in range(self.state_count)]
        for state in states:
            if tuple(np.shape(value_of(state))) != (batch, self.units):
                raise ValueError(f"{self.name}: each initial state must have shape (batch, units) = "
                                 f"({batch}, {self.units}). Received: {tuple(np.shape(value_of(state)))}")
        return states

    def _dropout_masks(self, batch: int, features: int, training: bool) -> tuple[list | None, list | None]:
        """Keras 3's masks, drawn once per call and reused at every step: one for the inputs (one per
        gate when ``recurrent_dropout`` is on, Keras' implementation 1) and likewise for the state."""
        if not training or not (self.dropout or self.recurrent_dropout):
            return None, None
        count = self.gate_count if self.per_gate_dropout and self.recurrent_dropout else 1

        def draw(rate: float, width: int) -> list | None:
            if not rate:
                return None
            shape_of_mask = backend.xp().empty((batch, width), dtype=self.dtype)
            return [random.dropout_mask(shape_of_mask, rate, None, self.seed_generator) for _ in range(count)]

        return draw(self.dropout, features), draw(self.recurrent_dropout, self.units)

    def _check_sequences(self, x: Any) -> None:
        if x.ndim != 3 or x.shape[1] == 0:
            raise ValueError(f"{self.name}: expected input of shape (batch, timesteps >= 1, features). "
                             f"Received: shape={tuple(x.shape)}")

    @staticmethod
    def _mask_array(mask: Any, batch: int, steps: int) -> Any:
        mask = value_of(mask[0] if isinstance(mask, (list, tuple)) else mask)
        if tuple(np.shape(mask)) != (batch, steps):
            raise ValueError(f"A recurrent layer's mask must have shape (batch, timesteps) = ({batch}, {steps}). "
                             f"Received: {tuple(np.shape(mask))}")
        return backend.to_device(mask).astype(bool, copy=False)

    # -------------------------------------------------------------------- reference (tape)
    def _reference_call(self, sequences, initial_state=None, mask=None, training=False):
        """The layer written with ``distnn.ops``, step by step (see the module docstring)."""
        x = sequences
        batch, steps, features = np.shape(value_of(x))
        xp = backend.get_array_module(value_of(x))
        states = self._initial_states(initial_state, batch, xp)
        input_masks, recurrent_masks = self._dropout_masks(batch, features, training)
        mask = None if mask is None else self._mask_array(mask, batch, steps)
        outputs = []
        for t in (reversed(range(steps)) if self.go_backwards else range(steps)):
            output, new_states = self._reference_step(x[:, t], states, input_masks, recurrent_masks)
            if mask is not None:
                keep = mask[:, t][:, None]
                output = ops_np.where(keep, output, 0.0 if self.zero_output_for_mask else states[0])
                new_states = [ops_np.where(keep, new, old) for new, old in zip(new_states, states)]
            states = new_states
            outputs.append(output)
        y = ops_np.stack(outputs, axis=1) if self.return_sequences else outputs[-1]
        return [y, *states] if self.return_state else y

    def _masked(self, x: Any, masks: list | None, gate: int) -> Any:
        return x if masks is None else x * masks[gate if len(masks) > 1 else 0]

    def _reference_step(self, x_t: Any, states: list, input_masks: Any, recurrent_masks: Any) -> tuple:
        raise NotImplementedError

    # ------------------------------------------------------------------------ fused path
    def call(self, sequences, initial_state=None, mask=None, training=False):
        if self._uses_reference(training):
            return self._reference_call(sequences, initial_state, mask, training)
        x = sequences
        self._check_sequences(x)
        xp = backend.get_array_module(x)
        batch, steps, features = x.shape
        width = self.gate_count * self.units
        states = [xp.asarray(value_of(s), dtype=self.dtype) for s in self._initial_states(initial_state, batch, xp)]
        input_masks, _ = self._dropout_masks(batch, features, training)
        self._dropout_mask = None if input_masks is None else input_masks[0]
        self._keep = self._keep_float = None
        if mask is not None:
            keep = self._mask_array(mask, batch, steps).T
            if not keep.all():  # an all-true mask changes nothing: skip its per-step work
                self._keep = xp.ascontiguousarray(keep[::-1] if self.go_backwards else keep)[:, :, None]
                self._keep_float = self._keep.astype(self.dtype)
        # Time-major input in processing order: each step's rows are contiguous.
        source = x.transpose(1, 0, 2)[::-1] if self.go_backwards else x.transpose(1, 0, 2)
        inputs = self._buffer("inputs", (steps, batch, features))
        if self._dropout_mask is not None:
            xp.multiply(source, self._dropout_mask, out=inputs)
        else:
            inputs[...] = source
        self._inputs = inputs
        projected = self._buffer("projected", (steps, batch, width))
        xp.matmul(inputs.reshape(-1, features), self.kernel.value, out=projected.reshape(-1, width))
        if self.bias is not None:
            projected += self._input_bias(self.bias.value)
        self._training = bool(training)
        final = self._forward_loop(projected, states)
        return self._outputs(final, training)

    def _outputs(self, final: list, training: bool) -> Any:
        hs, keep = self._hs, self._keep_float
        steps, batch, units = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        if self.return_sequences:
            y = self._buffer("y", (batch, steps, units)) if training else backend.xp().empty((batch, steps, units),
                                                                                               dtype=self.dtype)
            y[...] = hs[1:].transpose(1, 0, 2)
            if self.zero_output_for_mask and keep is not None:
                y *= keep.transpose(1, 0, 2)
        else:
            y = hs[steps].copy()
            if self.zero_output_for_mask and keep is not None:
                y *= keep[steps - 1]
        return [y, *[s.copy() for s in final]] if self.return_state else y

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        inputs, keep = self._inputs, self._keep_float
        steps, batch, features = inputs.shape
        units = self.units
        if self.return_state:
            first = steps if self.return_sequences else 1
            dy = grad[:, :steps] if self.return_sequences else grad[:, 0]
            carry = [grad[:, first + k].copy() for k in range(self.state_count)]
        else:
            dy, carry = grad, [xp.zeros((batch, units), dtype=grad.dtype) for _ in range(self.state_count)]
        if self.zero_output_for_mask and keep is not None:
            dy = dy * (keep.transpose(1, 0, 2) if self.return_sequences else keep[steps - 1])
        if self.return_sequences:
            sequence_grad = dy.transpose(1, 0, 2)  # time-major view
        else:
            sequence_grad = None
            carry[0] += dy
        projection_grad, self._initial_state_grads = self._backward_loop(sequence_grad, carry)
        # The input projection of all steps: one GEMM each for the kernel, the bias and the input.
        rows, grad_rows = inputs.reshape(-1, features), projection_grad.reshape(-1, projection_grad.shape[-1])
        xp.matmul(rows.T, grad_rows, out=self.kernel.grad)
        if self.bias is not None:
            ones = self._buffer("ones", (rows.shape[0],))
            ones.fill(1)
            xp.matmul(ones, grad_rows, out=self._input_bias(self.bias.grad))
        if not self.propagate_input_grad:
            return None
        dx = self._buffer("dx", (steps, batch, features))
        xp.matmul(grad_rows, self.kernel.value.T, out=dx.reshape(-1, features))
        if self._dropout_mask is not None:
            dx *= self._dropout_mask
        dx = dx[::-1] if self.go_backwards else dx
        return dx.transpose(1, 0, 2)

    def _apply_mask(self, t: int, new: Any, old: Any) -> None:
        """A masked sample keeps its previous state at step ``t``."""
        if self._keep is not None:
            backend.get_array_module(new).copyto(new, old, where=~self._keep[t])

    def _split_masked_grad(self, t: int, grad: Any, passed: Any) -> bool:
        """At a masked step the state's gradient goes straight to the previous state (into ``passed``)
        and none reaches the cell; unmasked samples the other way round. False without a mask."""
        if self._keep is None:
            return False
        keep = self._keep_float[t]
        backend.get_array_module(grad).multiply(grad, 1 - keep, out=passed)
        grad *= keep
        return True

    def _forward_loop(self, projected: Any, states: list) -> list:
        raise NotImplementedError

    def _backward_loop(self, sequence_grad: Any, carry: list) -> tuple[Any, list]:
        """Backward through time from the outputs' time-major gradient (``None`` without
        ``return_sequences``) and the final states' (``carry``, overwritten). Fills the recurrent
        weights' gradients; returns dL/d(input projection) ``(steps, batch, gates * units)`` and the
        initial states' gradients."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ config
    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "recurrent_regularizer": regularizers.serialize(self.recurrent_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "dropout": self.dropout, "recurrent_dropout": self.recurrent_dropout, "seed": self.seed,
                "return_sequences": self.return_sequences, "return_state": self.return_state,
                "go_backwards": self.go_backwards, "stateful": self.stateful, "unroll": self.unroll,
                "zero_output_for_mask": self.zero_output_for_mask}
