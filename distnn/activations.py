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


class ReLU6(ActivationFunction):
    """``min(max(x, 0), 6)``."""

    name = "relu6"
    needs_input = False

    def forward(self, x, out=None):
        return get_array_module(x).clip(x, 0, 6, out=out)

    def backward(self, grad, x, y):
        grad *= (y > 0) & (y < 6)
        return grad


class Exponential(ActivationFunction):
    name = "exponential"
    needs_input = False

    def forward(self, x, out=None):
        return get_array_module(x).exp(x, out=out)

    def backward(self, grad, x, y):
        grad *= y
        return grad


class LogSoftmax(ActivationFunction):
    """``x - logsumexp(x)`` over the last axis (Keras' default ``axis=-1``)."""

    name = "log_softmax"
    needs_input = False

    def forward(self, x, out=None):
        xp = get_array_module(x)
        y = xp.subtract(x, x.max(axis=-1, keepdims=True), out=out)
        y -= xp.log(xp.exp(y).sum(axis=-1, keepdims=True))
        return y

    def backward(self, grad, x, y):
        grad -= get_array_module(y).exp(y) * grad.sum(axis=-1, keepdims=True)
        return grad


class Mish(ActivationFunction):
    """``x * tanh(softplus(x))``."""

    name = "mish"

    def forward(self, x, out=None):
        xp = get_array_module(x)
        return xp.multiply(x, xp.tanh(xp.logaddexp(0, x)), out=out)

    def backward(self, grad, x, y):
        xp = get_array_module(x)
        t = xp.tanh(xp.logaddexp(0, x))
        grad *= t + x * Sigmoid().forward(x) * (1 - t * t)
        return grad


class HardSiLU(ActivationFunction):
    """``x * relu6(x + 3) / 6`` (Keras' ``hard_silu``, also ``hard_swish``)."""

    name = "hard_silu"

    def forward(self, x, out=None):
        xp = get_array_module(x)
        return xp.multiply(x, xp.clip(x / 6 + 0.5, 0, 1), out=out)

    def backward(self, grad, x, y):
        xp = get_array_module(x)
        grad *= xp.where(x <= -3, 0.0, xp.where(x >= 3, 1.0, x / 3 + 0.5)).astype(grad.dtype, copy=False)
        return grad


class CELU(ActivationFunction):
    """``x`` for ``x > 0``, else ``alpha * (exp(x / alpha) - 1)``."""

    name = "celu"
    needs_input = False  # for x <= 0, dy/dx = exp(x / alpha) = y / alpha + 1

    def __init__(self, alpha: float = 1.0):
        if alpha <= 0:
            raise ValueError(f"celu alpha must be > 0. Received: alpha={alpha}")
        self.alpha = float(alpha)

    def forward(self, x, out=None):
        xp = get_array_module(x)
        y = xp.where(x > 0, x, self.alpha * xp.expm1(xp.minimum(x, 0) / self.alpha))
        return y if out is None else _assign(out, y)

    def backward(self, grad, x, y):
        xp = get_array_module(grad)
        grad *= xp.where(y > 0, 1.0, y / self.alpha + 1).astype(grad.dtype, copy=False)
        return grad

    def get_config(self):
        return {"alpha": self.alpha}


class GLU(ActivationFunction):
    """Gated linear unit ``a * sigmoid(b)`` where ``a, b`` are the halves of ``x`` along ``axis``;
    the output has half as many entries along ``axis`` (use it in an ``Activation`` layer)."""

    name = "glu"

    def __init__(self, axis: int = -1):
        self.axis = int(axis)

    def _halves(self, x: Any) -> tuple:
        if x.shape[self.axis] % 2:
            raise ValueError(f"glu splits axis {self.axis} in two halves; it needs an even size. Received: "
                             f"input of shape {tuple(x.shape)}")
        return get_array_module(x).split(x, 2, axis=self.axis)

    def forward(self, x, out=None):
        a, b = self._halves(x)
        return get_array_module(x).multiply(a, Sigmoid().forward(b), out=out)

    def backward(self, grad, x, y):
        a, b = self._halves(x)
        s = Sigmoid().forward(b)
        return get_array_module(x).concatenate([grad * s, grad * a * s * (1 - s)], axis=self.axis)

    def get_config(self):
        return {"axis": self.axis}


class SparsePlus(ActivationFunction):
    """0 for ``x <= -1``, ``(x + 1)^2 / 4`` on (-1, 1), ``x`` for ``x >= 1``."""

    name = "sparse_plus"

    def forward(self, x, out=None):
        xp = get_array_module(x)
        y = xp.where(x <= -1, 0.0, xp.where(x >= 1, x, (x + 1) ** 2 / 4)).astype(x.dtype, copy=False)
        return y if out is None else _assign(out, y)

    def backward(self, grad, x, y):
        grad *= get_array_module(x).clip((x + 1) / 2, 0, 1)
        return grad


