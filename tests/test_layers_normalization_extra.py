"""LayerNormalization, GroupNormalization and UnitNormalization: forward against loop-by-loop numpy
references, float64 gradient checks of the fused backward (and against the same formulas written with
ops on the tape), configs, symbolic shapes, errors, and save/load inside a model."""
from __future__ import annotations

import numpy as np
import pytest

import distnn as keras
from distnn import backend, layers, ops
from distnn.layers import GroupNormalization, LayerNormalization, UnitNormalization
from distnn.models import load_model
from distnn.ops import Tape, Tensor
from distnn.utils import check_layer_gradients, check_model_gradients

RNG = np.random.default_rng(0)


@pytest.fixture
def float64():
    backend.set_floatx("float64")
    yield
    backend.set_floatx("float32")


# ----------------------------------------------------------------------------- references
def reference_layer_norm(x, gamma, beta, axes, epsilon, rms_scaling=False):
    """One sample at a time, with the normalized axes moved to the end and flattened."""
    x = np.asarray(x, dtype=np.float64)
    kept = [a for a in range(1, x.ndim) if a not in axes]
    moved = np.moveaxis(x, list(axes), list(range(x.ndim - len(axes), x.ndim)))
    rows = moved.reshape(-1, int(np.prod([x.shape[a] for a in axes])))
    out = np.empty_like(rows)
    for i, row in enumerate(rows):
        mean, var = row.mean(), ((row - row.mean()) ** 2).mean()
        if rms_scaling:  # Keras 3: x * rsqrt(var(x) + epsilon) * gamma
            out[i] = row / np.sqrt(var + epsilon) * (1 if gamma is None else gamma.ravel())
        else:
            out[i] = (row - mean) / np.sqrt(var + epsilon)
            out[i] = out[i] * (1 if gamma is None else gamma.ravel()) + (0 if beta is None else beta.ravel())
    shape = [x.shape[0]] + [x.shape[a] for a in kept] + [x.shape[a] for a in axes]
    return np.moveaxis(out.reshape(shape), list(range(x.ndim - len(axes), x.ndim)), list(axes))


def reference_group_norm(x, gamma, beta, groups, channel_axis, epsilon):
    x = np.moveaxis(np.asarray(x, dtype=np.float64), channel_axis, -1)
    out = np.empty_like(x)
    size = x.shape[-1] // groups
    for n in range(x.shape[0]):
        for g in range(groups):
            block = x[n, ..., g * size:(g + 1) * size]
            out[n, ..., g * size:(g + 1) * size] = (block - block.mean()) / np.sqrt(block.var() + epsilon)
    out = out * gamma + beta
    return np.moveaxis(out, -1, channel_axis)


# --------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("kwargs, shape, axes", [
    ({}, (4, 5, 6), (2,)), ({"axis": 1}, (4, 5, 6), (1,)), ({"axis": [1, 2]}, (3, 4, 5), (1, 2)),
    ({"axis": (1, 3)}, (2, 3, 4, 5), (1, 3)), ({"axis": -2, "epsilon": 0.1}, (3, 4, 2), (1,)),
    ({"center": False}, (5, 7), (1,)), ({"scale": False}, (5, 7), (1,)),
    ({"rms_scaling": True}, (4, 3, 6), (2,)), ({"rms_scaling": True, "axis": [1, 2]}, (4, 3, 6), (1, 2))])
def test_layer_norm_forward_matches_reference(kwargs, shape, axes):
    x = RNG.normal(size=shape) * 3 + 1
    layer = LayerNormalization(**kwargs, dtype="float64")
    layer(x)
    weights = [RNG.normal(size=w.shape) for w in layer.get_weights()]
    layer.set_weights(weights)
    gamma = layer.gamma.numpy() if layer.gamma is not None else None
    beta = layer.beta.numpy() if layer.beta is not None else None
    expected = reference_layer_norm(x, gamma, beta, axes, layer.epsilon, layer.rms_scaling)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer(x, training=True), expected, rtol=1e-12, atol=1e-12)


