"""Weight constraints (Keras 3's MaxNorm, NonNeg, UnitNorm, MinMaxNorm): values against their formulas,
lookup by name, and their application after every optimizer step."""
import numpy as np
import pytest

from distnn import constraints
from distnn.layers import Conv2D, Dense, Layer
from distnn.models import Sequential, load_model

RNG = np.random.default_rng(0)
W = RNG.normal(size=(4, 3)) * 3


def column_norms(w, axis=0):
    return np.sqrt((w * w).sum(axis=axis, keepdims=True))


def test_values_follow_keras_formulas():
    norms = column_norms(W)
    np.testing.assert_allclose(constraints.MaxNorm(2.0)(W), W * np.clip(norms, 0, 2.0) / (1e-7 + norms))
    assert column_norms(constraints.MaxNorm(2.0)(W)).max() <= 2.0
    small = W * 0.01  # already inside: unchanged (up to epsilon)
    np.testing.assert_allclose(constraints.MaxNorm(2.0)(small), small, rtol=1e-5)
    np.testing.assert_array_equal(constraints.NonNeg()(W), np.where(W >= 0, W, 0))
    np.testing.assert_allclose(column_norms(constraints.UnitNorm()(W)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(column_norms(constraints.UnitNorm(axis=1)(W), axis=1), 1.0, rtol=1e-6)
    inside = constraints.MinMaxNorm(1.0, 2.0)(W)
    assert np.all(column_norms(inside) >= 1.0 - 1e-6) and np.all(column_norms(inside) <= 2.0 + 1e-6)
    half = constraints.MinMaxNorm(1.0, 2.0, rate=0.5)(W)
    np.testing.assert_allclose(column_norms(half), 0.5 * np.clip(norms, 1, 2) + 0.5 * norms, rtol=1e-6)
    kernel = RNG.normal(size=(3, 3, 2, 4))  # a Conv2D kernel: the norm of each filter over axes (0, 1, 2)
    capped = constraints.MaxNorm(1.0, axis=[0, 1, 2])(kernel)
    assert capped.shape == kernel.shape and column_norms(capped, axis=(0, 1, 2)).max() <= 1.0
    with pytest.raises(ValueError, match="max_value=-1"):
        constraints.MaxNorm(-1)
    with pytest.raises(ValueError, match="rate=2"):
        constraints.MinMaxNorm(rate=2)


def test_lookup_by_keras_names_configs_and_callables():
    assert isinstance(constraints.get("max_norm"), constraints.MaxNorm)
    assert isinstance(constraints.get("NonNeg"), constraints.NonNeg)
    assert constraints.get(None) is None
    restored = constraints.get(constraints.serialize(constraints.MinMaxNorm(0.5, 3.0, 0.25, axis=(0, 1))))
    assert restored.get_config() == {"min_value": 0.5, "max_value": 3.0, "rate": 0.25, "axis": (0, 1)}

    def halve(w):
        return w / 2

    assert constraints.get(halve) is halve
    with pytest.raises(ValueError, match="Unknown constraint 'max_nrm'.*max_norm"):
        constraints.get("max_nrm")
    with pytest.raises(TypeError, match="constraint"):
        constraints.get(3)


def test_constraints_apply_after_every_step_of_training(tmp_path):
    x = RNG.normal(size=(64, 5)).astype("float32")
    y = -np.abs(x @ RNG.normal(size=(5, 3))).astype("float32")  # pulls weights negative
    model = Sequential([Dense(3, kernel_constraint="non_neg", bias_constraint=constraints.MaxNorm(0.1),
                              input_shape=(5,))])
    model.compile(optimizer="sgd", loss="mse")
    free = Sequential([Dense(3, input_shape=(5,))])
    free.compile(optimizer="sgd", loss="mse")
    free.set_weights(model.get_weights())
    steps = []
    for _ in range(3):  # each step: the unconstrained update, then the projection
        before = model.get_weights()
        free.set_weights(before)
        model.train_on_batch(x, y)
        free.train_on_batch(x, y)
        kernel, bias = free.get_weights()
        np.testing.assert_allclose(model.get_weights()[0], np.where(kernel >= 0, kernel, 0), rtol=1e-6)
        np.testing.assert_allclose(model.get_weights()[1], constraints.MaxNorm(0.1)(bias), rtol=1e-5)
        steps.append((kernel < 0).sum())
    assert sum(steps) > 0  # the constraint had something to do
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert model.get_weights()[0].min() >= 0 and np.linalg.norm(model.get_weights()[1]) <= 0.1 + 1e-6
    model.save(str(tmp_path / "m.distnn"))
    restored = load_model(str(tmp_path / "m.distnn"))
    assert isinstance(restored.layers[0].kernel_constraint, constraints.NonNeg)
    assert restored.layers[0].bias_constraint.max_value == 0.1


def test_add_weight_and_conv_constraints_are_applied():
    class Positive(Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", constraint="non_neg")

        def call(self, x):
            return x * self.scale

    x = RNG.normal(size=(16, 4, 4, 2)).astype("float32")
    model = Sequential([Conv2D(2, 3, kernel_constraint=constraints.UnitNorm(axis=(0, 1, 2)), input_shape=(4, 4, 2)),
                        Positive()])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, -np.ones((16, 2, 2, 2), "float32"), epochs=3, batch_size=8, verbose=0)
    kernel = model.layers[0].kernel.numpy()
    np.testing.assert_allclose(column_norms(kernel, axis=(0, 1, 2)), 1.0, rtol=1e-5)
    assert model.layers[1].scale.numpy().min() >= 0
