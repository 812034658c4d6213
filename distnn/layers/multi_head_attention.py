"""``MultiHeadAttention`` (Vaswani et al., 2017) with Keras 3's arguments and weight layout.

The layer is three head projections (query, key, value: kernels ``(features, num_heads, key_dim)``,
Keras' ``EinsumDense`` layout), scaled dot-product attention, and an output projection (kernel
``(num_heads, value_dim, output features)``). On the tape (docs/architecture.md, "Autodiff") each
projection is one fused node, and the attention in between — ``softmax(q k^T / sqrt(key_dim) + mask)
v`` with its dropout — is one more, recorded with ``custom_gradient`` around a hand-written forward
and backward that compute in head-major buffers reused across steps. When the attention scores are
requested during training the layer computes the attention with ``distnn.ops`` instead, so that a
loss on the scores is differentiated too; the two paths agree to rounding (tested).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from distnn import backend, constraints, initializers, regularizers
from distnn.layers.attention import boolean_mask, causal_mask, large_negative
from distnn.layers.base import Layer
from distnn.layers.core import Dropout
from distnn.ops import core as tape_core
from distnn.ops import nn as nn_ops
from distnn.ops import symbolic
from distnn.ops import numpy as ops


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
    return int(value)


class HeadProjection(Layer):
    """The projections of ``MultiHeadAttention`` (Keras' ``EinsumDense`` with the equations that
    layer uses): contracts the last ``contracted_axes`` axes of the input with the first axes of a
    kernel of shape ``(*contracted input sizes, *output_dims)`` and adds a bias of shape
    ``output_dims``. As a matrix product it is ``Dense`` on flattened axes, with the same fused
    backward."""

    def __init__(self, output_dims: tuple, contracted_axes: int, use_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None, kernel_constraint: Any = None,
                 bias_constraint: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.output_dims = tuple(int(d) for d in output_dims)
        self.contracted_axes = int(contracted_axes)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)

    def build(self, input_shape):
        contracted = tuple(input_shape)[-self.contracted_axes:]
        if None in contracted:
            raise ValueError(f"{self.name}: the last {self.contracted_axes} axes of the input must be known. "
                             f"Received: input_shape={tuple(input_shape)}")
        self.kernel = self.add_weight(shape=(*contracted, *self.output_dims), initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer, constraint=self.kernel_constraint,
                                      name="kernel")
        self.bias = self.add_weight(shape=self.output_dims, initializer=self.bias_initializer,
                                    regularizer=self.bias_regularizer, constraint=self.bias_constraint,
                                    name="bias") if self.use_bias else None
        self._sizes = (math.prod(contracted), math.prod(self.output_dims))
        self.built = True

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-self.contracted_axes], *self.output_dims)

    def call(self, x, training=False):
        xp = backend.get_array_module(x)
        rows, outputs = self._sizes
        self._x = x.reshape(-1, rows)
        y = xp.matmul(self._x, self.kernel.value.reshape(rows, outputs),
                      out=self._buffer("y", (self._x.shape[0], outputs)))
        if self.bias is not None:
            y += self.bias.value.reshape(outputs)
        return y.reshape(*x.shape[:-self.contracted_axes], *self.output_dims)

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        rows, outputs = self._sizes
        g = grad.reshape(-1, outputs)
        # The weights' grads are contiguous views of the flat buffer, so these reshapes are views too.
        xp.matmul(self._x.T, g, out=self.kernel.grad.reshape(rows, outputs))
        if self.bias is not None:  # a GEMV with ones, as Dense: faster than g.sum(axis=0) on tall g
            ones = self._buffer("ones", (g.shape[0],))
            ones.fill(1)
            xp.matmul(ones, g, out=self.bias.grad.reshape(outputs))
        if not self.propagate_input_grad:
            return None
        dx = xp.matmul(g, self.kernel.value.reshape(rows, outputs).T, out=self._buffer("dx", self._x.shape))
        return dx.reshape(*grad.shape[:-len(self.output_dims)], *self.kernel.shape[:self.contracted_axes])

    def get_config(self):
        return {**super().get_config(), "output_dims": list(self.output_dims),
                "contracted_axes": self.contracted_axes, "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": constraints.serialize(self.kernel_constraint),
                "bias_constraint": constraints.serialize(self.bias_constraint)}


class MultiHeadAttention(Layer):
    """Multi-head attention, as ``keras.layers.MultiHeadAttention`` for 3-D inputs.

    ``query`` ``(batch, T, dq)``, ``value`` ``(batch, S, dv)`` and ``key`` ``(batch, S, dk)`` (default
    ``value``) are projected to ``num_heads`` heads; each head computes
    ``softmax(q k^T / sqrt(key_dim) + mask) v``, and the heads are projected back to ``dq`` features
    (or ``output_shape``). Masked positions get ``-1e9`` added to their scores, as Keras' ``Softmax``.

    Args:
        num_heads: number of attention heads.
        key_dim: size of each head for query and key.
        value_dim: size of each head for value (default ``key_dim``).
        dropout: dropout rate on the attention probabilities (a ``Dropout`` sublayer).
        use_bias: whether the four projections have biases.
        output_shape: size (int or tuple) of the output's trailing axes; default the query's features.
        attention_axes: only the default (attention over the sequence axis: ``None``, ``1`` or
            ``-2``) is supported.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer, kernel_constraint,
        bias_constraint: of the projections.
        seed: seed of the dropout's generator.

    Call arguments:
        query, value, key: the inputs (``key`` defaults to ``value``); they may also come as one list
            ``[query, value]`` or ``[query, value, key]``, the way ``Attention`` takes them.
        query_mask, value_mask, key_mask: boolean ``(batch, T)`` / ``(batch, S)`` masks; each defaults
            to the mask its input carries (an explicit argument wins). The output carries the query's.
        attention_mask: boolean mask broadcastable to ``(batch, T, S)``: ``False`` forbids attention.
        return_attention_scores: also return the attention probabilities ``(batch, num_heads, T, S)``
            (before dropout, as Keras).
        training: apply dropout.
        use_causal_mask: query position ``i`` attends only to positions ``j <= i``.

    Weights (``get_weights()`` order, as Keras): query kernel ``(dq, num_heads, key_dim)`` and bias
    ``(num_heads, key_dim)``, key kernel and bias, value kernel ``(dv, num_heads, value_dim)`` and
    bias, output kernel ``(num_heads, value_dim, dq)`` and bias ``(dq,)``.
    """

    def __init__(self, num_heads: int, key_dim: int, value_dim: int | None = None, dropout: float = 0.0,
                 use_bias: bool = True, output_shape: Any = None, attention_axes: Any = None,
                 kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None, kernel_constraint: Any = None,
                 bias_constraint: Any = None, seed: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_heads = _positive_int(num_heads, "num_heads")
        self.key_dim = _positive_int(key_dim, "key_dim")
        self.value_dim = self.key_dim if value_dim is None else _positive_int(value_dim, "value_dim")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a float in [0, 1). Received: dropout={dropout!r}")
        self.dropout, self.use_bias, self.seed = float(dropout), bool(use_bias), seed
        # Not ``output_shape``: that name is the layer's (Keras keeps this one private too).
        self._output_dims = None if output_shape is None else tuple(
            _positive_int(d, "output_shape") for d in ((output_shape,) if isinstance(output_shape, (int, np.integer))
                                                       else output_shape))
        self.attention_axes = self._check_attention_axes(attention_axes)
        options = dict(use_bias=self.use_bias, kernel_initializer=kernel_initializer,
                       bias_initializer=bias_initializer, kernel_regularizer=kernel_regularizer,
                       bias_regularizer=bias_regularizer, kernel_constraint=kernel_constraint,
                       bias_constraint=bias_constraint, dtype=self.dtype)
        # Attribute order is get_weights() order: query, key, value, then the output projection.
        self.query_dense = HeadProjection((self.num_heads, self.key_dim), 1, name="query", **options)
        self.key_dense = HeadProjection((self.num_heads, self.key_dim), 1, name="key", **options)
        self.value_dense = HeadProjection((self.num_heads, self.value_dim), 1, name="value", **options)
        self.output_dense: HeadProjection | None = None  # its size is the query's: made in build
        self._projection_options = options
        self.dropout_layer = Dropout(self.dropout, seed=seed, dtype=self.dtype, name=f"{self.name}_dropout")
        self._inverse_sqrt_key_dim = 1.0 / math.sqrt(self.key_dim)
        self._output_mask = None
        self.supports_masking = True

    @staticmethod
    def _check_attention_axes(attention_axes: Any) -> Any:
        if attention_axes is None:
            return None
        axes = (attention_axes,) if isinstance(attention_axes, (int, np.integer)) else attention_axes
        if not isinstance(axes, (list, tuple)) or not all(isinstance(a, (int, np.integer)) for a in axes):
            raise ValueError(f"attention_axes must be an int, list, or tuple. "
                             f"Received: attention_axes={attention_axes!r}")
        # Keras counts a negative axis from the end of the 3-D input: -2 is the sequence axis.
        if tuple(int(a) if a >= 0 else 3 + int(a) for a in axes) != (1,):
            raise ValueError("distnn's MultiHeadAttention attends over the sequence axis of 3-D inputs only: "
                             f"attention_axes must be None (or 1, or -2). Received: attention_axes={attention_axes!r}")
        return list(axes)

    def build(self, query_shape, value_shape=None, key_shape=None):
        """Create the projections; the key and value ones wait for their inputs when the shapes of
        those are not given (``Layer.__call__`` passes the query's shape alone)."""
        if not symbolic.is_shape(query_shape):  # the shapes of a list [query, value, (key)]
            query_shape, value_shape, key_shape = (*query_shape, None)[:3]
        query_shape = tuple(query_shape)
        if len(query_shape) != 3:
            raise ValueError(f"{self.name}: query must be 3-D (batch, sequence, features). "
                             f"Received: query_shape={query_shape}")
        self.query_dense.build_for(query_shape)
        if value_shape is not None:
            self.value_dense.build_for(tuple(value_shape))
            self.key_dense.build_for(tuple(key_shape if key_shape is not None else value_shape))
        self.output_dense = HeadProjection(self._output_dims or (query_shape[-1],), 2, name="attention_output",
                                           **self._projection_options)
        self.output_dense.build_for((None, query_shape[1], self.num_heads, self.value_dim))
        self.built = True

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        if not symbolic.is_shape(query_shape):
            query_shape = query_shape[0]
        return (*tuple(query_shape)[:-1], *(self._output_dims or (tuple(query_shape)[-1],)))

    def call(self, query, value=None, key=None, query_mask=None, value_mask=None, key_mask=None, attention_mask=None,
             return_attention_scores=False, training=False, use_causal_mask=False):
        if isinstance(query, (list, tuple)):
            if value is not None or key is not None or not 2 <= len(query) <= 3:
                raise ValueError(f"{self.name}: the inputs come either as query, value[, key] or as one list "
                                 f"[query, value] or [query, value, key]. Received a list of {len(query)}, "
                                 f"value {'given' if value is not None else 'None'}, "
                                 f"key {'given' if key is not None else 'None'}")
            query, value, key = (*query, None)[:3]
        elif value is None:
            raise ValueError(f"{self.name}: MultiHeadAttention needs a value (and optionally a key) besides the query. "
                             "Received: value=None")
        if key is None:
            key = value
        elif key_mask is None:  # Keras fills <argument>_mask from the mask the argument carries
            key_mask = self._input_mask(key)
        shapes = [tuple(np.shape(tape_core.value_of(t))) for t in (query, value, key)]
        for what, shape in zip(("query", "value", "key"), shapes):
            if len(shape) != 3:
                raise ValueError(f"{self.name}: {what} must be 3-D (batch, sequence, features). "
                                 f"Received: {what} of shape {shape}")
        if shapes[1][:2] != shapes[2][:2] or shapes[0][0] != shapes[1][0]:
            raise ValueError(f"{self.name}: query, value and key must have the same batch size, and value and key "
                             f"the same length. Received shapes: query {shapes[0]}, value {shapes[1]}, key {shapes[2]}")
        query_mask = self._input_mask(query) if query_mask is None else query_mask
        value_mask = self._input_mask(value) if value_mask is None else value_mask
        bias = self._mask_bias(shapes[0][0], shapes[0][1], shapes[1][1], query_mask, value_mask, key_mask,
                               attention_mask, use_causal_mask)
        self._output_mask = query_mask
        q, k, v = self.query_dense(query), self.key_dense(key), self.value_dense(value)
        dropout = self.dropout > 0 and bool(training)
        if return_attention_scores and tape_core.active_tape() is not None:
            attended, scores = self._attention_with_ops(q, k, v, bias, dropout)
        else:
            attended, scores = self._attention_fused(q, k, v, bias, dropout)
        output = self.output_dense(attended)
        return (output, scores) if return_attention_scores else output

    def compute_mask(self, inputs, mask=None):
        return self._output_mask

    def _mask_bias(self, batch: int, q_len: int, v_len: int, query_mask: Any, value_mask: Any, key_mask: Any,
                   attention_mask: Any, use_causal_mask: bool) -> Any:
        """Keras' attention mask (the AND of every mask given) as the additive bias of the scores:
        0 where attention is allowed, ``large_negative`` elsewhere; shape ``(batch or 1, 1, T, S)``."""
        xp = backend.xp()
        keep = None
        for mask, name, length, axis in ((query_mask, "query_mask", q_len, 2), (value_mask, "value_mask", v_len, 1),
                                         (key_mask, "key_mask", v_len, 1)):
            if mask is not None:
                mask = boolean_mask(mask, name, (batch, length), self)
                mask = xp.expand_dims(xp.broadcast_to(mask, (batch, length)), axis)  # (B, T, 1) or (B, 1, S)
                keep = mask if keep is None else keep & mask
        if use_causal_mask:
            keep = causal_mask(q_len, v_len) if keep is None else keep & causal_mask(q_len, v_len)
        if attention_mask is not None:
            mask = boolean_mask(attention_mask, "attention_mask", (batch, q_len, v_len), self)
            mask = mask.reshape((1,) * (3 - mask.ndim) + mask.shape)
            keep = mask if keep is None else keep & mask
        if keep is None:
            return None
        return xp.where(keep, 0.0, large_negative(self.dtype)).astype(self.dtype)[:, None]

    # --------------------------------------------------------------------------------- attention
    def _attention_with_ops(self, q: Any, k: Any, v: Any, bias: Any, dropout: bool) -> tuple[Any, Any]:
        """The attention written with ``distnn.ops`` (differentiable in every output, scores included)."""
        q = ops.multiply(q, self._inverse_sqrt_key_dim)
        scores = ops.matmul(ops.transpose(q, (0, 2, 1, 3)), ops.transpose(k, (0, 2, 3, 1)))
        if bias is not None:
            scores = ops.add(scores, bias)
        probabilities = nn_ops.softmax(scores, axis=-1)
        dropped = self.dropout_layer(probabilities, training=True) if dropout else probabilities
        attended = ops.transpose(ops.matmul(dropped, ops.transpose(v, (0, 2, 1, 3))), (0, 2, 1, 3))
        return attended, probabilities

    def _attention_fused(self, q: Any, k: Any, v: Any, bias: Any, dropout: bool) -> tuple[Any, Any]:
        """The attention as one tape node (``custom_gradient``); returns ``(attended, probabilities)``."""
        scores: list = []

        def attend(q, k, v):
            attended, probabilities, backward = _attention_forward(self, q, k, v, bias, dropout)
            scores.append(probabilities)
            return attended, backward

        attended = tape_core.custom_gradient(attend)(q, k, v)
        return attended, scores[0]

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim,
                "value_dim": self.value_dim, "dropout": self.dropout, "use_bias": self.use_bias,
                "output_shape": None if self._output_dims is None else list(self._output_dims),
                "attention_axes": self.attention_axes,
                "kernel_initializer": initializers.serialize(self.query_dense.kernel_initializer),
                "bias_initializer": initializers.serialize(self.query_dense.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.query_dense.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.query_dense.bias_regularizer),
                "kernel_constraint": constraints.serialize(self.query_dense.kernel_constraint),
                "bias_constraint": constraints.serialize(self.query_dense.bias_constraint),
                "seed": self.seed}


