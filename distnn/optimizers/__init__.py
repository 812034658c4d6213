"""Optimizers with Keras names and defaults: ``compile(optimizer="adam")`` or ``Adam(1e-3)``."""
from __future__ import annotations

from typing import Any

from distnn import serialization
from distnn.optimizers import schedules
from distnn.optimizers.adam import Adam, AdamW, Nadam
from distnn.optimizers.gradient_descent import SGD, Adagrad, RMSprop
from distnn.optimizers.optimizer import Optimizer

_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad, "nadam": Nadam}
_TABLE = {**_BY_NAME, **{cls.__name__: cls for cls in (Optimizer, *_BY_NAME.values())}}
serialization.register_builtins("distnn.optimizers", _TABLE)


def get(identifier: Any, custom_objects: dict | None = None) -> Optimizer:
    """Resolve an optimizer from a name (``"adam"``, any case, or a registered custom one), a saved
    configuration or an instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        identifier = identifier.lower()
    if isinstance(identifier, (str, dict)):
        optimizer = serialization.resolve(identifier, _TABLE, "optimizer", custom_objects)
        if isinstance(optimizer, Optimizer):
            return optimizer
        raise ValueError(f"{identifier!r:.200} does not name an Optimizer. Received: {optimizer!r}")
    raise TypeError(f"optimizer must be a string or an Optimizer. Received: optimizer={identifier!r}")


def serialize(optimizer: Optimizer) -> dict:
    return serialization.serialize_keras_object(optimizer)


def deserialize(config: dict, custom_objects: dict | None = None) -> Optimizer:
    return get(config, custom_objects)


__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Nadam", "RMSprop", "Adagrad", "schedules", "get", "serialize",
           "deserialize"]
