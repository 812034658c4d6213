"""Activation functions: forward values against textbook formulas, lookup, serialisation.

The derivatives are checked by finite differences in test_gradient_check.py.
"""
import math
import warnings

import numpy as np
import pytest

from conftest import run_python
from distnn import activations
from distnn.layers import Dense, register_serializable
from distnn.models import Sequential, load_model
from distnn.ops.math import erf_values

X = np.linspace(-6, 6, 49).reshape(7, 7)
_erf = np.vectorize(math.erf)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


REFERENCE = {
    "linear": lambda x: x,
    "relu": lambda x: np.where(x > 0, x, 0.0),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.2 * x),  # Keras 3 default negative_slope=0.2
    "elu": lambda x: np.where(x > 0, x, np.exp(x) - 1),
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * (np.exp(x) - 1)),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "softmax": lambda x: np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True),
    "softplus": lambda x: np.log(1 + np.exp(x)),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "swish": lambda x: x * _sigmoid(x),
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
    "hard_sigmoid": lambda x: np.clip(x + 3, 0, 6) / 6,  # Keras 3: relu6(x + 3) / 6
}


def test_every_builtin_has_a_reference():
    assert set(REFERENCE) == set(activations._CLASSES)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_forward_matches_formula(name):
    got = activations.get(name)(X.copy())
    np.testing.assert_allclose(got, REFERENCE[name](X), rtol=1e-12, atol=1e-12)
    # The module-level functions are the same computation.
    np.testing.assert_allclose(getattr(activations, name)(X.copy()), REFERENCE[name](X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_forward_into_out_buffer(name):
    out = np.empty_like(X)
    result = activations.get(name)(X.copy(), out=out)
    np.testing.assert_allclose(out, REFERENCE[name](X), rtol=1e-12, atol=1e-12)
    assert result is out


def test_gelu_approximate_and_parameters():
    x = X.copy()
    tanh_form = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(activations.gelu(x, approximate=True), tanh_form, rtol=1e-12)
    np.testing.assert_allclose(activations.leaky_relu(x, negative_slope=0.1), np.where(x > 0, x, 0.1 * x))
    np.testing.assert_allclose(activations.elu(x, alpha=0.5), np.where(x > 0, x, 0.5 * (np.exp(x) - 1)))
    with pytest.raises(ValueError, match="negative_slope"):
        activations.LeakyReLU(negative_slope=-1)


def test_extreme_inputs_stay_finite_without_warnings():
    x = np.array([[-1000.0, 0.0, 1000.0], [1e4, 1e4, -1e4]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("sigmoid", "softmax", "softplus", "tanh", "elu", "selu", "hard_sigmoid"):
            y = activations.get(name)(x.copy())
            assert np.isfinite(y).all(), name
    s = activations.softmax(x.astype(np.float64))
    np.testing.assert_allclose(s.sum(axis=-1), 1.0)
    np.testing.assert_allclose(s[1], [0.5, 0.5, 0.0])
    np.testing.assert_array_equal(activations.sigmoid(np.array([-1000.0, 1000.0])), [0.0, 1.0])


def test_get_resolves_names_aliases_none_and_instances():
    assert activations.get(None).name == "linear"
    assert activations.get("silu").name == "swish"
    instance = activations.LeakyReLU(0.3)
    assert activations.get(instance) is instance
    assert activations.get({"class_name": "leaky_relu", "config": {"negative_slope": 0.3}}).negative_slope == 0.3


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        activations.get("relux")
    message = str(info.value)
    assert "'relux'" in message
    for name in ("relu", "softmax", "tanh", "gelu"):
        assert name in message
    with pytest.raises(ValueError, match="relux"):
        Dense(3, activation="relux")
    with pytest.raises(TypeError, match="activation"):
        activations.get(3)


def test_callable_activation_trains_with_a_numeric_derivative():
    fn = activations.get(lambda x: x ** 3)
    x = np.linspace(-2, 2, 9)
    np.testing.assert_allclose(fn(x), x ** 3)
    grad = fn.backward(np.ones_like(x), x, fn(x))
    np.testing.assert_allclose(grad, 3 * x ** 2, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="custom activation"):
        activations.serialize(fn)


def test_serialize_round_trip():
    assert activations.serialize(activations.get("relu")) == "relu"
    leaky = activations.serialize(activations.LeakyReLU(0.05))
    assert leaky == {"class_name": "leaky_relu", "config": {"negative_slope": 0.05}}
    restored = activations.get(leaky)
    np.testing.assert_allclose(restored(X.copy()), np.where(X > 0, X, 0.05 * X))


@register_serializable
class CubeForTest(activations.ActivationFunction):
    """A user's activation: ``x ** 3 * scale``, with its derivative."""

    name = "cube_for_test"

    def __init__(self, scale=1.0):
        self.scale = scale

    def forward(self, x, out=None):
        y = self.scale * x ** 3
        if out is None:
            return y
        out[...] = y
        return out

    def backward(self, grad, x, y):
        grad *= 3 * self.scale * x ** 2
        return grad

    def get_config(self):
        return {"scale": self.scale}


def test_registered_custom_activation_saves_and_loads(tmp_path):
    model = Sequential([Dense(3, activation=CubeForTest(0.5), input_shape=(2,))])
    config = model.get_config()["layers"][0]["config"]["activation"]
    assert config == {"class_name": "CubeForTest", "config": {"scale": 0.5}}
    model.save(str(tmp_path / "m.distnn"))
    restored = load_model(str(tmp_path / "m.distnn"))
    assert isinstance(restored.layers[0].activation, CubeForTest) and restored.layers[0].activation.scale == 0.5
    x = np.array([[0.5, -1.0], [2.0, 1.0]], dtype="float32")
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))
    assert isinstance(activations.get("CubeForTest"), CubeForTest)


def test_gelu_needs_no_scipy(tmp_path):
    # scipy is not a dependency of distnn: the exact GELU must work where importing it fails.
    script = tmp_path / "gelu_without_scipy.py"
    script.write_text(
        "import math, sys\n"
        "sys.modules['scipy'] = None  # any import of scipy now raises ImportError\n"
        "import numpy as np\n"
        "from distnn import activations\n"
        "x = np.linspace(-8, 8, 161)\n"
        "gelu = activations.get('gelu')\n"
        "y = gelu(x.copy())\n"
        "erf = np.array([math.erf(v / math.sqrt(2)) for v in x])\n"
        "assert np.abs(y - 0.5 * x * (1 + erf)).max() < 1e-14, 'forward'\n"
        "d = gelu.backward(np.ones_like(x), x, y)\n"
        "expected = 0.5 * (1 + erf) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)\n"
        "assert np.abs(d - expected).max() < 1e-14, 'backward'\n"
        "print('ok')\n")
    result = run_python([str(script)], timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_erf_matches_math_erf_to_double_precision():
    x = np.concatenate([np.linspace(-30, 30, 20001), [0.46875, -0.46875, 4.0, -4.0, 27.0, 1e-300, -0.0]])
    expected = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(erf_values(x), expected, rtol=4e-16, atol=3e-16)
    assert np.signbit(erf_values(np.array([-0.0])))[0]  # erf is odd, -0 included, as math.erf
    np.testing.assert_array_equal(erf_values(np.array([np.inf, -np.inf])), [1.0, -1.0])
    assert np.isnan(erf_values(np.array([np.nan])))[0]
    single = erf_values(x.astype(np.float32))
    assert single.dtype == np.float32 and np.abs(single - expected).max() < 2e-7
