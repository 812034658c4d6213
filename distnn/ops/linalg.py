"""Products and norms under Keras 3's ``keras.ops`` names: ``matmul``, ``dot``, ``tensordot``,
``einsum`` (re-exported by ``distnn.ops.numpy``) and ``norm`` (``keras.ops.norm``, from linalg).

The VJP of a product is a product of the upstream gradient with the other operands; for
``einsum`` it is again an ``einsum``, with broadcast, repeated (diagonal) and summed-out labels
handled explicitly. See ``distnn.ops.core``.
"""
from __future__ import annotations

import string
from typing import Any

import numpy as np

from distnn.ops.core import argument, array_module, defop, shape_of, unbroadcast


# ------------------------------------------------------------------------------------ matmul
@defop
def matmul(x1, x2):
    return array_module(x1, x2).matmul(x1, x2)


@matmul.defvjp
def _(node, g):
    x1, x2 = node.inputs
    xp = array_module(x1, x2)
    # Work on the promoted operands a (..., m, k) @ b (..., k, n); a 1-D operand lost its m or n axis.
    a = x1 if x1.ndim > 1 else x1[None, :]
    b = x2 if x2.ndim > 1 else x2[:, None]
    gp = xp.asarray(g)
    if x2.ndim == 1:
        gp = gp[..., None]
    if x1.ndim == 1:
        gp = gp[..., None, :]
    g1 = g2 = None
    if node.needs[0]:
        g1 = unbroadcast(xp.matmul(gp, xp.swapaxes(b, -1, -2)), a.shape).reshape(x1.shape)
    if node.needs[1]:
        g2 = unbroadcast(xp.matmul(xp.swapaxes(a, -1, -2), gp), b.shape).reshape(x2.shape)
    return g1, g2


# --------------------------------------------------------------------------------- tensordot
def _tensordot_axes(axes: Any, ndim1: int, ndim2: int) -> tuple[list[int], list[int]]:
    """``axes`` as two equally long lists of non-negative axes of x1 and x2."""
    if isinstance(axes, (int, np.integer)):
        n = int(axes)
        if n < 0 or n > min(ndim1, ndim2):
            raise ValueError(f"tensordot: axes must be between 0 and the smaller rank. Received: axes={axes}")
        return list(range(ndim1 - n, ndim1)), list(range(n))
    first, second = axes
    first = [first] if isinstance(first, (int, np.integer)) else list(first)
    second = [second] if isinstance(second, (int, np.integer)) else list(second)
    if len(first) != len(second):
        raise ValueError(f"tensordot: both entries of axes must have the same length. Received: axes={axes}")
    return [int(a) % max(ndim1, 1) for a in first], [int(a) % max(ndim2, 1) for a in second]


def _tensordot_grads(node, g: Any, x1: Any, x2: Any, axes1: list[int], axes2: list[int]) -> tuple:
    xp = array_module(g)
    free1 = [i for i in range(x1.ndim) if i not in axes1]
    free2 = [i for i in range(x2.ndim) if i not in axes2]
    g1 = g2 = None
    if node.needs[0]:
        # tensordot(g, x2) keeps x2's contracted axes in increasing order; map them to x1's axes
        partner = [axes1[axes2.index(a)] for a in sorted(axes2)]
        g1 = xp.tensordot(g, x2, axes=(list(range(len(free1), g.ndim)), free2))
        g1 = xp.transpose(g1, tuple(np.argsort(free1 + partner).tolist()))  # host axes: ints, not an array
    if node.needs[1]:
        partner = [axes2[axes1.index(a)] for a in sorted(axes1)]
        g2 = xp.tensordot(x1, g, axes=(free1, list(range(len(free1)))))
        g2 = xp.transpose(g2, tuple(np.argsort(partner + free2).tolist()))
    return g1, g2


