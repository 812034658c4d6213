"""Pooling and zero-padding layers: forward against direct loops, finite-difference gradients, Keras shapes."""
from __future__ import annotations

import re

import numpy as np
import pytest

from distnn import backend
from distnn.layers import (AveragePooling1D, AveragePooling2D, Dense, Flatten, GlobalAveragePooling1D,
                           GlobalAveragePooling2D, GlobalMaxPooling1D, GlobalMaxPooling2D, MaxPooling1D, MaxPooling2D,
                           ZeroPadding1D, ZeroPadding2D)
from distnn.models import Sequential
from distnn.ops import Tape
from distnn.utils import check_layer_gradients


def reference_pool2d(x, pool, strides, padding, mode):
    """Direct loops over windows; "same" pads as TensorFlow and averages over real pixels only."""
    n, h, w, c = x.shape

    def axis(size, k, s):
        if padding == "same":
            out = -(-size // s)
            return out, max((out - 1) * s + k - size, 0) // 2
        return (size - k) // s + 1, 0

    (oh, top), (ow, left) = axis(h, pool[0], strides[0]), axis(w, pool[1], strides[1])
    y = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * strides[0] - top, j * strides[1] - left
            window = x[:, max(r0, 0):r0 + pool[0], max(c0, 0):c0 + pool[1]]
            y[:, i, j] = window.max(axis=(1, 2)) if mode == "max" else window.mean(axis=(1, 2))
    return y


CASES = [  # (input hw, pool, strides, padding)
    ((8, 8), (2, 2), None, "valid"),
    ((7, 9), (2, 2), None, "valid"),   # odd sizes: the last row/column is in no window
    ((7, 9), (2, 2), None, "same"),
    ((7, 8), (3, 3), (2, 2), "same"),  # overlapping windows
    ((9, 7), (3, 2), (1, 2), "valid"),
    ((5, 5), (3, 3), (3, 3), "same"),
]


@pytest.mark.parametrize("hw, pool, strides, padding", CASES)
@pytest.mark.parametrize("cls, mode", [(MaxPooling2D, "max"), (AveragePooling2D, "avg")])
def test_pool2d_forward_matches_direct_loops(cls, mode, hw, pool, strides, padding):
    x = np.random.default_rng(0).standard_normal((2, *hw, 3)).astype(np.float32)
    layer = cls(pool, strides=strides, padding=padding)
    expected = reference_pool2d(x.astype(np.float64), pool, strides or pool, padding, mode)
    for training in (False, True):
        y = layer(x, training=training)
        assert y.dtype == np.float32 and y.shape == expected.shape
        assert y.shape[1:] == layer.compute_output_shape((None, *hw, 3))[1:]
        np.testing.assert_allclose(y, expected, atol=1e-5)


@pytest.mark.parametrize("hw, pool, strides, padding", CASES)
@pytest.mark.parametrize("cls", [MaxPooling2D, AveragePooling2D])
def test_pool2d_gradients(cls, hw, pool, strides, padding):
    layer = cls(pool, strides=strides, padding=padding, dtype="float64")
    result = check_layer_gradients(layer, input_shape=(2, *hw, 3))
    assert result.max_error <= 1e-6, result


@pytest.mark.parametrize("cls, mode", [(MaxPooling1D, "max"), (AveragePooling1D, "avg")])
@pytest.mark.parametrize("length, pool, strides, padding",
                         [(9, 2, None, "valid"), (9, 3, 2, "same"), (8, 2, 1, "same")])
def test_pool1d_forward_and_gradients(cls, mode, length, pool, strides, padding):
    x = np.random.default_rng(1).standard_normal((2, length, 3))
    layer = cls(pool, strides=strides, padding=padding, dtype="float64")
    expected = reference_pool2d(x[:, None], (1, pool), (1, strides or pool), padding, mode)[:, 0]
    np.testing.assert_allclose(layer(x), expected, atol=1e-12)
    assert check_layer_gradients(layer, x=x).max_error <= 1e-6


@pytest.mark.parametrize("cls, reduce", [(GlobalAveragePooling2D, np.mean), (GlobalMaxPooling2D, np.max)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pooling_2d(cls, reduce, keepdims):
    x = np.random.default_rng(2).standard_normal((3, 5, 4, 6))
    layer = cls(keepdims=keepdims, dtype="float64")
    expected = reduce(x, axis=(1, 2), keepdims=keepdims)
    np.testing.assert_allclose(layer(x), expected, atol=1e-12)
    assert layer.compute_output_shape((None, 5, 4, 6)) == ((None, 1, 1, 6) if keepdims else (None, 6))
    assert check_layer_gradients(layer, x=x).max_error <= 1e-6
    first = cls(keepdims=keepdims, data_format="channels_first", dtype="float64")
    np.testing.assert_allclose(first(x.transpose(0, 3, 1, 2)),
                               expected.transpose(0, 3, 1, 2) if keepdims else expected, atol=1e-12)
    assert check_layer_gradients(first, x=x.transpose(0, 3, 1, 2)).max_error <= 1e-6


@pytest.mark.parametrize("cls, reduce", [(GlobalAveragePooling1D, np.mean), (GlobalMaxPooling1D, np.max)])
def test_global_pooling_1d(cls, reduce):
    x = np.random.default_rng(3).standard_normal((3, 7, 4))
    layer = cls(dtype="float64")
    np.testing.assert_allclose(layer(x), reduce(x, axis=1), atol=1e-12)
    assert check_layer_gradients(layer, x=x).max_error <= 1e-6


def test_max_pooling_gradient_goes_to_the_first_maximum_only():
    """Ties (common after ReLU) send the gradient to one pixel per window, as TensorFlow does."""
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, 2, 3, 0] = 1.0
    for layer in (MaxPooling2D(), GlobalMaxPooling2D()):
        layer(x, training=True)
        grad = np.ones((1, 2, 2, 1), np.float32) if isinstance(layer, MaxPooling2D) else np.ones((1, 1), np.float32)
        dx = layer.backward(backend.to_device(grad))[0, :, :, 0]
        if isinstance(layer, MaxPooling2D):
            expected = np.zeros((4, 4))
            expected[0, 0] = expected[0, 2] = expected[2, 0] = expected[2, 3] = 1
        else:
            expected = np.zeros((4, 4))
            expected[2, 3] = 1
        np.testing.assert_array_equal(dx, expected)


def test_max_pooling_same_padding_never_picks_the_padding():
    x = -np.ones((1, 3, 3, 1), np.float32)  # all negative: zero padding would win, -inf padding cannot
    y = MaxPooling2D(2, padding="same")(x)
    np.testing.assert_array_equal(y, -np.ones((1, 2, 2, 1)))


def test_zero_padding_2d():
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 2))
    layer = ZeroPadding2D(((1, 2), (0, 3)), dtype="float64")
    y = layer(x)
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0), (1, 2), (0, 3), (0, 0))))
    assert layer.compute_output_shape((None, 3, 4, 2)) == (None, 6, 7, 2)
    assert check_layer_gradients(layer, x=x).max_error <= 1e-6
    assert ZeroPadding2D(1).padding == ((1, 1), (1, 1)) and ZeroPadding2D((1, 2)).padding == ((1, 1), (2, 2))
    first = ZeroPadding2D((1, 2), data_format="channels_first", dtype="float64")
    np.testing.assert_array_equal(first(x.transpose(0, 3, 1, 2)),
                                  np.pad(x, ((0, 0), (1, 1), (2, 2), (0, 0))).transpose(0, 3, 1, 2))


