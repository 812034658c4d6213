"""Neural-network ops under Keras 3's ``keras.ops`` names: activations, softmax, ``one_hot``,
``moments``, ``batch_normalization`` and the cross-entropies.

Activations follow Keras 3's formulas and defaults (``leaky_relu`` slope 0.2, ``gelu`` tanh form by
default, ``hard_sigmoid = relu6(x + 3) / 6``). See ``distnn.ops.core`` for the op/VJP contract.
"""
from __future__ import annotations

import math
from typing import Any

from distnn import backend
from distnn.ops.core import argument, array_module, composite, defop
from distnn.ops.math import erf_values
from distnn.ops.numpy import cast
from distnn.ops.reduction import mean, var

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_GELU_CUBIC = 0.044715


# ------------------------------------------------------------------------ piecewise linear
@defop
def relu(x):
    return array_module(x).maximum(x, 0)


@relu.defvjp
def _(node, g):
    return (g * (node.inputs[0] > 0),)


@defop
def relu6(x):
    return array_module(x).clip(x, 0, 6)


@relu6.defvjp
def _(node, g):
    x = node.inputs[0]
    return (g * ((x > 0) & (x < 6)),)


@defop
def leaky_relu(x, negative_slope=0.2):
    return array_module(x).maximum(x, negative_slope * x)


@leaky_relu.defvjp
def _(node, g):
    x, slope = node.inputs[0], argument(node, 1, "negative_slope", 0.2)
    return (g * array_module(g).where(x >= slope * x, 1, slope).astype(g.dtype, copy=False),)


@defop
def hard_sigmoid(x):
    return array_module(x).clip(x / 6 + 0.5, 0, 1)


@hard_sigmoid.defvjp
def _(node, g):
    x = node.inputs[0]
    return (g * ((x > -3) & (x < 3)) / 6,)


# -------------------------------------------------------------------------------- smooth
def _sigmoid(x: Any) -> Any:
    xp = array_module(x)
    # exp(-|x|) never overflows: sigmoid(x) = 1/(1+e^-x) for x >= 0, e^x/(1+e^x) otherwise
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


@defop
def sigmoid(x):
    return _sigmoid(x)


@sigmoid.defvjp
def _(node, g):
    y = node.value
    return (g * y * (1 - y),)


@defop
def silu(x):
    return x * _sigmoid(x)


@silu.defvjp
def _(node, g):
    x = node.inputs[0]
    s = _sigmoid(x)
    return (g * s * (1 + x * (1 - s)),)


@defop
def softplus(x):
    return array_module(x).logaddexp(x, 0)


@softplus.defvjp
def _(node, g):
    return (g * _sigmoid(node.inputs[0]),)


@defop
def log_sigmoid(x):
    return -array_module(x).logaddexp(-x, 0)


@log_sigmoid.defvjp
def _(node, g):
    return (g * _sigmoid(-node.inputs[0]),)


@defop
def softsign(x):
    return x / (1 + array_module(x).abs(x))


@softsign.defvjp
def _(node, g):
    denominator = 1 + array_module(g).abs(node.inputs[0])
    return (g / (denominator * denominator),)


@defop
def elu(x, alpha=1.0):
    xp = array_module(x)
    return xp.where(x > 0, x, alpha * xp.expm1(xp.minimum(x, 0)))


@elu.defvjp
def _(node, g):
    x, alpha = node.inputs[0], argument(node, 1, "alpha", 1.0)
    xp = array_module(g)
    return (g * xp.where(x > 0, 1, alpha * xp.exp(xp.minimum(x, 0))),)


@defop
def selu(x):
    xp = array_module(x)
    return _SELU_SCALE * xp.where(x > 0, x, _SELU_ALPHA * xp.expm1(xp.minimum(x, 0)))


@selu.defvjp
def _(node, g):
    x = node.inputs[0]
    xp = array_module(g)
    return (g * (_SELU_SCALE * xp.where(x > 0, 1, _SELU_ALPHA * xp.exp(xp.minimum(x, 0)))),)


@defop
def gelu(x, approximate=True):
    xp = array_module(x)
    if approximate:
        return 0.5 * x * (1 + xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x)))
    return 0.5 * x * (1 + erf_values(x / math.sqrt(2)))


@gelu.defvjp
def _(node, g):
    x, approximate = node.inputs[0], argument(node, 1, "approximate", True)
    xp = array_module(g)
    if approximate:
        t = xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x))
        return (g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)),)
    # d/dx x * Phi(x) = Phi(x) + x * phi(x)
    return (g * (0.5 * (1 + erf_values(x / math.sqrt(2))) + x * _INV_SQRT_2PI * xp.exp(-0.5 * x * x)),)


# -------------------------------------------------------------------------------- softmax
@defop
def softmax(x, axis=-1):
    xp = array_module(x)
    axis = tuple(axis) if isinstance(axis, list) else axis
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@softmax.defvjp
def _(node, g):
    axis = argument(node, 1, "axis", -1)
    axis = tuple(axis) if isinstance(axis, list) else axis
    y = node.value
    return (y * (g - (g * y).sum(axis=axis, keepdims=True)),)


