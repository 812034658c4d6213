"""Merging layers with Keras 3 names and semantics: ``Add``, ``Subtract``, ``Multiply``, ``Average``,
``Maximum``, ``Minimum``, ``Concatenate``, ``Dot``, and their functional forms (``layers.add([a, b])``).

They compute with ``distnn.ops``, so the tape differentiates them (a residual ``Add`` sends its
incoming gradient to both branches; ``ops.add``'s VJP hands the same array to both, so a fused
backward would save nothing). Elementwise merges broadcast as Keras does: sizes of 1 stretch, and an
input of lower rank gets new axes right after the batch axis. Masks: the elementwise merges OR their
inputs' masks (none when an input has none), ``Concatenate`` joins them, ``Dot`` drops them.
"""
from __future__ import annotations

import functools
import math
from typing import Any

from distnn import backend
from distnn.layers.base import Layer
from distnn.ops import numpy as ops
from distnn.ops import symbolic
from distnn.ops.core import value_of

_NORMALIZE_EPSILON = 1e-7  # Keras' backend.epsilon(): the smallest norm Dot(normalize=True) divides by


def _describe(values: Any) -> str:
    """Inputs for an error message: shapes instead of whole arrays."""
    if isinstance(values, (list, tuple)) and not symbolic.is_shape(values):
        return "[" + ", ".join(_describe(v) for v in values) + "]"
    if symbolic.is_shape(values):
        return str(tuple(values))
    shape = getattr(value_of(values), "shape", None)
    return f"<{type(values).__name__} shape={tuple(shape)}>" if shape is not None else repr(values)


def _is_list(values: Any) -> bool:
    """A list of inputs (or of their shapes), as opposed to one input or one shape."""
    return isinstance(values, (list, tuple)) and not symbolic.is_shape(values)