def test_zero_padding_1d():
    x = np.random.default_rng(5).standard_normal((2, 5, 3))
    layer = ZeroPadding1D((2, 1), dtype="float64")
    np.testing.assert_array_equal(layer(x), np.pad(x, ((0, 0), (2, 1), (0, 0))))
    assert check_layer_gradients(layer, x=x).max_error <= 1e-6


def test_shapes_in_a_model_as_keras():
    model = Sequential([ZeroPadding2D(2, input_shape=(13, 11, 4)), MaxPooling2D(), AveragePooling2D(3, 2, "same"),
                        GlobalMaxPooling2D()])
    assert model._output_shapes == [(None, 17, 15, 4), (None, 8, 7, 4), (None, 4, 4, 4), (None, 4)]
    assert model.count_params() == 0


@pytest.mark.parametrize("make, message", [
    (lambda: MaxPooling2D(0), "pool_size=(0, 0)"),
    (lambda: MaxPooling2D((2, 2, 2)), "pool_size=(2, 2, 2)"),
    (lambda: AveragePooling2D(2, strides=(1, -1)), "strides=(1, -1)"),
    (lambda: MaxPooling1D(2, padding="causal"), "padding='causal'"),
    (lambda: GlobalAveragePooling2D(data_format="NHWC"), "data_format='nhwc'"),
    (lambda: ZeroPadding2D(-1), "padding=-1"),
    (lambda: ZeroPadding2D((1, 2, 3)), "padding=(1, 2, 3)"),
])
def test_argument_errors(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        Sequential([MaxPooling2D(3, input_shape=(2, 2, 1))])


@pytest.mark.parametrize("layer", [
    MaxPooling2D((3, 2), strides=(1, 2), padding="same"), AveragePooling1D(3, data_format="channels_first"),
    GlobalMaxPooling2D(keepdims=True), ZeroPadding2D(((1, 2), (3, 4))), ZeroPadding1D((0, 2))])
def test_get_config_round_trip(layer):
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config


@pytest.mark.parametrize("first", [MaxPooling2D(), AveragePooling2D(), GlobalMaxPooling2D(), ZeroPadding2D(1)])
def test_first_layer_skips_the_input_gradient(first):
    model = Sequential([first, Flatten(), Dense(2)])
    model.build((None, 4, 4, 2))
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 4, 2)).astype(np.float32)
    _, grads = model.compute_gradients(x, rng.standard_normal((3, 2)))
    assert np.count_nonzero(grads) > 0
    with Tape() as tape:
        model(x, training=True)
    # Nothing before a weightless first layer needs dL/dx, so the tape records no node for it.
    assert all(node.kwargs.get("layer") is not first for node in tape.nodes)


@pytest.mark.parametrize("cls", [MaxPooling2D, AveragePooling2D])
def test_pool2d_channels_first_is_the_transposed_channels_last(cls):
    x = np.random.default_rng(6).standard_normal((2, 7, 6, 3))
    last = cls(3, strides=2, padding="same", dtype="float64")
    first = cls(3, strides=2, padding="same", data_format="channels_first", dtype="float64")
    np.testing.assert_allclose(first(x.transpose(0, 3, 1, 2)), last(x).transpose(0, 3, 1, 2), atol=1e-12)
    assert first.compute_output_shape((None, 3, 7, 6)) == (None, 3, 4, 3)
    assert check_layer_gradients(first, x=x.transpose(0, 3, 1, 2)).max_error <= 1e-6
