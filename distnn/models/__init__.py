"""Models with Keras names: ``from distnn.models import Model, Sequential, load_model``."""
from distnn.models.functional import Functional
from distnn.models.model import Model
from distnn.models.sequential import Sequential


def load_model(filepath: str, custom_objects: dict | None = None, compile: bool = True, safe_mode: bool = True):  # noqa: A002
    """Load a model written by ``model.save`` (Keras' ``load_model``). Never unpickles, never runs code."""
    from distnn import saving  # noqa: PLC0415 - saving imports the model classes

    return saving.load_model(filepath, custom_objects=custom_objects, compile=compile)


def model_from_json(json_string: str, custom_objects: dict | None = None) -> Model:
    """Rebuild a model (fresh weights) from ``model.to_json()``."""
    import json  # noqa: PLC0415

    from distnn import saving  # noqa: PLC0415

    return saving.deserialize_model_config(json.loads(json_string), custom_objects)


__all__ = ["Functional", "Model", "Sequential", "load_model", "model_from_json"]
