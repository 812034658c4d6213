"""The model file: one zip holding JSON configuration and ``.npy`` arrays — never a pickle.

Layout of ``model.save(path)``::

    config.json      {"format": "distnn", "version": 1, "model": <get_config()>, "compile": {...},
                      "weights": [[name, shape], ...]}
    weights.npz      w0, w1, ... in the model's variable order
    optimizer.npz    the optimizer's flat state and step count (when compiled and built)

Saving streams the members array by array into a temporary file (no copy of the model in memory),
fsyncs it and renames it, so a crash never leaves a half-written model under the final name.
Loading checks the archive (``distnn.archive``), the configuration and every array header against
the weight table before it reads an array; it rebuilds the model under a weight budget taken from
that table, from registered classes (or ``custom_objects``) only. Every failure is a ``ValueError``
naming the file (docs/architecture.md, "Reliability: files and backups").
"""
from __future__ import annotations

import io
import math
import os
import zipfile
from typing import Any

from distnn import backend, layers, losses, metrics, optimizers, weight_budget
from distnn.archive import ArchiveReader, ArrayEntry, ZipStreamWriter, atomic_file, match_entries
# Keras 3's keras.saving names (distnn.saving.register_keras_serializable, ...): the registry's.
from distnn.serialization import (CustomObjectScope, custom_object_scope, deserialize_keras_object,  # noqa: F401
                                  get_custom_objects, get_registered_name, get_registered_object,
                                  register_keras_serializable, register_serializable, serialize_keras_object)

FORMAT_VERSION = 1
MODEL_MEMBERS = {"config.json", "weights.npz"}
OPTIONAL_MEMBERS = {"optimizer.npz"}


def serialize_model_config(model: Any) -> dict:
    """``{"module", "class_name", "config"}`` of a model: the ``"model"`` entry of ``config.json``."""
    return layers.serialize(model)


def deserialize_model_config(config: dict, custom_objects: dict | None = None) -> Any:
    """A model from ``serialize_model_config``; distnn 0.1 files (a bare Sequential config) too.
    Classes come from the registry (``distnn.serialization``): this module never imports the models."""
    if isinstance(config, dict) and "class_name" not in config:
        config = {"module": "distnn.models", "class_name": "Sequential", "config": config}
    return layers.deserialize(config, custom_objects)


def compile_config(model: Any) -> dict | None:
    """The saved form of ``compile``'s arguments (``None`` when the model is not compiled)."""
    if not model.compiled:
        return None
    args = model._compile_args
    return {"optimizer": optimizers.serialize(model.optimizer),
            "loss": _per_output(args["loss"], lambda loss: losses.serialize(losses.get(loss))),
            "loss_weights": args["loss_weights"], "metrics": _per_output(args["metrics"], metrics.serialize),
            "weighted_metrics": _per_output(args["weighted_metrics"], metrics.serialize)}


def _per_output(value: Any, convert: Any) -> Any:
    """``convert`` over a compile argument: one value, a list (in output order, or of metrics) or a
    dict keyed by output name; a saved object's dict (it has a class_name) is one value."""
    if isinstance(value, (list, tuple)):
        return [_per_output(v, convert) for v in value]
    if isinstance(value, dict) and "class_name" not in value:
        return {k: _per_output(v, convert) for k, v in value.items()}
    return None if value is None else convert(value)


def write_model_members(archive: ZipStreamWriter, model: Any, include_optimizer: bool = True) -> None:
    """Stream the members of a model file into ``archive`` (also used by training backups)."""
    model._require_built("save()")
    variables = model.variables
    archive.write_json("config.json", {
        "format": "distnn", "version": FORMAT_VERSION, "model": serialize_model_config(model),
        "compile": compile_config(model), "weights": [[v.name, list(v.shape)] for v in variables]})
    archive.write_npz("weights.npz", [(f"w{i}", v.value) for i, v in enumerate(variables)])
    if include_optimizer and model.compiled and model.optimizer.built:
        archive.write_npz("optimizer.npz", model.optimizer.state_items())


