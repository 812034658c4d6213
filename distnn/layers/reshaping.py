"""Sequence reshaping layers of Keras 3: ``RepeatVector`` and ``Permute``, each with its fused backward."""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn import backend
from distnn.layers.base import Layer


class RepeatVector(Layer):
    """Repeats the input ``n`` times along a new time axis: ``(batch, features)`` ->
    ``(batch, n, features)`` (the bridge from an encoder's last state to a decoder's steps)."""

    def __init__(self, n: int, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"Expected an integer value for `n` of at least 1. Received: n={n!r}")
        self.n = int(n)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{self.name}: RepeatVector expects inputs of shape (batch, features). "
                             f"Received: input_shape={tuple(input_shape)}")
        return (input_shape[0], self.n, input_shape[1])

    def call(self, x, training=False):
        self.compute_output_shape(x.shape)
        return backend.get_array_module(x).repeat(x[:, None, :], self.n, axis=1)

    def backward(self, grad):
        return grad.sum(axis=1) if self.propagate_input_grad else None

    def get_config(self):
        return {**super().get_config(), "n": self.n}


class Permute(Layer):
    """Permutes the axes of each sample: ``dims`` is a permutation of ``1..rank`` (the batch axis, 0,
    stays first), e.g. ``Permute((2, 1))`` swaps the time and feature axes."""

    def __init__(self, dims: tuple, **kwargs: Any):
        super().__init__(**kwargs)
        dims = tuple(dims) if isinstance(dims, (list, tuple)) else (dims,)
        if sorted(dims) != list(range(1, len(dims) + 1)) or not all(isinstance(d, (int, np.integer)) for d in dims):
            raise ValueError(f"Invalid permutation argument `dims` for Permute layer: it must be a permutation of "
                             f"1..{len(dims)} (the batch axis is not permuted). Received: dims={dims!r}")
        self.dims = tuple(int(d) for d in dims)
        self._inverse = tuple(int(i) for i in np.argsort((0, *self.dims)))

    def _check_rank(self, rank: int) -> None:
        if rank != len(self.dims) + 1:
            raise ValueError(f"{self.name}: dims={self.dims} permutes {len(self.dims)} sample axes, but the input "
                             f"has {rank - 1}")

    def compute_output_shape(self, input_shape):
        self._check_rank(len(input_shape))
        return (input_shape[0], *(input_shape[d] for d in self.dims))

    def call(self, x, training=False):
        self._check_rank(x.ndim)
        return backend.get_array_module(x).ascontiguousarray(x.transpose((0, *self.dims)))

    def backward(self, grad):
        return grad.transpose(self._inverse) if self.propagate_input_grad else None

    def get_config(self):
        return {**super().get_config(), "dims": list(self.dims)}
