"""Weight constraints with Keras 3's names: ``MaxNorm``, ``NonNeg``, ``UnitNorm``, ``MinMaxNorm``.

A constraint maps a weight to its projection, ``constraint(w) -> w``; the training loop applies it
to the weight in place after every optimizer step (as Keras applies ``variable.constraint``). Each
rank holds the same weights after the step, so each applies the same projection: no collective.
Given to ``add_weight(constraint=...)`` or a layer's ``kernel_constraint`` / ``bias_constraint``,
as an instance, a Keras name (``"max_norm"``, ``"non_neg"``, ...) or any callable ``f(w) -> w``.
"""
from __future__ import annotations

from typing import Any, Callable

from distnn import serialization
from distnn.arguments import check_real
from distnn.backend import get_array_module

EPSILON = 1e-7  # Keras' backend.epsilon(): keeps the rescaling finite for an all-zero weight


class Constraint:
    """Base class: ``__call__(w)`` returns the constrained weight (the identity here)."""

    def __call__(self, w: Any) -> Any:
        return w

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> "Constraint":
        return cls(**config)


def _axis(axis: Any) -> int | tuple[int, ...]:
    """An axis or a tuple of axes (a saved configuration turns tuples into lists)."""
    return int(axis) if isinstance(axis, int) else tuple(int(a) for a in axis)


def _norms(w: Any, axis: Any) -> Any:
    xp = get_array_module(w)
    return xp.sqrt((w * w).sum(axis=axis, keepdims=True))


class MaxNorm(Constraint):
    """Rescale each slice along ``axis`` (for a Dense kernel ``(in, out)``, ``axis=0``: each unit's
    incoming weights) to an L2 norm of at most ``max_value``."""

    def __init__(self, max_value: float = 2.0, axis: Any = 0):
        self.max_value = check_real("max_value", max_value, minimum=0)
        self.axis = _axis(axis)

    def __call__(self, w):
        norms = _norms(w, self.axis)
        return w * (get_array_module(w).clip(norms, 0, self.max_value) / (EPSILON + norms))

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class NonNeg(Constraint):
    """Zero every negative weight."""

    def __call__(self, w):
        return w * (w >= 0)


class UnitNorm(Constraint):
    """Rescale each slice along ``axis`` to unit L2 norm."""

    def __init__(self, axis: Any = 0):
        self.axis = _axis(axis)

    def __call__(self, w):
        return w / (EPSILON + _norms(w, self.axis))

    def get_config(self):
        return {"axis": self.axis}


class MinMaxNorm(Constraint):
    """Move each slice's L2 norm into ``[min_value, max_value]``, by the fraction ``rate`` of the way
    per step (``rate=1``: all the way)."""

    def __init__(self, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0, axis: Any = 0):
        self.min_value = check_real("min_value", min_value, minimum=0)
        self.max_value = check_real("max_value", max_value, minimum=self.min_value)
        self.rate = check_real("rate", rate, 0, 1)
        self.axis = _axis(axis)

    def __call__(self, w):
        norms = _norms(w, self.axis)
        desired = self.rate * get_array_module(w).clip(norms, self.min_value, self.max_value) + \
            (1 - self.rate) * norms
        return w * (desired / (EPSILON + norms))

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate, "axis": self.axis}


_TABLE = {"max_norm": MaxNorm, "non_neg": NonNeg, "unit_norm": UnitNorm, "min_max_norm": MinMaxNorm,
          **{cls.__name__: cls for cls in (Constraint, MaxNorm, NonNeg, UnitNorm, MinMaxNorm)}}
serialization.register_builtins("distnn.constraints", _TABLE)


def get(identifier: Any) -> Constraint | Callable | None:
    """Resolve a constraint from a Keras name, a saved configuration, an instance or a callable
    ``f(w) -> w``; ``None`` stays ``None``."""
    if identifier is None or isinstance(identifier, Constraint):
        return identifier
    if isinstance(identifier, (str, dict)):
        identifier = serialization.resolve(identifier, _TABLE, "constraint")
    if callable(identifier) and not isinstance(identifier, type):
        return identifier
    raise TypeError(f"constraint must be a string, a dict, a Constraint or a callable. Received: {identifier!r}")


def serialize(constraint: Constraint | Callable | None) -> Any:
    return None if constraint is None else serialization.serialize_keras_object(constraint)


def deserialize(config: str | dict, custom_objects: dict | None = None) -> Constraint | Callable:
    with serialization.custom_object_scope(custom_objects):
        return get(config)
