"""``SimpleRNN``, ``LSTM`` and ``GRU``: Keras 3's arguments, weight layouts and cell equations, each
twice — step by step with ``distnn.ops`` (the reference) and as a fused loop over time-major
buffers with its hand-written backward through time (docs/architecture.md, "Sequence layers").

Weight layouts are Keras': ``kernel`` ``(features, gates * units)``, ``recurrent_kernel``
``(units, gates * units)``; gate order i, f, c, o for the LSTM and z, r, h for the GRU, whose bias is
``(2, 3 * units)`` (input and recurrent bias) with ``reset_after=True``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn import activations, backend, initializers
from distnn.layers.recurrent import Recurrent, activate
from distnn.ops import numpy as ops_np


def _backward_activation(activation: Any, grad: Any, x: Any, y: Any) -> None:
    """In place on ``grad`` (a view): dL/d(pre-activation) from dL/d(activation)."""
    result = activation.backward(grad, x, y)
    if result is not grad:
        grad[...] = result


def _apply_activation(activation: Any, view: Any, keep: Any) -> None:
    """Activate ``view`` in place, first copying the pre-activation into ``keep`` when the activation's
    derivative needs it (anything but the output-only ones such as tanh and sigmoid)."""
    if keep is not None:
        keep[...] = view
    activation(view, out=view)


def _gate(matrix: Any, k: int, units: int) -> Any:
    """Columns of gate ``k`` of a kernel, recurrent kernel or bias (a Variable: the slice is on the tape)."""
    return matrix[..., k * units:(k + 1) * units]


class SimpleRNN(Recurrent):
    """Fully connected recurrent layer: ``h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias)``.

    Arguments, defaults and call arguments (``initial_state``, ``mask``, ``training``) are Keras 3's;
    see ``LSTM``.
    """

    def __init__(self, units: int, activation: Any = "tanh", use_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform", recurrent_initializer: Any = "orthogonal",
                 bias_initializer: Any = "zeros", kernel_regularizer: Any = None, recurrent_regularizer: Any = None,
                 bias_regularizer: Any = None, dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 seed: int | None = None, return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, stateful: bool = False, unroll: bool = False, **kwargs: Any):
        super().__init__(units, activation, None, use_bias, kernel_initializer, recurrent_initializer,
                         bias_initializer, kernel_regularizer, recurrent_regularizer, bias_regularizer, dropout,
                         recurrent_dropout, seed, return_sequences, return_state, go_backwards, stateful, unroll,
                         **kwargs)

    def _reference_step(self, x_t, states, input_masks, recurrent_masks):
        z = ops_np.matmul(self._masked(x_t, input_masks, 0), self.kernel) + \
            ops_np.matmul(self._masked(states[0], recurrent_masks, 0), self.recurrent_kernel)
        if self.bias is not None:
            z = z + self.bias
        h = activate(self.activation, z)
        return h, [h]

    def _forward_loop(self, projected, states):
        xp = backend.get_array_module(projected)
        steps, batch, units = projected.shape[0], projected.shape[1], self.units
        hs = self._hs = self._buffer("hs", (steps + 1, batch, units))
        hs[0] = states[0]
        product = self._buffer("product", (batch, units))
        recurrent = self.recurrent_kernel.value
        for t in range(steps):
            xp.matmul(hs[t], recurrent, out=product)
            projected[t] += product  # keeps the pre-activation for the activation's derivative
            self.activation(projected[t], out=hs[t + 1])
            self._apply_mask(t, hs[t + 1], hs[t])
        self._pre = projected
        return [hs[steps]]

    def _backward_loop(self, sequence_grad, carry):
        xp = backend.get_array_module(carry[0])
        hs, pre = self._hs, self._pre
        steps, batch, units = pre.shape
        grads = self._buffer("grads", (steps, batch, units))
        passed = self._buffer("passed", (batch, units))
        dh = carry[0]
        recurrent_t = self.recurrent_kernel.value.T
        for t in reversed(range(steps)):
            g = grads[t]
            if sequence_grad is not None:
                xp.add(dh, sequence_grad[t], out=g)
            else:
                g[...] = dh
            masked = self._split_masked_grad(t, g, passed)
            _backward_activation(self.activation, g, pre[t], hs[t + 1])
            xp.matmul(g, recurrent_t, out=dh)
            if masked:
                dh += passed
        xp.matmul(hs[:-1].reshape(-1, units).T, grads.reshape(-1, units), out=self.recurrent_kernel.grad)
        return grads, [dh]


class _UnitForgetBias(initializers.Initializer):
    """Keras' ``unit_forget_bias``: the bias initializer's values with ones for the forget gate."""

    def __init__(self, base: initializers.Initializer, units: int):
        super().__init__()
        self.base, self.units = base, units

    def __call__(self, shape, dtype="float32", rng=None):
        rng = rng or np.random.default_rng()
        units = self.units
        return np.concatenate([self.base((units,), dtype, rng), np.ones(units, dtype=dtype),
                               self.base((2 * units,), dtype, rng)]).astype(dtype)


class LSTM(Recurrent):
    """Long Short-Term Memory layer (Hochreiter 1997), Keras 3's arguments and weight layout.

    Args:
        units: positive integer, dimension of the output and of both states.
        activation: activation of the candidate and of the cell state (default ``tanh``).
        recurrent_activation: activation of the gates (default ``sigmoid``).
        use_bias: whether the layer has a bias.
        kernel_initializer, recurrent_initializer, bias_initializer: initializers (defaults
            ``glorot_uniform``, ``orthogonal``, ``zeros``).
        unit_forget_bias: add 1 to the forget gate's bias at initialization (default ``True``).
        kernel_regularizer, recurrent_regularizer, bias_regularizer: regularizers.
        dropout: fraction of the input features dropped, one mask per sequence.
        recurrent_dropout: fraction of the state dropped before the recurrent product (trains on the
            step-by-step tape path: Keras then draws one mask per gate).
        seed: seed of the layer's own dropout generator.
        return_sequences: return the output of every step ``(batch, timesteps, units)`` instead of the
            last one ``(batch, units)``.
        return_state: also return the final states ``h`` and ``c``.
        go_backwards: process the sequence in reverse and return the reversed sequence.
        stateful: only ``False``: carrying state across batches does not survive data parallelism
            (the error says why).
        unroll: accepted for Keras compatibility; ``True`` warns that it changes nothing.
        zero_output_for_mask: output zeros (instead of the carried state) at masked steps.

    Call arguments:
        sequences: ``(batch, timesteps, features)``.
        initial_state: list ``[h, c]`` of ``(batch, units)`` arrays (zeros when omitted).
        mask: boolean ``(batch, timesteps)``; a masked step leaves both states unchanged.
        training: enables dropout.

    Weights: ``kernel`` ``(features, 4 * units)``, ``recurrent_kernel`` ``(units, 4 * units)``, ``bias``
    ``(4 * units,)``, gates in Keras' order i, f, c, o.
    """

    gate_count = 4
    state_count = 2
    per_gate_dropout = True

    def __init__(self, units: int, activation: Any = "tanh", recurrent_activation: Any = "sigmoid",
                 use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                 recurrent_initializer: Any = "orthogonal", bias_initializer: Any = "zeros",
                 unit_forget_bias: bool = True, kernel_regularizer: Any = None, recurrent_regularizer: Any = None,
                 bias_regularizer: Any = None, dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 seed: int | None = None, return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, stateful: bool = False, unroll: bool = False, **kwargs: Any):
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, kernel_regularizer, recurrent_regularizer,
                         bias_regularizer, dropout, recurrent_dropout, seed, return_sequences, return_state,
                         go_backwards, stateful, unroll, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def _bias_initializer(self):
        return _UnitForgetBias(self.bias_initializer, self.units) if self.unit_forget_bias else self.bias_initializer

    def _reference_step(self, x_t, states, input_masks, recurrent_masks):
        h, c = states
        units = self.units

        def gate(k: int) -> Any:
            z = ops_np.matmul(self._masked(x_t, input_masks, k), _gate(self.kernel, k, units)) + \
                ops_np.matmul(self._masked(h, recurrent_masks, k), _gate(self.recurrent_kernel, k, units))
            return z + _gate(self.bias, k, units) if self.bias is not None else z

        i = activate(self.recurrent_activation, gate(0))
        f = activate(self.recurrent_activation, gate(1))
        candidate = activate(self.activation, gate(2))
        o = activate(self.recurrent_activation, gate(3))
        c_new = f * c + i * candidate
        h_new = o * activate(self.activation, c_new)
        return h_new, [h_new, c_new]

    def _forward_loop(self, projected, states):
        xp = backend.get_array_module(projected)
        steps, batch, units = projected.shape[0], projected.shape[1], self.units
        hs = self._hs = self._buffer("hs", (steps + 1, batch, units))
        cs = self._cs = self._buffer("cs", (steps + 1, batch, units))
        tanh_c = self._tanh_c = self._buffer("tanh_c", (steps, batch, units))
        hs[0], cs[0] = states
        product = self._buffer("product", (batch, 4 * units))
        scratch = self._buffer("scratch", (batch, units))
        recurrent = self.recurrent_kernel.value
        act = self.activation
        fast = type(act) is activations.Tanh and type(self.recurrent_activation) is activations.Sigmoid
        self._gate_pre = self._derivatives = None
        if fast:
            # sigmoid(a) = 0.5 * tanh(a / 2) + 0.5: with the columns of i, f and o halved, one tanh covers
            # the four gates, and its square gives every gate's derivative for backward in three passes
            # (instead of nine on the activated gates): 43 -> 27 array operations per step.
            half = xp.full(4 * units, 0.5, dtype=self.dtype)
            half[2 * units:3 * units] = 1
            projected *= half
            recurrent = recurrent * half
            if self._training:
                self._derivatives = self._buffer("derivatives", projected.shape)
                slopes = half * half  # d sigmoid = (1 - tanh^2) / 4, d tanh = 1 - tanh^2
        elif self.recurrent_activation.needs_input or act.needs_input:
            self._gate_pre = self._buffer("pre", projected.shape)
        for t in range(steps):
            z = projected[t]  # becomes the gates i, f, c, o in place
            xp.matmul(hs[t], recurrent, out=product)
            z += product
            if fast:
                xp.tanh(z, out=z)
                if self._derivatives is not None:
                    slope = self._derivatives[t]
                    xp.multiply(z, z, out=slope)
                    xp.subtract(1, slope, out=slope)
                    slope *= slopes
                for sigmoid_gates in (z[:, :2 * units], z[:, 3 * units:]):
                    sigmoid_gates *= 0.5
                    sigmoid_gates += 0.5
            else:
                self._activate_gates(t, z)
            i, f, g, o = (z[:, k * units:(k + 1) * units] for k in range(4))
            xp.multiply(f, cs[t], out=cs[t + 1])
            xp.multiply(i, g, out=scratch)
            cs[t + 1] += scratch
            act(cs[t + 1], out=tanh_c[t])
            xp.multiply(o, tanh_c[t], out=hs[t + 1])
            self._apply_mask(t, hs[t + 1], hs[t])
            self._apply_mask(t, cs[t + 1], cs[t])
        self._gates = projected
        return [hs[steps], cs[steps]]

    def _activate_gates(self, t: int, z: Any) -> None:
        """Any activations, in place on each gate's columns (keeping pre-activations if needed)."""
        units, pre = self.units, self._gate_pre
        for columns, activation in ((slice(0, 2 * units), self.recurrent_activation),
                                    (slice(2 * units, 3 * units), self.activation),
                                    (slice(3 * units, 4 * units), self.recurrent_activation)):
            _apply_activation(activation, z[:, columns], None if pre is None else pre[t][:, columns])

    def _gate_derivatives(self, t: int, da: Any, z: Any) -> None:
        """From dL/d(gates) to dL/d(pre-activations), in place on ``da``."""
        if self._derivatives is not None:
            da *= self._derivatives[t]
            return
        units, pre = self.units, self._gate_pre
        for columns, activation in ((slice(0, 2 * units), self.recurrent_activation),
                                    (slice(2 * units, 3 * units), self.activation),
                                    (slice(3 * units, 4 * units), self.recurrent_activation)):
            _backward_activation(activation, da[:, columns], None if pre is None else pre[t][:, columns],
                                 z[:, columns])

    def _backward_loop(self, sequence_grad, carry):
        xp = backend.get_array_module(carry[0])
        hs, cs, tanh_c, gates = self._hs, self._cs, self._tanh_c, self._gates
        steps, batch, width = gates.shape
        units = self.units
        grads = self._buffer("grads", gates.shape)
        scratch = self._buffer("scratch", (batch, units))
        h_passed = self._buffer("h_passed", (batch, units))
        c_passed = self._buffer("c_passed", (batch, units))
        dh, dc = carry  # the gradients of h_t and c_t, updated in place step by step
        recurrent_t = self.recurrent_kernel.value.T
        for t in reversed(range(steps)):
            if sequence_grad is not None:
                dh += sequence_grad[t]
            masked = self._split_masked_grad(t, dh, h_passed)
            self._split_masked_grad(t, dc, c_passed)
            z, da = gates[t], grads[t]
            i, f, g, o = (z[:, k * units:(k + 1) * units] for k in range(4))
            xp.multiply(dh, tanh_c[t], out=da[:, 3 * units:])  # d o
            xp.multiply(dh, o, out=scratch)
            _backward_activation(self.activation, scratch, cs[t + 1], tanh_c[t])
            dc += scratch  # the whole gradient of the new cell state
            xp.multiply(dc, g, out=da[:, :units])  # d i
            xp.multiply(dc, cs[t], out=da[:, units:2 * units])  # d f
            xp.multiply(dc, i, out=da[:, 2 * units:3 * units])  # d candidate
            self._gate_derivatives(t, da, z)
            dc *= f
            xp.matmul(da, recurrent_t, out=dh)  # one GEMM for the four gates
            if masked:
                dc += c_passed
                dh += h_passed
        xp.matmul(hs[:-1].reshape(-1, units).T, grads.reshape(-1, width), out=self.recurrent_kernel.grad)
        return grads, [dh, dc]

    def get_config(self):
        return {**super().get_config(), "recurrent_activation": activations.serialize(self.recurrent_activation),
                "unit_forget_bias": self.unit_forget_bias}


