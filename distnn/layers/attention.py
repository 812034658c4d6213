"""Dot-product and additive attention layers (Keras 3's ``Attention`` and ``AdditiveAttention``), and
the mask helpers that ``MultiHeadAttention`` shares with them.

Both layers take a list ``[query, value]`` or ``[query, value, key]``, so they are written with
``distnn.ops`` and differentiated by the tape (docs/architecture.md, "Autodiff"); their dropout is a
``Dropout`` sublayer, so it draws its masks the way the ``Dropout`` layer does.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn import backend
from distnn.layers.base import Layer
from distnn.layers.core import Dropout
from distnn.ops import core as tape_core
from distnn.ops import nn as nn_ops
from distnn.ops import numpy as ops


def large_negative(dtype: Any) -> float:
    """What Keras adds to a masked attention score: ``-1e9`` (``-3e4`` in float16, whose range ends at 65504)."""
    return -3e4 if np.dtype(dtype) == np.float16 else -1e9


def causal_mask(query_length: int, value_length: int) -> Any:
    """Keras' causal mask, shape ``(1, query_length, value_length)``: query ``i`` sees values ``j <= i``."""
    return backend.xp().tril(backend.xp().ones((query_length, value_length), dtype=bool))[None]


def boolean_mask(mask: Any, name: str, shape: tuple, layer: Layer) -> Any:
    """``mask`` as a boolean device array (nonzero is True, as Keras casts), checked to broadcast to
    ``shape`` without adding axes."""
    mask = backend.to_device(tape_core.value_of(mask))
    if mask.dtype != bool:
        mask = mask != 0
    try:
        broadcast = np.broadcast_shapes(tuple(mask.shape), tuple(shape))
    except ValueError:
        broadcast = None
    if broadcast != tuple(shape) or mask.ndim > len(shape):
        raise ValueError(f"{layer.name}: {name} must have shape {tuple(shape)} (or broadcast to it). "
                         f"Received: {name} of shape {tuple(mask.shape)}")
    return mask


def _check_3d(tensor: Any, what: str, layer: Layer) -> tuple:
    shape = tuple(np.shape(tape_core.value_of(tensor)))
    if len(shape) != 3:
        raise ValueError(f"{layer.name}: {what} must be 3-D (batch, sequence, features). "
                         f"Received: {what} of shape {shape}")
    return shape


