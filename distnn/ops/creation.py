"""Tensor creation and conversion under Keras 3's ``keras.ops`` names: ``convert_to_tensor``,
``convert_to_numpy``, ``shape``, ``zeros``, ``ones``, ``zeros_like``, ``ones_like``, ``full``,
``arange``, ``eye``.

New arrays live on this process's device (``backend.xp()``) and default to ``backend.floatx()``
for floats and int32 for integers, as Keras. Only ``convert_to_tensor`` is differentiable (an
identity, or a cast); the rest make constants.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn import backend
from distnn.ops.core import array_module, defop, shape_of, value_of


def _python_dtype(value: Any) -> str | None:
    """Keras' dtype for Python data (floats -> floatx, ints -> int32); ``None`` for arrays."""
    if hasattr(value, "dtype"):
        return None
    kind = np.asarray(value).dtype.kind
    return {"f": backend.floatx(), "i": "int32", "u": "int32", "b": "bool"}.get(kind)


@defop
def convert_to_tensor(x, dtype=None, sparse=None, ragged=None):
    if sparse:
        raise ValueError("distnn has no sparse tensors. Received: sparse=True")
    if ragged:
        raise ValueError("distnn has no ragged tensors. Received: ragged=True")
    dtype = dtype if dtype is not None else _python_dtype(x)
    if hasattr(x, "__cuda_array_interface__"):
        return array_module(x).asarray(x, dtype=dtype)
    return backend.xp().asarray(x, dtype=dtype)


@convert_to_tensor.defvjp
def _(node, g):
    source = node.inputs[0]
    dtype = getattr(source, "dtype", None)
    return (g.astype(dtype, copy=False) if dtype is not None and dtype.kind == "f" else g,)


def convert_to_numpy(x: Any) -> np.ndarray:
    """``x`` (an array, tape tensor or variable, on any device) as a numpy array on the host."""
    return backend.to_numpy(value_of(x))


def shape(x: Any) -> tuple:
    """The shape of ``x`` as a tuple (``None`` for unknown sizes of a symbolic tensor)."""
    return tuple(shape_of(value_of(x)))


def zeros(shape: Any, dtype: Any = None) -> Any:
    return backend.xp().zeros(shape, dtype=dtype or backend.floatx())


def ones(shape: Any, dtype: Any = None) -> Any:
    return backend.xp().ones(shape, dtype=dtype or backend.floatx())


def full(shape: Any, fill_value: Any, dtype: Any = None) -> Any:
    return backend.xp().full(shape, value_of(fill_value), dtype=dtype or backend.floatx())


@defop
def zeros_like(x, dtype=None):
    return array_module(x).zeros_like(x, dtype=dtype)


@defop
def ones_like(x, dtype=None):
    return array_module(x).ones_like(x, dtype=dtype)


def arange(start: Any, stop: Any = None, step: Any = None, dtype: Any = None) -> Any:
    """Evenly spaced values in ``[start, stop)`` (``arange(n)`` is ``[0, n)``); int32 for integer
    arguments, floatx for floats, unless ``dtype`` says otherwise."""
    values = [v for v in (start, stop, step) if v is not None]
    if dtype is None:
        kinds = {np.asarray(v).dtype.kind for v in values}
        dtype = backend.floatx() if kinds & {"f", "c"} else "int32"
    if stop is None:
        start, stop = 0, start
    return backend.xp().arange(start, stop, 1 if step is None else step, dtype=dtype)


def eye(N: int, M: int | None = None, k: int = 0, dtype: Any = None) -> Any:  # noqa: N803 - Keras name
    return backend.xp().eye(N, M=M, k=k, dtype=dtype or backend.floatx())
