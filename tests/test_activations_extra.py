"""Keras 3's further activations: values against Keras 3's formulas, gradients against finite
differences (the argument-free ones are also in test_gradient_check.py's every-activation tests)."""
import numpy as np
import pytest

from distnn import activations, backend
from distnn.layers import Activation, Dense
from distnn.models import Sequential, load_model
from distnn.utils import check_layer_gradients

X = np.linspace(-7, 7, 57).reshape(3, 19) + 0.013  # off the kinks at 0, +-0.5, +-1, +-3, 6


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _softplus(x):
    return np.log1p(np.exp(x))


REFERENCE = {
    "relu6": lambda x: np.minimum(np.maximum(x, 0), 6),
    "exponential": np.exp,
    "log_softmax": lambda x: np.log(np.exp(x) / np.exp(x).sum(-1, keepdims=True)),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "hard_silu": lambda x: x * np.minimum(np.maximum(x + 3, 0), 6) / 6,
    "celu": lambda x: np.where(x > 0, x, np.exp(x) - 1),
    "sparse_plus": lambda x: np.where(x <= -1, 0, np.where(x >= 1, x, (x + 1) ** 2 / 4)),
    "squareplus": lambda x: (x + np.sqrt(x * x + 4)) / 2,
    "tanh_shrink": lambda x: x - np.tanh(x),
    "soft_shrink": lambda x: np.where(x > 0.5, x - 0.5, np.where(x < -0.5, x + 0.5, 0)),
    "hard_shrink": lambda x: np.where(np.abs(x) > 0.5, x, 0),
}
PARAMETRISED = [  # (activation, reference)
    (activations.CELU(alpha=0.5), lambda x: np.where(x > 0, x, 0.5 * (np.exp(x / 0.5) - 1))),
    (activations.Squareplus(b=1.0), lambda x: (x + np.sqrt(x * x + 1)) / 2),
    (activations.SoftShrink(threshold=1.2), lambda x: np.where(x > 1.2, x - 1.2, np.where(x < -1.2, x + 1.2, 0))),
    (activations.HardShrink(threshold=2.0), lambda x: np.where(np.abs(x) > 2, x, 0)),
    (activations.Threshold(threshold=0.3, default_value=-2.0), lambda x: np.where(x > 0.3, x, -2.0)),
    (activations.GLU(), lambda x: x[:, :9] * _sigmoid(x[:, 9:18])),
    (activations.GLU(axis=0), lambda x: x[:2] * _sigmoid(x[2:])),
]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_values_by_name_and_function(name):
    np.testing.assert_allclose(activations.get(name)(X.copy()), REFERENCE[name](X), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(getattr(activations, name)(X.copy()), REFERENCE[name](X), rtol=1e-12, atol=1e-12)
    out = np.empty_like(X)
    assert activations.get(name)(X.copy(), out=out) is out
    np.testing.assert_allclose(out, REFERENCE[name](X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation, reference", PARAMETRISED, ids=lambda a: getattr(a, "name", ""))
def test_parametrised_values_and_gradients(activation, reference):
    x = X[:, :18] if isinstance(activation, activations.GLU) and activation.axis == -1 else X
    x = np.concatenate([x, x[:1] * 0.7]) if isinstance(activation, activations.GLU) and activation.axis == 0 else x
    np.testing.assert_allclose(activation(x.copy()), reference(x), rtol=1e-12, atol=1e-12)
    # Finite differences through an Activation layer, on inputs chosen away from the kinks.
    layer = Activation(activation, dtype="float64")
    result = check_layer_gradients(layer, x=x.copy())
    assert result.errors and result.max_error <= 1e-6, str(result)


def test_functions_take_keras_arguments():
    np.testing.assert_allclose(activations.threshold(X, threshold=1.0, default_value=0.5),
                               np.where(X > 1.0, X, 0.5))
    np.testing.assert_allclose(activations.celu(X, alpha=2.0), np.where(X > 0, X, 2 * np.expm1(X / 2)))
    np.testing.assert_allclose(activations.glu(X[:, :18]), X[:, :9] * _sigmoid(X[:, 9:18]))
    assert activations.hard_swish is activations.hard_silu
    assert type(activations.get("hard_swish")) is activations.HardSiLU


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="Received: alpha=0"):
        activations.CELU(alpha=0)
    with pytest.raises(ValueError, match=r"Received: input of shape \(3, 19\)"):
        activations.glu(X)
    with pytest.raises(ValueError, match="Received: threshold=-1"):
        activations.SoftShrink(threshold=-1)


@pytest.mark.parametrize("activation", [activations.CELU(alpha=0.3), activations.Threshold(0.1, -1.0),
                                        activations.GLU(axis=-1), "mish", "hard_swish"])
def test_saved_and_restored(activation):
    original = activations.get(activation)
    restored = activations.deserialize(activations.serialize(original))
    assert type(restored) is type(original) and restored.get_config() == original.get_config()


def test_glu_halves_the_axis_in_an_activation_layer():
    assert Activation("glu")(X[:, :18]).shape == (3, 9)
    with pytest.raises(ValueError, match=r"Dense cannot apply glu.*Received: activation='glu'"):
        Dense(4, activation="glu")


def test_model_with_new_activations_saves_and_trains(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True) ** 2 / 4
    model = Sequential([Dense(8, activation="mish"), Dense(8, activation="squareplus"),
                        Dense(4, activation=activations.CELU(alpha=0.5)), Dense(1, activation="relu6")])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert model.predict(x, verbose=0).shape == (32, 1)
    path = tmp_path / "m.distnn"
    model.save(path)
    np.testing.assert_allclose(load_model(path).predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert backend.floatx() == "float32"