@defop
def log_softmax(x, axis=-1):
    xp = array_module(x)
    axis = tuple(axis) if isinstance(axis, list) else axis
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


@log_softmax.defvjp
def _(node, g):
    axis = argument(node, 1, "axis", -1)
    axis = tuple(axis) if isinstance(axis, list) else axis
    return (g - array_module(g).exp(node.value) * g.sum(axis=axis, keepdims=True),)


# -------------------------------------------------------------------------------- one_hot
@defop
def one_hot(x, num_classes, axis=-1, dtype=None, sparse=False):
    """``x``'s integer labels as one-hot vectors on a new ``axis``; a negative label gives zeros."""
    if sparse:
        raise ValueError("distnn has no sparse tensors. Received: sparse=True")
    xp = array_module(x)
    x = xp.asarray(x)
    encoded = (x[..., None] == xp.arange(int(num_classes))).astype(dtype or backend.floatx())
    return encoded if axis == -1 else xp.moveaxis(encoded, -1, axis)


# ------------------------------------------------------------------------- normalization
@composite
def moments(x: Any, axes: Any, keepdims: bool = False, synchronized: bool = False) -> tuple[Any, Any]:
    """Mean and variance of ``x`` over ``axes`` (``keras.ops.moments``); both differentiable.

    float16 inputs are reduced in float32 (its range is too small for the statistics), as Keras.
    ``synchronized=True`` (statistics across data-parallel replicas) belongs to the layer:
    use ``layers.BatchNormalization(synchronized=True)``.
    """
    if synchronized:
        raise NotImplementedError("ops.moments cannot synchronize across replicas; use "
                                  "layers.BatchNormalization(synchronized=True). Received: synchronized=True")
    axes = tuple(axes) if isinstance(axes, list) else axes
    dtype = str(getattr(x, "dtype", ""))
    if dtype == "float16":
        x = cast(x, "float32")
    m, v = mean(x, axes, keepdims), var(x, axes, keepdims)
    if dtype == "float16":
        m, v = cast(m, "float16"), cast(v, "float16")
    return m, v


def _per_channel(param: Any, x: Any, axis: int, name: str) -> Any:
    """A per-channel parameter of ``batch_normalization`` shaped to broadcast along ``axis``."""
    axis = axis % x.ndim
    if param.size != x.shape[axis]:
        raise ValueError(f"batch_normalization: {name} must have one value per channel (x.shape[{axis}] = "
                         f"{x.shape[axis]}). Received: {name}.shape={tuple(param.shape)}")
    return param.reshape(tuple(-1 if i == axis else 1 for i in range(x.ndim)))


@defop
def batch_normalization(x, mean, variance, axis, offset=None, scale=None, epsilon=1e-3):  # noqa: A002
    xp = array_module(x)
    inverse = 1 / xp.sqrt(_per_channel(variance, x, axis, "variance") + epsilon)
    if scale is not None:
        inverse = inverse * _per_channel(scale, x, axis, "scale")
    shift = -_per_channel(mean, x, axis, "mean") * inverse
    if offset is not None:
        shift = shift + _per_channel(offset, x, axis, "offset")
    return x * inverse + shift


@batch_normalization.defvjp
def _(node, g):
    x, mean_, variance = node.inputs[:3]
    axis = argument(node, 3, "axis")
    offset, scale = argument(node, 4, "offset"), argument(node, 5, "scale")
    epsilon = argument(node, 6, "epsilon", 1e-3)
    xp = array_module(g)
    others = tuple(i for i in range(x.ndim) if i != axis % x.ndim)  # the axes each channel reduces
    rstd = 1 / xp.sqrt(_per_channel(variance, x, axis, "variance") + epsilon)
    gamma = _per_channel(scale, x, axis, "scale") if scale is not None else 1
    centered = x - _per_channel(mean_, x, axis, "mean")
    needs = node.needs + (False,) * (7 - len(node.needs))
    grads: list = [None] * len(node.inputs)
    if needs[0]:
        grads[0] = g * (rstd * gamma)
    if needs[1]:
        grads[1] = (-(g.sum(axis=others, keepdims=True) * rstd * gamma)).reshape(mean_.shape)
    if needs[2]:
        grads[2] = ((g * centered).sum(axis=others, keepdims=True) * gamma * -0.5 * rstd ** 3).reshape(variance.shape)
    if needs[4]:
        grads[4] = g.sum(axis=others).reshape(offset.shape)
    if needs[5]:
        grads[5] = (g * centered * rstd).sum(axis=others).reshape(scale.shape)
    return tuple(grads)



# ---------------------------------------------------------------------------- cross-entropy
EPSILON = 1e-7  # Keras' backend.epsilon(): probabilities are clipped to [EPSILON, 1 - EPSILON]


def _same_shapes(target: Any, output: Any, op: str) -> None:
    if tuple(target.shape) != tuple(output.shape):
        raise ValueError(f"{op}: target and output must have the same shape. "
                         f"Received: target.shape={tuple(target.shape)}, output.shape={tuple(output.shape)}")
    if output.ndim < 1:
        raise ValueError(f"{op}: target and output must be at least rank 1. Received: output.shape=()")


