"""Array ops under Keras 3's ``keras.ops`` names: arithmetic, shapes, reductions.

Each forward works on raw arrays of the backend's array module; each VJP returns one gradient per
positional argument (``None`` where the argument is not differentiable). See ``distnn.ops.core``.
"""
from __future__ import annotations

from typing import Any

from distnn import backend
from distnn.ops.core import defop, unbroadcast


def _xp(*arrays: Any) -> Any:
    return backend.get_array_module(*[a for a in arrays if hasattr(a, "shape")])


def _shape(x: Any) -> tuple:
    return tuple(getattr(x, "shape", ()))


# ------------------------------------------------------------------------------- arithmetic
@defop
def add(x1, x2):
    return _xp(x1, x2).add(x1, x2)


@add.defvjp
def _(node, g):
    x1, x2 = node.inputs
    return (unbroadcast(g, _shape(x1)) if node.needs[0] else None,
            unbroadcast(g, _shape(x2)) if node.needs[1] else None)


@defop
def subtract(x1, x2):
    return _xp(x1, x2).subtract(x1, x2)


@subtract.defvjp
def _(node, g):
    x1, x2 = node.inputs
    return (unbroadcast(g, _shape(x1)) if node.needs[0] else None,
            unbroadcast(-g, _shape(x2)) if node.needs[1] else None)


@defop
def multiply(x1, x2):
    return _xp(x1, x2).multiply(x1, x2)


@multiply.defvjp
def _(node, g):
    x1, x2 = node.inputs
    return (unbroadcast(g * x2, _shape(x1)) if node.needs[0] else None,
            unbroadcast(g * x1, _shape(x2)) if node.needs[1] else None)


@defop
def divide(x1, x2):
    return _xp(x1, x2).true_divide(x1, x2)


@divide.defvjp
def _(node, g):
    x1, x2 = node.inputs
    return (unbroadcast(g / x2, _shape(x1)) if node.needs[0] else None,
            unbroadcast(-g * node.value / x2, _shape(x2)) if node.needs[1] else None)


true_divide = divide


@defop
def negative(x):
    return -x


@negative.defvjp
def _(node, g):
    return (-g,)


@defop
def power(x1, x2):
    return _xp(x1, x2).power(x1, x2)


@power.defvjp
def _(node, g):
    x1, x2 = node.inputs
    xp = _xp(x1, x2)
    gx1 = unbroadcast(g * x2 * xp.power(x1, x2 - 1), _shape(x1)) if node.needs[0] else None
    gx2 = None
    if node.needs[1]:
        safe = xp.where(x1 > 0, x1, 1)
        gx2 = unbroadcast(g * node.value * xp.log(safe), _shape(x2))
    return gx1, gx2


@defop
def square(x):
    return _xp(x).square(x)


@square.defvjp
def _(node, g):
    return (2 * g * node.inputs[0],)


@defop
def sqrt(x):
    return _xp(x).sqrt(x)


@sqrt.defvjp
def _(node, g):
    return (g / (2 * node.value),)


@defop
def exp(x):
    return _xp(x).exp(x)


@exp.defvjp
def _(node, g):
    return (g * node.value,)


@defop
def log(x):
    return _xp(x).log(x)


@log.defvjp
def _(node, g):
    return (g / node.inputs[0],)


@defop
def tanh(x):
    return _xp(x).tanh(x)


@tanh.defvjp
def _(node, g):
    return (g * (1 - node.value * node.value),)


@defop
def abs(x):  # noqa: A001 - Keras name
    return _xp(x).abs(x)


@abs.defvjp
def _(node, g):
    return (g * _xp(g).sign(node.inputs[0]),)


@defop
def maximum(x1, x2):
    return _xp(x1, x2).maximum(x1, x2)


