"""``distnn.ops`` neural-network ops: activations, softmax, one_hot, moments, batch_normalization and
the cross-entropies, against independent numpy formulas and finite differences."""
from __future__ import annotations

import math

import numpy as np
import pytest
from test_ops_gradcheck import check_gradient

from distnn import ops

rng = np.random.default_rng(99)
KINK_FREE = np.linspace(-4.9, 6.8, 24).reshape(4, 6) + 0.037  # away from 0, +-3 and 6
erf = np.vectorize(math.erf)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


ACTIVATIONS = {
    "relu": (ops.relu, lambda x: np.maximum(x, 0)),
    "relu6": (ops.relu6, lambda x: np.minimum(np.maximum(x, 0), 6)),
    "sigmoid": (ops.sigmoid, _sigmoid),
    "silu": (ops.silu, lambda x: x * _sigmoid(x)),
    "swish": (ops.swish, lambda x: x * _sigmoid(x)),
    "softplus": (ops.softplus, lambda x: np.log1p(np.exp(x))),
    "softsign": (ops.softsign, lambda x: x / (1 + np.abs(x))),
    "log_sigmoid": (ops.log_sigmoid, lambda x: -np.log1p(np.exp(-x))),
    "hard_sigmoid": (ops.hard_sigmoid, lambda x: np.clip(x / 6 + 0.5, 0, 1)),
    "leaky_relu": (ops.leaky_relu, lambda x: np.where(x > 0, x, 0.2 * x)),
    "leaky_relu_slope": (lambda x: ops.leaky_relu(x, negative_slope=0.05), lambda x: np.where(x > 0, x, 0.05 * x)),
    "elu": (ops.elu, lambda x: np.where(x > 0, x, np.exp(x) - 1)),
    "elu_alpha": (lambda x: ops.elu(x, alpha=0.7), lambda x: np.where(x > 0, x, 0.7 * (np.exp(x) - 1))),
    "selu": (ops.selu, lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * (np.exp(x) - 1))),
    "gelu": (ops.gelu, lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
    "gelu_exact": (lambda x: ops.gelu(x, approximate=False), lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2)))),
    "tanh": (ops.tanh, np.tanh),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_forward_and_gradient(name):
    op, reference = ACTIVATIONS[name]
    np.testing.assert_allclose(op(KINK_FREE), reference(KINK_FREE), rtol=1e-13, atol=1e-15)
    check_gradient(op, KINK_FREE)


def test_gelu_default_is_the_tanh_form_as_in_keras_3():
    x = np.array([-1.0, 0.5, 2.0])
    np.testing.assert_array_equal(ops.gelu(x), ops.gelu(x, approximate=True))
    assert np.abs(ops.gelu(x) - ops.gelu(x, approximate=False)).max() > 1e-5