def _heads_first(layer: Layer, name: str, x: Any, scale: float | None = None) -> Any:
    """``(batch, length, heads, size)`` -> a contiguous ``(batch, heads, length, size)`` buffer
    (optionally scaled). Batched GEMMs on contiguous heads run about twice as fast as on the strided
    view (measured: 1.6 ms vs 3.4 ms for q k^T at batch 32, 64 tokens, 4 heads of 32, one thread)."""
    b, t, h, d = x.shape
    out = layer._buffer(name, (b, h, t, d), x.dtype)
    xp = backend.get_array_module(x)
    if scale is None:
        out[...] = x.transpose(0, 2, 1, 3)
    else:
        xp.multiply(x.transpose(0, 2, 1, 3), scale, out=out)
    return out


def _heads_last(layer: Layer, name: str, x: Any, scale: float | None = None) -> Any:
    """The inverse of ``_heads_first``: ``(batch, heads, length, size)`` -> ``(batch, length, heads, size)``."""
    b, h, t, d = x.shape
    out = layer._buffer(name, (b, t, h, d), x.dtype)
    if scale is None:
        out[...] = x.transpose(0, 2, 1, 3)
    else:
        backend.get_array_module(x).multiply(x.transpose(0, 2, 1, 3), scale, out=out)
    return out


