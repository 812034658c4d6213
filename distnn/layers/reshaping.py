"""Spatial reshaping layers with Keras 3 names: ``UpSampling1D``, ``UpSampling2D``, ``Cropping1D``,
``Cropping2D``.

They compute with ``distnn.ops`` (repeats, slices, and for bilinear up-sampling two small
interpolation matrices), so the tape differentiates them.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn import backend
from distnn.layers.base import normalize_tuple
from distnn.layers.conv import SpatialLayer
from distnn.ops.linalg import tensordot
from distnn.ops.shape import getitem, repeat, transpose
from distnn.ops.core import value_of

_INTERPOLATIONS = ("nearest", "bilinear")


class UpSampling(SpatialLayer):
    """Shared implementation of ``UpSampling1D`` and ``UpSampling2D``."""

    def __init__(self, size: Any = 2, data_format: str | None = None, interpolation: str = "nearest",
                 **kwargs: Any):
        super().__init__(data_format=data_format, **kwargs)
        self.size = normalize_tuple(size, self.rank, "size")
        self.interpolation = str(interpolation).lower() if isinstance(interpolation, str) else interpolation
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}. Received: "
                             f"interpolation={interpolation!r}")

    def build(self, input_shape):
        self._check_rank(input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        shape = self._channels_last_shape(input_shape)
        spatial = tuple(None if n is None else n * s for n, s in zip(shape[1:-1], self.size))
        return self._output_format_shape((shape[0], *spatial, shape[-1]))

    def _spatial_axes(self) -> list[int]:
        first = 2 if self.data_format == "channels_first" else 1
        return list(range(first, first + self.rank))

    def call(self, x):
        for axis, factor in zip(self._spatial_axes(), self.size):
            if factor == 1:
                continue
            if self.interpolation == "nearest":
                x = repeat(x, factor, axis=axis)
            else:
                raw = value_of(x)
                matrix = backend.to_device(bilinear_matrix(raw.shape[axis], factor).astype(raw.dtype))
                # (out, in) @ x along `axis`: tensordot puts the new axis first; move it back.
                y = tensordot(matrix, x, axes=([1], [axis]))
                x = transpose(y, (*range(1, axis + 1), 0, *range(axis + 1, raw.ndim)))
        return x

    def get_config(self):
        return {**super().get_config(), "size": list(self.size), "interpolation": self.interpolation}


def bilinear_matrix(size: int, factor: int) -> np.ndarray:
    """``(size * factor, size)`` weights of linear interpolation with half-pixel centres (TensorFlow's
    ``resize(..., "bilinear")`` without antialiasing, as Keras' ``UpSampling2D`` uses): output pixel
    ``i`` samples the input at ``(i + 0.5) / factor - 0.5``, clamped to the edges."""
    source = np.clip((np.arange(size * factor) + 0.5) / factor - 0.5, 0, size - 1)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    weight = source - low
    matrix = np.zeros((size * factor, size))
    rows = np.arange(size * factor)
    np.add.at(matrix, (rows, low), 1 - weight)
    np.add.at(matrix, (rows, high), weight)
    return matrix


class UpSampling2D(UpSampling):
    """Repeats the rows and columns of images, as ``keras.layers.UpSampling2D``.

    Args:
        size: an integer or 2 integers, the factors of rows and columns (default 2).
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.
        interpolation: ``"nearest"`` (repeat, default) or ``"bilinear"``.

    Input shape:
        ``(batch_size, rows, cols, channels)`` or ``(batch_size, channels, rows, cols)``.

    Output shape:
        ``(batch_size, rows * size[0], cols * size[1], channels)`` (or channels first).
    """

    rank = 2

    def __init__(self, size: Any = (2, 2), data_format: str | None = None, interpolation: str = "nearest",
                 **kwargs: Any):
        super().__init__(size, data_format, interpolation, **kwargs)


class UpSampling1D(UpSampling):
    """Repeats each step of sequences ``size`` times, as ``keras.layers.UpSampling1D``.

    Args:
        size: integer, the repetition factor (default 2).

    Input shape:
        ``(batch_size, steps, features)``; output ``(batch_size, steps * size, features)``.
    """

    rank = 1

    def __init__(self, size: int = 2, **kwargs: Any):
        super().__init__(size, **kwargs)

    def get_config(self):
        config = super().get_config()
        for key in ("data_format", "interpolation"):  # Keras' UpSampling1D has neither
            del config[key]
        return config


def _normalize_cropping(cropping: Any, rank: int) -> tuple[tuple[int, int], ...]:
    """Keras' cropping forms: ``c``, ``(c_1, ..., c_rank)`` (symmetric), ``((a, b), ...)``; for 1-D
    also ``(begin, end)``."""
    def valid(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0

    if valid(cropping):
        return ((int(cropping),) * 2,) * rank
    items = tuple(cropping) if isinstance(cropping, (tuple, list)) else ()
    if rank == 1 and len(items) == 2 and all(map(valid, items)):
        return ((int(items[0]), int(items[1])),)
    if rank > 1 and len(items) == rank and all(map(valid, items)):
        return tuple((int(c), int(c)) for c in items)
    if len(items) == rank and all(isinstance(c, (tuple, list)) and len(c) == 2 and all(map(valid, c)) for c in items):
        return tuple((int(c[0]), int(c[1])) for c in items)
    raise ValueError(f"cropping should be a non-negative integer, a tuple of {max(rank, 2)} non-negative integers"
                     f"{'' if rank == 1 else f' or a tuple of {rank} tuples of 2 non-negative integers'}. "
                     f"Received: cropping={cropping!r}")


class Cropping(SpatialLayer):
    """Shared implementation of ``Cropping1D`` and ``Cropping2D``."""

    def __init__(self, cropping: Any, data_format: str | None = None, **kwargs: Any):
        super().__init__(data_format=data_format, **kwargs)
        self.cropping = _normalize_cropping(cropping, self.rank)

    def build(self, input_shape):
        self._check_rank(input_shape)
        self.compute_output_shape(input_shape)  # refuses a crop larger than the input
        self.built = True

    def compute_output_shape(self, input_shape):
        shape = self._channels_last_shape(input_shape)
        spatial = []
        for n, (begin, end) in zip(shape[1:-1], self.cropping):
            if n is not None and begin + end >= n:
                raise ValueError(f"{self.name}: cropping={self.cropping} leaves nothing of an input of shape "
                                 f"{tuple(input_shape)}: each axis must be larger than its total cropping")
            spatial.append(None if n is None else n - begin - end)
        return self._output_format_shape((shape[0], *spatial, shape[-1]))

    def call(self, x):
        raw = value_of(x)
        self.compute_output_shape(raw.shape)
        first = 2 if self.data_format == "channels_first" else 1
        index = [slice(None)] * raw.ndim
        for axis, (begin, end) in enumerate(self.cropping, start=first):
            index[axis] = slice(begin, raw.shape[axis] - end)
        return getitem(x, tuple(index))

    def get_config(self):
        return {**super().get_config(), "cropping": [list(c) for c in self.cropping]}


class Cropping2D(Cropping):
    """Crops images along rows and columns, as ``keras.layers.Cropping2D``.

    Args:
        cropping: ``c`` (every side), ``(rows, cols)`` (symmetric) or ``((top, bottom), (left, right))``.
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.

    Input shape:
        ``(batch_size, rows, cols, channels)`` or ``(batch_size, channels, rows, cols)``.

    Output shape:
        ``(batch_size, cropped_rows, cropped_cols, channels)`` (or channels first).
    """

    rank = 2

    def __init__(self, cropping: Any = ((0, 0), (0, 0)), data_format: str | None = None, **kwargs: Any):
        super().__init__(cropping, data_format, **kwargs)


class Cropping1D(Cropping):
    """Crops sequences along the steps, as ``keras.layers.Cropping1D``.

    Args:
        cropping: ``c`` (both ends) or ``(begin, end)`` (default ``(1, 1)``).

    Input shape:
        ``(batch_size, steps, features)``; output ``(batch_size, steps - begin - end, features)``.
    """

    rank = 1

    def __init__(self, cropping: Any = (1, 1), **kwargs: Any):
        super().__init__(cropping, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["cropping"] = list(self.cropping[0])
        del config["data_format"]  # Keras' Cropping1D has none
        return config
