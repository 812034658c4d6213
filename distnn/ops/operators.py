"""Python operators for tape ``Tensor``s and layer ``Variable``s, so ``x @ w + b``, ``-x``, ``x[:, :3]``
and ``x.T`` work inside ``call`` as they do on Keras tensors (docs/architecture.md, "Autodiff")."""
from __future__ import annotations

from typing import Any

from distnn.ops import numpy as np_ops
from distnn.ops.core import value_of


class TensorOperators:
    """Mixin: operators that dispatch to the differentiable ops. Comparisons return plain boolean arrays."""

    __array_ufunc__ = None  # ``ndarray <op> self`` calls our reflected operator instead of numpy's

    def __add__(self, other: Any) -> Any:
        return np_ops.add(self, other)

    def __radd__(self, other: Any) -> Any:
        return np_ops.add(other, self)

    def __sub__(self, other: Any) -> Any:
        return np_ops.subtract(self, other)

    def __rsub__(self, other: Any) -> Any:
        return np_ops.subtract(other, self)

    def __mul__(self, other: Any) -> Any:
        return np_ops.multiply(self, other)

    def __rmul__(self, other: Any) -> Any:
        return np_ops.multiply(other, self)

    def __truediv__(self, other: Any) -> Any:
        return np_ops.divide(self, other)

    def __rtruediv__(self, other: Any) -> Any:
        return np_ops.divide(other, self)

    def __matmul__(self, other: Any) -> Any:
        return np_ops.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Any:
        return np_ops.matmul(other, self)

    def __pow__(self, other: Any) -> Any:
        return np_ops.power(self, other)

    def __rpow__(self, other: Any) -> Any:
        return np_ops.power(other, self)

    def __neg__(self) -> Any:
        return np_ops.negative(self)

    def __pos__(self) -> Any:
        return self

    def __abs__(self) -> Any:
        return np_ops.abs(self)

    def __getitem__(self, key: Any) -> Any:
        return np_ops.getitem(self, value_of(key) if not isinstance(key, tuple) else
                              tuple(value_of(k) for k in key))

    @property
    def T(self) -> Any:  # noqa: N802 - numpy/Keras name
        return np_ops.transpose(self)

    def __lt__(self, other: Any) -> Any:
        return value_of(self) < value_of(other)

    def __le__(self, other: Any) -> Any:
        return value_of(self) <= value_of(other)

    def __gt__(self, other: Any) -> Any:
        return value_of(self) > value_of(other)

    def __ge__(self, other: Any) -> Any:
        return value_of(self) >= value_of(other)