@defop
def tensordot(x1, x2, axes=2):
    return array_module(x1, x2).tensordot(x1, x2, axes=_tensordot_axes(axes, np.ndim(x1), np.ndim(x2)))


@tensordot.defvjp
def _(node, g):
    x1, x2 = node.inputs[:2]
    axes1, axes2 = _tensordot_axes(argument(node, 2, "axes", 2), x1.ndim, x2.ndim)
    return (*_tensordot_grads(node, g, x1, x2, axes1, axes2), None)


@defop
def dot(x1, x2):
    return array_module(x1, x2).dot(x1, x2)


@dot.defvjp
def _(node, g):
    x1, x2 = node.inputs
    xp = array_module(g)
    if np.ndim(x1) == 0 or np.ndim(x2) == 0:  # dot with a scalar is a product
        g1 = unbroadcast(g * x2, shape_of(x1)) if node.needs[0] else None
        g2 = unbroadcast(g * x1, shape_of(x2)) if node.needs[1] else None
        return g1, g2
    # numpy's dot contracts x1's last axis with x2's second to last (its only one when 1-D)
    return _tensordot_grads(node, g, x1, x2, [x1.ndim - 1], [max(x2.ndim - 2, 0)])


# ------------------------------------------------------------------------------------ einsum
def _einsum_specs(subscripts: str, shapes: list[tuple]) -> tuple[list[str], str]:
    """Explicit per-operand and output labels: ``...`` spelled out with unused letters, and the
    implicit output (numpy's rule: the broadcast ``...`` axes, then labels used once, sorted)."""
    subscripts = subscripts.replace(" ", "")
    inputs, arrow, output = subscripts.partition("->")
    specs = inputs.split(",")
    if len(specs) != len(shapes):
        raise ValueError(f"einsum: {len(specs)} operand specs for {len(shapes)} operands. "
                         f"Received: subscripts={subscripts!r}")
    spare = [c for c in string.ascii_letters if c not in subscripts]
    ranks = [len(shape) - (len(spec) - 3) for spec, shape in zip(specs, shapes) if "..." in spec]
    ellipsis = "".join(spare[:max(ranks, default=0)])
    explicit = [spec.replace("...", ellipsis[len(ellipsis) - (len(shape) - (len(spec) - 3)):])
                for spec, shape in zip(specs, shapes)]
    if not arrow:
        labels = "".join(s for s in specs).replace("...", "")
        output = ellipsis + "".join(sorted(c for c in set(labels) if labels.count(c) == 1))
    return explicit, output.replace("...", ellipsis)


@defop
def einsum(subscripts, *operands, **kwargs):
    return array_module(*operands).einsum(subscripts, *operands, **kwargs)


@einsum.defvjp
def _(node, g):
    subscripts, operands = node.inputs[0], node.inputs[1:]
    xp = array_module(g)
    shapes = [shape_of(x) for x in operands]
    specs, output = _einsum_specs(subscripts, shapes)
    sizes: dict[str, int] = {}
    for spec, shape in zip(specs, shapes):
        for label, n in zip(spec, shape):
            sizes[label] = max(sizes.get(label, 1), n)
    # Size-1 operand axes broadcast against the others: spell the broadcast out (views, no copies).
    full = [xp.broadcast_to(x, tuple(sizes[c] for c in spec)) for x, spec in zip(operands, specs)]
    grads: list = [None]
    for i, (x, spec) in enumerate(zip(operands, specs)):
        if not node.needs[i + 1]:
            grads.append(None)
            continue
        others = [s for j, s in enumerate(specs) if j != i]
        unique = "".join(dict.fromkeys(spec))
        size_here = dict(zip(spec, shape_of(x)))
        # Labels the gradient einsum can produce; the rest (summed over in x alone, or broadcast
        # from size 1 in x) are summed out here and restored as size-1 or broadcast axes.
        kept = "".join(c for c in unique if (c in output or any(c in s for s in others)) and
                       size_here[c] == sizes[c])
        grad = xp.einsum(",".join([output, *others]) + "->" + kept, g, *[f for j, f in enumerate(full) if j != i])
        grad = xp.broadcast_to(grad.reshape(tuple(sizes[c] if c in kept else 1 for c in unique)),
                               tuple(size_here[c] for c in unique))
        if len(unique) < len(spec):  # a repeated label reads a diagonal: write the gradient there
            grad = _onto_diagonal(xp, grad, spec, unique, shape_of(x))
        grads.append(grad.astype(x.dtype, copy=False) if x.dtype.kind == "f" else grad)
    return tuple(grads)


