"""Convolution and pooling ops under Keras 3's ``keras.ops`` names: ``conv``, ``conv_transpose``,
``depthwise_conv``, ``max_pool``, ``average_pool``, for any number of spatial axes (1-D, 2-D, 3-D).

Channels-last by default (``data_format="channels_first"`` transposes in and out); ``padding``
``"valid"`` or ``"same"`` (TensorFlow's rule: the odd extra pixel goes after); strides and
dilation per axis. A convolution is a GEMM on an im2col matrix (the input's sliding windows, read
through strides and copied once), so its gradient is the GEMM's plus ``col2im`` — the adjoint of
im2col that adds each window's gradient back onto its pixels, one kernel tap at a time, vectorised
over batch, pixels and channels. ``conv_transpose`` is that adjoint applied to ``inputs @ kernel^T``.
Pooling reduces the same tap views; max pooling routes each window's gradient to its first maximum.
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from distnn.ops.core import argument, array_module, composite, defop, shape_of
from distnn.ops.linalg import matmul
from distnn.ops.shape import reshape, transpose

_PADDINGS = ("valid", "same")
_DATA_FORMATS = ("channels_last", "channels_first")


# --------------------------------------------------------------------------------- geometry
def _tuple(value: Any, rank: int, name: str) -> tuple[int, ...]:
    values = (value,) * rank if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != rank or any(not isinstance(v, (int, np.integer)) or v <= 0 for v in values):
        raise ValueError(f"{name} must be a positive int or a tuple of {rank} positive ints. Received: {name}={value}")
    return tuple(int(v) for v in values)


def _options(padding: str, data_format: Any) -> tuple[str, str]:
    padding_value = padding.lower() if isinstance(padding, str) else padding
    if padding_value not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}. Received: padding={padding!r}")
    data_format = "channels_last" if data_format is None else str(data_format).lower()
    if data_format not in _DATA_FORMATS:
        raise ValueError(f"data_format must be one of {_DATA_FORMATS}. Received: data_format={data_format!r}")
    return padding_value, data_format


def _geometry(spatial: tuple, kernel: tuple, strides: tuple, dilation: tuple, padding: str) -> tuple[tuple, tuple]:
    """Output sizes and (before, after) paddings per spatial axis, as TensorFlow/JAX compute them."""
    out, pads = [], []
    for n, k, s, d in zip(spatial, kernel, strides, dilation):
        effective = (k - 1) * d + 1
        total = max((math.ceil(n / s) - 1) * s + effective - n, 0) if padding == "same" else 0
        pads.append((total // 2, total - total // 2))
        out.append((n + total - effective) // s + 1)
    if any(o <= 0 for o in out):
        raise ValueError(f"The input's spatial size {tuple(spatial)} is too small for the window {tuple(kernel)} "
                         f"with dilation {tuple(dilation)} and padding={padding!r}: the output would be empty")
    return tuple(out), tuple(pads)


def _to_channels_last(x: Any, data_format: str) -> Any:
    return x if data_format == "channels_last" else transpose(x, (0, *range(2, len(shape_of(x))), 1))


def _from_channels_last(y: Any, data_format: str) -> Any:
    rank = len(shape_of(y))
    return y if data_format == "channels_last" else transpose(y, (0, rank - 1, *range(1, rank - 1)))


def _tap_window(tap: tuple, out: tuple, strides: tuple, dilation: tuple) -> tuple:
    """The index of the ``(batch, *out, channels)`` pixels that kernel tap ``tap`` reads (a view)."""
    return (slice(None), *(slice(t * d, t * d + s * (o - 1) + 1, s)
                           for t, o, s, d in zip(tap, out, strides, dilation)), slice(None))


def _padded(x: Any, pads: tuple, fill: float) -> Any:
    if not any(b or a for b, a in pads):
        return x
    xp = array_module(x)
    out = xp.full((x.shape[0], *(n + b + a for n, (b, a) in zip(x.shape[1:-1], pads)), x.shape[-1]), fill,
                  dtype=x.dtype)
    out[_interior(x.shape, pads)] = x
    return out


def _interior(shape: tuple, pads: tuple) -> tuple:
    return (slice(None), *(slice(b, b + n) for n, (b, _) in zip(shape[1:-1], pads)), slice(None))


# ----------------------------------------------------------------------------- im2col, col2im
def _im2col_values(x: Any, out: tuple, kernel: tuple, strides: tuple, dilation: tuple, pads: tuple) -> Any:
    xp = array_module(x)
    n, c = x.shape[0], x.shape[-1]
    if all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(map(any, pads)):
        return xp.ascontiguousarray(x).reshape(-1, c)  # a 1x1 convolution is a plain GEMM on the input
    xpad = xp.ascontiguousarray(_padded(x, pads, 0))
    step = xpad.strides
    windows = xp.lib.stride_tricks.as_strided(
        xpad, shape=(n, *out, *kernel, c),
        strides=(step[0], *(st * s for st, s in zip(step[1:-1], strides)),
                 *(st * d for st, d in zip(step[1:-1], dilation)), step[-1]))
    return xp.ascontiguousarray(windows).reshape(n * math.prod(out), math.prod(kernel) * c)


def _col2im_values(cols: Any, shape: tuple, out: tuple, kernel: tuple, strides: tuple, dilation: tuple,
                   pads: tuple) -> Any:
    xp = array_module(cols)
    n, c = shape[0], shape[-1]
    if all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(map(any, pads)):
        return cols.reshape(shape)
    dxpad = xp.zeros((n, *(m + b + a for m, (b, a) in zip(shape[1:-1], pads)), c), dtype=cols.dtype)
    blocks = cols.reshape(n, *out, *kernel, c)
    lead = (slice(None),) * (1 + len(out))
    for tap in itertools.product(*(range(k) for k in kernel)):
        dxpad[_tap_window(tap, out, strides, dilation)] += blocks[lead + tap]
    return dxpad[_interior(shape, pads)]


@defop
def _im2col(x, out, kernel, strides, dilation, pads):
    """``(batch * prod(out), prod(kernel) * channels)``: the sliding windows of channels-last ``x``."""
    return _im2col_values(x, out, kernel, strides, dilation, pads)


@_im2col.defvjp
def _(node, g):
    x, *geometry = node.inputs
    return (_col2im_values(g, x.shape, *geometry), None, None, None, None, None)


@defop
def _col2im(cols, shape, out, kernel, strides, dilation, pads):
    """The adjoint of ``_im2col``: window rows of ``cols`` added onto an array of ``shape``."""
    return _col2im_values(cols, shape, out, kernel, strides, dilation, pads)


@_col2im.defvjp
def _(node, g):
    _, _, *geometry = node.inputs
    return (_im2col_values(g, *geometry), None, None, None, None, None, None)


# ------------------------------------------------------------------------------ convolutions
@composite
def conv(inputs: Any, kernel: Any, strides: Any = 1, padding: str = "valid", data_format: str | None = None,
         dilation_rate: Any = 1) -> Any:
    """N-D convolution (``keras.ops.conv``): ``kernel`` has shape ``(*window, in_channels / groups,
    filters)``; when the input has ``groups`` times the kernel's input channels, the channels are
    convolved in ``groups`` separate groups, as Keras."""
    padding, data_format = _options(padding, data_format)
    x = _to_channels_last(inputs, data_format)
    shape, kshape = shape_of(x), shape_of(kernel)
    rank = len(shape) - 2
    if rank < 1 or len(kshape) != rank + 2:
        raise ValueError(f"conv expects inputs of rank >= 3 and a kernel of rank inputs.ndim. Received: "
                         f"inputs.shape={shape_of(inputs)}, kernel.shape={kshape}")
    window, filters, per_group = kshape[:rank], kshape[-1], kshape[-2]
    if shape[-1] % per_group or filters % (shape[-1] // per_group):
        raise ValueError(f"conv: the input channels ({shape[-1]}) must be a multiple of the kernel's input channels "
                         f"({per_group}), and the filters a multiple of the groups. Received: kernel.shape={kshape}")
    groups = shape[-1] // per_group
    strides, dilation = _tuple(strides, rank, "strides"), _tuple(dilation_rate, rank, "dilation_rate")
    out, pads = _geometry(shape[1:-1], window, strides, dilation, padding)
    cols = _im2col(x, out, window, strides, dilation, pads)
    rows, taps = shape[0] * math.prod(out), math.prod(window)
    if groups == 1:
        y = matmul(cols, reshape(kernel, (taps * per_group, filters)))
    else:  # one GEMM per group, batched: (groups, rows, taps * per_group) @ (groups, taps * per_group, filters/groups)
        cols = reshape(transpose(reshape(cols, (rows, taps, groups, per_group)), (2, 0, 1, 3)), (groups, rows, -1))
        k = reshape(transpose(reshape(kernel, (taps, per_group, groups, filters // groups)), (2, 0, 1, 3)),
                    (groups, taps * per_group, filters // groups))
        y = reshape(transpose(matmul(cols, k), (1, 0, 2)), (rows, filters))
    return _from_channels_last(reshape(y, (shape[0], *out, filters)), data_format)


@composite
def depthwise_conv(inputs: Any, kernel: Any, strides: Any = 1, padding: str = "valid", data_format: str | None = None,
                   dilation_rate: Any = 1) -> Any:
    """Depthwise convolution (``keras.ops.depthwise_conv``): ``kernel`` ``(*window, channels, multiplier)``
    convolves each channel on its own; output channel ``c * multiplier + m``."""
    kshape = shape_of(kernel)
    grouped = reshape(kernel, (*kshape[:-2], 1, kshape[-2] * kshape[-1]))
    return conv(inputs, grouped, strides, padding, data_format, dilation_rate)


def _transpose_padding(size: int, kernel: int, stride: int, dilation: int, padding: str,
                       output_padding: int | None) -> tuple[int, int, int]:
    """(output size, crop before, pad after) of one axis of ``conv_transpose``, following Keras'
    conversion of ``padding``/``output_padding`` to explicit (JAX) paddings ``lo``, ``hi``."""
    effective = (kernel - 1) * dilation + 1
    if padding == "valid":
        extra = max(effective, stride) - effective if output_padding is None else output_padding
        low, high = effective - 1, effective - 1 + extra
    else:
        total = stride + effective - 2 if output_padding is None else effective + effective % 2 - 2 + output_padding
        low = min(total // 2 + total % 2, effective - 1)
        high = total - low
    length = (size - 1) * stride + low + high - effective + 2
    crop = effective - 1 - low  # the full scatter of every window starts `crop` pixels before the output
    after = max((size - 1) * stride + effective - crop - length, 0)
    return length, crop, after


@composite
def conv_transpose(inputs: Any, kernel: Any, strides: Any = 1, padding: str = "valid", output_padding: Any = None,
                   data_format: str | None = None, dilation_rate: Any = 1) -> Any:
    """Transposed convolution (``keras.ops.conv_transpose``): the adjoint of ``conv`` with the same
    ``kernel``, of shape ``(*window, filters, in_channels)``. Output sizes follow Keras: ``"same"``
    gives ``size * stride``, ``"valid"`` ``(size - 1) * stride + max(window, stride)``, each plus
    ``output_padding`` when given."""
    padding, data_format = _options(padding, data_format)
    x = _to_channels_last(inputs, data_format)
    shape, kshape = shape_of(x), shape_of(kernel)
    rank = len(shape) - 2
    if rank < 1 or len(kshape) != rank + 2 or kshape[-1] != shape[-1]:
        raise ValueError(f"conv_transpose expects a kernel (*window, filters, in_channels) matching the inputs' "
                         f"channels. Received: inputs.shape={shape_of(inputs)}, kernel.shape={kshape}")
    window, filters = kshape[:rank], kshape[-2]
    strides, dilation = _tuple(strides, rank, "strides"), _tuple(dilation_rate, rank, "dilation_rate")
    extras = [None] * rank if output_padding is None else \
        [int(p) for p in ((output_padding,) * rank if isinstance(output_padding, int) else output_padding)]
    geometry = [_transpose_padding(n, k, s, d, padding, e)
                for n, k, s, d, e in zip(shape[1:-1], window, strides, dilation, extras)]
    out_shape = (shape[0], *(length for length, _, _ in geometry), filters)
    taps = math.prod(window)
    cols = matmul(reshape(x, (-1, shape[-1])), transpose(reshape(kernel, (taps * filters, shape[-1]))))
    y = _col2im(cols, out_shape, tuple(shape[1:-1]), window, strides, dilation,
                tuple((crop, after) for _, crop, after in geometry))
    return _from_channels_last(y, data_format)


# ---------------------------------------------------------------------------------- pooling
def _pool_setup(x: Any, pool_size: Any, strides: Any, padding: str, data_format: Any) -> tuple:
    """Channels-last ``x`` and the pooling geometry ``(window, strides, out, pads)``."""
    padding, data_format = _options(padding, data_format)
    xp = array_module(x)
    rank = x.ndim - 2
    if rank < 1:
        raise ValueError(f"pooling expects inputs of rank >= 3 (batch, *spatial, channels). Received: "
                         f"inputs.shape={x.shape}")
    if data_format == "channels_first":
        x = xp.moveaxis(x, 1, -1)
    window = _tuple(pool_size, rank, "pool_size")
    steps = window if strides is None else _tuple(strides, rank, "strides")
    out, pads = _geometry(x.shape[1:-1], window, steps, (1,) * rank, padding)
    return x, window, steps, out, pads, data_format


def _pool_taps(window: tuple) -> Any:
    return itertools.product(*(range(k) for k in window))


def _restore_format(y: Any, data_format: str) -> Any:
    return y if data_format == "channels_last" else array_module(y).moveaxis(y, -1, 1)


def _pool_args(node) -> tuple:
    return (argument(node, 1, "pool_size"), argument(node, 2, "strides"), argument(node, 3, "padding", "valid"),
            argument(node, 4, "data_format"))


@defop
def max_pool(inputs, pool_size, strides=None, padding="valid", data_format=None):
    xp = array_module(inputs)
    x, window, steps, out, pads, data_format = _pool_setup(inputs, pool_size, strides, padding, data_format)
    xpad = _padded(x, pads, -np.inf)
    y = None
    for tap in _pool_taps(window):
        pixels = xpad[_tap_window(tap, out, steps, (1,) * len(window))]
        y = pixels.copy() if y is None else xp.maximum(y, pixels, out=y)
    return _restore_format(y, data_format)


@max_pool.defvjp
def _(node, g):
    xp = array_module(g)
    x, window, steps, out, pads, data_format = _pool_setup(node.inputs[0], *_pool_args(node))
    y = node.value if data_format == "channels_last" else xp.moveaxis(node.value, 1, -1)
    g = g if data_format == "channels_last" else xp.moveaxis(g, 1, -1)
    xpad = _padded(x, pads, -np.inf)
    dxpad = xp.zeros(xpad.shape, dtype=g.dtype)
    taken = xp.zeros(y.shape, dtype=bool)  # a window's gradient goes to its first maximum only
    for tap in _pool_taps(window):
        index = _tap_window(tap, out, steps, (1,) * len(window))
        hit = (xpad[index] == y) & ~taken
        dxpad[index] += g * hit
        taken |= hit
    return (_restore_format(dxpad[_interior(x.shape, pads)], data_format),)


def _inverse_counts(xp: Any, spatial: tuple, window: tuple, steps: tuple, out: tuple, pads: tuple, dtype: Any) -> Any:
    """1 / (number of real, unpadded pixels) in each window: padding does not count, as in Keras."""
    counts = np.ones((), dtype=np.int64)
    for n, k, s, o, (before, _) in zip(spatial, window, steps, out, pads):
        start = np.arange(o) * s - before
        counts = np.multiply.outer(counts, np.minimum(start + k, n) - np.maximum(start, 0))
    return xp.asarray((1.0 / counts).astype(dtype)[None, ..., None])


@defop
def average_pool(inputs, pool_size, strides=None, padding="valid", data_format=None):
    xp = array_module(inputs)
    x, window, steps, out, pads, data_format = _pool_setup(inputs, pool_size, strides, padding, data_format)
    xpad = _padded(x, pads, 0)
    y = None
    for tap in _pool_taps(window):
        pixels = xpad[_tap_window(tap, out, steps, (1,) * len(window))]
        y = pixels.copy() if y is None else xp.add(y, pixels, out=y)
    return _restore_format(y * _inverse_counts(xp, x.shape[1:-1], window, steps, out, pads, x.dtype), data_format)


@average_pool.defvjp
def _(node, g):
    xp = array_module(g)
    x, window, steps, out, pads, data_format = _pool_setup(node.inputs[0], *_pool_args(node))
    g = g if data_format == "channels_last" else xp.moveaxis(g, 1, -1)
    share = g * _inverse_counts(xp, x.shape[1:-1], window, steps, out, pads, g.dtype)
    dxpad = xp.zeros((x.shape[0], *(n + b + a for n, (b, a) in zip(x.shape[1:-1], pads)), x.shape[-1]),
                     dtype=g.dtype)
    for tap in _pool_taps(window):
        dxpad[_tap_window(tap, out, steps, (1,) * len(window))] += share
    return (_restore_format(dxpad[_interior(x.shape, pads)], data_format),)
