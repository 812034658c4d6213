"""Merging layers with Keras names: ``Add``, ``Subtract``, ``Multiply``, ``Average``, ``Maximum``,
``Minimum``, ``Concatenate`` and their functional forms (``layers.add([a, b])``).

They compute with ``distnn.ops`` on their list of inputs, so the tape differentiates them (a residual
``Add`` sends its gradient to both branches).
"""
from __future__ import annotations

import functools
from typing import Any

from distnn.layers.base import Layer
from distnn.ops import numpy as ops


class Merge(Layer):
    """Base class: combines a list of at least two same-shaped tensors elementwise."""

    def _merge(self, inputs: list) -> Any:
        raise NotImplementedError

    def _check_inputs(self, inputs: Any) -> list:
        if not isinstance(inputs, (list, tuple)) or len(inputs) < 2:
            raise ValueError(f"A {type(self).__name__} layer should be called on a list of at least 2 inputs. "
                             f"Received: inputs={inputs!r}")
        return list(inputs)

    def build(self, input_shape: Any) -> None:
        shapes = self._check_inputs(input_shape)
        self._check_shapes(shapes)

    def _check_shapes(self, shapes: list) -> None:
        first = tuple(shapes[0])[1:]
        for shape in shapes[1:]:
            shape = tuple(shape)[1:]
            if len(shape) != len(first) or any(a is not None and b is not None and a != b
                                               for a, b in zip(first, shape)):
                raise ValueError(f"Inputs to {type(self).__name__} layer {self.name!r} must have the same shape. "
                                 f"Received: input_shape={[tuple(s) for s in shapes]}")

    def call(self, inputs: Any) -> Any:
        return self._merge(self._check_inputs(inputs))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return tuple(self._check_inputs(input_shape)[0])


class Add(Merge):
    def _merge(self, inputs):
        return functools.reduce(ops.add, inputs)


class Subtract(Merge):
    def _check_inputs(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"A Subtract layer should be called on exactly 2 inputs. Received: inputs={inputs!r}")
        return list(inputs)

    def _merge(self, inputs):
        return ops.subtract(inputs[0], inputs[1])


class Multiply(Merge):
    def _merge(self, inputs):
        return functools.reduce(ops.multiply, inputs)


class Average(Merge):
    def _merge(self, inputs):
        return ops.multiply(functools.reduce(ops.add, inputs), 1.0 / len(inputs))


class Maximum(Merge):
    def _merge(self, inputs):
        return functools.reduce(ops.maximum, inputs)


class Minimum(Merge):
    def _merge(self, inputs):
        return functools.reduce(ops.minimum, inputs)


class Concatenate(Merge):
    """Joins inputs along ``axis`` (default the last); the other axes must match."""

    def __init__(self, axis: int = -1, **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(axis, int):
            raise TypeError(f"axis must be an integer. Received: axis={axis!r}")
        self.axis = axis

    def _check_shapes(self, shapes):
        rank = len(tuple(shapes[0]))
        axis = self.axis % rank
        for shape in shapes[1:]:
            if len(tuple(shape)) != rank or any(i != axis and a is not None and b is not None and a != b
                                                for i, (a, b) in enumerate(zip(shapes[0], shape)) if i):
                raise ValueError(f"Concatenate layer {self.name!r} needs inputs with matching shapes except on "
                                 f"the concat axis {self.axis}. Received: input_shape={[tuple(s) for s in shapes]}")

    def _merge(self, inputs):
        return ops.concatenate(inputs, axis=self.axis)

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in self._check_inputs(input_shape)]
        axis = self.axis % len(shapes[0])
        sizes = [s[axis] for s in shapes]
        out = list(shapes[0])
        out[axis] = None if None in sizes else sum(sizes)
        return tuple(out)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


def add(inputs: list, **kwargs: Any) -> Any:
    return Add(**kwargs)(inputs)


def subtract(inputs: list, **kwargs: Any) -> Any:
    return Subtract(**kwargs)(inputs)


def multiply(inputs: list, **kwargs: Any) -> Any:
    return Multiply(**kwargs)(inputs)


def average(inputs: list, **kwargs: Any) -> Any:
    return Average(**kwargs)(inputs)


def maximum(inputs: list, **kwargs: Any) -> Any:
    return Maximum(**kwargs)(inputs)


def minimum(inputs: list, **kwargs: Any) -> Any:
    return Minimum(**kwargs)(inputs)


def concatenate(inputs: list, axis: int = -1, **kwargs: Any) -> Any:
    return Concatenate(axis=axis, **kwargs)(inputs)
