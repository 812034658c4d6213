"""Shape and indexing ops under Keras 3's ``keras.ops`` names: reshaping, joining, splitting,
gathering, tiling and padding (re-exported by ``distnn.ops.numpy``). See ``distnn.ops.core``.

Gathers (``take``, ``take_along_axis``, ``getitem`` with integer arrays, ``repeat``, non-constant
``pad``) differentiate by scatter-adding the gradient back, so an element read twice gets both.
"""
from __future__ import annotations

import builtins
import itertools
from typing import Any

import numpy as np

from distnn import backend
from distnn.ops.core import argument, array_module, composite, defop, shape_of, unbroadcast


def _axis_index(axis: int, ndim: int, name: str = "axis") -> int:
    if not -ndim <= axis < builtins.max(ndim, 1):
        raise ValueError(f"{name} is out of bounds for a tensor of rank {ndim}. Received: {name}={axis}")
    return axis % builtins.max(ndim, 1)


# ---------------------------------------------------------------------------------- reshaping
@defop
def reshape(x, newshape):
    if isinstance(newshape, (list, tuple)):
        newshape = tuple(-1 if d is None else int(d) for d in newshape)
    return array_module(x).reshape(x, newshape)


@reshape.defvjp
def _(node, g):
    return (g.reshape(shape_of(node.inputs[0])), None)


@defop
def transpose(x, axes=None):
    return array_module(x).transpose(x, axes)


@transpose.defvjp
def _(node, g):
    axes = argument(node, 1, "axes")
    if axes is None:
        return (array_module(g).transpose(g), None)
    inverse = np.argsort([int(a) % g.ndim for a in axes])
    return (array_module(g).transpose(g, tuple(int(i) for i in inverse)), None)


@defop
def expand_dims(x, axis):
    return array_module(x).expand_dims(x, tuple(axis) if isinstance(axis, list) else axis)


@expand_dims.defvjp
def _(node, g):
    return (g.reshape(shape_of(node.inputs[0])), None)


@defop
def squeeze(x, axis=None):
    return array_module(x).squeeze(x, tuple(axis) if isinstance(axis, list) else axis)


@squeeze.defvjp
def _(node, g):
    return (g.reshape(shape_of(node.inputs[0])), None)


@defop
def broadcast_to(x, shape):
    return array_module(x).broadcast_to(x, tuple(shape))


@broadcast_to.defvjp
def _(node, g):
    return (unbroadcast(g, shape_of(node.inputs[0])), None)


@defop
def flip(x, axis=None):
    return array_module(x).flip(x, tuple(axis) if isinstance(axis, list) else axis)


@flip.defvjp
def _(node, g):
    axis = argument(node, 1, "axis")
    return (array_module(g).flip(g, tuple(axis) if isinstance(axis, list) else axis),)


# ------------------------------------------------------------------------- joining, splitting
@defop
def concatenate(xs, axis=0):
    return array_module(*xs).concatenate(xs, axis=axis)


@concatenate.defvjp
def _(node, g):
    xs = node.inputs[0]
    axis = _axis_index(argument(node, 1, "axis", 0), g.ndim)
    bounds = list(itertools.accumulate(shape_of(x)[axis] for x in xs))[:-1]
    return (array_module(g).split(g, bounds, axis=axis), None)


@defop
def stack(x, axis=0):
    return array_module(*x).stack(x, axis=axis)


@stack.defvjp
def _(node, g):
    axis = _axis_index(argument(node, 1, "axis", 0), g.ndim)
    lead = (builtins.slice(None),) * axis
    return ([g[lead + (i,)] for i in range(g.shape[axis])], None)