def test_layer_norm_weights_follow_keras():
    layer = LayerNormalization(axis=[1, 2])
    layer.build((None, 20, 30, 40))
    assert [w.name.split("/")[-1] for w in layer.weights] == ["gamma", "beta"]  # Keras' order
    assert layer.gamma.shape == layer.beta.shape == (20, 30)
    reversed_axes = LayerNormalization(axis=[2, 1], dtype="float64")  # Keras: gamma (d2, d1), reshaped
    x = RNG.normal(size=(3, 4, 5))
    reversed_axes(x)
    assert reversed_axes.gamma.shape == (5, 4)
    gamma, beta = RNG.normal(size=(5, 4)), RNG.normal(size=(5, 4))
    reversed_axes.set_weights([gamma, beta])
    expected = reference_layer_norm(x, gamma.reshape(4, 5), beta.reshape(4, 5), (1, 2), 1e-3)
    np.testing.assert_allclose(reversed_axes(x), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(layer.gamma.numpy(), 1)
    np.testing.assert_array_equal(layer.beta.numpy(), 0)
    rms = LayerNormalization(rms_scaling=True, center=True, scale=False)  # rms_scaling: gamma only
    rms.build((None, 8))
    assert [w.name.split("/")[-1] for w in rms.weights] == ["gamma"]
    assert LayerNormalization(center=False, scale=False)(np.ones((2, 3), "float32")).shape == (2, 3)


@pytest.mark.parametrize("groups, axis, shape", [
    (2, -1, (3, 5, 6)), (3, 1, (2, 6, 4, 3)), (1, -1, (2, 3, 4, 4)), (-1, -1, (4, 7, 3)), (4, -1, (5, 8))])
def test_group_norm_forward_matches_reference(groups, axis, shape):
    x = RNG.normal(size=shape) * 2 - 1
    layer = GroupNormalization(groups=groups, axis=axis, dtype="float64", gamma_initializer="random_normal",
                               beta_initializer="random_normal")
    y = layer(x)
    gamma, beta = layer.get_weights()
    channel_axis = axis % len(shape)
    assert gamma.shape == (shape[channel_axis],)
    expected = reference_group_norm(x, gamma, beta, shape[channel_axis] if groups == -1 else groups, channel_axis,
                                    1e-3)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_unit_norm_forward_matches_reference():
    x = RNG.normal(size=(4, 3, 5))
    x[0, 1] = 0.0  # a zero vector stays zero (the norm is clamped, not divided by)
    y = UnitNormalization(dtype="float64")(x)
    expected = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(y[1], axis=-1), 1.0)
    y2 = UnitNormalization(axis=[1, 2], dtype="float64")(x)
    np.testing.assert_allclose(np.sqrt((y2 ** 2).sum(axis=(1, 2)))[1:], 1.0)


# ------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("layer, shape", [
    (lambda: LayerNormalization(dtype="float64", gamma_initializer="random_normal",
                                beta_initializer="random_normal"), (4, 3, 5)),
    (lambda: LayerNormalization(axis=1, dtype="float64", gamma_initializer="random_normal"), (4, 3, 5)),
    (lambda: LayerNormalization(axis=[1, 3], dtype="float64", gamma_initializer="random_normal"), (3, 2, 3, 4)),
    (lambda: LayerNormalization(center=False, dtype="float64"), (6, 4)),
    (lambda: LayerNormalization(scale=False, dtype="float64", beta_initializer="random_normal"), (6, 4)),
    (lambda: LayerNormalization(rms_scaling=True, dtype="float64", gamma_initializer="random_normal"), (4, 3, 5)),
    (lambda: LayerNormalization(rms_scaling=True, axis=1, dtype="float64"), (4, 3, 5)),
    (lambda: GroupNormalization(groups=2, dtype="float64", gamma_initializer="random_normal",
                                beta_initializer="random_normal"), (3, 4, 6)),
    (lambda: GroupNormalization(groups=3, axis=1, dtype="float64", gamma_initializer="random_normal"), (3, 6, 2, 2)),
    (lambda: GroupNormalization(groups=-1, center=False, dtype="float64"), (3, 4, 6)),
    (lambda: UnitNormalization(dtype="float64"), (4, 5)),
    (lambda: UnitNormalization(axis=[1, 2], dtype="float64"), (4, 5, 3))])
