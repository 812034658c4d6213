"""Conv2D / Conv1D: forward against a direct-loop reference, finite-difference gradients, Keras shapes."""
from __future__ import annotations

import re

import numpy as np
import pytest

from distnn import backend
from distnn.layers import Conv1D, Conv2D, Dense, Flatten, MaxPooling2D
from distnn.models import Sequential
from distnn.ops import Tape, Tensor
from distnn.utils import check_layer_gradients, check_model_gradients, clear_session


def reference_conv2d(x, kernel, bias, strides=(1, 1), padding="valid", dilation=(1, 1)):
    """Direct loops over output pixels and kernel taps; Keras/TensorFlow padding written out independently."""
    n, h, w, _ = x.shape
    kh, kw, _, filters = kernel.shape

    def axis(size, k, s, d):
        span = (k - 1) * d + 1
        if padding == "same":
            out = -(-size // s)
            return out, max((out - 1) * s + span - size, 0) // 2
        return (size - span) // s + 1, 0

    (oh, top), (ow, left) = axis(h, kh, strides[0], dilation[0]), axis(w, kw, strides[1], dilation[1])
    y = np.zeros((n, oh, ow, filters))
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    r, c = i * strides[0] + a * dilation[0] - top, j * strides[1] + b * dilation[1] - left
                    if 0 <= r < h and 0 <= c < w:
                        y[:, i, j] += x[:, r, c] @ kernel[a, b]
    return y + (0 if bias is None else bias)


CASES_2D = [  # (input hw, kernel, strides, padding, dilation)
    ((7, 7), (3, 3), (1, 1), "valid", (1, 1)),
    ((7, 9), (3, 3), (2, 2), "same", (1, 1)),   # "same" with stride 2 on odd sizes
    ((9, 7), (2, 2), (2, 2), "same", (1, 1)),   # even kernel: the extra padding goes after
    ((8, 8), (3, 2), (2, 1), "valid", (1, 1)),
    ((7, 8), (3, 3), (1, 1), "same", (2, 2)),
    ((9, 9), (2, 3), (1, 1), "valid", (2, 1)),
    ((5, 6), (1, 1), (1, 1), "valid", (1, 1)),
    ((5, 7), (1, 1), (2, 2), "same", (1, 1)),
    ((6, 5), (5, 5), (3, 3), "same", (1, 1)),
    ((11, 11), (4, 4), (3, 3), "valid", (1, 1)),
]


@pytest.mark.parametrize("hw, kernel, strides, padding, dilation", CASES_2D)
def test_conv2d_forward_matches_direct_loops(hw, kernel, strides, padding, dilation):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, *hw, 4)).astype(np.float32)
    layer = Conv2D(5, kernel, strides=strides, padding=padding, dilation_rate=dilation,
                   bias_initializer="random_normal")
    for training in (False, True):
        y = layer(x, training=training)
        expected = reference_conv2d(x.astype(np.float64), layer.kernel.numpy().astype(np.float64),
                                    layer.bias.numpy(), strides, padding, dilation)
        assert y.dtype == np.float32
        assert y.shape == expected.shape == (3, *layer.compute_output_shape((None, *hw, 4))[1:])
        np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw, kernel, strides, padding, dilation", CASES_2D)
@pytest.mark.parametrize("channels", [1, 3])
def test_conv2d_gradients(hw, kernel, strides, padding, dilation, channels):
    layer = Conv2D(4, kernel, strides=strides, padding=padding, dilation_rate=dilation, activation="tanh",
                   bias_initializer="random_normal", dtype="float64")
    result = check_layer_gradients(layer, input_shape=(2, *hw, channels))
    assert set(result.errors) == {"input", layer.kernel.name, layer.bias.name}
    assert result.max_error <= 1e-6, result


def test_conv2d_relu_without_bias_gradients():
    layer = Conv2D(3, 3, padding="same", activation="relu", use_bias=False, dtype="float64")
    result = check_layer_gradients(layer, input_shape=(2, 6, 5, 2))
    assert result.max_error <= 1e-6, result
    assert len(layer.weights) == 1


@pytest.mark.parametrize("length, kernel, strides, padding, dilation", [
    (9, 3, 1, "valid", 1), (10, 3, 2, "same", 1), (9, 2, 3, "same", 1), (9, 3, 1, "causal", 2), (8, 4, 1, "same", 2)])
