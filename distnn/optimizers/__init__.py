"""Optimizers with Keras names and defaults: ``compile(optimizer="adam")`` or ``Adam(1e-3)``."""
from __future__ import annotations

from typing import Any

from distnn.optimizers import schedules
from distnn.optimizers.adadelta import Adadelta
from distnn.optimizers.adam import Adam, AdamW, Nadam
from distnn.optimizers.gradient_descent import SGD, Adagrad, RMSprop
from distnn.optimizers.optimizer import Optimizer

_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad, "nadam": Nadam,
            "adadelta": Adadelta}
_CLASSES = {cls.__name__: cls for cls in _BY_NAME.values()}


def get(identifier: Any, custom_objects: dict | None = None) -> Optimizer:
    """Resolve an optimizer from a name (``"adam"``), a config dict or an instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict):
        cls = {**_CLASSES, **(custom_objects or {})}.get(identifier.get("class_name"))
        if cls is None:
            raise ValueError(f"Unknown optimizer class {identifier.get('class_name')!r}: pass it in custom_objects")
        return cls.from_config(identifier.get("config", {}), custom_objects)
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower())
        if cls is None:
            raise ValueError(f"Unknown optimizer {identifier!r}. Valid names: {sorted(_BY_NAME)}")
        return cls()
    raise TypeError(f"optimizer must be a string or an Optimizer. Received: optimizer={identifier!r}")


def serialize(optimizer: Optimizer) -> dict:
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Nadam", "RMSprop", "Adagrad", "Adadelta", "schedules", "get", "serialize"]