@pytest.mark.parametrize("name", ["sigmoid", "softplus", "log_sigmoid", "silu", "elu", "selu", "gelu", "softsign"])
def test_activations_stay_finite_at_extremes(name):
    op = ACTIVATIONS[name][0]
    x = np.array([-1000.0, -50.0, 50.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        value, (grad,) = ops.value_and_grad(op, x)
    assert np.isfinite(value).all() and np.isfinite(grad).all()


@pytest.mark.parametrize("axis", [-1, 0, 1, (1, 2)], ids=str)
def test_softmax_and_log_softmax(axis):
    x = rng.standard_normal((2, 3, 4)) * 3
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    expected = e / e.sum(axis=axis, keepdims=True)
    np.testing.assert_allclose(ops.softmax(x, axis=axis), expected, rtol=1e-13)
    np.testing.assert_allclose(ops.log_softmax(x, axis=axis), np.log(expected), rtol=1e-12, atol=1e-13)
    check_gradient(lambda t: ops.softmax(t, axis), x)
    check_gradient(lambda t: ops.log_softmax(t, axis=axis), x)


def test_softmax_is_stable_for_large_logits():
    y = ops.softmax(np.array([[1000.0, 0.0, -1000.0]]))
    np.testing.assert_allclose(y, [[1.0, 0.0, 0.0]])


def test_one_hot():
    labels = np.array([[0, 2], [-1, 1]])
    expected = np.zeros((2, 2, 3), np.float32)
    expected[0, 0, 0] = expected[0, 1, 2] = expected[1, 1, 1] = 1  # -1 gives a row of zeros, as Keras
    result = ops.one_hot(labels, 3)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, expected)
    np.testing.assert_array_equal(ops.one_hot(labels, 3, axis=0), np.moveaxis(expected, -1, 0))
    assert ops.one_hot(labels, 3, dtype="int32").dtype == np.int32
    with pytest.raises(ValueError, match="sparse=True"):
        ops.one_hot(labels, 3, sparse=True)


# ---------------------------------------------------------------------------- normalization
@pytest.mark.parametrize("axes", [[0], [0, 1], (0, 1, 2)], ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_moments(axes, keepdims):
    x = rng.standard_normal((3, 4, 2)) + 1.5
    mean, variance = ops.moments(x, axes, keepdims=keepdims)
    np.testing.assert_allclose(mean, x.mean(axis=tuple(axes), keepdims=keepdims), rtol=1e-13)
    np.testing.assert_allclose(variance, x.var(axis=tuple(axes), keepdims=keepdims), rtol=1e-12)
    weight = rng.standard_normal(np.shape(variance))
    check_gradient(lambda t: ops.add(ops.moments(t, axes, keepdims)[0],
                                     ops.multiply(ops.moments(t, axes, keepdims)[1], weight)), x)


def test_moments_of_float16_are_computed_in_float32():
    x = (rng.standard_normal((64, 3)) * 40).astype(np.float16)  # sum of squares > float16's max 65504
    mean, variance = ops.moments(x, axes=[0])
    assert mean.dtype == np.float16 and variance.dtype == np.float16
    np.testing.assert_allclose(variance, x.astype(np.float64).var(axis=0), rtol=2e-3)
    with pytest.raises(NotImplementedError, match="synchronized"):
        ops.moments(x, axes=[0], synchronized=True)


@pytest.mark.parametrize("axis", [-1, 1])
def test_batch_normalization(axis):
    x = rng.standard_normal((4, 3, 5))
    channels = x.shape[axis]
    mean, variance = rng.standard_normal(channels), rng.uniform(0.5, 2.0, channels)
    offset, scale = rng.standard_normal(channels), rng.uniform(0.5, 2.0, channels)
    shape = [1, 1, 1]
    shape[axis] = channels
    expected = (x - mean.reshape(shape)) / np.sqrt(variance.reshape(shape) + 1e-3) * scale.reshape(shape) + \
        offset.reshape(shape)
    np.testing.assert_allclose(ops.batch_normalization(x, mean, variance, axis, offset, scale), expected, rtol=1e-12)
    np.testing.assert_allclose(ops.batch_normalization(x, mean, variance, axis=axis),
                               (x - mean.reshape(shape)) / np.sqrt(variance.reshape(shape) + 1e-3), rtol=1e-12)
    check_gradient(lambda *a: ops.batch_normalization(a[0], a[1], a[2], axis, a[3], a[4], epsilon=0.01),
                   x, mean, variance, offset, scale)


def test_batch_normalization_with_batch_statistics_is_differentiated_through_them():
    x = rng.standard_normal((6, 3))
    offset, scale = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)

    def normalize(t, beta, gamma):
        mean, variance = ops.moments(t, axes=[0])
        return ops.batch_normalization(t, mean, variance, axis=-1, offset=beta, scale=gamma)

    check_gradient(normalize, x, offset, scale)
    normalized = normalize(x, np.zeros(3), np.ones(3))
    np.testing.assert_allclose(normalized.mean(axis=0), 0, atol=1e-12)


def test_batch_normalization_rejects_a_parameter_of_the_wrong_size():
    with pytest.raises(ValueError, match="variance must have one value per channel"):
        ops.batch_normalization(np.ones((2, 3)), np.zeros(3), np.ones(4), axis=-1)


# ---------------------------------------------------------------------------- cross-entropy
def _probabilities(shape, axis=-1):
    p = rng.uniform(0.1, 1.0, shape)
    return p / p.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis", [-1, 0])
def test_categorical_crossentropy(axis):
    target, output = _probabilities((4, 3), axis), _probabilities((4, 3), axis) * 1.7  # unnormalized output
    expected = -(target * np.log(output / output.sum(axis=axis, keepdims=True))).sum(axis=axis)
    np.testing.assert_allclose(ops.categorical_crossentropy(target, output, axis=axis), expected, rtol=1e-13)
    check_gradient(lambda t, o: ops.categorical_crossentropy(t, o, axis=axis), target, output)
    logits = rng.standard_normal((4, 3))
    log_probs = logits - np.log(np.exp(logits).sum(axis=axis, keepdims=True))
    np.testing.assert_allclose(ops.categorical_crossentropy(target, logits, from_logits=True, axis=axis),
                               -(target * log_probs).sum(axis=axis), rtol=1e-13)
    check_gradient(lambda t, z: ops.categorical_crossentropy(t, z, True, axis), target, logits)


def test_categorical_crossentropy_gradient_is_consistent_with_the_clipped_value():
    target = np.array([[0.3, 0.3, 0.4]])
    output = np.array([[0.6, 1e-12, 0.4]])  # the middle probability is clipped up to 1e-7
    q = np.clip(output / output.sum(), 1e-7, 1 - 1e-7)
    np.testing.assert_allclose(ops.categorical_crossentropy(target, output), -(target * np.log(q)).sum(axis=-1))
    # finite differences that stay inside the clipped region see a flat loss in the middle entry;
    # without the clip's zero gradient it would be -0.3 / 1e-12
    grads = check_gradient(ops.categorical_crossentropy, target, output, step=1e-9)
    assert np.abs(grads[1]).max() < 10


@pytest.mark.parametrize("target_shape", [(4,), (4, 1)])
def test_sparse_categorical_crossentropy(target_shape):
    labels = np.array([0, 2, 1, 2]).reshape(target_shape)
    output = _probabilities((4, 3))
    expected = -np.log(output[np.arange(4), labels.ravel()])
    np.testing.assert_allclose(ops.sparse_categorical_crossentropy(labels, output), expected, rtol=1e-13)
    check_gradient(lambda o: ops.sparse_categorical_crossentropy(labels, o), output)
    logits = rng.standard_normal((4, 3))
    np.testing.assert_allclose(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True),
                               ops.categorical_crossentropy(np.eye(3)[labels.ravel()], logits, from_logits=True))
    check_gradient(lambda z: ops.sparse_categorical_crossentropy(labels, z, from_logits=True), logits)


