"""Activation functions with their derivatives.

Each activation is a small object: ``fn(x)`` computes the forward pass and
``fn.backward(grad, x, y)`` turns dL/dy into dL/dx given the input ``x`` and output ``y``.
Most derivatives can be written in terms of ``y`` alone; those activations set
``needs_input = False`` so layers may apply them in place and keep only the output.

Strings (Keras spellings) or callables are accepted wherever an activation is::

    Dense(64, activation="relu")
    Dense(64, activation=distnn.activations.get("leaky_relu"))

The plain functions (``distnn.activations.relu(x)``, ...) work on numpy and cupy arrays.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from distnn import serialization
from distnn.backend import get_array_module
from distnn.ops.math import erf_values

_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805


class ActivationFunction:
    """Base class: subclasses implement ``forward`` and ``backward``."""

    name = "activation"
    needs_input = True  # False when backward() can work from y alone (then x may be overwritten)

    def __call__(self, x: Any, out: Any = None) -> Any:
        return self.forward(x, out)

    def forward(self, x: Any, out: Any = None) -> Any:
        raise NotImplementedError

    def backward(self, grad: Any, x: Any, y: Any) -> Any:
        """dL/dx from ``grad`` = dL/dy; may overwrite ``grad`` and returns the result."""
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"<activation {self.name}>"


class Linear(ActivationFunction):
    name = "linear"
    needs_input = False

    def forward(self, x, out=None):
        if out is None or out is x:
            return x
        out[...] = x
        return out

    def backward(self, grad, x, y):
        return grad


class ReLU(ActivationFunction):
    name = "relu"
    needs_input = False

    def forward(self, x, out=None):
        return get_array_module(x).maximum(x, 0, out=out)

    def backward(self, grad, x, y):
        grad *= y > 0
        return grad


class LeakyReLU(ActivationFunction):
    name = "leaky_relu"
    needs_input = False  # for a positive slope, y > 0 exactly where x > 0

    def __init__(self, negative_slope: float = 0.2):
        if negative_slope < 0:
            raise ValueError(f"leaky_relu negative_slope must be >= 0. Received: negative_slope={negative_slope}")
        self.negative_slope = float(negative_slope)

    def forward(self, x, out=None):
        xp = get_array_module(x)
        return xp.maximum(x, x * self.negative_slope, out=out)

    def backward(self, grad, x, y):
        xp = get_array_module(grad)
        grad *= xp.where(y > 0, 1.0, self.negative_slope).astype(grad.dtype, copy=False)
        return grad

    def get_config(self):
        return {"negative_slope": self.negative_slope}


class ELU(ActivationFunction):
    name = "elu"
    needs_input = False  # for x < 0, dy/dx = y + alpha

    def __init__(self, alpha: float = 1.0):
        self.alpha = float(alpha)

    def forward(self, x, out=None):
        xp = get_array_module(x)
        neg = self.alpha * xp.expm1(xp.minimum(x, 0))
        return xp.where(x > 0, x, neg) if out is None else _assign(out, xp.where(x > 0, x, neg))

    def backward(self, grad, x, y):
        xp = get_array_module(grad)
        grad *= xp.where(y > 0, 1.0, y + self.alpha).astype(grad.dtype, copy=False)
        return grad

    def get_config(self):
        return {"alpha": self.alpha}


class SELU(ActivationFunction):
    name = "selu"
    needs_input = False

    def forward(self, x, out=None):
        xp = get_array_module(x)
        y = _SELU_SCALE * xp.where(x > 0, x, _SELU_ALPHA * xp.expm1(xp.minimum(x, 0)))
        return y if out is None else _assign(out, y)

    def backward(self, grad, x, y):
        xp = get_array_module(grad)
        grad *= xp.where(y > 0, _SELU_SCALE, y + _SELU_SCALE * _SELU_ALPHA).astype(grad.dtype, copy=False)
        return grad


class Sigmoid(ActivationFunction):
    name = "sigmoid"
    needs_input = False

    def forward(self, x, out=None):
        # 0.5 * tanh(x / 2) + 0.5 is the logistic function without exp overflow warnings.
        xp = get_array_module(x)
        y = xp.multiply(x, 0.5, out=out)
        xp.tanh(y, out=y)
        y *= 0.5
        y += 0.5
        return y

    def backward(self, grad, x, y):
        grad *= y * (1 - y)
        return grad


class Tanh(ActivationFunction):
    name = "tanh"
    needs_input = False

    def forward(self, x, out=None):
        return get_array_module(x).tanh(x, out=out)

    def backward(self, grad, x, y):
        grad *= 1 - y * y
        return grad


class Softmax(ActivationFunction):
    """Softmax over the last axis (Keras' default ``axis=-1``)."""

    name = "softmax"
    needs_input = False

    def forward(self, x, out=None):
        xp = get_array_module(x)
        y = xp.subtract(x, x.max(axis=-1, keepdims=True), out=out)
        xp.exp(y, out=y)
        y /= y.sum(axis=-1, keepdims=True)
        return y

    def backward(self, grad, x, y):
        # Jacobian-vector product: y * (g - sum(g * y)).
        dot = (grad * y).sum(axis=-1, keepdims=True)
        grad -= dot
        grad *= y
        return grad


class Softplus(ActivationFunction):
    name = "softplus"
    needs_input = False  # dy/dx = sigmoid(x) = 1 - exp(-y)

    def forward(self, x, out=None):
        return get_array_module(x).logaddexp(0, x, out=out)

    def backward(self, grad, x, y):
        xp = get_array_module(grad)
        grad *= -xp.expm1(-y)
        return grad


class Softsign(ActivationFunction):
    name = "softsign"
    needs_input = False  # dy/dx = 1 / (1 + |x|)^2 = (1 - |y|)^2

    def forward(self, x, out=None):
        xp = get_array_module(x)
        return xp.divide(x, 1 + xp.abs(x), out=out)

    def backward(self, grad, x, y):
        xp = get_array_module(grad)
        grad *= (1 - xp.abs(y)) ** 2
        return grad


class Swish(ActivationFunction):
    """``x * sigmoid(x)``, also known as SiLU."""

    name = "swish"

    def forward(self, x, out=None):
        s = Sigmoid().forward(x)
        return get_array_module(x).multiply(x, s, out=out)

    def backward(self, grad, x, y):
        s = Sigmoid().forward(x)
        grad *= s * (1 + x * (1 - s))
        return grad


class GELU(ActivationFunction):
    """Gaussian error linear unit; exact (erf) by default as in Keras, tanh form with ``approximate``."""

    name = "gelu"

    def __init__(self, approximate: bool = False):
        self.approximate = bool(approximate)

    def forward(self, x, out=None):
        xp = get_array_module(x)
        if self.approximate:
            inner = _SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)
            y = 0.5 * x * (1 + xp.tanh(inner))
        else:
            y = 0.5 * x * (1 + erf_values(x / _SQRT_2))
        return y if out is None else _assign(out, y)

    def backward(self, grad, x, y):
        xp = get_array_module(x)
        if self.approximate:
            inner = _SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)
            t = xp.tanh(inner)
            d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
        else:
            d = 0.5 * (1 + erf_values(x / _SQRT_2)) + x * xp.exp(-0.5 * x * x) / _SQRT_2PI
        grad *= d
        return grad

    def get_config(self):
        return {"approximate": self.approximate}