class Attention(Layer):
    """Dot-product attention (Luong style): ``softmax(scores) @ value`` with ``scores`` from query
    and key, as Keras 3.

    ``score_mode="dot"``: ``scores = query @ key^T`` (times ``scale`` with ``use_scale``);
    ``"concat"``: ``scores = concat_score_weight * sum(tanh(scale * (query + key)), -1)``.

    Args:
        use_scale: learn a scalar ``scale`` for the scores.
        score_mode: ``"dot"`` or ``"concat"``.
        dropout: fraction of the attention weights to drop in training.
        seed: seed of the dropout's generator.

    Call arguments:
        inputs: ``[query, value]`` or ``[query, value, key]``, of shapes ``(batch, Tq, dim)`` and
            ``(batch, Tv, dim)`` (``key`` defaults to ``value``).
        mask: ``[query_mask, value_mask]`` (boolean ``(batch, Tq)`` and ``(batch, Tv)``); by default
            the masks the inputs carry. Masked values get no attention; masked query positions
            output zeros.
        return_attention_scores: also return the attention weights (after dropout, as Keras).
        use_causal_mask: query position ``i`` attends only to values ``j <= i``.

    Output shape:
        ``(batch, Tq, value_dim)``; with ``return_attention_scores``, also ``(batch, Tq, Tv)``.
    """

    def __init__(self, use_scale: bool = False, score_mode: str = "dot", dropout: float = 0.0,
                 seed: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if score_mode not in ("dot", "concat"):
            raise ValueError(f"Invalid value for argument score_mode. Expected one of {{'dot', 'concat'}}. "
                             f"Received: score_mode={score_mode!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a float in [0, 1). Received: dropout={dropout!r}")
        self.use_scale, self.score_mode = bool(use_scale), score_mode
        self.dropout, self.seed = float(dropout), seed
        self.dropout_layer = Dropout(self.dropout, seed=seed, dtype=self.dtype, name=f"{self.name}_dropout")
        self.supports_masking = True

    def build(self, input_shape):
        self._validate_inputs(input_shape)
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale") if self.use_scale else None
        self.concat_score_weight = (self.add_weight(shape=(), initializer="ones", name="concat_score_weight")
                                    if self.score_mode == "concat" else None)
        self.built = True

    def _validate_inputs(self, inputs: Any, mask: Any = None) -> None:
        name = type(self).__name__
        if not isinstance(inputs, (list, tuple)):
            raise ValueError(f"{name} layer must be called on a list of inputs, namely [query, value] or "
                             f"[query, value, key]. Received: inputs={inputs!r:.200}")
        if not 2 <= len(inputs) <= 3:
            raise ValueError(f"{name} layer accepts inputs list of length 2 or 3, namely [query, value] or "
                             f"[query, value, key]. Received length: {len(inputs)}")
        if mask is not None and (not isinstance(mask, (list, tuple)) or not 2 <= len(mask) <= 3):
            raise ValueError(f"{name} layer mask must be a list of length 2 or 3, namely [query_mask, "
                             f"value_mask]. Received: mask={mask!r:.200}")

    def _calculate_scores(self, query: Any, key: Any) -> Any:
        if self.score_mode == "dot":
            scores = ops.matmul(query, ops.transpose(key, (0, 2, 1)))
            return scores if self.scale is None else ops.multiply(scores, self.scale)
        pairs = ops.add(ops.expand_dims(query, -2), ops.expand_dims(key, -3))  # (batch, Tq, Tv, dim)
        if self.scale is not None:
            pairs = ops.multiply(self.scale, pairs)
        return ops.multiply(self.concat_score_weight, ops.sum(ops.tanh(pairs), axis=-1))

    def call(self, inputs, mask=None, training=False, return_attention_scores=False, use_causal_mask=False):
        self._validate_inputs(inputs, mask)
        query, value = inputs[0], inputs[1]
        key = inputs[2] if len(inputs) > 2 else value
        (batch, q_len, _), (_, v_len, _) = _check_3d(query, "query", self), _check_3d(value, "value", self)
        _check_3d(key, "key", self)
        query_mask = None if mask is None or mask[0] is None else \
            boolean_mask(mask[0], "query_mask", (batch, q_len), self)
        value_mask = None if mask is None or mask[1] is None else \
            boolean_mask(mask[1], "value_mask", (batch, v_len), self)
        scores = self._calculate_scores(query, key)
        keep = None if value_mask is None else value_mask[:, None, :]
        if use_causal_mask:
            keep = causal_mask(q_len, v_len) if keep is None else keep & causal_mask(q_len, v_len)
        if keep is not None:
            dtype = tape_core.value_of(scores).dtype
            # Keras: scores -= 1e9 * padding (65504 in float16), so masked values get no weight.
            limit = 65504.0 if dtype == np.float16 else 1e9
            scores = ops.subtract(scores, (~keep).astype(dtype) * limit)
        weights = nn_ops.softmax(scores, axis=-1)
        if training and self.dropout > 0:
            weights = self.dropout_layer(weights, training=True)
        output = ops.matmul(weights, value)
        if query_mask is not None:
            output = ops.multiply(output, query_mask[:, :, None].astype(tape_core.value_of(output).dtype))
        return (output, weights) if return_attention_scores else output

    def compute_mask(self, inputs, mask=None):
        self._validate_inputs(inputs, mask)
        return None if mask is None else mask[0]

    def compute_output_shape(self, input_shape):
        self._validate_inputs(input_shape)
        return (*tuple(input_shape[0])[:-1], tuple(input_shape[1])[-1])

    def get_config(self):
        return {**super().get_config(), "use_scale": self.use_scale, "score_mode": self.score_mode,
                "dropout": self.dropout, "seed": self.seed}


class AdditiveAttention(Attention):
    """Additive attention (Bahdanau style), as Keras 3:
    ``scores = sum(scale * tanh(query + key), -1)`` with ``scale`` a learned vector of length ``dim``.

    Args:
        use_scale: learn the per-feature ``scale`` (else 1).
        dropout: fraction of the attention weights to drop in training.
        seed: seed of the dropout's generator.

    Call arguments and shapes: as ``Attention`` (query and key must have the same ``dim``).
    """

    def __init__(self, use_scale: bool = True, dropout: float = 0.0, **kwargs: Any):
        if "score_mode" in kwargs:
            raise TypeError(f"AdditiveAttention has no score_mode (its scores are additive). "
                            f"Received: score_mode={kwargs['score_mode']!r}")
        super().__init__(use_scale=use_scale, dropout=dropout, **kwargs)

    def build(self, input_shape):
        self._validate_inputs(input_shape)
        dim = tuple(input_shape[0])[-1]
        if dim is None:
            raise ValueError(f"{self.name}: the last axis of the query must be known. "
                             f"Received: input_shape={input_shape}")
        self.scale = self.add_weight(shape=(dim,), initializer="glorot_uniform", name="scale") \
            if self.use_scale else None
        self.built = True

    def _calculate_scores(self, query, key):
        tanh = ops.tanh(ops.add(ops.expand_dims(query, -2), ops.expand_dims(key, -3)))  # (batch, Tq, Tv, dim)
        return ops.sum(tanh if self.scale is None else ops.multiply(self.scale, tanh), axis=-1)

    def get_config(self):
        config = super().get_config()
        del config["score_mode"]
        return config
