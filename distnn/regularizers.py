"""Weight regularizers (Keras names): ``L1``, ``L2``, ``L1L2`` and the strings "l1", "l2", "l1_l2".

A regularizer adds ``penalty(w)`` to the loss and ``gradient(w)`` to the weight's gradient. The
training loop adds both *after* the gradient allreduce, so every rank adds the same term once.
"""
from __future__ import annotations

from typing import Any

from distnn import serialization
from distnn.backend import get_array_module


class Regularizer:
    def penalty(self, w: Any) -> float:
        raise NotImplementedError

    def gradient(self, w: Any) -> Any:
        raise NotImplementedError

    def __call__(self, w: Any) -> float:
        return self.penalty(w)

    def get_config(self) -> dict:
        return {}


class L1L2(Regularizer):
    """``l1 * sum(|w|) + l2 * sum(w**2)``."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        if l1 < 0 or l2 < 0:
            raise ValueError(f"Regularization factors must be >= 0. Received: l1={l1}, l2={l2}")
        self.l1, self.l2 = float(l1), float(l2)

    def penalty(self, w):
        xp = get_array_module(w)
        total = 0.0
        if self.l1:
            total += self.l1 * float(xp.abs(w).sum())
        if self.l2:
            total += self.l2 * float((w * w).sum())
        return total

    def gradient(self, w):
        xp = get_array_module(w)
        grad = 2.0 * self.l2 * w if self.l2 else xp.zeros_like(w)
        if self.l1:
            grad = grad + self.l1 * xp.sign(w)
        return grad

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    def __init__(self, l1: float = 0.01):
        super().__init__(l1=l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    def __init__(self, l2: float = 0.01):
        super().__init__(l2=l2)

    def get_config(self):
        return {"l2": self.l2}


_TABLE = {"l1": L1, "l2": L2, "l1_l2": L1L2, "L1": L1, "L2": L2, "L1L2": L1L2}
serialization.register_builtins("distnn.regularizers", _TABLE)


def get(identifier: Any) -> Regularizer | None:
    """Resolve a regularizer from a Keras name, a saved configuration (built-in or a registered
    custom class) or an instance; ``None`` stays ``None``."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, (str, dict)):
        regularizer = serialization.resolve(identifier, _TABLE, "regularizer")
        if isinstance(regularizer, Regularizer):
            return regularizer
        raise ValueError(f"{identifier!r} does not name a Regularizer. Received: {regularizer!r}")
    raise TypeError(f"regularizer must be a string, a dict or a Regularizer. Received: {identifier!r}")


def serialize(regularizer: Regularizer | None) -> dict | None:
    return None if regularizer is None else serialization.serialize_keras_object(regularizer)


def deserialize(config: str | dict, custom_objects: dict | None = None) -> Regularizer:
    with serialization.custom_object_scope(custom_objects):
        return get(config)
