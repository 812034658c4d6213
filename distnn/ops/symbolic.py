"""Symbolic tensors for the functional API: ``Input(shape=...)`` and every layer or op called on one.

A ``KerasTensor`` holds only a shape (batch axis ``None``) and a dtype, plus the ``Node`` that made
it: the operation (a layer, or an op from ``distnn.ops``), the arguments it was called with (other
symbolic tensors among them) and its outputs. ``distnn.models.Functional`` walks these nodes back
from a model's outputs to its inputs (docs/architecture.md, "Models").

An output's shape comes from the layer's ``compute_output_shape`` when it defines one; otherwise the
operation runs once on small zero arrays, as Keras traces ``call`` symbolically: sizes that change
with the dummy sizes (the batch axis, or an unknown length) are reported as ``None``.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable

import numpy as np

from distnn import backend
from distnn.ops import core
from distnn.ops.operators import TensorOperators

_ids = itertools.count()


_op_name_counts: dict[str, int] = {}


def _unique_op_name(base: str) -> str:
    count = _op_name_counts.get(base, 0)
    _op_name_counts[base] = count + 1
    return base if count == 0 else f"{base}_{count}"


class Node:
    """One call of an operation on symbolic tensors. A node of an op (not a layer) gets its own unique
    ``name`` (``add``, ``add_1``...), as Keras names op layers in summaries and configs."""

    def __init__(self, operation: Any, args: tuple, kwargs: dict, outputs: Any):
        self.operation = operation
        self.args = args
        self.kwargs = kwargs
        self.outputs = outputs
        layer_name = getattr(operation, "name", None) if hasattr(operation, "_inbound_nodes") else None
        self.name = layer_name or _unique_op_name(getattr(operation, "name", getattr(operation, "__name__", "op")))

    @property
    def input_tensors(self) -> list["KerasTensor"]:
        return [t for t in flatten((self.args, self.kwargs)) if isinstance(t, KerasTensor)]

    @property
    def output_tensors(self) -> list["KerasTensor"]:
        return [t for t in flatten(self.outputs) if isinstance(t, KerasTensor)]


class KerasTensor(TensorOperators):
    """A symbolic tensor: ``shape`` (with ``None`` for the batch axis), ``dtype``, and its history."""

    def __init__(self, shape: tuple, dtype: Any = "float32", name: str | None = None, node: Node | None = None,
                 sparse: bool = False):
        self.shape = tuple(None if d is None else int(d) for d in shape)
        self.dtype = np.dtype(dtype).name
        self.name = name or f"keras_tensor_{next(_ids)}"
        self.node = node
        self.sparse = sparse

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"<KerasTensor shape={self.shape}, dtype={self.dtype}, name={self.name}>"

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: Any) -> bool:  # identity, so tensors can be list members and dict keys
        return self is other

    def __len__(self) -> int:
        if self.shape and self.shape[0] is not None:
            return self.shape[0]
        raise TypeError("len() of a symbolic tensor with an unknown batch size")

    def __bool__(self) -> bool:
        raise TypeError("A symbolic tensor has no truth value: it holds no data until the model runs")


def flatten(structure: Any) -> list:
    """The leaves of nested lists, tuples and dicts (dicts in key order), depth first."""
    if isinstance(structure, dict):
        return [leaf for key in structure for leaf in flatten(structure[key])]
    if isinstance(structure, (list, tuple)):
        return [leaf for item in structure for leaf in flatten(item)]
    return [structure]


def map_structure(fn: Callable, structure: Any) -> Any:
    if isinstance(structure, dict):
        return {key: map_structure(fn, value) for key, value in structure.items()}
    if isinstance(structure, (list, tuple)):
        return type(structure)(map_structure(fn, item) for item in structure)
    return fn(structure)


def is_symbolic(structure: Any) -> bool:
    return any(isinstance(leaf, KerasTensor) for leaf in flatten(structure))


def _dummy(shape: tuple, dtype: str, sizes: tuple[int, int]) -> Any:
    batch, unknown = sizes
    concrete = tuple(batch if i == 0 and d is None else unknown if d is None else d for i, d in enumerate(shape))
    return backend.xp().zeros(concrete, dtype=dtype)


def _run_on_dummies(operation: Callable, args: tuple, kwargs: dict, sizes: tuple[int, int]) -> Any:
    def concrete(leaf: Any) -> Any:
        return _dummy(leaf.shape, leaf.dtype, sizes) if isinstance(leaf, KerasTensor) else leaf

    with core.pause():
        return map_structure(core.value_of, operation(*map_structure(concrete, args), **map_structure(concrete, kwargs)))


class Spec:
    """Shape and dtype of one symbolic output."""

    def __init__(self, shape: tuple, dtype: Any):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype).name


def is_shape(value: Any) -> bool:
    """Whether ``value`` is one shape (a tuple or list of sizes and ``None``), not a structure of shapes."""
    return isinstance(value, (tuple, list)) and all(d is None or isinstance(d, (int, np.integer)) for d in value)


def specs_from_shapes(shapes: Any, dtype: Any) -> Any:
    """``Spec``s for a layer's ``compute_output_shape`` result (one shape, or a structure of shapes)."""
    if is_shape(shapes):
        return Spec(tuple(shapes), dtype)
    if isinstance(shapes, dict):
        return {k: specs_from_shapes(v, dtype) for k, v in shapes.items()}
    return type(shapes)(specs_from_shapes(s, dtype) for s in shapes)


def output_spec(operation: Callable, args: tuple, kwargs: dict) -> Any:
    """``Spec``s of ``operation(*args, **kwargs)``, found by running it twice on zero arrays of
    different batch and unknown-axis sizes: the axes that follow those sizes become ``None``."""
    first = _run_on_dummies(operation, args, kwargs, (2, 3))
    second = iter(flatten(_run_on_dummies(operation, args, kwargs, (5, 7))))

    def spec(a: Any) -> Spec:
        b = next(second)
        shape = tuple(None if da != db else da for da, db in zip(np.shape(a), np.shape(b)))
        return Spec(shape, a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype)  # a device array has no host copy

    return map_structure(spec, first)


def symbolic_call(operation: Callable, args: tuple, kwargs: dict, specs: Any = None, name: str | None = None) -> Any:
    """Call ``operation`` on symbolic arguments: a ``Node`` and its symbolic outputs."""
    if specs is None:
        specs = output_spec(operation, args, kwargs)
    node = Node(operation, args, kwargs, None)
    counter = itertools.count()

    def make(spec: Spec) -> KerasTensor:
        index = next(counter)
        return KerasTensor(spec.shape, spec.dtype, name=f"{name}_{index}" if name and index else name, node=node)

    node.outputs = map_structure(make, specs)
    return node.outputs


core._symbolic_types = (KerasTensor,)
core._symbolic_call = symbolic_call