@maximum.defvjp
def _(node, g):
    x1, x2 = node.inputs
    first = x1 >= x2  # ties go to the first argument, as TensorFlow and JAX do
    return (unbroadcast(g * first, _shape(x1)) if node.needs[0] else None,
            unbroadcast(g * ~first, _shape(x2)) if node.needs[1] else None)


@defop
def minimum(x1, x2):
    return _xp(x1, x2).minimum(x1, x2)


@minimum.defvjp
def _(node, g):
    x1, x2 = node.inputs
    first = x1 <= x2
    return (unbroadcast(g * first, _shape(x1)) if node.needs[0] else None,
            unbroadcast(g * ~first, _shape(x2)) if node.needs[1] else None)


@defop
def where(condition, x1=None, x2=None):
    xp = _xp(condition, x1, x2)
    if x1 is None and x2 is None:
        return xp.nonzero(condition)
    return xp.where(condition, x1, x2)


@where.defvjp
def _(node, g):
    condition, x1, x2 = node.inputs
    zero = g.dtype.type(0)
    return (None,
            unbroadcast(_xp(g).where(condition, g, zero), _shape(x1)) if node.needs[1] else None,
            unbroadcast(_xp(g).where(condition, zero, g), _shape(x2)) if node.needs[2] else None)


@defop
def matmul(x1, x2):
    return _xp(x1, x2).matmul(x1, x2)


@matmul.defvjp
def _(node, g):
    x1, x2 = node.inputs
    xp = _xp(x1, x2)
    gx1 = gx2 = None
    if node.needs[0]:
        gx1 = g[..., None] * x2 if x2.ndim == 1 else xp.matmul(g if x1.ndim > 1 else g[..., None, :],
                                                               xp.swapaxes(x2, -1, -2))
        gx1 = unbroadcast(gx1.reshape(gx1.shape[:-2] + gx1.shape[-1:]) if x1.ndim == 1 else gx1, _shape(x1))
    if node.needs[1]:
        if x1.ndim == 1:
            gx2 = x1[:, None] * (g[..., None, :] if x2.ndim > 1 else g)
        elif x2.ndim == 1:
            gx2 = xp.matmul(xp.swapaxes(x1, -1, -2), g[..., None])[..., 0]
        else:
            gx2 = xp.matmul(xp.swapaxes(x1, -1, -2), g)
        gx2 = unbroadcast(gx2, _shape(x2))
    return gx1, gx2


# ---------------------------------------------------------------------------------- casting
@defop
def cast(x, dtype):
    return x.astype(dtype, copy=False)


@cast.defvjp
def _(node, g):
    source = node.inputs[0].dtype
    return (g.astype(source) if source.kind == "f" else None, None)


# ---------------------------------------------------------------------------------- shapes
@defop
def reshape(x, newshape):
    return x.reshape(tuple(-1 if d is None else d for d in newshape) if isinstance(newshape, (list, tuple))
                     else newshape)


@reshape.defvjp
def _(node, g):
    return (g.reshape(node.inputs[0].shape), None)


@defop
def transpose(x, axes=None):
    return _xp(x).transpose(x, axes)


@transpose.defvjp
def _(node, g):
    axes = node.inputs[1] if len(node.inputs) > 1 else node.kwargs.get("axes")
    xp = _xp(g)
    if axes is None:
        return (xp.transpose(g), None)
    return (xp.transpose(g, tuple(int(i) for i in xp.argsort(xp.asarray([a % g.ndim for a in axes])))), None)


@defop
def getitem(x, key):
    return x[key]


@getitem.defvjp
def _(node, g):
    x, key = node.inputs
    xp = _xp(g)
    out = xp.zeros(x.shape, dtype=g.dtype)
    xp.add.at(out, key, g) if _advanced(key) else out.__setitem__(key, g)
    return (out, None)


def _advanced(key: Any) -> bool:
    """Whether indexing with ``key`` may repeat elements (integer/boolean array indexing)."""
    keys = key if isinstance(key, tuple) else (key,)
    return any(hasattr(k, "shape") or isinstance(k, list) for k in keys)


