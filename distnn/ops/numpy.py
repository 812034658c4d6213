"""Keras 3's ``keras.ops`` numpy namespace: element-wise arithmetic and math here, plus (re-exported)
the shape, reduction, product and array-creation ops of the sibling modules.

Each forward works on raw arrays of the backend's array module; each VJP returns one gradient per
positional argument (``None`` where the argument is not differentiable). See ``distnn.ops.core``.
Binary ops broadcast as numpy does; their VJPs sum the gradient back to each input's shape.
"""
from __future__ import annotations

from typing import Any

from distnn.ops.core import array_module, defop, shape_of, unbroadcast
from distnn.ops.creation import arange, eye, full, ones, ones_like, zeros, zeros_like  # noqa: F401
from distnn.ops.linalg import dot, einsum, matmul, tensordot  # noqa: F401
from distnn.ops.reduction import (argmax, argmin, cumsum, logsumexp, max, mean, min, prod, std,  # noqa: F401
                                  sum, var)
from distnn.ops.shape import (broadcast_to, concatenate, expand_dims, flip, getitem, pad, repeat,  # noqa: F401
                              reshape, split, squeeze, stack, take, take_along_axis, tile, transpose)


def _binary_grads(node, g1: Any, g2: Any) -> tuple:
    """The two gradients of a broadcasting binary op, each summed back to its input's shape (or None)."""
    x1, x2 = node.inputs
    return (unbroadcast(g1, shape_of(x1)) if node.needs[0] else None,
            unbroadcast(g2, shape_of(x2)) if node.needs[1] else None)


# ------------------------------------------------------------------------------- arithmetic
@defop
def add(x1, x2):
    return array_module(x1, x2).add(x1, x2)


@add.defvjp
def _(node, g):
    return _binary_grads(node, g, g)


@defop
def subtract(x1, x2):
    return array_module(x1, x2).subtract(x1, x2)


@subtract.defvjp
def _(node, g):
    return _binary_grads(node, g, -g if node.needs[1] else None)


@defop
def multiply(x1, x2):
    return array_module(x1, x2).multiply(x1, x2)


@multiply.defvjp
def _(node, g):
    x1, x2 = node.inputs
    return _binary_grads(node, g * x2 if node.needs[0] else None, g * x1 if node.needs[1] else None)


@defop
def divide(x1, x2):
    return array_module(x1, x2).true_divide(x1, x2)


@divide.defvjp
def _(node, g):
    x1, x2 = node.inputs
    return _binary_grads(node, g / x2 if node.needs[0] else None,
                         -g * node.value / x2 if node.needs[1] else None)


true_divide = divide


@defop
def negative(x):
    return array_module(x).negative(x)


@negative.defvjp
def _(node, g):
    return (-g,)


@defop
def power(x1, x2):
    return array_module(x1, x2).power(x1, x2)


@power.defvjp
def _(node, g):
    x1, x2 = node.inputs
    xp = array_module(x1, x2)
    g1 = g2 = None
    if node.needs[0]:
        g1 = g * x2 * xp.power(x1, x2 - 1)
    if node.needs[1]:
        # d(x1**x2)/dx2 = x1**x2 * log(x1): defined for x1 > 0; 0 elsewhere, as JAX and TensorFlow do.
        positive = x1 > 0
        g2 = g * node.value * xp.log(xp.where(positive, x1, 1)) * positive
    return _binary_grads(node, g1, g2)


@defop
def square(x):
    return array_module(x).square(x)


@square.defvjp
def _(node, g):
    return (2 * g * node.inputs[0],)


@defop
def sqrt(x):
    return array_module(x).sqrt(x)


@sqrt.defvjp
def _(node, g):
    return (g / (2 * node.value),)


@defop
def exp(x):
    return array_module(x).exp(x)


@exp.defvjp
def _(node, g):
    return (g * node.value,)


@defop
def log(x):
    return array_module(x).log(x)


