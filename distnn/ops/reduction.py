"""Reductions under Keras 3's ``keras.ops`` names (re-exported by ``distnn.ops.numpy``).

``axis`` is ``None`` (every axis), an int or a tuple/list of ints, negative allowed; ``keepdims``
keeps the reduced axes with size 1. Each VJP reshapes the incoming gradient to the input's rank
(reduced axes as size 1) and broadcasts it back. See ``distnn.ops.core``.
"""
from __future__ import annotations

import builtins
from typing import Any

import numpy as np

from distnn.ops.core import argument, array_module, defop, shape_of


def _axis_tuple(axis: Any, ndim: int) -> tuple[int, ...]:
    """The reduced axes, normalized to non-negative ints (every axis when ``axis`` is None)."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    for a in axes:
        if not -ndim <= a < builtins.max(ndim, 1):
            raise ValueError(f"axis is out of bounds for a tensor of rank {ndim}. Received: axis={axis}")
    return tuple(sorted({int(a) % builtins.max(ndim, 1) for a in axes}))


def _numpy_axis(axis: Any) -> Any:
    return tuple(axis) if isinstance(axis, list) else axis


def _kept_shape(shape: tuple, axis: Any) -> tuple:
    """``shape`` with the reduced axes set to 1: the shape of the result under ``keepdims=True``."""
    axes = _axis_tuple(axis, len(shape))
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _kept(node, array: Any) -> Any:
    """``array`` (the op's result or its gradient) reshaped to the input's rank, reduced axes of size 1."""
    x = node.inputs[0]
    return array_module(array).asarray(array).reshape(_kept_shape(shape_of(x), argument(node, 1, "axis")))


def _count(node) -> int:
    """How many input elements each output element reduces."""
    shape = shape_of(node.inputs[0])
    return int(np.prod([shape[a] for a in _axis_tuple(argument(node, 1, "axis"), len(shape))]))


# --------------------------------------------------------------------------------- sum, mean
@defop
def sum(x, axis=None, keepdims=False):  # noqa: A001 - Keras name
    return array_module(x).sum(x, axis=_numpy_axis(axis), keepdims=keepdims)


@sum.defvjp
def _(node, g):
    return (array_module(g).broadcast_to(_kept(node, g), shape_of(node.inputs[0])),)


@defop
def mean(x, axis=None, keepdims=False):
    return array_module(x).mean(x, axis=_numpy_axis(axis), keepdims=keepdims)


@mean.defvjp
def _(node, g):
    return (array_module(g).broadcast_to(_kept(node, g) / builtins.max(_count(node), 1), shape_of(node.inputs[0])),)


# ------------------------------------------------------------------------------- max, min
def _extremum_vjp(node, g):
    # The gradient is shared equally by the elements that tie for the extremum, as TensorFlow does;
    # none reach it when ``initial`` wins.
    x = node.inputs[0]
    xp = array_module(g)
    hit = x == _kept(node, node.value)
    count = hit.sum(axis=_axis_tuple(argument(node, 1, "axis"), x.ndim), keepdims=True)
    return (hit * (_kept(node, g) / xp.maximum(count, 1)),)


@defop
def max(x, axis=None, keepdims=False, initial=None):  # noqa: A001 - Keras name
    return array_module(x).max(x, axis=_numpy_axis(axis), keepdims=keepdims, initial=initial)


max.defvjp(_extremum_vjp)


@defop
def min(x, axis=None, keepdims=False, initial=None):  # noqa: A001 - Keras name
    return array_module(x).min(x, axis=_numpy_axis(axis), keepdims=keepdims, initial=initial)


min.defvjp(_extremum_vjp)


@defop
def argmax(x, axis=None, keepdims=False):
    """Indices of the maxima (int32, as Keras); not differentiable."""
    return array_module(x).argmax(x, axis=axis, keepdims=keepdims).astype("int32")


@defop
def argmin(x, axis=None, keepdims=False):
    """Indices of the minima (int32, as Keras); not differentiable."""
    return array_module(x).argmin(x, axis=axis, keepdims=keepdims).astype("int32")


# ------------------------------------------------------------------------------------ prod
@defop
def prod(x, axis=None, keepdims=False, dtype=None):
    return array_module(x).prod(x, axis=_numpy_axis(axis), keepdims=keepdims, dtype=dtype)


@prod.defvjp
def _(node, g):
    # d prod / d x_i = the product of the other elements: exclusive cumulative products from both
    # sides, exact even when some x_i are 0 (prod / x_i is not).
    x = node.inputs[0]
    xp = array_module(g)
    axes = _axis_tuple(argument(node, 1, "axis"), x.ndim)
    ends = tuple(range(x.ndim - len(axes), x.ndim))
    moved = xp.moveaxis(x, axes, ends)
    flat = moved.reshape(moved.shape[:x.ndim - len(axes)] + (-1,))
    ones = xp.ones_like(flat[..., :1])
    left = xp.cumprod(xp.concatenate([ones, flat[..., :-1]], axis=-1), axis=-1)
    right = xp.flip(xp.cumprod(xp.flip(xp.concatenate([flat[..., 1:], ones], axis=-1), -1), axis=-1), -1)
    others = xp.moveaxis((left * right).reshape(moved.shape), ends, axes)
    return ((_kept(node, g) * others).astype(x.dtype, copy=False),)


# ------------------------------------------------------------------------------ var, std
@defop
def var(x, axis=None, keepdims=False):
    return array_module(x).var(x, axis=_numpy_axis(axis), keepdims=keepdims)


@var.defvjp
def _(node, g):
    x = node.inputs[0]
    centered = x - x.mean(axis=_axis_tuple(argument(node, 1, "axis"), x.ndim), keepdims=True)
    return (_kept(node, g) * (2 / builtins.max(_count(node), 1)) * centered,)


@defop
def std(x, axis=None, keepdims=False):
    return array_module(x).std(x, axis=_numpy_axis(axis), keepdims=keepdims)


@std.defvjp
def _(node, g):
    x = node.inputs[0]
    xp = array_module(g)
    centered = x - x.mean(axis=_axis_tuple(argument(node, 1, "axis"), x.ndim), keepdims=True)
    deviation = _kept(node, node.value)
    # A constant slice (std 0) has no defined gradient; 0 is used there instead of NaN.
    scale = xp.where(deviation > 0, 1 / (builtins.max(_count(node), 1) * xp.where(deviation > 0, deviation, 1)), 0)
    return (_kept(node, g) * scale * centered,)


# ------------------------------------------------------------------------- cumsum, logsumexp
@defop
def cumsum(x, axis=None, dtype=None):
    return array_module(x).cumsum(x, axis=axis, dtype=dtype)


@cumsum.defvjp
def _(node, g):
    # Each x_i feeds every later partial sum: the gradient is the reversed cumulative sum.
    x = node.inputs[0]
    xp = array_module(g)
    axis = argument(node, 1, "axis")
    if axis is None:
        grad = xp.flip(xp.cumsum(xp.flip(g.ravel()))).reshape(shape_of(x))
    else:
        grad = xp.flip(xp.cumsum(xp.flip(g, axis), axis=axis), axis)
    return (grad.astype(x.dtype, copy=False) if x.dtype.kind == "f" else grad,)


@defop
def logsumexp(x, axis=None, keepdims=False):
    xp = array_module(x)
    axes = _axis_tuple(axis, x.ndim)
    peak = x.max(axis=axes, keepdims=True)
    peak = xp.where(xp.isfinite(peak), peak, 0)  # all -inf (or an inf) must not give inf - inf
    out = xp.log(xp.exp(x - peak).sum(axis=axes, keepdims=True)) + peak
    return out if keepdims else out.reshape(tuple(n for i, n in enumerate(x.shape) if i not in axes))


@logsumexp.defvjp
def _(node, g):
    x = node.inputs[0]
    return (_kept(node, g) * array_module(g).exp(x - _kept(node, node.value)),)
