"""Initializers: Keras' distributions, scales and fans; seeding; lookup and serialisation."""
import math

import numpy as np
import pytest

from distnn import initializers
from distnn.layers import Dense
from distnn.utils import set_random_seed

SHAPE = (400, 300)  # large enough for tight statistics: 120,000 draws
FAN_IN, FAN_OUT = 400, 300


def _draw(name_or_init, shape=SHAPE, seed=0):
    return initializers.get(name_or_init)(shape, "float64", np.random.default_rng(seed))


@pytest.mark.parametrize("name, limit", [
    ("glorot_uniform", math.sqrt(6 / (FAN_IN + FAN_OUT))),
    ("he_uniform", math.sqrt(6 / FAN_IN)),
    ("lecun_uniform", math.sqrt(3 / FAN_IN)),
])
def test_uniform_variance_scaling(name, limit):
    w = _draw(name)
    assert w.shape == SHAPE and w.dtype == np.float64
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.99 * limit  # the whole interval is used
    assert abs(w.std() - limit / math.sqrt(3)) < 0.01 * limit
    assert abs(w.mean()) < 0.01 * limit


@pytest.mark.parametrize("name, stddev", [
    ("glorot_normal", math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("he_normal", math.sqrt(2 / FAN_IN)),
    ("lecun_normal", math.sqrt(1 / FAN_IN)),
])
def test_truncated_normal_variance_scaling(name, stddev):
    w = _draw(name)
    # Truncated at two standard deviations of the untruncated normal, whose scale is chosen so that
    # the truncated distribution has the requested standard deviation.
    untruncated = stddev / 0.87962566103423978
    assert np.abs(w).max() <= 2 * untruncated
    assert abs(w.std() - stddev) < 0.01 * stddev


def test_variance_scaling_modes_and_untruncated_normal():
    w = _draw(initializers.VarianceScaling(scale=3.0, mode="fan_out", distribution="untruncated_normal"))
    assert abs(w.std() - math.sqrt(3.0 / FAN_OUT)) < 0.01 * math.sqrt(3.0 / FAN_OUT)
    assert np.abs(w).max() > 3 * math.sqrt(3.0 / FAN_OUT)  # not truncated
    with pytest.raises(ValueError, match="mode"):
        initializers.VarianceScaling(mode="fan_sideways")
    with pytest.raises(ValueError, match="scale"):
        initializers.VarianceScaling(scale=0)
    with pytest.raises(ValueError, match="distribution"):
        initializers.VarianceScaling(distribution="cauchy")


def test_convolution_kernel_fans():
    # Keras: fan_in = receptive field * input channels; here 3*3*16 = 144, fan_out = 3*3*32 = 288.
    w = initializers.GlorotUniform()((3, 3, 16, 32), "float64", np.random.default_rng(0))
    limit = math.sqrt(6 / (144 + 288))
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.98 * limit


def test_simple_initializers_and_keras_defaults():
    np.testing.assert_array_equal(_draw("zeros", (2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(_draw("ones", (2, 3)), np.ones((2, 3)))
    np.testing.assert_array_equal(initializers.Constant(2.5)((4,), "float32"), np.full(4, 2.5, np.float32))
    normal = _draw("random_normal")
    assert abs(normal.std() - 0.05) < 0.001 and abs(normal.mean()) < 0.001
    uniform = _draw("random_uniform")
    assert uniform.min() >= -0.05 and uniform.max() <= 0.05 and uniform.max() > 0.0499
    with pytest.raises(ValueError, match="minval"):
        initializers.RandomUniform(minval=1, maxval=0)


def test_seeded_initializer_repeats_and_ignores_the_global_generator():
    init = initializers.HeNormal(seed=7)
    a = init((5, 4), "float32", np.random.default_rng(1))
    b = init((5, 4), "float32", np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)  # Keras 3: a seeded initializer returns the same values
    assert not np.array_equal(a, initializers.HeNormal(seed=8)((5, 4), "float32"))
    set_random_seed(0)
    layer_a = Dense(4, kernel_initializer=initializers.GlorotUniform(seed=3))
    layer_a.build((None, 5))
    set_random_seed(99)
    layer_b = Dense(4, kernel_initializer=initializers.GlorotUniform(seed=3))
    layer_b.build((None, 5))
    np.testing.assert_array_equal(layer_a.kernel.numpy(), layer_b.kernel.numpy())


def test_unseeded_initializers_follow_the_global_seed():
    def kernel():
        layer = Dense(6)
        layer.build((None, 4))
        return layer.kernel.numpy()

    set_random_seed(5)
    first = kernel()
    set_random_seed(5)
    np.testing.assert_array_equal(first, kernel())
    assert not np.array_equal(first, kernel())


def test_lookup_by_name_class_name_config_and_errors():
    assert isinstance(initializers.get("he_normal"), initializers.HeNormal)
    assert isinstance(initializers.get("GlorotUniform"), initializers.GlorotUniform)
    restored = initializers.get(initializers.serialize(initializers.RandomNormal(mean=1.0, stddev=2.0, seed=4)))
    assert (restored.mean, restored.stddev, restored.seed) == (1.0, 2.0, 4)
    with pytest.raises(ValueError) as info:
        initializers.get("glorot_uniformm")
    assert "glorot_uniform" in str(info.value) and "he_normal" in str(info.value)
    with pytest.raises(TypeError, match="initializer"):
        initializers.get(1.0)


def test_dense_uses_its_initializers():
    layer = Dense(3, kernel_initializer="ones", bias_initializer=initializers.Constant(0.5))
    out = layer(np.array([[1.0, 2.0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[3.5, 3.5, 3.5]])