class Merge(Layer):
    """Base class of the merging layers: takes a list of inputs, returns one tensor."""

    min_inputs, max_inputs = 2, None

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.supports_masking = True

    # ---------------------------------------------------------------------------- validation
    def _check_list(self, values: Any, what: str) -> list:
        count = len(values) if _is_list(values) else 0
        if count < self.min_inputs or (self.max_inputs is not None and count > self.max_inputs):
            if self.max_inputs == self.min_inputs:
                expected = f"exactly {self.min_inputs} inputs"
                raise ValueError(f"A `{type(self).__name__}` layer should be called on {expected}. "
                                 f"Received: {what}={_describe(values)}")
            raise ValueError(f"A merge layer should be called on a list of at least {self.min_inputs} inputs. "
                             f"Received: {what}={_describe(values)}")
        return list(values)

    def _check_batch_sizes(self, shapes: list) -> None:
        sizes = {tuple(s)[0] for s in shapes if len(s)} - {None}
        if len(sizes) > 1:
            raise ValueError(f"Cannot merge tensors with different batch sizes in layer {self.name!r}. "
                             f"Received: input_shape={_describe(shapes)}")

    def _elementwise_shape(self, shape1: tuple, shape2: tuple, shapes: list) -> tuple:
        """The broadcast shape of two sample shapes (no batch axis), aligned at their last axis."""
        if len(shape1) < len(shape2):
            shape1, shape2 = shape2, shape1
        if not shape2:
            return tuple(shape1)
        out = list(shape1[:len(shape1) - len(shape2)])
        for a, b in zip(shape1[len(shape1) - len(shape2):], shape2):
            if a is None or b is None:
                out.append(None)
            elif a == 1 or b == 1 or a == b:
                out.append(b if a == 1 else a)
            else:
                raise ValueError(f"Inputs to layer {self.name!r} have incompatible shapes. "
                                 f"Received: input_shape={_describe(shapes)}")
        return tuple(out)

    def build(self, input_shape: Any) -> None:
        shapes = [tuple(s) for s in self._check_list(input_shape, "input_shape")]
        self.compute_output_shape(shapes)  # validates the shapes (Keras: build is shape validation)
        self.built = True

    def compute_output_shape(self, input_shape: Any) -> tuple:
        shapes = [tuple(s) for s in self._check_list(input_shape, "input_shape")]
        self._check_batch_sizes(shapes)
        sample = tuple(shapes[0][1:])
        for shape in shapes[1:]:
            sample = self._elementwise_shape(sample, tuple(shape[1:]), shapes)
        batch = next((s[0] for s in shapes if s[0] is not None), None)
        return (batch, *sample)

    # ---------------------------------------------------------------------------- computation
    def call(self, inputs: Any) -> Any:
        inputs = self._check_list(inputs, "inputs")
        self._check_batch_sizes([value_of(x).shape for x in inputs])
        ranks = [value_of(x).ndim for x in inputs]
        top = max(ranks)
        # Keras: a lower-rank input gets new axes after the batch axis, so samples broadcast on their
        # trailing axes while the batch axes stay aligned.
        aligned = []
        for x, rank in zip(inputs, ranks):
            for _ in range(top - rank):
                x = ops.expand_dims(x, 1)
            aligned.append(x)
        return self._merge(aligned)

    def _merge(self, inputs: list) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement _merge()")

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        """OR of the inputs' masks (Keras): ``None`` unless every input has one."""
        if mask is None:
            return None
        masks = self._check_masks(inputs, mask)
        if any(m is None for m in masks):
            return None
        xp = backend.get_array_module(masks[0])
        top = max(m.ndim for m in masks)  # aligned as ``call`` aligns the inputs: new axes after the batch axis
        masks = [m.reshape(m.shape[:1] + (1,) * (top - m.ndim) + m.shape[1:]) for m in masks]
        return functools.reduce(xp.logical_or, masks)

    def _check_masks(self, inputs: Any, mask: Any) -> list:
        if not isinstance(mask, (list, tuple)):
            raise ValueError(f"`mask` should be a list. Received: mask={_describe(mask)}")
        if not isinstance(inputs, (list, tuple)):
            raise ValueError(f"`inputs` should be a list. Received: inputs={_describe(inputs)}")
        if len(mask) != len(inputs):
            raise ValueError(f"The lists `inputs` and `mask` should have the same length. Received: inputs of "
                             f"length {len(inputs)}, and mask of length {len(mask)}")
        return [None if m is None else value_of(m) for m in mask]


class Add(Merge):
    """Adds a list of inputs elementwise: ``Add()([x1, x2])`` is ``x1 + x2``."""

    def _merge(self, inputs):
        return functools.reduce(ops.add, inputs)


class Subtract(Merge):
    """Subtracts two inputs: ``Subtract()([x1, x2])`` is ``x1 - x2``."""

    min_inputs = max_inputs = 2

    def _merge(self, inputs):
        return ops.subtract(inputs[0], inputs[1])


class Multiply(Merge):
    """Multiplies a list of inputs elementwise."""

    def _merge(self, inputs):
        return functools.reduce(ops.multiply, inputs)


class Average(Merge):
    """The elementwise mean of a list of inputs."""

    def _merge(self, inputs):
        return ops.divide(functools.reduce(ops.add, inputs), len(inputs))


class Maximum(Merge):
    """The elementwise maximum of a list of inputs (the gradient goes to the first of tied inputs)."""

    def _merge(self, inputs):
        return functools.reduce(ops.maximum, inputs)


class Minimum(Merge):
    """The elementwise minimum of a list of inputs (the gradient goes to the first of tied inputs)."""

    def _merge(self, inputs):
        return functools.reduce(ops.minimum, inputs)