class HardSigmoid(ActivationFunction):
    """Keras 3's ``relu6(x + 3) / 6``: slope 1/6 on (-3, 3), 0 or 1 outside."""

    name = "hard_sigmoid"
    needs_input = False

    def forward(self, x, out=None):
        xp = get_array_module(x)
        y = xp.multiply(x, 1.0 / 6.0, out=out)
        y += 0.5
        return xp.clip(y, 0, 1, out=y)

    def backward(self, grad, x, y):
        grad *= ((y > 0) & (y < 1)) * (1.0 / 6.0)
        return grad


_SQRT_2 = 2.0 ** 0.5
_SQRT_2PI = (2.0 * 3.141592653589793) ** 0.5
_SQRT_2_OVER_PI = (2.0 / 3.141592653589793) ** 0.5


def _assign(out: Any, value: Any) -> Any:
    out[...] = value
    return out


_CLASSES: dict[str, type[ActivationFunction]] = {
    cls.name: cls for cls in (Linear, ReLU, LeakyReLU, ELU, SELU, Sigmoid, Tanh, Softmax, Softplus,
                              Softsign, Swish, GELU, HardSigmoid)
}
# Keras names ("relu", "silu") and class names ("LeakyReLU"), for names and saved configurations.
_TABLE: dict[str, type[ActivationFunction]] = {**_CLASSES, "silu": Swish,
                                               **{cls.__name__: cls for cls in _CLASSES.values()}}
