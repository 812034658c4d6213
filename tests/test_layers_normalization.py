"""BatchNormalization and Normalization: statistics, gradients, non-trainable state, saving."""
from __future__ import annotations

import numpy as np
import pytest

from distnn.layers import BatchNormalization, Conv2D, Dense, Flatten, Normalization
from distnn.models import Sequential, load_model
from distnn.utils import check_layer_gradients


def reference_batch_norm(x, gamma, beta, epsilon, mean=None, variance=None):
    """Channel by channel with plain loops over the channel axis (the last one)."""
    y = np.empty_like(x, dtype=np.float64)
    for c in range(x.shape[-1]):
        values = x[..., c].astype(np.float64)
        m = values.mean() if mean is None else mean[c]
        v = ((values - m) ** 2).mean() if variance is None else variance[c]
        y[..., c] = gamma[c] * (values - m) / np.sqrt(v + epsilon) + beta[c]
    return y


def test_batch_norm_training_forward_and_moving_statistics():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 5, 4, 3)) * 3 + 2).astype(np.float32)
    layer = BatchNormalization(momentum=0.9, gamma_initializer="random_normal", beta_initializer="random_normal")
    y = layer(x, training=True)
    gamma, beta, moving_mean, moving_variance = layer.get_weights()
    np.testing.assert_allclose(y, reference_batch_norm(x, gamma, beta, 1e-3), atol=1e-5)
    batch_mean = x.reshape(-1, 3).astype(np.float64).mean(0)
    batch_var = x.reshape(-1, 3).astype(np.float64).var(0)
    np.testing.assert_allclose(moving_mean, 0.1 * batch_mean, rtol=1e-5)
    np.testing.assert_allclose(moving_variance, 0.9 + 0.1 * batch_var, rtol=1e-5)


def test_batch_norm_inference_uses_the_moving_statistics():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 7, 4)).astype(np.float32)
    layer = BatchNormalization(epsilon=1e-2)
    layer(x)
    weights = [rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal(4), rng.random(4) + 0.5]
    layer.set_weights(weights)
    expected = reference_batch_norm(x, weights[0], weights[1], 1e-2, mean=weights[2], variance=weights[3])
    np.testing.assert_allclose(layer(x, training=False), expected, atol=1e-5)
    before = layer.get_weights()
    layer(x, training=False)
    for a, b in zip(before, layer.get_weights()):  # inference leaves the moving statistics alone
        np.testing.assert_array_equal(a, b)
    frozen = BatchNormalization(epsilon=1e-2, trainable=False)  # Keras 3: frozen BN runs in inference mode
    frozen(x)
    frozen.set_weights(weights)
    np.testing.assert_allclose(frozen(x, training=True), expected, atol=1e-5)


@pytest.mark.parametrize("kwargs, shape", [
    ({}, (6, 4, 3, 5)), ({"axis": 1}, (5, 4, 3)), ({"center": False}, (7, 3)), ({"scale": False}, (4, 3, 2)),
    ({"axis": [1, 3]}, (5, 2, 3, 4))])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradients(kwargs, shape, training):
    layer = BatchNormalization(**kwargs, gamma_initializer="random_normal", beta_initializer="random_normal",
                               moving_mean_initializer="random_normal", moving_variance_initializer="ones",
                               dtype="float64")
    result = check_layer_gradients(layer, input_shape=shape, training=training)
    assert len(result.errors) == 1 + kwargs.get("center", True) + kwargs.get("scale", True)
    assert result.max_error <= 1e-6, result


def test_batch_norm_params_state_and_saving(tmp_path):
    model = Sequential([Conv2D(4, 3, input_shape=(6, 6, 2)), BatchNormalization(), Flatten(),
                        Dense(3, activation="softmax")])
    bn = model.layers[1]
    assert bn.count_params() == 16 and model.count_params() == 76 + 16 + 195
    assert [v.name.split("/")[1] for v in bn.weights] == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert sum(v.size for v in model.non_trainable_weights) == 8 == model.state.size
    assert np.shares_memory(bn.moving_mean.value, model.state)
    model.compile("adam", "categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6, 6, 2)).astype(np.float32) + 3
    y = np.eye(3)[rng.integers(3, size=32)]
    np.testing.assert_array_equal(model.state, [0, 0, 0, 0, 1, 1, 1, 1])
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(model.state[:4] != 0) and np.all(model.state[4:] != 1)  # 8 steps of moving averages
    np.testing.assert_array_equal(model.state, np.concatenate([bn.moving_mean.numpy(), bn.moving_variance.numpy()]))
    path = tmp_path / "bn.distnn"
    model.save(path)
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.state, model.state)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_batch_norm_argument_errors():
    with pytest.raises(ValueError, match="momentum=1.5"):
        BatchNormalization(momentum=1.5)
    with pytest.raises(ValueError, match="epsilon=0"):
        BatchNormalization(epsilon=0)
    with pytest.raises(ValueError, match="axis=0"):
        BatchNormalization(axis=0)(np.zeros((2, 3), np.float32))
    layer = BatchNormalization(axis=[1, 2], momentum=0.5, center=False, beta_regularizer="l2")
    assert BatchNormalization.from_config(layer.get_config()).get_config() == layer.get_config()