def test_fused_backward_matches_finite_differences(layer, shape):
    result = check_layer_gradients(layer(), input_shape=shape)
    assert result.errors and result.max_error < 1e-6, result


def _tape_layer_norm(x, weights, epsilon, rms_scaling):
    """Layer normalization over the last axis written with distnn.ops: the tape-derived reference."""
    mean = ops.mean(x, axis=-1, keepdims=True)
    variance = ops.mean(ops.square(ops.subtract(x, mean)), axis=-1, keepdims=True)
    inv = ops.divide(1.0, ops.sqrt(ops.add(variance, epsilon)))
    if rms_scaling:
        return ops.multiply(ops.multiply(x, inv), weights[0])
    return ops.add(ops.multiply(ops.multiply(ops.subtract(x, mean), inv), weights[0]), weights[1])


def _tape_group_norm(x, weights, epsilon, groups):
    n, length, channels = x.shape
    v = ops.reshape(x, (n, length, groups, channels // groups))
    centered = ops.subtract(v, ops.mean(v, axis=(1, 3), keepdims=True))
    variance = ops.mean(ops.square(centered), axis=(1, 3), keepdims=True)
    normalized = ops.reshape(ops.divide(centered, ops.sqrt(ops.add(variance, epsilon))), (n, length, channels))
    return ops.add(ops.multiply(normalized, weights[0]), weights[1])


def _tape_unit_norm(x, weights):
    return ops.divide(x, ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12)))


@pytest.mark.parametrize("make, reference", [
    (lambda: LayerNormalization(dtype="float64", gamma_initializer="random_normal", beta_initializer="random_normal"),
     lambda x, w: _tape_layer_norm(x, w, 1e-3, False)),
    (lambda: LayerNormalization(rms_scaling=True, dtype="float64", gamma_initializer="random_normal"),
     lambda x, w: _tape_layer_norm(x, w, 1e-3, True)),
    (lambda: GroupNormalization(groups=4, dtype="float64", gamma_initializer="random_normal",
                                beta_initializer="random_normal"), lambda x, w: _tape_group_norm(x, w, 1e-3, 4)),
    (lambda: UnitNormalization(dtype="float64"), _tape_unit_norm)])
def test_fused_backward_equals_the_tape_reference(make, reference):
    x = RNG.normal(size=(6, 4, 8)) * 2 + 0.5
    upstream = RNG.normal(size=x.shape)
    layer = make()
    layer(x)
    with Tape() as tape:
        leaf = Tensor(backend.to_device(x), tape)
        y = layer(leaf, training=True)
    tape.backward([(y, upstream)])
    fused = [leaf.grad] + [w.grad.copy() for w in layer.trainable_weights]

    with Tape() as tape:
        leaf = Tensor(backend.to_device(x), tape)
        weights = [Tensor(backend.to_device(w.numpy()), tape) for w in layer.trainable_weights]
        y_ref = reference(leaf, weights)
    tape.backward([(y_ref, upstream)])
    np.testing.assert_allclose(y.value, y_ref.value, rtol=1e-13, atol=1e-13)
    for got, want in zip(fused, [leaf.grad] + [w.grad for w in weights], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_gradients_through_a_model(float64):
    inputs = keras.Input(shape=(5, 6))
    x = layers.Dense(8)(inputs)
    x = LayerNormalization(gamma_initializer="random_normal")(x)
    x = GroupNormalization(groups=4, beta_initializer="random_normal")(x)
    x = UnitNormalization()(x)
    outputs = layers.Dense(2)(layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse")
    result = check_model_gradients(model, RNG.normal(size=(7, 5, 6)), RNG.normal(size=(7, 2)))
    assert result.max_error < 1e-6, result


# ------------------------------------------------------------------------- config and shapes
@pytest.mark.parametrize("make", [
    lambda: LayerNormalization(axis=[1, 2], epsilon=1e-5, center=False, gamma_regularizer="l2"),
    lambda: LayerNormalization(rms_scaling=True, gamma_initializer="random_normal", gamma_constraint="non_neg"),
    lambda: GroupNormalization(groups=2, axis=1, epsilon=0.01, scale=False, beta_initializer="ones"),
    lambda: UnitNormalization(axis=[1, 2])])
def test_config_round_trip_and_symbolic_shapes(make):
    layer = make()
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    inputs = keras.Input(shape=(4, 6))
    outputs = layer(inputs)
    assert outputs.shape == (None, 4, 6)
    x = RNG.normal(size=(3, 4, 6)).astype("float32")
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x), keras.Model(inputs, outputs)(x))