class Concatenate(Merge):
    """Concatenates a list of inputs along ``axis``; every other axis must match.

    Args:
        axis: the axis to join along (default: the last).
    """

    def __init__(self, axis: int = -1, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"axis must be an integer. Received: axis={axis!r}")
        self.axis = axis

    def _axis_for(self, rank: int, shapes: list) -> int:
        if not -rank <= self.axis < rank:
            raise ValueError(f"Concatenate layer {self.name!r}: axis {self.axis} is out of range for inputs of "
                             f"rank {rank}. Received: input_shape={_describe(shapes)}")
        return self.axis % rank

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in self._check_list(input_shape, "input_shape")]
        rank = len(shapes[0])
        axis = self._axis_for(rank, shapes)
        mismatch = any(len(s) != rank for s in shapes) or any(
            len({s[i] for s in shapes} - {None}) > 1 for i in range(rank) if i != axis)
        if mismatch:
            raise ValueError(f"A `Concatenate` layer requires inputs with matching shapes except for the "
                             f"concatenation axis. Received: input_shape={_describe(shapes)}")
        sizes = [s[axis] for s in shapes]
        out = [next((s[i] for s in shapes if s[i] is not None), None) for i in range(rank)]
        out[axis] = None if None in sizes else sum(sizes)
        return tuple(out)

    def call(self, inputs):
        inputs = self._check_list(inputs, "inputs")
        self.compute_output_shape([value_of(x).shape for x in inputs])  # a clear error instead of numpy's
        return ops.concatenate(inputs, axis=self.axis)

    def compute_mask(self, inputs, mask=None):
        """The inputs' masks (all-true for an input without one), joined and reduced over the last axis."""
        if mask is None:
            return None
        masks = self._check_masks(inputs, mask)
        if all(m is None for m in masks):
            return None
        xp = backend.get_array_module(*[m for m in masks if m is not None])
        full = []
        for x, m in zip(inputs, masks):
            shape = value_of(x).shape
            if m is None:
                m = xp.ones(shape, dtype=bool)
            elif m.ndim < len(shape):
                m = xp.broadcast_to(xp.expand_dims(m, -1), shape)
            full.append(m)
        return xp.any(xp.concatenate(full, axis=self.axis), axis=-1)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


class Dot(Merge):
    """Dot product of two inputs along given axes, per sample (Keras' ``batch_dot``).

    Args:
        axes: an integer, or a pair of integers: the axis of each input to contract (never the
            batch axis 0; negative values count from the end).
        normalize: L2-normalize both inputs along those axes first, so the output is the cosine
            similarity.

    Output shape: the remaining axes of the first input, then those of the second (without its batch
    axis); ``(batch, 1)`` when nothing remains.
    """

    min_inputs = max_inputs = 2

    def __init__(self, axes: Any, normalize: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(axes, (list, tuple)):
            if len(axes) != 2:
                raise ValueError(f"Invalid format for argument `axes`: it should contain two elements. "
                                 f"Received: axes={axes}")
            if not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
                raise ValueError(f"Invalid format for argument `axes`: list elements should be integers. "
                                 f"Received: axes={axes}")
            axes = list(axes)
        elif isinstance(axes, bool) or not isinstance(axes, int):
            raise TypeError(f"Invalid type for argument `axes`: it should be a list or an int. Received: axes={axes}")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool. Received: normalize={normalize!r}")
        self.axes = axes
        self.normalize = normalize

    def _resolved_axes(self, shapes: list) -> tuple[int, int]:
        """The contracted axis of each input, non-negative, checked against the shapes."""
        axes = self.axes if isinstance(self.axes, list) else [self.axes, self.axes]
        resolved = []
        for axis, shape in zip(axes, shapes):
            rank = len(shape)
            if rank < 2:
                raise ValueError(f"A `Dot` layer needs inputs with at least 2 axes (batch and features). "
                                 f"Received: input_shape={_describe(shapes)}")
            if not -rank <= axis < rank or axis % rank == 0:
                raise ValueError(f"Dot layer {self.name!r}: axes={self.axes} must name a non-batch axis of each "
                                 f"input. Received: input_shape={_describe(shapes)}")
            resolved.append(axis % rank)
        size1, size2 = shapes[0][resolved[0]], shapes[1][resolved[1]]
        if size1 is not None and size2 is not None and size1 != size2:
            raise ValueError(f"Incompatible input shapes: axis values {size1} (at axis {resolved[0]}) != {size2} "
                             f"(at axis {resolved[1]}). Full input shapes: {tuple(shapes[0])}, {tuple(shapes[1])}")
        return resolved[0], resolved[1]

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in self._check_list(input_shape, "input_shape")]
        self._check_batch_sizes(shapes)
        a1, a2 = self._resolved_axes(shapes)
        rows = [d for i, d in enumerate(shapes[0]) if i != a1]
        cols = [d for i, d in enumerate(shapes[1]) if i not in (0, a2)]
        out = rows + cols
        return tuple(out + [1] if len(out) == 1 else out)

    def call(self, inputs):
        x1, x2 = self._check_list(inputs, "inputs")
        shapes = [tuple(value_of(x1).shape), tuple(value_of(x2).shape)]
        self._check_batch_sizes(shapes)
        a1, a2 = self._resolved_axes(shapes)
        if self.normalize:
            x1, x2 = _l2_normalize(x1, a1), _l2_normalize(x2, a2)
        # Per sample: x1 as (rows, k) times x2 as (k, cols), one batched matmul.
        n1, n2 = len(shapes[0]), len(shapes[1])
        if a1 != n1 - 1:
            x1 = ops.transpose(x1, [i for i in range(n1) if i != a1] + [a1])
        if a2 != 1:
            x2 = ops.transpose(x2, [0, a2] + [i for i in range(1, n2) if i != a2])
        rows = [d for i, d in enumerate(shapes[0]) if i not in (0, a1)]
        cols = [d for i, d in enumerate(shapes[1]) if i not in (0, a2)]
        batch, depth = shapes[0][0], shapes[0][a1]
        product = ops.matmul(ops.reshape(x1, (batch, math.prod(rows), depth)),
                             ops.reshape(x2, (batch, depth, math.prod(cols))))
        out = [batch, *rows, *cols]
        return ops.reshape(product, tuple(out + [1] if len(out) == 1 else out))

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "axes": self.axes, "normalize": self.normalize}


