"""Models with Keras names: ``from distnn.models import Model, Sequential, load_model``."""
from __future__ import annotations

import json
import warnings

from distnn import saving, serialization
from distnn.interop import keras_format
from distnn.models.functional import Functional
from distnn.models.model import Model
from distnn.models.sequential import Sequential

serialization.register_builtins("distnn.models", {cls.__name__: cls for cls in (Model, Functional, Sequential)})


def load_model(filepath: str, custom_objects: dict | None = None, compile: bool = True,  # noqa: A002
               safe_mode: bool = True) -> Model:
    """Load a model written by ``model.save`` (Keras' ``load_model``): a Keras 3 ``.keras`` file (written
    by Keras or distnn), or distnn's own format for any other path. Never unpickles, never runs code."""
    if not safe_mode:
        warnings.warn("load_model(safe_mode=False) changes nothing: distnn files hold no code (no lambdas, no "
                      "pickles) and are always loaded safely", stacklevel=2)
    load = keras_format.load_model if keras_format.is_keras_path(filepath) else saving.load_model
    return load(filepath, custom_objects=custom_objects, compile=compile)


def model_from_json(json_string: str, custom_objects: dict | None = None) -> Model:
    """Rebuild a model (fresh weights) from ``model.to_json()``."""
    return saving.deserialize_model_config(json.loads(json_string), custom_objects)


__all__ = ["Functional", "Model", "Sequential", "load_model", "model_from_json"]