class Squareplus(ActivationFunction):
    """``(x + sqrt(x^2 + b)) / 2``."""

    name = "squareplus"

    def __init__(self, b: float = 4.0):
        if b < 0:
            raise ValueError(f"squareplus b must be >= 0. Received: b={b}")
        self.b = float(b)

    def forward(self, x, out=None):
        xp = get_array_module(x)
        return xp.multiply(x + xp.sqrt(x * x + self.b), 0.5, out=out)

    def backward(self, grad, x, y):
        grad *= 0.5 * (1 + x / get_array_module(x).sqrt(x * x + self.b))
        return grad

    def get_config(self):
        return {"b": self.b}


class TanhShrink(ActivationFunction):
    name = "tanh_shrink"

    def forward(self, x, out=None):
        return get_array_module(x).subtract(x, get_array_module(x).tanh(x), out=out)

    def backward(self, grad, x, y):
        grad *= get_array_module(x).tanh(x) ** 2
        return grad


class SoftShrink(ActivationFunction):
    """``x - threshold`` above ``threshold``, ``x + threshold`` below ``-threshold``, else 0."""

    name = "soft_shrink"
    needs_input = False  # y != 0 exactly where |x| > threshold

    def __init__(self, threshold: float = 0.5):
        if threshold < 0:
            raise ValueError(f"{self.name} threshold must be >= 0. Received: threshold={threshold}")
        self.threshold = float(threshold)

    def forward(self, x, out=None):
        xp = get_array_module(x)
        y = xp.sign(x) * xp.maximum(xp.abs(x) - self.threshold, 0)
        return y if out is None else _assign(out, y)

    def backward(self, grad, x, y):
        grad *= y != 0
        return grad

    def get_config(self):
        return {"threshold": self.threshold}


class HardShrink(SoftShrink):
    """``x`` where ``|x| > threshold``, else 0."""

    name = "hard_shrink"

    def forward(self, x, out=None):
        xp = get_array_module(x)
        y = xp.where(xp.abs(x) > self.threshold, x, 0).astype(x.dtype, copy=False)
        return y if out is None else _assign(out, y)


class Threshold(ActivationFunction):
    """``x`` where ``x > threshold``, else ``default_value`` (both required, as in Keras)."""

    name = "threshold"

    def __init__(self, threshold: float, default_value: float):
        self.threshold, self.default_value = float(threshold), float(default_value)

    def forward(self, x, out=None):
        y = get_array_module(x).where(x > self.threshold, x, self.default_value).astype(x.dtype, copy=False)
        return y if out is None else _assign(out, y)

    def backward(self, grad, x, y):
        grad *= x > self.threshold
        return grad

    def get_config(self):
        return {"threshold": self.threshold, "default_value": self.default_value}


_SQRT_2 = 2.0 ** 0.5
_SQRT_2PI = (2.0 * 3.141592653589793) ** 0.5
_SQRT_2_OVER_PI = (2.0 / 3.141592653589793) ** 0.5


def _assign(out: Any, value: Any) -> Any:
    out[...] = value
    return out


_CLASSES: dict[str, type[ActivationFunction]] = {
    cls.name: cls for cls in (Linear, ReLU, LeakyReLU, ELU, SELU, Sigmoid, Tanh, Softmax, Softplus,
                              Softsign, Swish, GELU, HardSigmoid, ReLU6, Exponential, LogSoftmax, Mish, HardSiLU,
                              CELU, SparsePlus, Squareplus, TanhShrink, SoftShrink, HardShrink)
}
# Not usable by name alone: glu changes the shape (an Activation layer only), threshold needs arguments.
_SPECIAL: dict[str, type[ActivationFunction]] = {"glu": GLU, "threshold": Threshold}
# Keras names ("relu", "silu") and class names ("LeakyReLU"), for names and saved configurations.
_TABLE: dict[str, type[ActivationFunction]] = {**_CLASSES, **_SPECIAL, "silu": Swish, "hard_swish": HardSiLU,
                                               **{cls.__name__: cls for cls in (*_CLASSES.values(),
                                                                                 *_SPECIAL.values())}}
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
        return _TABLE[built_in]() if built_in else _CallableActivation(identifier)
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
    if type(activation) not in (*_CLASSES.values(), *_SPECIAL.values()):
        return serialization.serialize_keras_object(activation)
    config = activation.get_config()
    return activation.name if not config else {"class_name": activation.name, "config": config}


def _functional(name: str) -> Callable[..., Any]:
    def fn(x: Any, **kwargs: Any) -> Any:
        return _TABLE[name](**kwargs).forward(x)

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
relu6 = _functional("relu6")
exponential = _functional("exponential")
log_softmax = _functional("log_softmax")
mish = _functional("mish")
hard_silu = hard_swish = _functional("hard_silu")
celu = _functional("celu")
glu = _functional("glu")
sparse_plus = _functional("sparse_plus")
squareplus = _functional("squareplus")
tanh_shrink = _functional("tanh_shrink")
soft_shrink = _functional("soft_shrink")
hard_shrink = _functional("hard_shrink")
threshold = _functional("threshold")