def test_conv1d_forward_and_gradients(length, kernel, strides, padding, dilation):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, length, 2))
    layer = Conv1D(4, kernel, strides=strides, padding=padding, dilation_rate=dilation, dtype="float64",
                   bias_initializer="random_normal")
    y = layer(x)
    assert layer.kernel.shape == (kernel, 2, 4)
    if padding == "causal":  # left padding of (k - 1) * d, then a valid convolution
        x_ref, pad = np.pad(x, ((0, 0), ((kernel - 1) * dilation, 0), (0, 0))), "valid"
    else:
        x_ref, pad = x, padding
    expected = reference_conv2d(x_ref[:, None], layer.kernel.numpy()[None], layer.bias.numpy(), (1, strides),
                                pad, (1, dilation))[:, 0]
    np.testing.assert_allclose(y, expected, atol=1e-10)
    assert y.shape[1:] == layer.compute_output_shape((None, length, 2))[1:]
    result = check_layer_gradients(layer, x=x)
    assert result.max_error <= 1e-6, result


def test_causal_output_does_not_see_the_future():
    layer = Conv1D(2, 3, padding="causal", dilation_rate=2)
    x = np.random.default_rng(0).standard_normal((1, 10, 1)).astype(np.float32)
    y = layer(x)
    x_changed = x.copy()
    x_changed[:, 6:] += 1.0
    y_changed = layer(x_changed)
    np.testing.assert_array_equal(y[:, :6], y_changed[:, :6])
    assert not np.allclose(y[:, 6:], y_changed[:, 6:])


@pytest.mark.parametrize("padding, output_hw", [("same", (5, 4)), ("valid", (4, 3))])
def test_channels_first_is_the_transposed_channels_last(padding, output_hw):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 9, 8, 3))
    last = Conv2D(4, 3, strides=2, padding=padding, dtype="float64")
    first = Conv2D(4, 3, strides=2, padding=padding, data_format="channels_first", dtype="float64")
    last(x)
    first(x.transpose(0, 3, 1, 2))
    first.set_weights(last.get_weights())
    np.testing.assert_allclose(first(x.transpose(0, 3, 1, 2)), last(x).transpose(0, 3, 1, 2), atol=1e-12)
    assert first.compute_output_shape((None, 3, 9, 8)) == (None, 4, *output_hw)
    assert check_layer_gradients(first, x=x.transpose(0, 3, 1, 2)).max_error <= 1e-6


@pytest.mark.parametrize("kwargs, input_shape, output_shape, params", [
    (dict(filters=32, kernel_size=(3, 3)), (28, 28, 1), (26, 26, 32), 320),
    (dict(filters=8, kernel_size=3, strides=2, padding="same"), (7, 7, 3), (4, 4, 8), 224),
    (dict(filters=8, kernel_size=3, strides=2), (7, 7, 3), (3, 3, 8), 224),
    (dict(filters=6, kernel_size=(5, 3), dilation_rate=2, use_bias=False), (20, 10, 2), (12, 6, 6), 180),
    (dict(filters=6, kernel_size=2, strides=(1, 3), padding="same"), (5, 7, 4), (5, 3, 6), 102),
])
def test_conv2d_shapes_and_params_as_keras(kwargs, input_shape, output_shape, params):
    layer = Conv2D(**kwargs, input_shape=input_shape)
    model = Sequential([layer])
    assert model.output_shape == (None, *output_shape)
    assert model.count_params() == params
    assert layer.kernel.shape == (*layer.kernel_size, input_shape[-1], kwargs["filters"])


def test_classic_keras_cnn_summary():
    clear_session()
    model = Sequential([
        Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)), MaxPooling2D((2, 2)),
        Conv2D(64, (3, 3), activation="relu"), MaxPooling2D((2, 2)),
        Conv2D(64, (3, 3), activation="relu"), Flatten(),
        Dense(64, activation="relu"), Dense(10, activation="softmax")])
    assert model.count_params() == 93_322
    assert [layer.count_params() for layer in model.layers] == [320, 0, 18_496, 0, 36_928, 0, 36_928, 650]
    assert model._output_shapes == [(None, 26, 26, 32), (None, 13, 13, 32), (None, 11, 11, 64), (None, 5, 5, 64),
                                    (None, 3, 3, 64), (None, 576), (None, 64), (None, 10)]
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "conv2d (Conv2D)" in text and "max_pooling2d_1 (MaxPooling2D)" in text
    assert "(None, 26, 26, 32)" in text and "Total params: 93,322" in text


