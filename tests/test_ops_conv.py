"""``distnn.ops`` convolution and pooling: against direct-loop references written from the definitions,
hand-computed cases, the conv/conv_transpose adjoint identity, and finite differences."""
from __future__ import annotations

import math

import numpy as np
import pytest
from test_ops_gradcheck import check_gradient

from distnn import ops

rng = np.random.default_rng(7)


# ------------------------------------------------------------------------- direct references
def same_padding(size, window, stride, dilation):
    """TensorFlow's "same": output ceil(size / stride), total padding split with the odd pixel after."""
    effective = (window - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def conv_reference(x, kernel, strides, padding, dilation):
    """Channels-last N-D convolution, one output element at a time; groups from the channel ratio."""
    rank = x.ndim - 2
    window, per_group, filters = kernel.shape[:rank], kernel.shape[-2], kernel.shape[-1]
    groups = x.shape[-1] // per_group
    pads = [same_padding(n, k, s, d) if padding == "same" else (0, 0)
            for n, k, s, d in zip(x.shape[1:-1], window, strides, dilation)]
    xpad = np.pad(x, [(0, 0), *pads, (0, 0)])
    out = [(n - (k - 1) * d - 1) // s + 1 for n, k, s, d in zip(xpad.shape[1:-1], window, strides, dilation)]
    y = np.zeros((x.shape[0], *out, filters))
    for index in np.ndindex(x.shape[0], *out, filters):
        n, position, f = index[0], index[1:-1], index[-1]
        group = f // (filters // groups)
        channels = slice(group * per_group, (group + 1) * per_group)
        for tap in np.ndindex(*window):
            pixel = tuple(o * s + t * d for o, s, t, d in zip(position, strides, tap, dilation))
            y[index] += xpad[(n, *pixel, channels)] @ kernel[(*tap, slice(None), f)]
    return y


def pool_reference(x, window, strides, padding, reduce):
    """Channels-last pooling over the real (unpadded) pixels of each window."""
    pads = [same_padding(n, k, s, 1) if padding == "same" else (0, 0)
            for n, k, s in zip(x.shape[1:-1], window, strides)]
    out = [(n + b + a - k) // s + 1 for n, (b, a), k, s in zip(x.shape[1:-1], pads, window, strides)]
    y = np.zeros((x.shape[0], *out, x.shape[-1]))
    for position in np.ndindex(*out):
        region = tuple(slice(max(o * s - b, 0), min(o * s - b + k, n))
                       for o, s, (b, _), k, n in zip(position, strides, pads, window, x.shape[1:-1]))
        values = x[(slice(None), *region, slice(None))].reshape(x.shape[0], -1, x.shape[-1])
        y[(slice(None), *position, slice(None))] = reduce(values, axis=1)
    return y


def channels_first(x):
    return np.moveaxis(x, -1, 1)


# --------------------------------------------------------------------------------------- conv
CONV_CASES = [  # (input shape, kernel shape, strides, padding, dilation)
    ((2, 6, 3), (3, 3, 4), 1, "valid", 1),
    ((2, 7, 3), (3, 3, 2), 2, "same", 1),
    ((1, 8, 2), (2, 2, 3), 3, "same", 1),
    ((2, 9, 2), (3, 2, 2), 1, "same", 2),
    ((2, 5, 6, 3), (3, 3, 3, 4), 1, "valid", 1),
    ((2, 6, 5, 3), (3, 2, 3, 2), (2, 1), "same", 1),
    ((1, 7, 7, 2), (3, 3, 2, 3), 1, "same", (2, 1)),
    ((1, 6, 6, 2), (2, 2, 2, 2), 2, "valid", 2),
    ((2, 5, 5, 4), (3, 3, 2, 6), 1, "same", 1),  # two groups
    ((1, 4, 5, 3, 2), (2, 3, 2, 2, 3), (1, 2, 1), "same", 1),  # 3-D
    ((2, 4, 4, 3), (1, 1, 3, 5), 1, "valid", 1),  # 1x1: a plain GEMM
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_matches_the_direct_loop_and_finite_differences(case):
    input_shape, kernel_shape, strides, padding, dilation = case
    x, kernel = rng.standard_normal(input_shape), rng.standard_normal(kernel_shape)
    rank = len(input_shape) - 2
    as_tuple = lambda v: (v,) * rank if isinstance(v, int) else v  # noqa: E731
    expected = conv_reference(x, kernel, as_tuple(strides), padding, as_tuple(dilation))
    result = ops.conv(x, kernel, strides=strides, padding=padding, dilation_rate=dilation)
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ops.conv(channels_first(x), kernel, strides, padding, "channels_first", dilation),
                               channels_first(expected), rtol=1e-12, atol=1e-12)
    check_gradient(lambda t, k: ops.conv(t, k, strides, padding, None, dilation), x, kernel)


def test_conv_same_padding_puts_the_odd_pixel_after():
    x = np.arange(1.0, 6.0).reshape(1, 5, 1)
    np.testing.assert_array_equal(ops.conv(x, np.ones((2, 1, 1)), strides=2, padding="same")[0, :, 0], [3, 7, 5])


def test_conv_rejects_bad_arguments():
    x = np.ones((1, 5, 5, 3))
    with pytest.raises(ValueError, match="padding must be one of"):
        ops.conv(x, np.ones((3, 3, 3, 2)), padding="full")
    with pytest.raises(ValueError, match="multiple of the kernel's input channels"):
        ops.conv(x, np.ones((3, 3, 2, 2)))
    with pytest.raises(ValueError, match="strides must be"):
        ops.conv(x, np.ones((3, 3, 3, 2)), strides=0)
    with pytest.raises(ValueError, match="too small"):
        ops.conv(x, np.ones((7, 7, 3, 2)))
    with pytest.raises(ValueError, match="data_format must be one of"):
        ops.conv(x, np.ones((3, 3, 3, 2)), data_format="nhwc")


@pytest.mark.parametrize("case", [((2, 6, 6, 3), (3, 3, 3, 2), 1, "same", 1), ((2, 7, 3), (3, 3, 2), 2, "valid", 1),
                                  ((1, 7, 6, 2), (2, 3, 2, 1), (2, 1), "same", 1),
                                  ((1, 8, 8, 2), (3, 3, 2, 2), 1, "valid", 2)], ids=str)
def test_depthwise_conv(case):
    input_shape, kernel_shape, strides, padding, dilation = case
    x, kernel = rng.standard_normal(input_shape), rng.standard_normal(kernel_shape)
    rank = len(input_shape) - 2
    # depthwise = one group per channel, output channel c * multiplier + m
    grouped = kernel.reshape(*kernel_shape[:rank], 1, kernel_shape[-2] * kernel_shape[-1])
    as_tuple = lambda v: (v,) * rank if isinstance(v, int) else v  # noqa: E731
    expected = conv_reference(x, grouped, as_tuple(strides), padding, as_tuple(dilation))
    np.testing.assert_allclose(ops.depthwise_conv(x, kernel, strides, padding, dilation_rate=dilation), expected,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ops.depthwise_conv(channels_first(x), kernel, strides, padding, "channels_first",
                                                  dilation), channels_first(expected), rtol=1e-12, atol=1e-12)
    check_gradient(lambda t, k: ops.depthwise_conv(t, k, strides, padding, dilation_rate=dilation), x, kernel)


# ----------------------------------------------------------------------------- conv_transpose
def test_conv_transpose_hand_computed():
    x = np.array([1.0, 2.0]).reshape(1, 2, 1)
    kernel = np.array([1.0, 10.0, 100.0]).reshape(3, 1, 1)
    # every input pixel scatters x[i] * kernel at i * stride; "valid" keeps all of it, "same" its first size*stride
    np.testing.assert_array_equal(ops.conv_transpose(x, kernel, strides=2)[0, :, 0], [1, 10, 102, 20, 200])
    np.testing.assert_array_equal(ops.conv_transpose(x, kernel, strides=2, padding="same")[0, :, 0], [1, 10, 102, 20])


# (input shape, kernel shape (*window, filters, in_channels), strides, padding, output_padding, dilation)
TRANSPOSE_CASES = [
    ((2, 4, 3), (3, 2, 3), 1, "valid", None, 1),
    ((2, 4, 3), (3, 2, 3), 2, "same", None, 1),
    ((1, 3, 2), (2, 3, 2), 3, "valid", None, 1),
    ((1, 3, 4, 2), (3, 3, 2, 2), 2, "same", None, 1),
    ((1, 3, 3, 2), (3, 2, 3, 2), (2, 3), "valid", None, 1),
    ((1, 4, 3, 2), (3, 3, 2, 2), 2, "same", 1, 1),
    ((1, 4, 3, 2), (2, 2, 1, 2), 2, "valid", (1, 0), 1),
    ((1, 5, 4, 2), (3, 3, 2, 2), 1, "same", None, 2),
    ((1, 4, 4, 2), (2, 2, 3, 2), 1, "valid", None, (2, 1)),
]


def keras_transpose_length(size, window, stride, padding, output_padding, dilation):
    """Keras' conv_transpose output length (``deconv_output_length`` in keras.src.utils)."""
    window = (window - 1) * dilation + 1
    if output_padding is None:
        return size * stride if padding == "same" else size * stride + max(window - stride, 0)
    pad = window // 2 if padding == "same" else 0
    return (size - 1) * stride + window - 2 * pad + output_padding


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=str)
def test_conv_transpose_is_the_adjoint_of_conv(case):
    input_shape, kernel_shape, strides, padding, output_padding, dilation = case
    rank = len(input_shape) - 2
    as_tuple = lambda v: (v,) * rank if v is None or isinstance(v, int) else v  # noqa: E731
    x, kernel = rng.standard_normal(input_shape), rng.standard_normal(kernel_shape)
    y = ops.conv_transpose(x, kernel, strides, padding, output_padding, dilation_rate=dilation)
    expected = [keras_transpose_length(n, k, s, padding, p, d) for n, k, s, p, d in
                zip(input_shape[1:-1], kernel_shape[:rank], as_tuple(strides), as_tuple(output_padding),
                    as_tuple(dilation))]
    assert y.shape == (input_shape[0], *expected, kernel_shape[-2])
    # <conv_transpose(x, k), z> == <x, conv(z, k)> for every z of conv_transpose's output shape
    z = rng.standard_normal(y.shape)
    forward = ops.conv(z, kernel, strides, padding, dilation_rate=dilation)
    assert forward.shape == x.shape
    np.testing.assert_allclose(np.sum(y * z), np.sum(x * forward), rtol=1e-12)
    np.testing.assert_allclose(ops.conv_transpose(channels_first(x), kernel, strides, padding, output_padding,
                                                  "channels_first", dilation), channels_first(y), rtol=1e-12)
    check_gradient(lambda t, k: ops.conv_transpose(t, k, strides, padding, output_padding, None, dilation), x, kernel)


def test_conv_transpose_output_padding_sets_the_size():
    x, kernel = rng.standard_normal((1, 4, 2)), rng.standard_normal((3, 3, 2))
    assert ops.conv_transpose(x, kernel, strides=2, padding="same", output_padding=1).shape == (1, 8, 3)
    assert ops.conv_transpose(x, kernel, strides=2, padding="same", output_padding=0).shape == (1, 7, 3)
    assert ops.conv_transpose(x, kernel, strides=2, padding="valid", output_padding=1).shape == (1, 10, 3)


# ------------------------------------------------------------------------------------ pooling
POOL_CASES = [  # (input shape, pool size, strides, padding)
    ((2, 6, 3), 2, None, "valid"),
    ((2, 7, 2), 3, 2, "same"),
    ((2, 6, 5, 3), 2, None, "valid"),
    ((2, 5, 5, 2), (3, 2), (2, 1), "same"),
    ((1, 7, 6, 2), 3, 2, "valid"),
    ((1, 5, 5, 1), 2, 1, "same"),
    ((1, 4, 3, 4, 2), 2, (1, 2, 2), "same"),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("kind", ["max", "average"])
def test_pooling_matches_the_direct_loop_and_finite_differences(case, kind):
    input_shape, pool_size, strides, padding = case
    rank = len(input_shape) - 2
    as_tuple = lambda v: (v,) * rank if isinstance(v, int) else v  # noqa: E731
    op = ops.max_pool if kind == "max" else ops.average_pool
    x = rng.permutation(np.prod(input_shape)).reshape(input_shape) / 7.0 - 3.0  # distinct: no ties for max
    window = as_tuple(pool_size)
    expected = pool_reference(x, window, as_tuple(strides) if strides else window, padding,
                              np.max if kind == "max" else np.mean)
    np.testing.assert_allclose(op(x, pool_size, strides, padding), expected, rtol=1e-13)
    np.testing.assert_allclose(op(channels_first(x), pool_size, strides, padding, data_format="channels_first"),
                               channels_first(expected), rtol=1e-13)
    check_gradient(lambda t: op(t, pool_size, strides, padding), x)
    check_gradient(lambda t: op(t, pool_size, strides, padding, "channels_first"), channels_first(x))


def test_max_pool_gives_a_tied_window_gradient_to_its_first_maximum():
    x = np.array([[1.0, 5.0], [5.0, 2.0]]).reshape(1, 2, 2, 1)
    _, (grad,) = ops.value_and_grad(lambda t: ops.max_pool(t, 2), x)
    np.testing.assert_array_equal(grad.ravel(), [0, 1, 0, 0])


def test_pooling_keeps_float32():
    x = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
    for op in (ops.max_pool, ops.average_pool):
        value, (grad,) = ops.value_and_grad(lambda t: op(t, 2, padding="same"), x)
        assert value.dtype == np.float32 and grad.dtype == np.float32
    value, (grad, kernel_grad) = ops.value_and_grad(lambda t, k: ops.conv(t, k, 2, "same"), x,
                                                    rng.standard_normal((3, 3, 3, 2)).astype(np.float32))
    assert value.dtype == grad.dtype == kernel_grad.dtype == np.float32