serialization.register_builtins("distnn.activations", _TABLE)


class _CallableActivation(ActivationFunction):
    """Wraps a user function ``f(x)``; its derivative is taken by central differences per element.

    Slower than the built-ins but correct for any smooth element-wise function, so a Keras user's
    ``activation=lambda x: ...`` still trains.
    """

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn
        self.name = getattr(fn, "__name__", "custom")

    def forward(self, x, out=None):
        y = self.fn(x)
        return y if out is None else _assign(out, y)

    def backward(self, grad, x, y):
        h = 1e-3 if x.dtype.itemsize <= 4 else 1e-6
        grad *= (self.fn(x + h) - self.fn(x - h)) / (2 * h)
        return grad


def get(identifier: str | dict | Callable | ActivationFunction | None) -> ActivationFunction:
    """Resolve an activation from a name, a saved configuration, an ``ActivationFunction``, a
    callable or ``None`` (linear). A name may also be a registered custom activation's."""
    if isinstance(identifier, ActivationFunction):
        return identifier
    if identifier is None:
        return Linear()
    if isinstance(identifier, (str, dict)):
        resolved = serialization.resolve(identifier, _TABLE, "activation")
        if isinstance(resolved, ActivationFunction):
            return resolved
        if not inspect.isroutine(resolved):
            raise ValueError(f"{identifier!r} does not name an activation. Received: {resolved!r}")
        identifier = resolved
    if callable(identifier) and not isinstance(identifier, type):
        built_in = getattr(identifier, "_activation_name", None)  # distnn.activations.relu and the like
        return _CLASSES[built_in]() if built_in else _CallableActivation(identifier)
    raise TypeError(f"activation must be a string, a callable or None. Received: activation={identifier!r}")


def deserialize(config: str | dict, custom_objects: dict | None = None) -> ActivationFunction:
    """The activation ``serialize`` described (``custom_objects`` maps names to user classes or functions)."""
    with serialization.custom_object_scope(custom_objects):
        return get(config)


def serialize(activation: ActivationFunction) -> str | dict:
    """A JSON-serialisable description: a built-in with default arguments becomes its name (as in
    Keras), a custom ``ActivationFunction`` its registered class name and config, a plain function
    its registered name."""
    if isinstance(activation, _CallableActivation):
        try:
            return serialization.serialize_keras_object(activation.fn)
        except ValueError as exc:
            raise ValueError(f"Cannot serialize the custom activation {activation.name!r}: define it as a named "
                             "function or an ActivationFunction subclass, registered with "
                             "@distnn.saving.register_keras_serializable()") from exc
    if type(activation) not in _CLASSES.values():
        return serialization.serialize_keras_object(activation)
    config = activation.get_config()
    return activation.name if not config else {"class_name": activation.name, "config": config}


def _functional(name: str) -> Callable[..., Any]:
    def fn(x: Any, **kwargs: Any) -> Any:
        return _CLASSES[name](**kwargs).forward(x)

    fn.__name__ = name
    fn._activation_name = name
    fn.__doc__ = f"Apply the {name} activation to ``x`` (numpy or cupy)."
    return fn


linear = _functional("linear")
relu = _functional("relu")
leaky_relu = _functional("leaky_relu")
elu = _functional("elu")
selu = _functional("selu")
sigmoid = _functional("sigmoid")
tanh = _functional("tanh")
softmax = _functional("softmax")
softplus = _functional("softplus")
softsign = _functional("softsign")
swish = silu = _functional("swish")
gelu = _functional("gelu")
hard_sigmoid = _functional("hard_sigmoid")
