"""The model file: one zip holding JSON configuration and ``.npy`` arrays — never a pickle.

Layout of ``model.save(path)``::

    config.json      {"format": "distnn", "version": 1, "model": <get_config()>, "compile": {...},
                      "weights": [[name, shape], ...]}
    weights.npz      w0, w1, ... in the model's variable order
    optimizer.npz    the optimizer's flat state and step count (when compiled and built)

``load_model`` rebuilds layers from their registered classes (or ``custom_objects``) and reads
arrays with ``allow_pickle=False``. Files are written to a temporary name, fsynced and renamed,
so a crash never leaves a half-written model under the final name.
"""
from __future__ import annotations

import inspect
import io
import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from distnn import losses, optimizers

FORMAT_VERSION = 1


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and an atomic rename."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def _layer_classes(custom_objects: dict | None) -> dict[str, type]:
    import distnn.layers as layers_module  # noqa: PLC0415 - every layer class, by name
    import distnn.models as models_module  # noqa: PLC0415 - models import this module lazily
    from distnn.layers.base import Layer, registered_objects  # noqa: PLC0415

    classes = {name: obj for module in (layers_module, models_module) for name, obj in vars(module).items()
               if isinstance(obj, type) and issubclass(obj, Layer)}
    return {**classes, **registered_objects(), **(custom_objects or {})}


def serialize_layer(layer: Any) -> dict:
    """``{"class_name", "config"}`` of a layer or model: the unit of every saved configuration."""
    from distnn.layers.base import serializable_name  # noqa: PLC0415

    return {"class_name": serializable_name(type(layer)), "config": layer.get_config()}


def deserialize_layer(entry: dict, custom_objects: dict | None = None) -> Any:
    """A layer (or model) from ``serialize_layer``'s dict; only known or given classes are built."""
    if not isinstance(entry, dict) or "class_name" not in entry:
        raise ValueError(f"A layer configuration must be a dict with a class_name. Received: {entry!r:.200}")
    cls = _layer_classes(custom_objects).get(entry["class_name"])
    if cls is None:
        raise ValueError(f"Unknown layer class {entry['class_name']!r}: pass it in custom_objects or "
                         "decorate it with @distnn.layers.register_serializable()")
    config = entry.get("config", {})
    # Models rebuild their layers, and a Lambda looks its function up by name: both need custom_objects.
    if "custom_objects" in inspect.signature(cls.from_config).parameters:
        return cls.from_config(config, custom_objects=custom_objects)
    return cls.from_config(config)


def serialize_model_config(model: Any) -> dict:
    return serialize_layer(model)


def deserialize_model_config(config: dict, custom_objects: dict | None = None) -> Any:
    """A model from ``serialize_model_config``; distnn 0.1 files (a bare Sequential config) too."""
    if "class_name" not in config:
        from distnn.models import Sequential  # noqa: PLC0415

        return Sequential.from_config(config, custom_objects)
    return deserialize_layer(config, custom_objects)