@composite
def split(x: Any, indices_or_sections: Any, axis: int = 0) -> list:
    """Split ``x`` into a list of tensors along ``axis`` (``keras.ops.split``).

    Each piece is a slice of ``x`` (one ``getitem`` node on the tape), so gradients flow from every
    piece that is used.
    """
    shape = shape_of(x)
    axis = _axis_index(axis, len(shape))
    size = shape[axis]
    if isinstance(indices_or_sections, (int, np.integer)):
        sections = int(indices_or_sections)
        if size is None or sections <= 0 or size % sections:
            raise ValueError(f"split: the size of axis {axis} ({size}) must be a known multiple of "
                             f"indices_or_sections. Received: indices_or_sections={indices_or_sections}")
        bounds = [size // sections * i for i in range(1, sections)]
    else:
        bounds = [int(i) for i in backend.to_numpy(indices_or_sections).ravel()]
    lead = (builtins.slice(None),) * axis
    edges = [0, *bounds, size]
    return [getitem(x, lead + (builtins.slice(start, stop),)) for start, stop in zip(edges[:-1], edges[1:])]


# ----------------------------------------------------------------------------------- indexing
@defop
def getitem(x, key):
    return x[key]


@getitem.defvjp
def _(node, g):
    x, key = node.inputs
    xp = array_module(g)
    out = xp.zeros(shape_of(x), dtype=g.dtype)
    if _advanced(key):
        xp.add.at(out, key, g)  # an integer-array key may read an element twice
    else:
        out[key] = g
    return (out, None)


def _advanced(key: Any) -> bool:
    """Whether indexing with ``key`` may repeat elements (integer/boolean array indexing)."""
    keys = key if isinstance(key, tuple) else (key,)
    return any(hasattr(k, "shape") or isinstance(k, list) for k in keys)


@composite
def slice(inputs: Any, start_indices: Any, shape: Any) -> Any:  # noqa: A001 - Keras name
    """``inputs[start:start + size]`` on every axis (``keras.ops.slice``); differentiable."""
    starts = [int(s) for s in backend.to_numpy(start_indices).ravel()]
    sizes = [int(s) for s in backend.to_numpy(shape).ravel()]
    if len(starts) != len(sizes):
        raise ValueError(f"slice: start_indices and shape must have the same length. "
                         f"Received: start_indices={starts}, shape={sizes}")
    return getitem(inputs, tuple(builtins.slice(s, s + n) for s, n in zip(starts, sizes)))


def _scatter_add(g: Any, indices: Any, axis: int, shape: tuple) -> Any:
    """The array of ``shape`` whose ``take(., indices, axis)`` has VJP ``g``: ``g`` added back at ``indices``."""
    xp = array_module(g)
    out = xp.zeros(shape, dtype=g.dtype)
    xp.add.at(out, (builtins.slice(None),) * axis + (indices,), g)
    return out


@defop
def take(x, indices, axis=None):
    return array_module(x).take(x, indices, axis=axis)


@take.defvjp
def _(node, g):
    x, indices = node.inputs[0], array_module(g).asarray(node.inputs[1])
    axis = argument(node, 2, "axis")
    if axis is None:
        return (_scatter_add(g, indices, 0, (int(np.prod(shape_of(x))),)).reshape(shape_of(x)), None)
    return (_scatter_add(g, indices, _axis_index(axis, len(shape_of(x))), shape_of(x)), None)


@defop
def take_along_axis(x, indices, axis=None):
    xp = array_module(x)
    if axis is None:
        return xp.take_along_axis(x.ravel(), xp.asarray(indices).ravel(), axis=0)
    return xp.take_along_axis(x, indices, axis=axis)


@take_along_axis.defvjp
def _(node, g):
    x, indices = node.inputs[0], node.inputs[1]
    xp = array_module(g)
    indices = xp.asarray(indices)
    shape = shape_of(x)
    axis = argument(node, 2, "axis")
    if axis is None:
        return (_scatter_add(g, indices.ravel(), 0, (int(np.prod(shape)),)).reshape(shape), None)
    axis = _axis_index(axis, len(shape))
    # The full index tuple numpy builds internally: aranges on the other axes broadcast with indices.
    index = tuple(indices if d == axis else
                  xp.arange(n).reshape((1,) * d + (n,) + (1,) * (len(shape) - d - 1)) for d, n in enumerate(shape))
    out = xp.zeros(shape, dtype=g.dtype)
    xp.add.at(out, index, g)
    return (out, None)


# ------------------------------------------------------------------------- tiling, padding
@defop
def tile(x, repeats):
    return array_module(x).tile(x, repeats)


@tile.defvjp
def _(node, g):
    shape = shape_of(node.inputs[0])
    repeats = [int(r) for r in np.ravel(node.inputs[1])]
    rank = builtins.max(len(shape), len(repeats))
    sizes = (1,) * (rank - len(shape)) + shape
    repeats = [1] * (rank - len(repeats)) + repeats
    # g's axis d holds repeats[d] copies of size sizes[d]: split each axis in (copy, element) and sum copies
    interleaved = g.reshape([n for pair in zip(repeats, sizes) for n in pair])
    return (interleaved.sum(axis=tuple(range(0, 2 * rank, 2))).reshape(shape), None)


@defop
def repeat(x, repeats, axis=None):
    return array_module(x).repeat(x, repeats, axis=axis)


@repeat.defvjp
def _(node, g):
    shape = shape_of(node.inputs[0])
    repeats = backend.to_numpy(node.inputs[1]).ravel()
    axis = argument(node, 2, "axis")
    if axis is None:  # numpy repeats the flattened input
        source_shape, axis = (int(np.prod(shape)),), 0
    else:
        source_shape, axis = shape, _axis_index(axis, len(shape))
    n = source_shape[axis]
    if repeats.size == 1:  # each element's r copies sit next to each other: sum them
        split_axis = source_shape[:axis] + (n, int(repeats[0])) + source_shape[axis + 1:]
        grad = g.reshape(split_axis).sum(axis=axis + 1)
    else:
        sources = array_module(g).asarray(np.repeat(np.arange(n), repeats))
        grad = _scatter_add(g, sources, axis, source_shape)
    return (grad.reshape(shape), None)


_PAD_MODES_WITH_GRADIENT = ("constant", "edge", "reflect", "symmetric", "wrap")


@defop
def pad(x, pad_width, mode="constant", constant_values=None):
    xp = array_module(x)
    if constant_values is not None:
        if mode != "constant":
            raise ValueError(f"pad: constant_values can only be given with mode='constant'. Received: mode={mode!r}")
        return xp.pad(x, _pad_widths(pad_width, x.ndim), mode=mode, constant_values=constant_values)
    return xp.pad(x, _pad_widths(pad_width, x.ndim), mode=mode)


def _pad_widths(pad_width: Any, ndim: int) -> list[tuple[int, int]]:
    widths = np.broadcast_to(np.asarray(backend.to_numpy(pad_width), dtype=np.int64), (ndim, 2))
    return [(int(b), int(a)) for b, a in widths]


@pad.defvjp
def _(node, g):
    x = node.inputs[0]
    shape = shape_of(x)
    widths = _pad_widths(argument(node, 1, "pad_width"), len(shape))
    mode = argument(node, 2, "mode", "constant")
    if mode == "constant":
        return (g[tuple(builtins.slice(b, b + n) for (b, _), n in zip(widths, shape))], None)
    if mode not in _PAD_MODES_WITH_GRADIENT:
        raise NotImplementedError(f"pad has no gradient for this mode; differentiable modes are "
                                  f"{_PAD_MODES_WITH_GRADIENT}. Received: mode={mode!r}")
    # These modes copy input elements: padding an index range gives, per axis, the source of each
    # output position (separable across axes), and the gradient scatters back along each axis.
    xp = array_module(g)
    for axis, (n, (before, after)) in enumerate(zip(shape, widths)):
        sources = xp.asarray(np.pad(np.arange(n), (before, after), mode=mode))
        g = _scatter_add(g, sources, axis, g.shape[:axis] + (n,) + g.shape[axis + 1:])
    return (g, None)