def _categorical_log_probs(output: Any, from_logits: bool, axis: int) -> tuple[Any, Any, Any]:
    """``(log q, q, total)``: the log-probabilities the loss uses, the (clipped) probabilities and,
    from probabilities, their sum along ``axis`` (Keras renormalizes ``output`` before clipping)."""
    xp = array_module(output)
    if from_logits:
        shifted = output - output.max(axis=axis, keepdims=True)
        log_q = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        return log_q, xp.exp(log_q), None
    total = output.sum(axis=axis, keepdims=True)
    q = xp.clip(output / total, EPSILON, 1 - EPSILON)
    return xp.log(q), q, total


def _categorical_forward(target: Any, output: Any, from_logits: bool, axis: int) -> Any:
    log_q, _, _ = _categorical_log_probs(output, from_logits, axis)
    return -(target * log_q).sum(axis=axis)


def _categorical_output_grad(g: Any, target: Any, output: Any, from_logits: bool, axis: int) -> Any:
    log_q, q, total = _categorical_log_probs(output, from_logits, axis)
    g = array_module(g).expand_dims(g, axis)
    if from_logits:  # d/dz -sum(t * log_softmax(z)) = sum(t) * softmax(z) - t
        return g * (target.sum(axis=axis, keepdims=True) * q - target)
    p = output / total
    # The clip passes no gradient where it binds, so the gradient matches the reported value.
    d_p = -target / q * ((p > EPSILON) & (p < 1 - EPSILON))
    return g * (d_p - (d_p * p).sum(axis=axis, keepdims=True)) / total  # through p = output / sum(output)


@defop
def categorical_crossentropy(target, output, from_logits=False, axis=-1):
    _same_shapes(target, output, "categorical_crossentropy")
    return _categorical_forward(target, output, from_logits, axis)


@categorical_crossentropy.defvjp
def _(node, g):
    target, output = node.inputs[:2]
    from_logits, axis = argument(node, 2, "from_logits", False), argument(node, 3, "axis", -1)
    grad_target = None
    if node.needs[0]:
        log_q, _, _ = _categorical_log_probs(output, from_logits, axis)
        grad_target = -array_module(g).expand_dims(g, axis) * log_q
    grad_output = _categorical_output_grad(g, target, output, from_logits, axis) if node.needs[1] else None
    return grad_target, grad_output


def _sparse_target(target: Any, output: Any, axis: int) -> Any:
    """Integer labels as one-hot vectors along ``axis`` of ``output``, after the Keras shape checks."""
    xp = array_module(output)
    target = xp.asarray(target)
    if target.ndim == output.ndim and target.shape[-1] == 1:
        target = target[..., 0]
    axis = axis % output.ndim
    expected = output.shape[:axis] + output.shape[axis + 1:]
    if tuple(target.shape) != tuple(expected):
        raise ValueError(f"sparse_categorical_crossentropy: target must have output's shape without the class "
                         f"axis {axis}, {tuple(expected)}. Received: target.shape={tuple(target.shape)}, "
                         f"output.shape={tuple(output.shape)}")
    encoded = (target[..., None] == xp.arange(output.shape[axis])).astype(output.dtype)
    return xp.moveaxis(encoded, -1, axis)


@defop
def sparse_categorical_crossentropy(target, output, from_logits=False, axis=-1):
    return _categorical_forward(_sparse_target(target, output, axis), output, from_logits, axis)


@sparse_categorical_crossentropy.defvjp
def _(node, g):
    target, output = node.inputs[:2]
    from_logits, axis = argument(node, 2, "from_logits", False), argument(node, 3, "axis", -1)
    return None, _categorical_output_grad(g, _sparse_target(target, output, axis), output, from_logits, axis)


@defop
def binary_crossentropy(target, output, from_logits=False):
    _same_shapes(target, output, "binary_crossentropy")
    xp = array_module(target, output)
    if from_logits:  # -t log sigmoid(z) - (1 - t) log sigmoid(-z), without overflow
        return target * xp.logaddexp(-output, 0) + (1 - target) * xp.logaddexp(output, 0)
    q = xp.clip(output, EPSILON, 1 - EPSILON)
    return -(target * xp.log(q) + (1 - target) * xp.log(1 - q))


@binary_crossentropy.defvjp
def _(node, g):
    target, output = node.inputs[:2]
    from_logits = argument(node, 2, "from_logits", False)
    xp = array_module(g)
    if from_logits:
        return (-g * output if node.needs[0] else None,
                g * (_sigmoid(output) - target) if node.needs[1] else None)
    q = xp.clip(output, EPSILON, 1 - EPSILON)
    grad_target = -g * (xp.log(q) - xp.log(1 - q)) if node.needs[0] else None
    grad_output = None
    if node.needs[1]:
        inside = (output > EPSILON) & (output < 1 - EPSILON)
        grad_output = g * (-target / q + (1 - target) / (1 - q)) * inside
    return grad_target, grad_output