def test_model_with_the_layers_saves_and_loads(tmp_path):
    inputs = keras.Input(shape=(6, 8))
    x = LayerNormalization(beta_initializer="random_normal")(inputs)
    x = GroupNormalization(groups=4, gamma_initializer="random_normal")(x)
    x = UnitNormalization(axis=[1, 2])(x)
    model = keras.Model(inputs, layers.Dense(3)(x))
    model.compile("adam", "mse")
    data = RNG.normal(size=(16, 6, 8)).astype("float32")
    model.fit(data, RNG.normal(size=(16, 6, 3)).astype("float32"), epochs=2, batch_size=8, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(loaded.predict(data, verbose=0), model.predict(data, verbose=0))
    assert [type(layer).__name__ for layer in loaded.layers[1:4]] == \
        ["LayerNormalization", "GroupNormalization", "UnitNormalization"]


def test_constraints_hold_after_training():
    # Started outside the constraints (gamma -1, |beta| 10): only the projections bring them back.
    norm = LayerNormalization(gamma_initializer=keras.initializers.Constant(-1.0), gamma_constraint="non_neg",
                              beta_initializer=keras.initializers.Constant(5.0), beta_constraint="max_norm")
    group = GroupNormalization(groups=2, gamma_initializer=keras.initializers.Constant(-1.0),
                               gamma_constraint="non_neg")
    model = keras.Sequential([keras.Input(shape=(3, 4)), norm, group, layers.Dense(1)])
    model.compile("sgd", "mse")
    x = RNG.normal(size=(8, 3, 4)).astype("float32")
    model.fit(x, -10 * np.abs(RNG.normal(size=(8, 3, 1))).astype("float32"), epochs=5, batch_size=4, verbose=0)
    assert np.all(norm.gamma.numpy() >= 0) and np.all(group.gamma.numpy() >= 0)
    assert np.linalg.norm(norm.beta.numpy()) <= 2.0 + 1e-6  # max_norm's default limit
    assert norm.get_config()["gamma_constraint"]["class_name"] == "NonNeg"


def test_training_moves_the_weights_and_masks_pass_through():
    layer = LayerNormalization()
    x = RNG.normal(size=(8, 5)).astype("float32")
    layer(x)
    mask = np.array([True, False] * 4)
    assert layer.compute_mask(x, mask) is mask
    assert UnitNormalization().compute_mask(x, mask) is mask
    model = keras.Sequential([keras.Input(shape=(5,)), layer, layers.Dense(1)])
    model.compile("sgd", "mse")
    before = layer.get_weights()
    model.fit(x, RNG.normal(size=(8, 1)).astype("float32"), epochs=1, batch_size=8, verbose=0)
    assert all(not np.allclose(a, b) for a, b in zip(before, layer.get_weights()))


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("make, match", [
    (lambda: LayerNormalization(axis="last"), "axis"),
    (lambda: LayerNormalization(epsilon=0), "epsilon=0"),
    (lambda: UnitNormalization(axis=1.5), "axis"),
    (lambda: GroupNormalization(groups=0), "groups=0"),
    (lambda: GroupNormalization(axis=[1, 2]), "axis"),
])
def test_bad_arguments_fail_clearly(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize("layer, shape, match", [
    (LayerNormalization(axis=0), (4, 3), "batch axis"),
    (LayerNormalization(axis=3), (4, 3), "axis"),
    (GroupNormalization(groups=4), (2, 6), "must divide"),
    (GroupNormalization(groups=8), (2, 6), "cannot be more than"),
    (GroupNormalization(axis=1), (2, 6), "Number of groups"),
])
def test_bad_input_shapes_fail_clearly(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer(np.ones(shape, dtype="float32"))