def save_model(model: Any, filepath: str) -> None:
    with atomic_file(filepath) as f, ZipStreamWriter(f) as archive:
        write_model_members(archive, model)


def save_weights(model: Any, filepath: str) -> None:
    """Weights only: a zip with the weight table and arrays."""
    with atomic_file(filepath) as f, ZipStreamWriter(f) as archive:
        write_model_members(archive, model, include_optimizer=False)


def model_archive(model: Any, include_optimizer: bool = True) -> dict[str, bytes]:
    """The members of a model file as bytes, in memory: for tools and tests (saving streams them)."""
    buffer = io.BytesIO()
    with ZipStreamWriter(buffer) as archive:
        write_model_members(archive, model, include_optimizer)
    with zipfile.ZipFile(buffer) as z:
        return {name: z.read(name) for name in z.namelist()}


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip of ``members`` as distnn writes it (stored members), in memory."""
    buffer = io.BytesIO()
    with ZipStreamWriter(buffer) as archive:
        for name, payload in members.items():
            archive.write_bytes(name, payload)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------- checking
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_config(config: Any, where: str) -> list[tuple[str, tuple[int, ...]]]:
    """Check the generic parts of a ``config.json`` (format, version, weight table, section types);
    returns the weight table. The model configuration itself is checked by rebuilding it."""
    if not isinstance(config, dict) or config.get("format") != "distnn":
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{where} is not a distnn model file (format={found!r})")
    version = config.get("version")
    if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"{where}: unsupported version {version!r}; this distnn reads versions 1 to {FORMAT_VERSION}")
    if not isinstance(config.get("model"), dict):
        raise ValueError(f"{where}: 'model' must be a JSON object. Received: {type(config.get('model')).__name__}")
    compiled = config.get("compile")
    if compiled is not None and not (isinstance(compiled, dict) and isinstance(compiled.get("optimizer"), (dict, str))
                                     and isinstance(compiled.get("loss"), (dict, str, list))):
        raise ValueError(f"{where}: 'compile' must be null or an object with 'optimizer' and 'loss' (their values "
                         f"are checked by compile()). Received: {compiled!r:.200}")
    table = config.get("weights")
    if not isinstance(table, list):
        raise ValueError(f"{where}: the weight table 'weights' must be a list. Received: {type(table).__name__}")
    checked = []
    for i, item in enumerate(table):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], list)
                and all(_is_int(d) and d >= 0 for d in item[1])):
            raise ValueError(f"{where}: weight table entry {i} must be [name, [non-negative dims]]. "
                             f"Received: {item!r:.200}")
        checked.append((item[0], tuple(item[1])))
    return checked


def weight_entries(archive: ArchiveReader, table: list[tuple[str, tuple[int, ...]]]) -> list[ArrayEntry]:
    """The headers of ``weights.npz``, which must match the weight table exactly."""
    expected = [(f"w{i}", shape) for i, (_, shape) in enumerate(table)]
    return match_entries(archive.npz_arrays("weights.npz"), expected, f"{archive.path}: weights.npz")


def check_variables(variables: list, table: list[tuple[str, tuple[int, ...]]], where: str) -> None:
    """The model's variables must have the weight table's count and shapes."""
    if len(table) != len(variables):
        raise ValueError(f"{where} holds {len(table)} weights but the model has {len(variables)}")
    for i, (variable, (name, shape)) in enumerate(zip(variables, table)):
        if shape != variable.shape:
            raise ValueError(f"{where}: weight {i} ({name}) has shape {shape}, but the model's "
                             f"{variable.name} has shape {variable.shape}")


def read_weights(archive: ArchiveReader, entries: list[ArrayEntry], variables: list) -> None:
    """Read every weight straight into its variable (through one array-sized host buffer on a GPU)."""
    for entry, variable in zip(entries, variables):
        array = archive.read_array(entry, variable.value)
        if array is not variable.value:
            variable.assign(array)


def optimizer_entries(archive: ArchiveReader, optimizer: Any) -> list[ArrayEntry]:
    """The headers of ``optimizer.npz``, which must hold exactly the state of ``optimizer`` (built)."""
    expected = [(name, tuple(value.shape)) for name, value in optimizer.state_items()]
    return match_entries(archive.npz_arrays("optimizer.npz"), expected, f"{archive.path}: optimizer.npz")


def read_optimizer_state(archive: ArchiveReader, entries: list[ArrayEntry], optimizer: Any) -> dict[str, Any]:
    """Read the optimizer state in place (slots straight into their arrays); returns the small
    non-slot values (``iterations``...), which ranks without the file receive by broadcast."""
    small = {}
    for entry in entries:
        if entry.key in optimizer.slots:
            slot = optimizer.slots[entry.key]
            array = archive.read_array(entry, slot)
            if array is not slot:
                slot[...] = backend.to_device(array)
        else:
            small[entry.key] = archive.read_array(entry)
    set_optimizer_scalars(optimizer, small)
    return small


def set_optimizer_scalars(optimizer: Any, small: dict[str, Any]) -> None:
    """Set the non-slot optimizer state (the slots already hold their values)."""
    optimizer.set_state({**optimizer.slots, **small})


# -------------------------------------------------------------------------------------- loading
def _rebuild(config: dict, custom_objects: dict | None, table: list, where: str) -> Any:
    """The model of ``config``, allowed to create no more weight values than ``table`` holds."""
    try:
        with weight_budget.limit(sum(math.prod(shape) for _, shape in table)):
            model = deserialize_model_config(config["model"], custom_objects)
    except Exception as exc:  # the layers' own checks raise many types on a malformed configuration
        detail = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{where}: the model in config.json cannot be rebuilt: {detail}") from exc
    if not model.built:
        raise ValueError(f"{where}: the saved model has no input shape, so it cannot be rebuilt")
    return model


def _compile(model: Any, compiled: dict, custom_objects: dict | None, where: str) -> None:
    try:
        model.compile(optimizer=optimizers.get(compiled["optimizer"], custom_objects),
                      loss=_per_output(compiled["loss"], lambda v: losses.get(v, custom_objects)),
                      loss_weights=compiled.get("loss_weights"),
                      metrics=_per_output(compiled.get("metrics"), lambda v: metrics.deserialize(v, custom_objects)),
                      weighted_metrics=_per_output(compiled.get("weighted_metrics"),
                                                   lambda v: metrics.deserialize(v, custom_objects)))
    except Exception as exc:  # optimizer and loss configs are checked by their constructors
        detail = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{where}: the compile settings in config.json are not valid: {detail}") from exc


def load_model(filepath: str, custom_objects: dict | None = None, compile: bool = True) -> Any:  # noqa: A002
    where = os.fspath(filepath)
    with ArchiveReader(where, MODEL_MEMBERS, OPTIONAL_MEMBERS) as archive:
        config = archive.read_json("config.json")
        table = check_config(config, where)
        entries = weight_entries(archive, table)
        model = _rebuild(config, custom_objects, table, where)
        check_variables(model.variables, table, where)
        read_weights(archive, entries, model.variables)
        if compile and config.get("compile"):
            _compile(model, config["compile"], custom_objects, where)
            if "optimizer.npz" in archive.names and model.optimizer.built:
                read_optimizer_state(archive, optimizer_entries(archive, model.optimizer), model.optimizer)
    return model


def load_weights(model: Any, filepath: str) -> None:
    """Weights from a model or weights file into the built ``model``. Every array is checked
    (CRC-32) before any is assigned, so a damaged file leaves the model as it was."""
    where = os.fspath(filepath)
    model._require_built("load_weights()")
    with ArchiveReader(where, MODEL_MEMBERS, OPTIONAL_MEMBERS) as archive:
        table = check_config(archive.read_json("config.json"), where)
        check_variables(model.variables, table, where)
        entries = weight_entries(archive, table)
        for entry in entries:
            archive.verify_array(entry)
        read_weights(archive, entries, model.variables)