@pytest.mark.parametrize("kwargs, message", [
    (dict(filters=0, kernel_size=3), "filters=0"),
    (dict(filters=2.5, kernel_size=3), "filters=2.5"),
    (dict(filters=4, kernel_size=(3, 0)), "kernel_size=(3, 0)"),
    (dict(filters=4, kernel_size=(3, 3, 3)), "kernel_size=(3, 3, 3)"),
    (dict(filters=4, kernel_size=3, strides=0), "strides=(0, 0)"),
    (dict(filters=4, kernel_size=3, padding="full"), "padding='full'"),
    (dict(filters=4, kernel_size=3, padding="causal"), "padding='causal'"),
    (dict(filters=4, kernel_size=3, data_format="nhwc"), "data_format='nhwc'"),
    (dict(filters=4, kernel_size=3, strides=2, dilation_rate=2), "dilation_rate=(2, 2)"),
])
def test_conv2d_argument_errors_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Conv2D(**kwargs)


def test_input_errors():
    with pytest.raises(ValueError, match="expected ndim=4"):
        Conv2D(2, 3)(np.zeros((2, 5, 5), np.float32))
    with pytest.raises(ValueError, match="too small"):
        Sequential([Conv2D(2, 5, input_shape=(3, 3, 1))])
    with pytest.raises(ValueError, match="groups=2, filters=3"):  # groups are supported; they must divide
        Conv2D(3, 3, groups=2)


def test_get_config_round_trip():
    layer = Conv2D(6, (3, 2), strides=(2, 1), padding="same", dilation_rate=1, activation="relu", use_bias=False,
                   kernel_initializer="he_normal", kernel_regularizer="l2", input_shape=(9, 8, 3))
    config = layer.get_config()
    clone = Conv2D.from_config(config)
    assert clone.get_config() == config
    assert config["kernel_size"] == [3, 2] and config["strides"] == [2, 1] and config["padding"] == "same"
    one_d = Conv1D(3, 5, padding="causal", dilation_rate=2, data_format="channels_last")
    assert Conv1D.from_config(one_d.get_config()).get_config() == one_d.get_config()


def test_backward_writes_into_the_flat_gradient_buffer_and_skips_dx_for_the_first_layer():
    model = Sequential([Conv2D(4, 3, padding="same", input_shape=(6, 6, 2)), Conv2D(3, 2, strides=2),
                        Flatten(), Dense(2)])
    model.compile("sgd", "mse")
    first, second = model.layers[:2]
    x = np.random.default_rng(0).standard_normal((5, 6, 6, 2)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((5, 2)).astype(np.float32)
    _, grads = model.compute_gradients(x, y)
    # The tape tells each fused backward whether anything before it needs dL/dx: the input does not.
    assert not first.propagate_input_grad and second.propagate_input_grad
    for layer in (first, second):
        assert np.shares_memory(layer.kernel.grad, model.grads) and np.shares_memory(layer.bias.grad, model.grads)
    np.testing.assert_array_equal(grads, model.grads)
    assert np.count_nonzero(first.kernel.grad) == first.kernel.size
    assert first.backward(backend.to_device(np.ones((5, 6, 6, 4), np.float32))) is None


def test_training_reuses_buffers_between_steps():
    layer = Conv2D(4, 3, padding="same")
    x = np.random.default_rng(0).standard_normal((4, 7, 7, 3)).astype(np.float32)

    def step() -> dict:
        with Tape() as tape:
            y = layer(Tensor(backend.to_device(x), tape), training=True)
        tape.backward([(y, np.ones((4, 7, 7, 4), np.float32))])
        return {key: id(buf) for key, buf in layer._buffers.items()}

    buffers = step()
    assert step() == buffers
    # One set per call slot on the tape (a layer shared within a step keeps its calls apart).
    assert {("cols", 0), ("z", 0), ("dblock", 0), ("xpad", 0), ("dxpad", 0)} <= set(buffers)


def test_small_cnn_model_gradients():
    """The whole chain in float64: first layer without dx, pooling, flatten, fused softmax + cross-entropy."""
    backend.set_floatx("float64")
    try:
        model = Sequential([Conv2D(3, 3, activation="tanh", input_shape=(7, 6, 2)), MaxPooling2D(),
                            Conv2D(4, 2, padding="same"), Flatten(), Dense(3, activation="softmax")])
        model.compile("sgd", "categorical_crossentropy")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((4, 7, 6, 2))
        y = np.eye(3)[rng.integers(3, size=4)]
        result = check_model_gradients(model, x, y)
    finally:
        backend.set_floatx("float32")
    assert result.max_error <= 1e-6, result