class GRU(Recurrent):
    """Gated Recurrent Unit (Cho et al. 2014), Keras 3's arguments and weight layout.

    Arguments as ``LSTM`` (without ``unit_forget_bias``), plus ``reset_after``: apply the reset gate
    after the recurrent product (default ``True``, cuDNN's convention, with separate input and
    recurrent biases: ``bias`` ``(2, 3 * units)``) or before it (``bias`` ``(3 * units,)``). Gates in
    Keras' order z (update), r (reset), h (candidate); ``h_t = z * h_{t-1} + (1 - z) * candidate``.
    One state, ``h``.
    """

    gate_count = 3
    per_gate_dropout = True

    def __init__(self, units: int, activation: Any = "tanh", recurrent_activation: Any = "sigmoid",
                 use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                 recurrent_initializer: Any = "orthogonal", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, recurrent_regularizer: Any = None, bias_regularizer: Any = None,
                 dropout: float = 0.0, recurrent_dropout: float = 0.0, seed: int | None = None,
                 return_sequences: bool = False, return_state: bool = False, go_backwards: bool = False,
                 stateful: bool = False, unroll: bool = False, reset_after: bool = True, **kwargs: Any):
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, kernel_regularizer, recurrent_regularizer,
                         bias_regularizer, dropout, recurrent_dropout, seed, return_sequences, return_state,
                         go_backwards, stateful, unroll, **kwargs)
        self.reset_after = bool(reset_after)

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def _input_bias(self, array):
        return array[0] if self.reset_after else array

    def _reference_step(self, x_t, states, input_masks, recurrent_masks):
        h = states[0]
        units = self.units
        input_bias = None if self.bias is None else (self.bias[0] if self.reset_after else self.bias)

        def from_input(k: int) -> Any:
            z = ops_np.matmul(self._masked(x_t, input_masks, k), _gate(self.kernel, k, units))
            return z + _gate(input_bias, k, units) if input_bias is not None else z

        def from_state(k: int, state: Any) -> Any:
            z = ops_np.matmul(state, _gate(self.recurrent_kernel, k, units))
            if self.reset_after and self.bias is not None:
                z = z + _gate(self.bias[1], k, units)
            return z

        z = activate(self.recurrent_activation, from_input(0) + from_state(0, self._masked(h, recurrent_masks, 0)))
        r = activate(self.recurrent_activation, from_input(1) + from_state(1, self._masked(h, recurrent_masks, 1)))
        h_for_candidate = self._masked(h, recurrent_masks, 2)
        if self.reset_after:
            candidate = activate(self.activation, from_input(2) + r * from_state(2, h_for_candidate))
        else:
            candidate = activate(self.activation, from_input(2) + from_state(2, r * h_for_candidate))
        h_new = z * h + (1 - z) * candidate
        return h_new, [h_new]

    def _forward_loop(self, projected, states):
        xp = backend.get_array_module(projected)
        steps, batch, units = projected.shape[0], projected.shape[1], self.units
        hs = self._hs = self._buffer("hs", (steps + 1, batch, units))
        hs[0] = states[0]
        gate_pre = self._buffer("pre", projected.shape) if self.recurrent_activation.needs_input or \
            self.activation.needs_input else None
        self._gate_pre = gate_pre
        recurrent = self.recurrent_kernel.value
        scratch = self._buffer("scratch", (batch, units))
        if self.reset_after:  # h @ recurrent_kernel + recurrent bias, all gates: the candidate's part is kept
            state_products = self._state_products = self._buffer("state_products", projected.shape)
            recurrent_bias = None if self.bias is None else self.bias.value[1]
        else:  # r * h, the candidate's recurrent input
            reset_states = self._reset_states = self._buffer("reset_states", (steps, batch, units))
            product = self._buffer("product", (batch, 2 * units))
        act, rec = self.activation, self.recurrent_activation
        for t in range(steps):
            z_all = projected[t]  # becomes z, r, candidate in place
            keep = None if gate_pre is None else gate_pre[t]
            if self.reset_after:
                xp.matmul(hs[t], recurrent, out=state_products[t])
                if recurrent_bias is not None:
                    state_products[t] += recurrent_bias
                z_all[:, :2 * units] += state_products[t][:, :2 * units]
            else:
                xp.matmul(hs[t], recurrent[:, :2 * units], out=product)
                z_all[:, :2 * units] += product
            _apply_activation(rec, z_all[:, :2 * units], None if keep is None else keep[:, :2 * units])
            r = z_all[:, units:2 * units]
            if self.reset_after:
                xp.multiply(r, state_products[t][:, 2 * units:], out=scratch)
            else:
                xp.multiply(r, hs[t], out=reset_states[t])
                xp.matmul(reset_states[t], recurrent[:, 2 * units:], out=scratch)
            candidate = z_all[:, 2 * units:]
            candidate += scratch
            _apply_activation(act, candidate, None if keep is None else keep[:, 2 * units:])
            # h = z * h_prev + (1 - z) * candidate = candidate + z * (h_prev - candidate)
            xp.subtract(hs[t], candidate, out=hs[t + 1])
            hs[t + 1] *= z_all[:, :units]
            hs[t + 1] += candidate
            self._apply_mask(t, hs[t + 1], hs[t])
        self._gates = projected
        return [hs[steps]]

    def _backward_loop(self, sequence_grad, carry):
        xp = backend.get_array_module(carry[0])
        hs, gates, gate_pre = self._hs, self._gates, self._gate_pre
        steps, batch, width = gates.shape
        units = self.units
        recurrent = self.recurrent_kernel.value
        grads = self._buffer("grads", gates.shape)  # d pre-activations as the input projection sees them
        candidate_grads = self._buffer("candidate_grads", (steps, batch, units)) if self.reset_after else None
        dh_step = self._buffer("dh_step", (batch, units))
        passed = self._buffer("passed", (batch, units))
        scratch = self._buffer("scratch", (batch, units))
        recurrent_grads = self._buffer("recurrent_grads", gates.shape) if self.reset_after else None
        d_reset_state = None if self.reset_after else self._buffer("d_reset_state", (batch, units))
        dh = carry[0]
        act, rec = self.activation, self.recurrent_activation
        for t in reversed(range(steps)):
            if sequence_grad is not None:
                xp.add(dh, sequence_grad[t], out=dh_step)
            else:
                dh_step[...] = dh
            masked = self._split_masked_grad(t, dh_step, passed)
            z_all = gates[t]
            pre = None if gate_pre is None else gate_pre[t]
            z, r, candidate = (z_all[:, k * units:(k + 1) * units] for k in range(3))
            da = recurrent_grads[t] if self.reset_after else grads[t]
            xp.subtract(hs[t], candidate, out=da[:, :units])  # d z
            da[:, :units] *= dh_step
            d_candidate = candidate_grads[t] if self.reset_after else grads[t][:, 2 * units:]
            xp.multiply(dh_step, z, out=scratch)
            xp.subtract(dh_step, scratch, out=d_candidate)  # dh * (1 - z)
            _backward_activation(act, d_candidate, None if pre is None else pre[:, 2 * units:], candidate)
            if self.reset_after:
                xp.multiply(d_candidate, self._state_products[t][:, 2 * units:], out=da[:, units:2 * units])  # d r
                xp.multiply(d_candidate, r, out=da[:, 2 * units:])
                _backward_activation(rec, da[:, :2 * units], None if pre is None else pre[:, :2 * units],
                                     z_all[:, :2 * units])
                xp.matmul(da, recurrent.T, out=dh)  # one GEMM for the three gates
            else:
                xp.matmul(d_candidate, recurrent[:, 2 * units:].T, out=d_reset_state)
                xp.multiply(d_reset_state, hs[t], out=da[:, units:2 * units])  # d r
                _backward_activation(rec, da[:, :2 * units], None if pre is None else pre[:, :2 * units],
                                     z_all[:, :2 * units])
                xp.matmul(da[:, :2 * units], recurrent[:, :2 * units].T, out=dh)
                d_reset_state *= r
                dh += d_reset_state
            dh += scratch  # dh_step * z
            if masked:
                dh += passed
        previous = hs[:-1].reshape(-1, units)
        if self.reset_after:
            xp.matmul(previous.T, recurrent_grads.reshape(-1, width), out=self.recurrent_kernel.grad)
            if self.bias is not None:
                ones = self._buffer("ones", (previous.shape[0],))
                ones.fill(1)
                xp.matmul(ones, recurrent_grads.reshape(-1, width), out=self.bias.grad[1])
            grads[:, :, :2 * units] = recurrent_grads[:, :, :2 * units]
            grads[:, :, 2 * units:] = candidate_grads
        else:
            xp.matmul(previous.T, grads[:, :, :2 * units].reshape(-1, 2 * units),
                      out=self.recurrent_kernel.grad[:, :2 * units])
            xp.matmul(self._reset_states.reshape(-1, units).T, grads[:, :, 2 * units:].reshape(-1, units),
                      out=self.recurrent_kernel.grad[:, 2 * units:])
        return grads, [dh]

    def get_config(self):
        return {**super().get_config(), "recurrent_activation": activations.serialize(self.recurrent_activation),
                "reset_after": self.reset_after}