def test_normalization_adapt():
    rng = np.random.default_rng(2)
    data = rng.standard_normal((50, 3)) * [1.0, 10.0, 0.1] + [5.0, -2.0, 0.0]
    layer = Normalization()
    layer.adapt(data)
    np.testing.assert_allclose(layer.mean.numpy(), data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(layer.variance.numpy(), data.var(0), rtol=1e-5)
    y = layer(data.astype(np.float32))
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-4)
    assert layer.count_params() == 7  # mean, variance and Keras' sample count


def test_normalization_per_channel_images_and_scalar():
    rng = np.random.default_rng(3)
    images = rng.random((10, 4, 4, 2)) * [1.0, 255.0]
    layer = Normalization()
    layer.adapt(images)
    np.testing.assert_allclose(layer.mean.numpy(), images.reshape(-1, 2).mean(0), rtol=1e-5)
    scalar = Normalization(axis=None)
    scalar.adapt(images)
    np.testing.assert_allclose(scalar.mean.numpy(), images.mean(), rtol=1e-5)
    assert scalar.mean.shape == ()


def test_normalization_fixed_statistics_and_invert():
    x = np.array([[1.0, 2.0], [3.0, 6.0]], np.float32)
    layer = Normalization(mean=[1.0, 2.0], variance=[4.0, 16.0])
    np.testing.assert_allclose(layer(x), [[0, 0], [1, 1]])
    assert layer.count_params() == 0
    inverse = Normalization(mean=[1.0, 2.0], variance=[4.0, 16.0], invert=True)
    np.testing.assert_allclose(inverse(layer(x)), x)
    assert Normalization.from_config(layer.get_config()).get_config() == layer.get_config()


@pytest.mark.parametrize("invert", [False, True])
def test_normalization_gradients(invert):
    layer = Normalization(dtype="float64", invert=invert)
    layer.adapt(np.random.default_rng(4).standard_normal((20, 3, 5)) * 3)
    result = check_layer_gradients(layer, input_shape=(4, 3, 5))
    assert list(result.errors) == ["input"] and result.max_error <= 1e-6, result


def test_normalization_state_is_saved(tmp_path):
    data = np.random.default_rng(5).standard_normal((40, 4)).astype(np.float32) * 7 + 1
    norm = Normalization()
    norm.adapt(data)
    model = Sequential([norm, Dense(2)])
    model.build((None, 4))
    assert model.state.size == 9 and np.shares_memory(norm.mean.value, model.state)
    norm(data[:2], training=True)
    norm.propagate_input_grad = False  # what the tape sets when nothing before the layer needs dL/dx
    assert norm.backward(np.ones((2, 4), np.float32)) is None  # the first layer skips dL/dx
    model.save(tmp_path / "norm.distnn")
    loaded = load_model(tmp_path / "norm.distnn")
    np.testing.assert_allclose(loaded.layers[0].mean.numpy(), data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(loaded.predict(data, verbose=0), model.predict(data, verbose=0), atol=1e-6)


def test_normalization_errors():
    with pytest.raises(ValueError, match="both mean and variance"):
        Normalization(mean=1.0)
    with pytest.raises(ValueError, match="cannot adapt"):
        Normalization(mean=0.0, variance=1.0).adapt(np.zeros((3, 2)))
    layer = Normalization()
    layer.adapt(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="incompatible"):
        layer.adapt(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        Normalization().adapt(np.array([[1.0], [np.nan]]))
    with pytest.raises(ValueError, match="broadcast"):
        Normalization(mean=[1.0, 2.0, 3.0], variance=1.0)(np.zeros((2, 2), np.float32))
