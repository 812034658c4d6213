"""Masks propagate as in Keras: a layer's ``compute_mask`` makes one, layers with ``supports_masking``
pass it on (whether or not their ``call`` takes it), and a ``call(..., mask=None)`` receives it, in
functional and Sequential models, in inference and in training."""
import numpy as np
import pytest

import distnn
from distnn import backend, layers, ops
from distnn.layers import base
from distnn.ops import Tape, Tensor
from distnn.ops.core import value_of


class ZeroMask(layers.Layer):
    """Marks the timesteps whose features are all zero as padding (Keras' Masking(0.0))."""

    def call(self, x):
        return x

    def compute_mask(self, x, mask=None):
        return np.any(value_of(x) != 0, axis=-1)


class Doubler(layers.Layer):
    """A new array out, a mask passed on: ``supports_masking`` and a call without ``mask``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, x):
        return x * 2


class MaskedMean(layers.Layer):
    """Averages the valid timesteps only: consumes the mask in ``call``."""

    def call(self, x, mask=None):
        self.seen = mask
        if mask is None:
            return ops.sum(x, axis=1) / x.shape[1]
        weights = ops.expand_dims(ops.cast(mask, x.dtype), -1)
        return ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)


def padded_batch():
    x = np.random.default_rng(0).standard_normal((3, 4, 2)).astype("float32")
    x[0, 2:] = 0  # sample 0 has 2 steps, sample 1 has 3
    x[1, 3:] = 0
    return x


EXPECTED_MASK = [[True, True, False, False], [True, True, True, False], [True, True, True, True]]


def functional(consumer):
    inputs = distnn.Input((4, 2))
    hidden = layers.Dense(3)(Doubler()(ZeroMask()(inputs)))
    return distnn.Model(inputs, consumer(hidden))


def sequential(consumer):
    return distnn.Sequential([distnn.Input((4, 2)), ZeroMask(), Doubler(), layers.Dense(3), consumer])


@pytest.mark.parametrize("build", [functional, sequential])
def test_mask_reaches_the_consumer_through_pass_through_layers(build):
    consumer = MaskedMean()
    model = build(consumer)
    x = padded_batch()
    out = model(x)
    assert consumer.seen.tolist() == EXPECTED_MASK
    # The masked mean is the mean over each sample's valid steps only.
    dense = [layer for layer in model.layers if isinstance(layer, layers.Dense)][0]
    h = (2 * x) @ dense.kernel.numpy() + dense.bias.numpy()
    want = [h[i, :n].mean(axis=0) for i, n in enumerate([2, 3, 4])]
    np.testing.assert_allclose(out, want, rtol=1e-5)
    assert base._context.masks == {}  # nothing outlives the outermost call


@pytest.mark.parametrize("build", [functional, sequential])
def test_padding_gets_no_gradient_in_training(build):
    consumer = MaskedMean()
    model = build(consumer)
    x = padded_batch()
    with Tape() as tape:
        leaf = Tensor(backend.to_device(x), tape)
        out = model(leaf, training=True)
    tape.backward([(out, np.ones(out.shape, "float32"))])
    assert consumer.seen.tolist() == EXPECTED_MASK
    valid = np.array(EXPECTED_MASK)
    assert (leaf.grad[~valid] == 0).all() and (leaf.grad[valid] != 0).all()
    model.compile(optimizer="sgd", loss="mse")
    consumer.seen = None
    assert np.isfinite(model.train_on_batch(x, np.ones((3, 3), "float32")))
    assert consumer.seen.tolist() == EXPECTED_MASK  # fit's training step sees the mask too


def test_a_layer_without_masking_support_ends_the_mask():
    consumer = MaskedMean()
    inputs = distnn.Input((4, 2))
    model = distnn.Model(inputs, consumer(layers.Conv1D(3, 1)(ZeroMask()(inputs))))
    model(padded_batch())
    assert consumer.seen is None


def test_merging_layers_combine_masks_in_a_model():
    consumer = MaskedMean()
    a, b = distnn.Input((4, 2)), distnn.Input((4, 2))
    model = distnn.Model([a, b], consumer(layers.add([ZeroMask()(a), ZeroMask()(b)])))
    x = padded_batch()
    y = x.copy()
    y[0, 2] = 1.0  # sample 0's third step is valid in the second input
    model([x, y])
    expected = np.array(EXPECTED_MASK)
    expected[0, 2] = True
    assert consumer.seen.tolist() == expected.tolist()
    consumer2 = MaskedMean()
    unmasked = distnn.Model([a, b], consumer2(layers.add([ZeroMask()(a), Doubler()(b)])))
    unmasked([x, x.copy()])
    assert consumer2.seen is None  # Keras: the OR needs every input's mask


def test_an_explicit_mask_argument_wins():
    consumer = MaskedMean()
    mask = backend.to_device(np.array([[True, False, False, False]] * 3))  # on the device: passed as is
    consumer(padded_batch(), mask=mask)
    assert consumer.seen is mask


def test_masks_cost_nothing_without_masking_layers():
    consumer = MaskedMean()
    model = distnn.Sequential([distnn.Input((4, 2)), layers.Dense(3), consumer])
    model(padded_batch())
    assert consumer.seen is None and base._context.masks == {}
