"""A custom layer and a custom loss, trained, gradient-checked, saved and loaded again.

    python examples/custom_layer_and_loss.py [--epochs 300] [--seed 0]

A layer subclasses ``distnn.layers.Layer``: ``build`` creates weights with ``add_weight``, ``call``
is the forward pass, ``backward`` writes the weight gradients *in place* into ``variable.grad``
and returns dL/dx, and ``get_config`` returns the constructor arguments. A loss subclasses
``distnn.losses.Loss`` with ``call`` (one value per sample) and ``gradient`` (d value / d y_pred).
``@register_serializable`` lets ``load_model`` rebuild both from a saved file without
``custom_objects``.
"""
# First: under an MPI launcher this starts MPI, so an error in any later import ends the whole job.
import distnn  # noqa: F401,I001

import argparse
import os
import tempfile

import numpy as np

from distnn import backend, initializers
from distnn.layers import Dense, Layer, register_serializable
from distnn.losses import Loss
from distnn.models import Sequential, load_model
from distnn.utils import check_layer_gradients, check_loss_gradients, set_random_seed


@register_serializable
class ParametricReLU(Layer):
    """``max(x, 0) + alpha * min(x, 0)`` with one learned slope ``alpha`` per feature.

    Args:
        alpha_initial: the starting slope of every feature.

    Input shape:
        ``(batch_size, ..., features)``.

    Output shape:
        Same as the input.
    """

    def __init__(self, alpha_initial: float = 0.25, **kwargs):
        super().__init__(**kwargs)
        self.alpha_initial = float(alpha_initial)

    def build(self, input_shape):
        self.alpha = self.add_weight("alpha", (input_shape[-1],), initializers.Constant(self.alpha_initial))

    def call(self, x, training=False):
        xp = backend.get_array_module(x)
        self._negative = xp.minimum(x, 0)
        return xp.maximum(x, 0) + self.alpha.value * self._negative

    def backward(self, grad):
        # In place: alpha.grad is a view into the model's flat gradient buffer.
        features = grad.shape[-1]
        self.alpha.grad[...] = (grad * self._negative).reshape(-1, features).sum(axis=0)
        return grad * backend.get_array_module(grad).where(self._negative < 0, self.alpha.value, 1.0)

    def get_config(self):
        return {**super().get_config(), "alpha_initial": self.alpha_initial}


@register_serializable
class MeanPowerError(Loss):
    """``mean(|y_pred - y_true| ** power)`` over the last axis; ``power=2`` is the squared error.

    Args:
        power: the exponent, > 1 so that the loss is differentiable everywhere.
    """

    def __init__(self, power: float = 3.0, **kwargs):
        super().__init__(**kwargs)
        if power <= 1:
            raise ValueError(f"power must be > 1. Received: power={power}")
        self.power = float(power)

    def call(self, y_true, y_pred):
        xp = backend.get_array_module(y_pred)
        return (xp.abs(y_pred - y_true) ** self.power).mean(axis=-1)

    def gradient(self, y_true, y_pred):
        xp = backend.get_array_module(y_pred)
        d = y_pred - y_true
        return self.power * xp.sign(d) * xp.abs(d) ** (self.power - 1) / y_pred.shape[-1]

    def get_config(self):
        return {**super().get_config(), "power": self.power}


def make_data(n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 1-D regression problem, ``y = |x| - 0.5 * x`` plus a little noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n, 1)).astype("float32")
    y = (np.abs(x) - 0.5 * x + 0.05 * rng.standard_normal((n, 1))).astype("float32")
    return x, y


def build_model() -> Sequential:
    model = Sequential()
    model.add(Dense(16, input_shape=(1,)))
    model.add(ParametricReLU())
    model.add(Dense(1))
    model.compile(optimizer="adam", loss=MeanPowerError(power=3))
    return model


def main(argv=None) -> float:
    """Check the gradients, train, save and reload; returns the reloaded model's test loss."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    set_random_seed(args.seed)

    # Verify backward() and gradient() against finite differences before training.
    layer_check = check_layer_gradients(ParametricReLU(dtype="float64"), input_shape=(8, 5))
    loss_check = check_loss_gradients(MeanPowerError(), np.zeros((8, 3)), np.random.default_rng(0).normal(size=(8, 3)))
    print(f"gradient check: layer {layer_check.max_error:.1e}, loss {loss_check.max_error:.1e}")

    x_train, y_train = make_data(256, seed=args.seed)
    x_test, y_test = make_data(64, seed=args.seed + 1)
    model = build_model()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)

    path = os.path.join(tempfile.mkdtemp(), "custom.distnn")
    model.save(path)
    restored = load_model(path)  # the registered classes are found by name
    assert np.array_equal(restored.predict(x_test, verbose=0), model.predict(x_test, verbose=0))
    test_loss = restored.evaluate(x_test, y_test, verbose=0)
    print(f"test_loss={test_loss:.4f}")
    return test_loss


if __name__ == "__main__":
    main()
