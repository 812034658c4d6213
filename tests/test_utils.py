"""distnn.utils: to_categorical, normalize, set_random_seed, clear_session."""
import random

import numpy as np
import pytest

from distnn import utils
from distnn.layers import Dense


def test_to_categorical_matches_an_identity_lookup():
    labels = np.array([2, 0, 1, 2, 4])
    out = utils.to_categorical(labels)
    np.testing.assert_array_equal(out, np.eye(5)[labels])
    assert out.dtype == np.float32
    assert utils.to_categorical(labels, num_classes=7).shape == (5, 7)
    assert utils.to_categorical([1, 0], dtype="int64").dtype == np.int64


def test_to_categorical_shapes():
    column = np.array([[1], [0], [2]])  # a trailing axis of size 1 is dropped, as Keras does
    np.testing.assert_array_equal(utils.to_categorical(column, 3), np.eye(3)[[1, 0, 2]])
    grid = np.array([[0, 1], [2, 1]])
    np.testing.assert_array_equal(utils.to_categorical(grid, 3), np.eye(3)[grid])
    np.testing.assert_array_equal(utils.to_categorical(np.array([1.0, 2.0])), np.eye(3)[[1, 2]])


def test_to_categorical_errors():
    with pytest.raises(ValueError, match="num_classes=3"):
        utils.to_categorical([0, 3], num_classes=3)
    with pytest.raises(ValueError, match=">= 0"):
        utils.to_categorical([-1, 2])
    with pytest.raises(ValueError, match="integer"):
        utils.to_categorical([0.5, 1])


def test_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, -1.0]])
    out = utils.normalize(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [2 ** -0.5, -(2 ** -0.5)]])  # zero rows stay zero
    np.testing.assert_allclose(utils.normalize(x, axis=0, order=1), x / np.abs(x).sum(axis=0, keepdims=True))


def test_set_random_seed_seeds_python_numpy_and_distnn():
    def draws():
        layer = Dense(3)
        layer.build((None, 2))
        return random.random(), np.random.rand(), utils.global_rng().random(), layer.kernel.numpy()

    utils.set_random_seed(123)
    first = draws()
    utils.set_random_seed(123)
    second = draws()
    assert first[:3] == second[:3]
    np.testing.assert_array_equal(first[3], second[3])
    utils.set_random_seed(124)
    assert draws()[:3] != first[:3]
    with pytest.raises(ValueError, match="seed=-1"):
        utils.set_random_seed(-1)
    with pytest.raises(ValueError, match="seed=1.5"):
        utils.set_random_seed(1.5)


def test_clear_session_resets_automatic_names():
    Dense(1)
    utils.clear_session()
    assert Dense(1).name == "dense"
    assert Dense(1).name == "dense_1"


def test_gradient_checkers_are_exported():
    from distnn.gradient_check import check_layer_gradients

    assert utils.check_layer_gradients is check_layer_gradients
    with pytest.raises(AttributeError, match="no_such_helper"):
        utils.no_such_helper  # noqa: B018