def _l2_normalize(x: Any, axis: int) -> Any:
    """``x / max(||x||, epsilon)`` along ``axis`` (Keras' ``ops.normalize``), differentiable everywhere."""
    squares = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return ops.divide(x, ops.sqrt(ops.maximum(squares, _NORMALIZE_EPSILON ** 2)))


# ------------------------------------------------------------------------- functional forms
def add(inputs: list, **kwargs: Any) -> Any:
    """``Add(**kwargs)(inputs)``."""
    return Add(**kwargs)(inputs)


def subtract(inputs: list, **kwargs: Any) -> Any:
    """``Subtract(**kwargs)(inputs)``."""
    return Subtract(**kwargs)(inputs)


def multiply(inputs: list, **kwargs: Any) -> Any:
    """``Multiply(**kwargs)(inputs)``."""
    return Multiply(**kwargs)(inputs)


def average(inputs: list, **kwargs: Any) -> Any:
    """``Average(**kwargs)(inputs)``."""
    return Average(**kwargs)(inputs)


def maximum(inputs: list, **kwargs: Any) -> Any:
    """``Maximum(**kwargs)(inputs)``."""
    return Maximum(**kwargs)(inputs)


def minimum(inputs: list, **kwargs: Any) -> Any:
    """``Minimum(**kwargs)(inputs)``."""
    return Minimum(**kwargs)(inputs)


def concatenate(inputs: list, axis: int = -1, **kwargs: Any) -> Any:
    """``Concatenate(axis=axis, **kwargs)(inputs)``."""
    return Concatenate(axis=axis, **kwargs)(inputs)


def dot(inputs: list, axes: Any = -1, normalize: bool = False, **kwargs: Any) -> Any:
    """``Dot(axes=axes, normalize=normalize, **kwargs)(inputs)``."""
    return Dot(axes=axes, normalize=normalize, **kwargs)(inputs)