@log.defvjp
def _(node, g):
    return (g / node.inputs[0],)


@defop
def log1p(x):
    return array_module(x).log1p(x)


@log1p.defvjp
def _(node, g):
    return (g / (1 + node.inputs[0]),)


@defop
def sin(x):
    return array_module(x).sin(x)


@sin.defvjp
def _(node, g):
    return (g * array_module(g).cos(node.inputs[0]),)


@defop
def cos(x):
    return array_module(x).cos(x)


@cos.defvjp
def _(node, g):
    return (-g * array_module(g).sin(node.inputs[0]),)


@defop
def tanh(x):
    return array_module(x).tanh(x)


@tanh.defvjp
def _(node, g):
    return (g * (1 - node.value * node.value),)


@defop
def abs(x):  # noqa: A001 - Keras name
    return array_module(x).abs(x)


@abs.defvjp
def _(node, g):
    return (g * array_module(g).sign(node.inputs[0]),)


absolute = abs


@defop
def sign(x):
    """Not differentiable (its derivative is 0 almost everywhere): returns a plain array."""
    return array_module(x).sign(x)


# ----------------------------------------------------------------------------- selections
@defop
def maximum(x1, x2):
    return array_module(x1, x2).maximum(x1, x2)


@maximum.defvjp
def _(node, g):
    x1, x2 = node.inputs
    first = x1 >= x2  # ties go to the first argument, as TensorFlow does
    return _binary_grads(node, g * first if node.needs[0] else None, g * ~first if node.needs[1] else None)


@defop
def minimum(x1, x2):
    return array_module(x1, x2).minimum(x1, x2)


@minimum.defvjp
def _(node, g):
    x1, x2 = node.inputs
    first = x1 <= x2
    return _binary_grads(node, g * first if node.needs[0] else None, g * ~first if node.needs[1] else None)


@defop
def clip(x, x_min, x_max):
    return array_module(x, x_min, x_max).clip(x, x_min, x_max)


@clip.defvjp
def _(node, g):
    x, low, high = node.inputs
    # clip(x) = minimum(maximum(x, x_min), x_max): the bounds get the gradient where they are the value
    xp = array_module(g)
    below = x < low if low is not None else xp.zeros(x.shape, dtype=bool)
    above = x > high if high is not None else xp.zeros(x.shape, dtype=bool)
    inside = ~(below | above)
    return (unbroadcast(g * inside, shape_of(x)) if node.needs[0] else None,
            unbroadcast(g * (below & ~above), shape_of(low)) if node.needs[1] else None,
            unbroadcast(g * above, shape_of(high)) if node.needs[2] else None)


@defop
def where(condition, x1=None, x2=None):
    xp = array_module(condition, x1, x2)
    if x1 is None and x2 is None:
        return xp.nonzero(condition)
    if x1 is None or x2 is None:
        raise ValueError("where expects both x1 and x2, or neither. "
                         f"Received: x1={'None' if x1 is None else 'a tensor'}, "
                         f"x2={'None' if x2 is None else 'a tensor'}")
    return xp.where(condition, x1, x2)


@where.defvjp
def _(node, g):
    condition, x1, x2 = node.inputs
    xp = array_module(g)
    zero = g.dtype.type(0)
    return (None,
            unbroadcast(xp.where(condition, g, zero), shape_of(x1)) if node.needs[1] else None,
            unbroadcast(xp.where(condition, zero, g), shape_of(x2)) if node.needs[2] else None)


# ---------------------------------------------------------------------------------- casting
@defop
def cast(x, dtype):
    xp = array_module(x)
    return xp.asarray(x).astype(dtype, copy=False)


@cast.defvjp
def _(node, g):
    source = array_module(g).asarray(node.inputs[0]).dtype
    # Gradients flow between float types only; an integer input has none.
    return (g.astype(source, copy=False) if source.kind in "fc" else None, None)
