"""Neural-network ops under Keras 3's ``keras.ops`` names: activations and softmax."""
from __future__ import annotations

from distnn.ops.core import defop
from distnn.ops.numpy import _xp


@defop
def relu(x):
    return _xp(x).maximum(x, 0)


@relu.defvjp
def _(node, g):
    return (g * (node.value > 0),)


@defop
def sigmoid(x):
    xp = _xp(x)
    # exp(-|x|) never overflows: sigmoid(x) = 1/(1+e^-x) for x >= 0, e^x/(1+e^x) otherwise
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


@sigmoid.defvjp
def _(node, g):
    y = node.value
    return (g * y * (1 - y),)


@defop
def softmax(x, axis=-1):
    xp = _xp(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@softmax.defvjp
def _(node, g):
    axis = node.kwargs.get("axis", node.inputs[1] if len(node.inputs) > 1 else -1)
    y = node.value
    return (y * (g - (g * y).sum(axis=axis, keepdims=True)), None)


@defop
def log_softmax(x, axis=-1):
    xp = _xp(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


@log_softmax.defvjp
def _(node, g):
    axis = node.kwargs.get("axis", node.inputs[1] if len(node.inputs) > 1 else -1)
    return (g - _xp(g).exp(node.value) * g.sum(axis=axis, keepdims=True), None)