@defop
def expand_dims(x, axis):
    return _xp(x).expand_dims(x, axis)


@expand_dims.defvjp
def _(node, g):
    return (g.reshape(node.inputs[0].shape), None)


@defop
def squeeze(x, axis=None):
    return _xp(x).squeeze(x, axis)


@squeeze.defvjp
def _(node, g):
    return (g.reshape(node.inputs[0].shape), None)


@defop
def concatenate(xs, axis=0):
    return _xp(*xs).concatenate(xs, axis=axis)


@concatenate.defvjp
def _(node, g):
    xs = node.inputs[0]
    axis = node.kwargs.get("axis", node.inputs[1] if len(node.inputs) > 1 else 0)
    bounds = _xp(g).cumsum([x.shape[axis] for x in xs])[:-1]
    return (_xp(g).split(g, [int(b) for b in bounds], axis=axis), None)


@defop
def stack(xs, axis=0):
    return _xp(*xs).stack(xs, axis=axis)


@stack.defvjp
def _(node, g):
    axis = node.kwargs.get("axis", node.inputs[1] if len(node.inputs) > 1 else 0)
    xp = _xp(g)
    return ([xp.take(g, i, axis=axis) for i in range(g.shape[axis])], None)


# ------------------------------------------------------------------------------ reductions
def _axis_arg(node) -> Any:
    return node.kwargs.get("axis", node.inputs[1] if len(node.inputs) > 1 else None)


def _keepdims_arg(node) -> bool:
    return bool(node.kwargs.get("keepdims", node.inputs[2] if len(node.inputs) > 2 else False))


def _restore_reduced(g: Any, node) -> Any:
    """Broadcastable ``g`` for a reduction's input: put the reduced axes back as size-1 axes."""
    axis, shape = _axis_arg(node), node.inputs[0].shape
    if axis is None or _keepdims_arg(node):
        return g if axis is not None else g.reshape((1,) * len(shape))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = sorted(a % len(shape) for a in axes)
    return _xp(g).expand_dims(g, tuple(axes))


@defop
def sum(x, axis=None, keepdims=False):  # noqa: A001 - Keras name
    return _xp(x).sum(x, axis=_tuple_axis(axis), keepdims=keepdims)


@sum.defvjp
def _(node, g):
    x = node.inputs[0]
    return (_xp(g).broadcast_to(_restore_reduced(g, node), x.shape),)


@defop
def mean(x, axis=None, keepdims=False):
    return _xp(x).mean(x, axis=_tuple_axis(axis), keepdims=keepdims)


@mean.defvjp
def _(node, g):
    x = node.inputs[0]
    count = x.size // max(1, _xp(g).asarray(node.value).size)
    return (_xp(g).broadcast_to(_restore_reduced(g, node) / count, x.shape),)


def _tuple_axis(axis: Any) -> Any:
    return tuple(axis) if isinstance(axis, list) else axis


def _extremum_vjp(node, g):
    x = node.inputs[0]
    xp = _xp(g)
    value = _restore_reduced(node.value if node.value.ndim or _axis_arg(node) is not None else
                             xp.asarray(node.value), node)
    hit = x == value
    count = hit.sum(axis=_tuple_axis(_axis_arg(node)), keepdims=True) if _axis_arg(node) is not None else hit.sum()
    return (hit * (_restore_reduced(g, node) / count),)


@defop
def max(x, axis=None, keepdims=False, initial=None):  # noqa: A001 - Keras name
    return _xp(x).max(x, axis=_tuple_axis(axis), keepdims=keepdims, initial=initial)


max.defvjp(_extremum_vjp)


@defop
def min(x, axis=None, keepdims=False, initial=None):  # noqa: A001 - Keras name
    return _xp(x).min(x, axis=_tuple_axis(axis), keepdims=keepdims, initial=initial)


min.defvjp(_extremum_vjp)
