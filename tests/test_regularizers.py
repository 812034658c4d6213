"""Regularizers: penalties and gradients against direct formulas; their effect on training."""
import numpy as np
import pytest

from distnn import optimizers, regularizers
from distnn.layers import Dense
from distnn.models import Sequential

W = np.array([[0.5, -1.5, 2.0], [-0.25, 0.0, 3.0]])


def test_keras_defaults_and_string_names():
    assert regularizers.get("l1").get_config() == {"l1": 0.01}
    assert regularizers.get("l2").get_config() == {"l2": 0.01}
    assert regularizers.get("l1_l2").get_config() == {"l1": 0.0, "l2": 0.0}  # Keras 3's L1L2() defaults
    assert regularizers.get(None) is None
    with pytest.raises(ValueError) as info:
        regularizers.get("l3")
    assert "'l3'" in str(info.value) and "l1_l2" in str(info.value)
    with pytest.raises(ValueError, match="l1=-1"):
        regularizers.L1L2(l1=-1)


@pytest.mark.parametrize("reg, penalty, gradient", [
    (regularizers.L1(0.3), 0.3 * np.abs(W).sum(), 0.3 * np.sign(W)),
    (regularizers.L2(0.2), 0.2 * (W ** 2).sum(), 0.4 * W),
    (regularizers.L1L2(l1=0.1, l2=0.05), 0.1 * np.abs(W).sum() + 0.05 * (W ** 2).sum(), 0.1 * np.sign(W) + 0.1 * W),
])
def test_penalty_and_gradient(reg, penalty, gradient):
    assert reg(W) == pytest.approx(penalty, rel=1e-12)
    np.testing.assert_allclose(reg.gradient(W), gradient, rtol=1e-12)
    restored = regularizers.get(regularizers.serialize(reg))
    assert type(restored) is type(reg) and restored(W) == pytest.approx(penalty, rel=1e-12)


@pytest.mark.parametrize("reg", [regularizers.L1(0.3), regularizers.L2(0.2), regularizers.L1L2(0.1, 0.05)])
def test_gradient_matches_finite_differences(reg):
    w = W.copy()
    w[w == 0] = 0.1  # away from L1's kink
    eps = 1e-6
    numeric = np.zeros_like(w)
    for i in np.ndindex(w.shape):
        plus, minus = w.copy(), w.copy()
        plus[i] += eps
        minus[i] -= eps
        numeric[i] = (reg(plus) - reg(minus)) / (2 * eps)
    np.testing.assert_allclose(reg.gradient(w), numeric, rtol=1e-6, atol=1e-9)


def _regularised_model():
    model = Sequential([Dense(4, input_shape=(3,), kernel_regularizer=regularizers.L2(0.1),
                              bias_regularizer="l1", bias_initializer="ones"),
                        Dense(1, kernel_regularizer=regularizers.L1L2(0.01, 0.02))])
    model.compile(optimizer=optimizers.SGD(0.1), loss="mse")
    return model


def test_reported_loss_includes_the_penalty():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)).astype("float32"), rng.normal(size=(20, 1)).astype("float32")
    model = _regularised_model()
    k1, b1, k2, _ = [w.astype(np.float64) for w in model.get_weights()]
    data_loss = ((model.predict(x, verbose=0) - y) ** 2).mean()
    penalty = 0.1 * (k1 ** 2).sum() + 0.01 * np.abs(b1).sum() + 0.01 * np.abs(k2).sum() + 0.02 * (k2 ** 2).sum()
    assert model.evaluate(x, y, verbose=0) == pytest.approx(data_loss + penalty, rel=1e-5)


def test_update_includes_the_penalty_gradient():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(16, 3)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")
    plain = Sequential([Dense(4, input_shape=(3,)), Dense(1)])
    plain.compile(optimizer=optimizers.SGD(0.1), loss="mse")
    regularised = _regularised_model()
    plain.set_weights(regularised.get_weights())
    before = regularised.get_weights()
    plain.fit(x, y, batch_size=16, epochs=1, verbose=0)
    regularised.fit(x, y, batch_size=16, epochs=1, verbose=0)
    # The difference between the two updates is lr * the penalty's gradient, weight by weight.
    k1, b1, k2, _ = before
    expected_extra = [0.1 * 0.2 * k1, 0.1 * 0.01 * np.sign(b1), 0.1 * (0.01 * np.sign(k2) + 0.04 * k2), 0.0]
    for p, r, extra in zip(plain.get_weights(), regularised.get_weights(), expected_extra):
        np.testing.assert_allclose(p - r, extra, atol=2e-6)
