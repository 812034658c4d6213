"""Pooling and padding layers (Keras semantics, channels-last by default).

Window pooling works tap by tap: for a ``ph x pw`` window the output is the maximum (or mean) of
``ph*pw`` strided views of the input, each vectorised over batch, pixels and channels, so there is
no loop over samples or pixels. Max pooling records, in training, which tap won each window (the
first maximum, as TensorFlow), and its backward pass writes the gradient through the same strided
views; windows that do not overlap (the usual ``strides == pool_size``) are written, not added.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn import backend
from distnn.layers.base import normalize_tuple
from distnn.layers.conv import SpatialLayer, normalize_padding, padded, spatial_geometry, tap


class Pooling(SpatialLayer):
    """Shared implementation of the max and average pooling layers; see ``MaxPooling2D``."""

    mode = "max"

    def __init__(self, pool_size: Any = 2, strides: Any = None, padding: str = "valid", data_format: str | None = None,
                 **kwargs: Any):
        super().__init__(data_format=data_format, **kwargs)
        self.pool_size = normalize_tuple(pool_size, self.rank, "pool_size")
        self.strides = self.pool_size if strides is None else normalize_tuple(strides, self.rank, "strides")
        self.padding = normalize_padding(padding)

    def build(self, input_shape):
        self._check_rank(input_shape)
        self.built = True

    def _geometry(self, spatial: tuple) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
        return spatial_geometry(self, spatial, self.pool_size, self.strides, (1,) * self.rank, self.padding)

    def compute_output_shape(self, input_shape):
        shape = self._channels_last_shape(input_shape)
        spatial = shape[1:-1]
        out = tuple(None for _ in spatial) if None in spatial else self._geometry(spatial)[0]
        return self._output_format_shape((shape[0], *out, shape[-1]))

    def call(self, x, training=False):
        xp = backend.get_array_module(x)
        x4 = self._to_nhwc(x)
        n, h, w, c = x4.shape
        out, pads = self._geometry((h, w) if self.rank == 2 else (w,))
        self._out_hw, self._pads = self._to_2d(out), (((0, 0), *pads) if self.rank == 1 else pads)
        self._in_shape = x4.shape
        self._window, self._step = self._to_2d(self.pool_size), self._to_2d(self.strides)
        fill = -np.inf if self.mode == "max" else 0.0
        xpad = padded(self, "xpad", x4, self._pads, fill, training)
        shape = (n, *self._out_hw, c)
        y = self._buffer("y", shape) if training else xp.empty(shape, dtype=x4.dtype)
        taps = [(i, j) for i in range(self._window[0]) for j in range(self._window[1])]
        y[...] = tap(xpad, 0, 0, self._out_hw, self._step)
        if self.mode == "max":
            winner = better = candidate = None
            if training:  # which tap holds each window's (first) maximum, for backward
                winner = self._buffer("winner", shape, dtype=np.uint8)
                winner.fill(0)
                better = self._buffer("better", shape, dtype=np.bool_)
                candidate = self._buffer("candidate", shape, dtype=np.uint8)
            for t, (i, j) in enumerate(taps[1:], start=1):
                pixels = tap(xpad, i, j, self._out_hw, self._step)
                if training:
                    xp.greater(pixels, y, out=better)
                    # winner = t where better: t exceeds every earlier tap index, so a maximum does it,
                    # and uint8 arithmetic is ~100x faster than copyto(..., where=better).
                    xp.multiply(better, np.uint8(t), out=candidate)
                    xp.maximum(winner, candidate, out=winner)
                xp.maximum(y, pixels, out=y)
            self._winner = winner
        else:
            for i, j in taps[1:]:
                y += tap(xpad, i, j, self._out_hw, self._step)
            y *= self._inverse_counts(h, w, x4.dtype)
        return self._from_nhwc(y)

    def _inverse_counts(self, h: int, w: int, dtype: Any) -> Any:
        """1 / (number of real, unpadded pixels) of each window: padding does not count, as in Keras.

        Cached per input size, so a GPU step does not wait on a host-to-device copy.
        """
        key = (h, w, np.dtype(dtype).name)
        if getattr(self, "_counts_key", None) != key:
            counts = []
            for size, out, window, step, (before, _) in zip((h, w), self._out_hw, self._window, self._step,
                                                            self._pads):
                start = np.arange(out) * step - before
                counts.append(np.minimum(start + window, size) - np.maximum(start, 0))
            inverse = 1.0 / np.multiply.outer(counts[0], counts[1]).astype(dtype)
            self._counts_key, self._counts = key, backend.to_device(inverse[None, :, :, None])
        return self._counts

    def backward(self, grad):
        if not self.propagate_input_grad:  # first layer: nothing before it needs dL/dx
            return None
        xp = backend.get_array_module(grad)
        g = self._to_nhwc(grad)
        n, h, w, c = self._in_shape
        (top, bottom), (left, right) = self._pads
        dxpad = self._buffer("dxpad", (n, h + top + bottom, w + left + right, c))
        disjoint = all(s >= k for s, k in zip(self._step, self._window))
        if not (disjoint and self._step == self._window and self._out_hw[0] * self._step[0] == dxpad.shape[1]
                and self._out_hw[1] * self._step[1] == dxpad.shape[2]):
            dxpad.fill(0)  # some pixels are in no window, or in several
        taps = [(i, j) for i in range(self._window[0]) for j in range(self._window[1])]
        if self.mode == "avg":
            g = g * self._inverse_counts(h, w, g.dtype)
            for i, j in taps:
                pixels = tap(dxpad, i, j, self._out_hw, self._step)
                if disjoint:
                    pixels[...] = g
                else:
                    pixels += g
        else:
            hit = self._buffer("hit", g.shape, dtype=np.bool_)
            scratch = None if disjoint else self._buffer("scratch", g.shape)
            for t, (i, j) in enumerate(taps):
                pixels = tap(dxpad, i, j, self._out_hw, self._step)
                xp.equal(self._winner, t, out=hit)
                if disjoint:
                    xp.multiply(g, hit, out=pixels)
                else:
                    pixels += xp.multiply(g, hit, out=scratch)
        return self._from_nhwc(dxpad[:, top:top + h, left:left + w])

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding}


_POOLING_DOC = """{kind} pooling over {what} windows, as ``keras.layers.{name}``.

    Args:
        pool_size: an integer or tuple of {rank} integers, the window size (default {default}).
        strides: an integer or tuple of {rank} integers, the window step; ``None`` means ``pool_size``.
        padding: ``"valid"`` or ``"same"`` (pad so that ``out = ceil(in / strides)``{pad_note}).
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.

    Input shape:
        ``(batch_size, {spatial}, channels)`` (channels-last) or ``(batch_size, channels, {spatial})``.

    Output shape:
        ``(batch_size, {pooled}, channels)`` (channels-last) or ``(batch_size, channels, {pooled})``.
    """


class MaxPooling2D(Pooling):
    __doc__ = _POOLING_DOC.format(kind="Max", what="2-D", name="MaxPooling2D", rank=2, default="(2, 2)",
                                  pad_note="; padded pixels never win", spatial="rows, cols",
                                  pooled="pooled_rows, pooled_cols")
    rank, mode = 2, "max"

    def __init__(self, pool_size: Any = (2, 2), strides: Any = None, padding: str = "valid",
                 data_format: str | None = None, **kwargs: Any):
        super().__init__(pool_size, strides, padding, data_format, **kwargs)


class AveragePooling2D(Pooling):
    __doc__ = _POOLING_DOC.format(kind="Average", what="2-D", name="AveragePooling2D", rank=2, default="(2, 2)",
                                  pad_note="; padded pixels are not counted", spatial="rows, cols",
                                  pooled="pooled_rows, pooled_cols")
    rank, mode = 2, "avg"

    def __init__(self, pool_size: Any = (2, 2), strides: Any = None, padding: str = "valid",
                 data_format: str | None = None, **kwargs: Any):
        super().__init__(pool_size, strides, padding, data_format, **kwargs)


class MaxPooling1D(Pooling):
    __doc__ = _POOLING_DOC.format(kind="Max", what="1-D", name="MaxPooling1D", rank=1, default="2",
                                  pad_note="; padded steps never win", spatial="steps", pooled="pooled_steps")
    rank, mode = 1, "max"


class AveragePooling1D(Pooling):
    __doc__ = _POOLING_DOC.format(kind="Average", what="1-D", name="AveragePooling1D", rank=1, default="2",
                                  pad_note="; padded steps are not counted", spatial="steps", pooled="pooled_steps")
    rank, mode = 1, "avg"


class GlobalPooling(SpatialLayer):
    """Shared implementation of the global pooling layers; see ``GlobalAveragePooling2D``."""

    mode = "avg"

    def __init__(self, data_format: str | None = None, keepdims: bool = False, **kwargs: Any):
        super().__init__(data_format=data_format, **kwargs)
        self.keepdims = bool(keepdims)

    def build(self, input_shape):
        self._check_rank(input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        channels = self._channels_last_shape(input_shape)[-1]
        if not self.keepdims:
            return (input_shape[0], channels)
        return self._output_format_shape((input_shape[0], *(1,) * self.rank, channels))

    def call(self, x, training=False):
        xp = backend.get_array_module(x)
        x4 = self._to_nhwc(x)
        n, h, w, c = self._in_shape = x4.shape
        if self.mode == "avg":
            y = x4.mean(axis=(1, 2))
        else:
            flat = x4.reshape(n, h * w, c)
            self._winner = flat.argmax(axis=1)  # the first maximum of each map, as TensorFlow
            y = xp.take_along_axis(flat, self._winner[:, None, :], axis=1)[:, 0]
        return self._from_nhwc(y[:, None, None, :]) if self.keepdims else y

    def backward(self, grad):
        if not self.propagate_input_grad:
            return None
        xp = backend.get_array_module(grad)
        n, h, w, c = self._in_shape
        g = self._to_nhwc(grad).reshape(n, 1, c) if self.keepdims else grad.reshape(n, 1, c)
        dx = self._buffer("dx", (n, h * w, c))
        if self.mode == "avg":
            xp.multiply(g, 1.0 / (h * w), out=dx)
        else:
            positions = xp.arange(h * w).reshape(1, -1, 1)
            xp.multiply(positions == self._winner[:, None, :], g, out=dx)
        return self._from_nhwc(dx.reshape(n, h, w, c))

    def get_config(self):
        return {**super().get_config(), "keepdims": self.keepdims}


_GLOBAL_DOC = """Global {kind} pooling over the {what} axes, as ``keras.layers.{name}``.

    Args:
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.
        keepdims: keep the pooled axes with size 1.

    Input shape:
        ``(batch_size, {spatial}, channels)`` (channels-last) or ``(batch_size, channels, {spatial})``.

    Output shape:
        ``(batch_size, channels)``; with ``keepdims``, ``(batch_size, {ones}, channels)`` (channels-last)
        or ``(batch_size, channels, {ones})``.
    """


class GlobalAveragePooling2D(GlobalPooling):
    __doc__ = _GLOBAL_DOC.format(kind="average", what="spatial", name="GlobalAveragePooling2D",
                                 spatial="rows, cols", ones="1, 1")
    rank, mode = 2, "avg"


class GlobalMaxPooling2D(GlobalPooling):
    __doc__ = _GLOBAL_DOC.format(kind="max", what="spatial", name="GlobalMaxPooling2D", spatial="rows, cols",
                                 ones="1, 1")
    rank, mode = 2, "max"


class GlobalAveragePooling1D(GlobalPooling):
    __doc__ = _GLOBAL_DOC.format(kind="average", what="step", name="GlobalAveragePooling1D", spatial="steps",
                                 ones="1")
    rank, mode = 1, "avg"


class GlobalMaxPooling1D(GlobalPooling):
    __doc__ = _GLOBAL_DOC.format(kind="max", what="step", name="GlobalMaxPooling1D", spatial="steps", ones="1")
    rank, mode = 1, "max"


def _normalize_paddings(padding: Any, rank: int) -> tuple[tuple[int, int], ...]:
    """Keras' padding forms: ``p``, ``(p_h, p_w)`` (symmetric) or ``((top, bottom), (left, right))``."""
    def valid(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0

    if valid(padding):
        return ((int(padding),) * 2,) * rank
    items = tuple(padding) if isinstance(padding, (tuple, list)) else ()
    if rank == 1 and len(items) == 2 and all(map(valid, items)):
        return ((int(items[0]), int(items[1])),)
    if len(items) == rank and all(map(valid, items)):
        return tuple((int(p), int(p)) for p in items)
    if len(items) == rank and all(isinstance(p, (tuple, list)) and len(p) == 2 and all(map(valid, p))
                                  for p in items):
        return tuple((int(p[0]), int(p[1])) for p in items)
    raise ValueError(f"padding should be a non-negative integer, a tuple of {rank} non-negative integers"
                     f"{'' if rank == 1 else f' or a tuple of {rank} tuples of 2 non-negative integers'}. "
                     f"Received: padding={padding!r}")


class ZeroPadding(SpatialLayer):
    """Shared implementation of ``ZeroPadding1D`` and ``ZeroPadding2D``."""

    def __init__(self, padding: Any = 1, data_format: str | None = None, **kwargs: Any):
        super().__init__(data_format=data_format, **kwargs)
        self.padding = _normalize_paddings(padding, self.rank)

    def build(self, input_shape):
        self._check_rank(input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        shape = self._channels_last_shape(input_shape)
        spatial = tuple(None if n is None else n + a + b for n, (a, b) in zip(shape[1:-1], self.padding))
        return self._output_format_shape((shape[0], *spatial, shape[-1]))

    def _pads2d(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return ((0, 0), *self.padding) if self.rank == 1 else self.padding

    def call(self, x, training=False):
        x4 = self._to_nhwc(x)
        self._in_hw = x4.shape[1:3]
        return self._from_nhwc(padded(self, "y", x4, self._pads2d(), 0.0, training))

    def backward(self, grad):
        if not self.propagate_input_grad:
            return None
        (top, _), (left, _) = self._pads2d()
        h, w = self._in_hw
        return self._from_nhwc(self._to_nhwc(grad)[:, top:top + h, left:left + w])

    def get_config(self):
        padding = [list(p) for p in self.padding]
        return {**super().get_config(), "padding": padding[0] if self.rank == 1 else padding}


class ZeroPadding2D(ZeroPadding):
    """Zero-padding of images, as ``keras.layers.ZeroPadding2D``.

    Args:
        padding: ``p`` (all sides), ``(p_rows, p_cols)`` (symmetric) or
            ``((top, bottom), (left, right))``.
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.

    Input shape:
        ``(batch_size, rows, cols, channels)`` (channels-last) or ``(batch_size, channels, rows, cols)``.

    Output shape:
        ``(batch_size, padded_rows, padded_cols, channels)`` or ``(batch_size, channels, padded_rows, padded_cols)``.
    """

    rank = 2

    def __init__(self, padding: Any = (1, 1), data_format: str | None = None, **kwargs: Any):
        super().__init__(padding, data_format, **kwargs)


class ZeroPadding1D(ZeroPadding):
    """Zero-padding of sequences, as ``keras.layers.ZeroPadding1D``.

    Args:
        padding: ``p`` (both ends) or ``(left, right)``.
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.

    Input shape:
        ``(batch_size, steps, channels)`` (channels-last) or ``(batch_size, channels, steps)``.

    Output shape:
        ``(batch_size, padded_steps, channels)`` or ``(batch_size, channels, padded_steps)``.
    """

    rank = 1


MaxPool1D, MaxPool2D = MaxPooling1D, MaxPooling2D
AvgPool1D, AvgPool2D = AveragePooling1D, AveragePooling2D
GlobalAvgPool1D, GlobalAvgPool2D = GlobalAveragePooling1D, GlobalAveragePooling2D
GlobalMaxPool1D, GlobalMaxPool2D = GlobalMaxPooling1D, GlobalMaxPooling2D
