"""Convolution layers ``Conv1D`` and ``Conv2D`` (Keras semantics, channels-last by default).

Every convolution is computed as GEMMs on an im2col matrix: the input (padded into a reused buffer
when needed) is viewed through strides as ``(batch, out_h, out_w, kh, kw, channels)`` windows and
copied into a contiguous ``(batch*out_h*out_w, kh*kw*channels)`` buffer, so

- forward is ``cols @ kernel`` (the result is already channels-last: no transpose),
- the kernel gradient is ``cols.T @ dy`` written in place into the flat gradient buffer,
- the input gradient is ``dy @ kernel.T`` scattered back (col2im) one kernel tap at a time: a
  GEMM per tap gives a contiguous block that is added onto its strided window of the input,
  vectorised over batch, pixels and channels.

``Conv1D`` runs the same code on inputs viewed as images of height 1. The strided-window helpers
here are shared with the pooling layers.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from distnn import backend
from distnn.layers.grouped_conv import check_groups, grouped_conv_call
from distnn.layers.base import Layer, normalize_tuple
from distnn.layers.kernel_layer import affine_backward, affine_forward, init_kernel_options, kernel_options_config

_DATA_FORMATS = ("channels_last", "channels_first")
# Below this many input channels, copying tap by tap into the im2col buffer beats one 6-D strided
# copy (whose innermost run, the channels, is then too short); measured on the classic MNIST CNN.
_TAPWISE_IM2COL_MAX_CHANNELS = 4


# ----------------------------------------------------------------------------- shared geometry
def normalize_data_format(value: str | None) -> str:
    """``None`` -> ``"channels_last"`` (Keras' default image data format); checks the value."""
    value = "channels_last" if value is None else str(value).lower()
    if value not in _DATA_FORMATS:
        raise ValueError(f"data_format must be one of {_DATA_FORMATS}. Received: data_format={value!r}")
    return value


def normalize_padding(value: str, allowed: tuple[str, ...] = ("valid", "same")) -> str:
    padding = str(value).lower() if isinstance(value, str) else value
    if padding not in allowed:
        raise ValueError(f"padding must be one of {allowed}. Received: padding={value!r}")
    return padding


def pad_amounts(size: int, kernel: int, stride: int, dilation: int, padding: str) -> tuple[int, int]:
    """Padding (before, after) of one spatial axis, as Keras/TensorFlow compute it.

    ``"same"``: ``pad_total = max((ceil(n/s) - 1)*s + (k - 1)*d + 1 - n, 0)``, ``before = pad_total // 2``
    (the extra row/column goes after); ``"causal"``: ``(k - 1)*d`` before, nothing after.
    """
    effective = (kernel - 1) * dilation + 1
    if padding == "same":
        total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
        return total // 2, total - total // 2
    if padding == "causal":
        return effective - 1, 0
    return 0, 0


def output_length(size: int, kernel: int, stride: int, dilation: int, pads: tuple[int, int]) -> int:
    return (size + pads[0] + pads[1] - ((kernel - 1) * dilation + 1)) // stride + 1


def spatial_geometry(layer: Layer, spatial: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...],
                     dilation: tuple[int, ...], padding: str) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Output sizes and (before, after) paddings of every spatial axis; a clear error when too small."""
    pads = tuple(pad_amounts(n, k, s, d, padding) for n, k, s, d in zip(spatial, kernel, strides, dilation))
    out = tuple(output_length(n, k, s, d, p) for n, k, s, d, p in zip(spatial, kernel, strides, dilation, pads))
    if any(o <= 0 for o in out):
        raise ValueError(f"Layer {layer.name!r}: the input's spatial size {spatial} is too small for "
                         f"kernel/pool size {kernel} with dilation {dilation} and padding={padding!r}; "
                         f"the output size would be {out}")
    return out, pads


def as_strided(x: Any, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
    """``as_strided`` of numpy or cupy, whichever owns ``x`` (a read-only-by-convention view)."""
    return backend.get_array_module(x).lib.stride_tricks.as_strided(x, shape=shape, strides=strides)


def window_view(x4: Any, out_hw: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int],
                dilation: tuple[int, int] = (1, 1)) -> Any:
    """The ``(batch, out_h, out_w, kh, kw, channels)`` sliding windows of an NHWC array, without copying."""
    sn, sh, sw, sc = x4.strides
    return as_strided(x4, (x4.shape[0], *out_hw, *kernel, x4.shape[3]),
                      (sn, sh * strides[0], sw * strides[1], sh * dilation[0], sw * dilation[1], sc))


def tap(x4: Any, i: int, j: int, out_hw: tuple[int, int], strides: tuple[int, int],
        dilation: tuple[int, int] = (1, 1)) -> Any:
    """The ``(batch, out_h, out_w, channels)`` input pixels that kernel tap ``(i, j)`` sees (a view)."""
    top, left = i * dilation[0], j * dilation[1]
    return x4[:, top:top + strides[0] * (out_hw[0] - 1) + 1:strides[0],
              left:left + strides[1] * (out_hw[1] - 1) + 1:strides[1], :]


def padded(layer: Layer, key: str, x4: Any, pads: tuple[tuple[int, int], tuple[int, int]], fill: float,
           training: bool) -> Any:
    """``x4`` (NHWC) padded with ``fill``; in training, into a reused buffer whose borders are refilled."""
    (top, bottom), (left, right) = pads
    if not (top or bottom or left or right):
        return x4
    n, h, w, c = x4.shape
    shape = (n, h + top + bottom, w + left + right, c)
    if training:
        out = layer._buffer(key, shape)
        # Only the borders need the fill value; the interior is overwritten just below.
        out[:, :top] = fill
        out[:, top + h:] = fill
        out[:, top:top + h, :left] = fill
        out[:, top:top + h, left + w:] = fill
    else:
        out = backend.get_array_module(x4).full(shape, fill, dtype=x4.dtype)
    out[:, top:top + h, left:left + w] = x4
    return out


class SpatialLayer(Layer):
    """Handles ``data_format`` and the 1-D/2-D distinction for convolution and pooling layers.

    Subclasses compute on NHWC arrays: 1-D inputs ``(batch, steps, channels)`` are viewed as
    ``(batch, 1, steps, channels)`` and channels-first inputs are transposed (views, no copies).
    """

    rank = 2

    def __init__(self, data_format: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.data_format = normalize_data_format(data_format)

    def _check_rank(self, input_shape: tuple) -> None:
        if len(input_shape) != self.rank + 2:
            raise ValueError(f"Input 0 of layer {self.name!r} is incompatible: expected ndim={self.rank + 2} "
                             f"(batch, {'spatial, ' * self.rank}channels), received input_shape={input_shape}")

    def _channels_last_shape(self, shape: tuple) -> tuple:
        if self.data_format == "channels_first":
            return (shape[0], *shape[2:], shape[1])
        return tuple(shape)

    def _output_format_shape(self, shape: tuple) -> tuple:
        if self.data_format == "channels_first":
            return (shape[0], shape[-1], *shape[1:-1])
        return tuple(shape)

    def _to_nhwc(self, x: Any) -> Any:
        if self.data_format == "channels_first":
            x = x.transpose(0, *range(2, x.ndim), 1)
        return x[:, None] if self.rank == 1 else x

    def _from_nhwc(self, y4: Any) -> Any:
        y = y4[:, 0] if self.rank == 1 else y4
        if self.data_format == "channels_first":
            y = y.transpose(0, y.ndim - 1, *range(1, y.ndim - 1))
        return y

    def _to_2d(self, values: tuple[int, ...], fill: int = 1) -> tuple[int, int]:
        return (fill, *values) if self.rank == 1 else tuple(values)

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}


# --------------------------------------------------------------------------------- convolution
class Conv(SpatialLayer):
    """Shared implementation of ``Conv1D`` and ``Conv2D``; see those classes."""

    _paddings: tuple[str, ...] = ("valid", "same")

    def __init__(self, filters: int, kernel_size: Any, strides: Any = 1, padding: str = "valid",
                 data_format: str | None = None, dilation_rate: Any = 1, activation: Any = None,
                 use_bias: bool = True, kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None, kernel_constraint: Any = None,
                 bias_constraint: Any = None, groups: int = 1, **kwargs: Any):
        super().__init__(data_format=data_format, **kwargs)
        self.groups = check_groups(groups, filters)
        if not isinstance(filters, (int, np.integer)) or isinstance(filters, bool) or filters <= 0:
            raise ValueError(f"Invalid value for argument `filters`. Expected a strictly positive value. "
                             f"Received: filters={filters}")
        self.filters = int(filters)
        self.kernel_size = normalize_tuple(kernel_size, self.rank, "kernel_size")
        self.strides = normalize_tuple(strides, self.rank, "strides")
        self.dilation_rate = normalize_tuple(dilation_rate, self.rank, "dilation_rate")
        self.padding = normalize_padding(padding, self._paddings)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"strides > 1 not supported in conjunction with dilation_rate > 1. "
                             f"Received: strides={self.strides} and dilation_rate={self.dilation_rate}")
        init_kernel_options(self, activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
                            bias_regularizer, kernel_constraint, bias_constraint)

    def build(self, input_shape):
        self._check_rank(input_shape)
        channels = self._channels_last_shape(input_shape)[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel dimension of the inputs must be known. "
                             f"Received: input_shape={input_shape}")
        if channels % self.groups:
            raise ValueError(f"The number of input channels must be evenly divisible by the number of groups. "
                             f"Received groups={self.groups}, but the input has {channels} channels")
        self.kernel = self.add_weight(shape=(*self.kernel_size, channels // self.groups, self.filters),
                                      initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
                                      constraint=self.kernel_constraint, name="kernel")
        self.bias = (self.add_weight(shape=(self.filters,), initializer=self.bias_initializer,
                                     regularizer=self.bias_regularizer, constraint=self.bias_constraint, name="bias")
                     if self.use_bias else None)
        self.built = True

    def _geometry(self, spatial: tuple) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
        return spatial_geometry(self, spatial, self.kernel_size, self.strides, self.dilation_rate, self.padding)

    def _window_2d(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """Kernel size, strides and dilation as 2-D tuples (height 1 for ``Conv1D``)."""
        return self._to_2d(self.kernel_size), self._to_2d(self.strides), self._to_2d(self.dilation_rate)

    def compute_output_shape(self, input_shape):
        shape = self._channels_last_shape(input_shape)
        spatial = shape[1:-1]
        out = tuple(None for _ in spatial) if None in spatial else self._geometry(spatial)[0]
        return self._output_format_shape((shape[0], *out, self.filters))

    # ------------------------------------------------------------------------------- forward
    @property
    def has_fused_backward(self) -> bool:
        return self.groups == 1  # grouped convolutions run on ops.conv, which the tape differentiates

    def call(self, x, training=False):
        if self.groups > 1:
            return grouped_conv_call(self, x)
        x4 = self._to_nhwc(x)
        n, h, w, c = x4.shape
        out, pads = self._geometry(x4.shape[1:3] if self.rank == 2 else (w,))
        self._out_hw = self._to_2d(out)
        self._pads = ((0, 0), *pads) if self.rank == 1 else pads
        self._in_shape = x4.shape
        cols = self._im2col(x4, training)
        self._cols = cols
        y = affine_forward(self, cols, self.kernel.value.reshape(-1, self.filters), training)
        return self._from_nhwc(y.reshape(n, *self._out_hw, self.filters))

    def _im2col(self, x4: Any, training: bool) -> Any:
        """The ``(batch*out_h*out_w, kh*kw*channels)`` patch matrix (rows in NHWC order)."""
        xp = backend.get_array_module(x4)
        kernel, strides, dilation = self._window_2d()
        n, c = x4.shape[0], x4.shape[3]
        if kernel == (1, 1) and strides == (1, 1) and x4.flags.c_contiguous and not any(map(any, self._pads)):
            return x4.reshape(-1, c)  # a 1x1 convolution is a plain GEMM on the input
        xpad = padded(self, "xpad", x4, self._pads, 0.0, training)
        shape = (n, *self._out_hw, *kernel, c)
        cols = self._buffer("cols", shape) if training else xp.empty(shape, dtype=x4.dtype)
        if c < _TAPWISE_IM2COL_MAX_CHANNELS:
            for i in range(kernel[0]):
                for j in range(kernel[1]):
                    cols[:, :, :, i, j, :] = tap(xpad, i, j, self._out_hw, strides, dilation)
        else:
            cols[...] = window_view(xpad, self._out_hw, kernel, strides, dilation)
        return cols.reshape(n * self._out_hw[0] * self._out_hw[1], -1)

    # ------------------------------------------------------------------------------ backward
    def backward(self, grad):
        xp = backend.get_array_module(grad)
        g = self._to_nhwc(grad)
        g = (g if g.flags.c_contiguous else xp.ascontiguousarray(g)).reshape(-1, self.filters)
        g = affine_backward(self, g, self._cols, self.kernel.grad.reshape(-1, self.filters))
        self.weight_gradients_written()
        if not self.propagate_input_grad:
            return None
        return self._from_nhwc(self._col2im(g))

    def _col2im(self, g: Any) -> Any:
        """dL/dx: the patch gradients ``g @ kernel.T``, each summed back onto the pixels it came from.

        Computed tap by tap: ``g @ kernel[i, j].T`` is one ``(rows, channels)`` block, small enough
        to stay in cache, added onto its strided window of the (padded) input gradient in one
        vectorised operation. This measured ~10% faster than one GEMM into a full
        ``(rows, kh*kw*channels)`` patch matrix followed by the same adds.
        """
        xp = backend.get_array_module(g)
        kernel, strides, dilation = self._window_2d()
        n, h, w, c = self._in_shape
        per_tap = self.kernel.value.reshape(kernel[0] * kernel[1], c, self.filters)
        block = self._buffer("dblock", (g.shape[0], c))
        if kernel == (1, 1) and strides == (1, 1) and not any(map(any, self._pads)):
            return xp.matmul(g, per_tap[0].T, out=block).reshape(n, h, w, c)
        (top, bottom), (left, right) = self._pads
        dxpad = self._buffer("dxpad", (n, h + top + bottom, w + left + right, c))
        dxpad.fill(0)
        for t in range(len(per_tap)):
            pixels = tap(dxpad, *divmod(t, kernel[1]), self._out_hw, strides, dilation)
            pixels += xp.matmul(g, per_tap[t].T, out=block).reshape(pixels.shape)
        return dxpad[:, top:top + h, left:left + w]

    def get_config(self):
        return {
            **super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
            "strides": list(self.strides), "padding": self.padding, "dilation_rate": list(self.dilation_rate),
            "groups": self.groups, **kernel_options_config(self),
        }


class Conv2D(Conv):
    """2-D convolution (spatial convolution over images), as ``keras.layers.Conv2D``.

    Args:
        filters: positive integer, the number of output channels.
        kernel_size: an integer or tuple of 2 integers, the height and width of the window.
        strides: an integer or tuple of 2 integers, the step of the window (default 1).
        padding: ``"valid"`` (no padding) or ``"same"`` (pad so that ``out = ceil(in / stride)``,
            the extra row/column after, as in TensorFlow).
        data_format: ``"channels_last"`` (default, ``(batch, h, w, c)``) or ``"channels_first"``.
        dilation_rate: an integer or tuple of 2 integers, the dilation of the kernel; cannot be
            combined with strides > 1.
        activation: activation name or callable (default: linear).
        use_bias: whether to add a bias vector.
        kernel_initializer, bias_initializer: initializers (names or objects).
        kernel_regularizer, bias_regularizer: regularizers (names or objects).
        groups: positive integer dividing the channels and ``filters``: the channels are convolved
            in that many separate groups (kernel ``(kh, kw, channels / groups, filters)``); grouped
            convolutions run on ``ops.conv`` (see ``distnn/layers/grouped_conv.py``).

    Input shape:
        ``(batch_size, height, width, channels)`` (channels-last) or
        ``(batch_size, channels, height, width)`` (channels-first).

    Output shape:
        ``(batch_size, new_height, new_width, filters)`` (channels-last) or
        ``(batch_size, filters, new_height, new_width)``; the kernel has shape
        ``(kh, kw, channels, filters)`` as in Keras.
    """

    rank = 2

    def __init__(self, filters: int, kernel_size: Any, strides: Any = (1, 1), padding: str = "valid",
                 data_format: str | None = None, dilation_rate: Any = (1, 1), activation: Any = None,
                 use_bias: bool = True, kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None, **kwargs: Any):
        super().__init__(filters, kernel_size, strides, padding, data_format, dilation_rate, activation, use_bias,
                         kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer, **kwargs)


class Conv1D(Conv):
    """1-D convolution (temporal convolution), as ``keras.layers.Conv1D``.

    Args:
        filters: positive integer, the number of output channels.
        kernel_size: an integer or tuple of 1 integer, the length of the window.
        strides: an integer, the step of the window (default 1).
        padding: ``"valid"``, ``"same"`` or ``"causal"`` (left padding so that ``y[t]`` depends on
            ``x[:t+1]`` only).
        data_format: ``"channels_last"`` (default, ``(batch, steps, c)``) or ``"channels_first"``.
        dilation_rate: an integer, the dilation of the kernel.
        activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, groups: as in ``Conv2D``.

    Input shape:
        ``(batch_size, steps, channels)`` (channels-last) or ``(batch_size, channels, steps)``.

    Output shape:
        ``(batch_size, new_steps, filters)`` (channels-last) or ``(batch_size, filters, new_steps)``;
        the kernel has shape ``(kernel_size, channels, filters)``.
    """

    rank = 1
    _paddings = ("valid", "same", "causal")

    def __init__(self, filters: int, kernel_size: Any, strides: Any = 1, padding: str = "valid",
                 data_format: str | None = None, dilation_rate: Any = 1, activation: Any = None,
                 use_bias: bool = True, kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None, **kwargs: Any):
        super().__init__(filters, kernel_size, strides, padding, data_format, dilation_rate, activation, use_bias,
                         kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer, **kwargs)


Convolution1D = Conv1D
Convolution2D = Conv2D