def _attention_forward(layer: MultiHeadAttention, q: Any, k: Any, v: Any, bias: Any,
                       dropout: bool) -> tuple[Any, Any, Any]:
    """Scaled dot-product attention on projected ``q`` ``(B, T, H, Dk)``, ``k`` ``(B, S, H, Dk)``, ``v``
    ``(B, S, H, Dv)``. Returns the attended values ``(B, T, H, Dv)``, the probabilities
    ``(B, H, T, S)`` and the backward function ``dL/d(attended) -> (dq, dk, dv)``."""
    xp = backend.get_array_module(q)
    slot = layer._call_slot  # backward restores it: a shared layer keeps each call's buffers apart
    scale = layer._inverse_sqrt_key_dim
    qh = _heads_first(layer, "q", q, scale)  # Keras scales the query, not the scores
    kh = _heads_first(layer, "k", k)
    vh = _heads_first(layer, "v", v)
    b, h, t, _ = qh.shape
    probabilities = xp.matmul(qh, kh.transpose(0, 1, 3, 2), out=layer._buffer("p", (b, h, t, kh.shape[2]), q.dtype))
    if bias is not None:
        probabilities += bias
    probabilities -= probabilities.max(axis=-1, keepdims=True)
    xp.exp(probabilities, out=probabilities)
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    dropped, dropout_state = probabilities, None
    if dropout:
        dropped = layer.dropout_layer(probabilities, training=True)
        dropout_state = dict(vars(layer.dropout_layer))  # what its backward needs, kept for this call
    attended = xp.matmul(dropped, vh, out=layer._buffer("o", (b, h, t, vh.shape[3]), q.dtype))
    attended = _heads_last(layer, "attended", attended)

    def backward(upstream: Any) -> tuple[Any, Any, Any]:
        layer._call_slot = slot
        gh = _heads_first(layer, "g", upstream)
        d_dropped = xp.matmul(gh, vh.transpose(0, 1, 3, 2), out=layer._buffer("dp", probabilities.shape, gh.dtype))
        dv = xp.matmul(dropped.transpose(0, 1, 3, 2), gh, out=layer._buffer("dvh", vh.shape, gh.dtype))
        if dropout_state is not None:
            layer.dropout_layer.__dict__.update(dropout_state)
            d_dropped = layer.dropout_layer.backward(d_dropped)
        # Softmax backward, in place: p * (dp - sum(dp * p)). Masked scores have p == 0: no gradient.
        d_scores = d_dropped
        row = xp.multiply(d_scores, probabilities, out=layer._buffer("dp_p", probabilities.shape, gh.dtype))
        d_scores -= row.sum(axis=-1, keepdims=True)
        d_scores *= probabilities
        dq = xp.matmul(d_scores, kh, out=layer._buffer("dqh", qh.shape, gh.dtype))
        dk = xp.matmul(d_scores.transpose(0, 1, 3, 2), qh, out=layer._buffer("dkh", kh.shape, gh.dtype))
        return (_heads_last(layer, "dq", dq, scale), _heads_last(layer, "dk", dk), _heads_last(layer, "dv", dv))

    return attended, probabilities, backward