def test_sparse_categorical_crossentropy_on_another_axis():
    labels = np.array([[0, 2], [1, 1]])
    logits = rng.standard_normal((2, 3, 2))
    expected = ops.categorical_crossentropy(np.moveaxis(np.eye(3)[labels], -1, 1), logits, from_logits=True, axis=1)
    np.testing.assert_allclose(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True, axis=1), expected)
    check_gradient(lambda z: ops.sparse_categorical_crossentropy(labels, z, True, 1), logits)


def test_binary_crossentropy():
    target, output = rng.uniform(0, 1, (3, 4)), rng.uniform(0.05, 0.95, (3, 4))
    expected = -(target * np.log(output) + (1 - target) * np.log(1 - output))
    np.testing.assert_allclose(ops.binary_crossentropy(target, output), expected, rtol=1e-13)
    check_gradient(ops.binary_crossentropy, target, output)
    logits = rng.standard_normal((3, 4)) * 3
    p = _sigmoid(logits)
    np.testing.assert_allclose(ops.binary_crossentropy(target, logits, from_logits=True),
                               -(target * np.log(p) + (1 - target) * np.log(1 - p)), rtol=1e-12)
    check_gradient(lambda t, z: ops.binary_crossentropy(t, z, from_logits=True), target, logits)
    assert np.isfinite(ops.binary_crossentropy(np.array([1.0, 0.0]), np.array([-800.0, 800.0]), True)).all()


def test_binary_crossentropy_clipped_probabilities_get_no_gradient():
    target, output = np.array([1.0, 0.0, 1.0]), np.array([1e-12, 1 - 1e-12, 0.3])
    np.testing.assert_allclose(ops.binary_crossentropy(target, output)[:2], -math.log(1e-7), rtol=1e-6)
    grads = check_gradient(ops.binary_crossentropy, target, output, step=1e-9)
    np.testing.assert_array_equal(grads[1][:2], 0.0)


def test_crossentropies_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        ops.categorical_crossentropy(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="same shape"):
        ops.binary_crossentropy(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="target must have output's shape"):
        ops.sparse_categorical_crossentropy(np.ones((3,), int), np.ones((2, 4)))


# ------------------------------------------------------------------------------- float32
@pytest.mark.parametrize("fn", [
    ops.softmax, ops.gelu, lambda x: ops.gelu(x, approximate=False), ops.sigmoid, ops.erf, ops.silu,
    lambda x: ops.categorical_crossentropy(ops.softmax(x), ops.softmax(x * 2)),
    lambda x: ops.binary_crossentropy(ops.sigmoid(x), ops.sigmoid(x * 2)),
    lambda x: ops.batch_normalization(x, *ops.moments(x, [0]), axis=-1),
    lambda x: ops.norm(x, axis=-1), lambda x: ops.logsumexp(x, axis=0), lambda x: ops.prod(x, 1)], ids=str)
def test_float32_stays_float32(fn):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    value, (grad,) = ops.value_and_grad(fn, x)
    assert value.dtype == np.float32 and grad.dtype == np.float32