def _onto_diagonal(xp: Any, grad: Any, spec: str, unique: str, shape: tuple) -> Any:
    out = xp.zeros(shape, dtype=grad.dtype)
    grid = {c: xp.arange(n).reshape(tuple(n if k == i else 1 for k in range(len(unique))))
            for i, (c, n) in enumerate(zip(unique, grad.shape))}
    out[tuple(grid[c] for c in spec)] = grad
    return out


# -------------------------------------------------------------------------------------- norm
_VECTOR_ORDS = (None, 2, 1, np.inf, -np.inf, 0)


@defop
def norm(x, ord=None, axis=None, keepdims=False):  # noqa: A002 - Keras name
    xp = array_module(x)
    if x.dtype.kind not in "fc":
        x = x.astype("float32")
    return xp.linalg.norm(x, ord=ord, axis=tuple(axis) if isinstance(axis, list) else axis, keepdims=keepdims)


@norm.defvjp
def _(node, g):
    x = node.inputs[0]
    ord_, axis = argument(node, 1, "ord"), argument(node, 2, "axis")
    xp = array_module(g)
    if axis is None:
        axes = tuple(range(x.ndim)) if ord_ is None or x.ndim == 1 else (0, 1)
        matrix = ord_ is not None and x.ndim == 2
    else:
        axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
        axes = tuple(int(a) % x.ndim for a in axes)
        matrix = len(axes) == 2
    kept = tuple(1 if i in axes else n for i, n in enumerate(x.shape))
    value, g = xp.asarray(node.value).reshape(kept), xp.asarray(g).reshape(kept)
    safe = xp.where(value > 0, value, 1)
    magnitude, sign = xp.abs(x), xp.sign(x)
    if ord_ in (None, 2, "fro") and not (matrix and ord_ == 2):  # Euclidean / Frobenius
        grad = g * x / safe * (value > 0)
    elif not matrix and ord_ in (np.inf, -np.inf):
        hit = magnitude == value
        grad = g * sign * hit / hit.sum(axis=axes, keepdims=True)
    elif not matrix and ord_ == 0:
        grad = xp.zeros_like(x)  # a count of non-zeros
    elif not matrix:
        p = float(ord_)
        grad = g * sign * magnitude ** (p - 1) / safe ** (p - 1) * (value > 0)
    elif ord_ in (1, -1, np.inf, -np.inf):
        summed, across = (axes[0], axes[1]) if ord_ in (1, -1) else (axes[1], axes[0])
        hit = magnitude.sum(axis=summed, keepdims=True) == value
        grad = g * sign * hit / hit.sum(axis=across, keepdims=True)
    else:  # 2, -2, "nuc": singular values, d sigma_k = u_k v_k^T
        moved = xp.moveaxis(x, axes, (-2, -1))
        u, _, vt = xp.linalg.svd(moved, full_matrices=False)
        if ord_ == 2:
            u, vt = u[..., :, :1], vt[..., :1, :]
        elif ord_ == -2:
            u, vt = u[..., :, -1:], vt[..., -1:, :]
        grad = xp.moveaxis(xp.moveaxis(g, axes, (-2, -1)) * xp.matmul(u, vt), (-2, -1), axes)
    return (grad.astype(x.dtype, copy=False), None, None)