def _compile_config(model: Any) -> dict | None:
    if not model.compiled:
        return None
    args = model._compile_args

    def names_only(value: Any, what: str) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)):
            return [names_only(v, what) for v in value]
        if isinstance(value, dict):
            return {k: names_only(v, what) for k, v in value.items()}
        raise ValueError(f"Cannot save the custom {what} {value!r}: only names are saved; compile the loaded "
                         "model again with it")

    def loss_config(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [loss_config(v) for v in value]
        if isinstance(value, dict):
            return {k: loss_config(v) for k, v in value.items()}
        return None if value is None else losses.serialize(losses.get(value))

    return {"optimizer": optimizers.serialize(model.optimizer), "loss": loss_config(args["loss"]),
            "loss_weights": args["loss_weights"], "metrics": names_only(args["metrics"], "metric"),
            "weighted_metrics": names_only(args["weighted_metrics"], "metric")}


def _loss_from_config(value: Any, custom_objects: dict | None) -> Any:
    if isinstance(value, list):
        return [_loss_from_config(v, custom_objects) for v in value]
    if isinstance(value, dict) and "class_name" not in value:
        return {k: _loss_from_config(v, custom_objects) for k, v in value.items()}
    return None if value is None else losses.get(value, custom_objects)


def model_archive(model: Any, include_optimizer: bool = True) -> dict[str, bytes]:
    """The members of a model file (also used by checkpoints)."""
    model._require_built("save()")
    variables = model.variables
    config = {"format": "distnn", "version": FORMAT_VERSION, "model": serialize_model_config(model),
              "compile": _compile_config(model), "weights": [[v.name, list(v.shape)] for v in variables]}
    members = {"config.json": json.dumps(config, indent=1).encode(),
               "weights.npz": npz_bytes({f"w{i}": v.numpy() for i, v in enumerate(variables)})}
    if include_optimizer and model.compiled and model.optimizer.built:
        members["optimizer.npz"] = npz_bytes(model.optimizer.get_state())
    return members


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def read_zip(path: str) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(path) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path} is not a distnn model file (not a zip archive)") from exc


def save_model(model: Any, filepath: str) -> None:
    atomic_write(filepath, zip_bytes(model_archive(model)))


def model_from_archive(members: dict[str, bytes], custom_objects: dict | None = None, compile: bool = True,  # noqa: A002
                       source: str = "archive") -> Any:
    if "config.json" not in members or "weights.npz" not in members:
        raise ValueError(f"{source} is not a distnn model file: config.json or weights.npz is missing")
    config = json.loads(members["config.json"])
    if config.get("format") != "distnn":
        raise ValueError(f"{source} is not a distnn model file (format={config.get('format')!r})")
    model = deserialize_model_config(config["model"], custom_objects)
    if not model.built:
        raise ValueError(f"{source}: the saved model has no input shape, so it cannot be rebuilt")
    _assign_weights(model, read_npz(members["weights.npz"]), config["weights"], source)
    if compile and config.get("compile"):
        compiled = config["compile"]
        model.compile(optimizer=optimizers.get(compiled["optimizer"], custom_objects),
                      loss=_loss_from_config(compiled["loss"], custom_objects),
                      loss_weights=compiled.get("loss_weights"), metrics=compiled["metrics"],
                      weighted_metrics=compiled.get("weighted_metrics"))
        if "optimizer.npz" in members:
            model.optimizer.set_state(read_npz(members["optimizer.npz"]))
    return model


def load_model(filepath: str, custom_objects: dict | None = None, compile: bool = True) -> Any:  # noqa: A002
    return model_from_archive(read_zip(filepath), custom_objects, compile, source=os.fspath(filepath))


def _assign_weights(model: Any, arrays: dict[str, np.ndarray], table: list, source: str) -> None:
    variables = model.variables
    if len(table) != len(variables):
        raise ValueError(f"{source} holds {len(table)} weights but the model has {len(variables)}")
    for i, (variable, (name, shape)) in enumerate(zip(variables, table)):
        if tuple(shape) != variable.shape:
            raise ValueError(f"{source}: weight {i} ({name}) has shape {tuple(shape)}, but the model's "
                             f"{variable.name} has shape {variable.shape}")
        variable.assign(arrays[f"w{i}"])


def save_weights(model: Any, filepath: str) -> None:
    """Weights only: a zip with the weight table and arrays."""
    members = model_archive(model, include_optimizer=False)
    atomic_write(filepath, zip_bytes(members))


def load_weights(model: Any, filepath: str) -> None:
    members = read_zip(filepath)
    if "weights.npz" not in members:
        raise ValueError(f"{filepath} holds no weights.npz")
    table = json.loads(members["config.json"])["weights"]
    _assign_weights(model, read_npz(members["weights.npz"]), table, os.fspath(filepath))
