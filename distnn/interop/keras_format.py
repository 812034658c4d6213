"""Keras 3 files: ``model.save("m.keras")``, ``load_model("m.keras")``, ``save_weights("w.weights.h5")``.

A ``.keras`` file is a zip of ``metadata.json``, ``config.json`` (the model in Keras 3's schema,
``distnn.interop.keras_config``) and ``model.weights.h5``: an HDF5 file with one group per layer,
``layers/<snake-cased class name>[_n]/vars/<i>``, and the optimizer's variables in
``optimizer/vars/<i>``. A ``.weights.h5`` file is that HDF5 file alone.

Reading is as guarded as distnn's own format (docs/architecture.md, "Keras 3 files"): the zip's
members are stored, expected and size-checked before anything is read (``distnn.archive``); classes
come from distnn's registry by name, never by importing the module a file names; the model is
rebuilt under a weight budget bounded by the size of the HDF5 member; every dataset is reached
through hard links only (an external or soft link could point at another file), must not be
virtual or stored outside the file, and its shape and dtype are compared with the rebuilt model's
variable before it is read, straight into that variable. HDF5 comes through ``h5py``, imported
only here.
"""
from __future__ import annotations

import datetime
import json
import os
import tempfile
import warnings
from typing import Any

import numpy as np

from distnn import backend, saving
from distnn.archive import ArchiveReader, ZipStreamWriter, atomic_file
from distnn.interop import keras_config

MEMBERS = {"metadata.json", "config.json", "model.weights.h5"}
WEIGHTS_MEMBER = "model.weights.h5"
# The oldest Keras whose loader reads what this module writes (its config schema and h5 layout).
KERAS_VERSION = "3.0.0"
_MODEL_CLASSES = ("Sequential", "Functional")
_READABLE_KINDS = "fiu"  # float, signed and unsigned integer datasets; anything else is no weight


def is_keras_path(filepath: Any) -> bool:
    return os.fspath(filepath).endswith(".keras")


def is_keras_weights_path(filepath: Any) -> bool:
    return os.fspath(filepath).endswith(".weights.h5")


def _h5py() -> Any:
    try:
        import h5py  # noqa: PLC0415 - optional, and slow to import
    except ImportError as exc:
        raise ImportError("Keras 3 files (.keras, .weights.h5) need h5py: pip install 'distnn[interop]'") from exc
    return h5py


# -------------------------------------------------------------------------------- optimizer layout
def _optimizer_layout(optimizer: Any) -> list[tuple[str, ...]] | None:
    """distnn's slot names grouped as Keras 3 orders an optimizer's variables after ``iterations``
    and ``learning_rate``: each group is one loop over the model's trainable variables, creating one
    variable per name (Adam creates momentum and velocity together). ``None``: no known layout."""
    from distnn import optimizers  # noqa: PLC0415

    kind = type(optimizer)
    if kind is optimizers.SGD:
        return [("momentum",)] if optimizer.momentum else []
    if kind in (optimizers.Adam, optimizers.AdamW):
        return [("m", "v")] + ([("v_hat",)] if optimizer.amsgrad else [])
    if kind is optimizers.RMSprop:
        return [(name,) for name in ("velocity", "momentum", "average_gradient") if name in optimizer.slot_names]
    if kind is optimizers.Adagrad:
        return [("accumulator",)]
    # Keras creates these optimizers' variables as distnn's slots, in the same order, per variable.
    if kind in (optimizers.Adamax, optimizers.Lion, optimizers.Lamb, optimizers.Adadelta, optimizers.Ftrl):
        return [tuple(optimizer.slot_names)]
    return None


def _optimizer_variables(model: Any) -> list[tuple[str, Any]] | None:
    """``(what, array view)`` of the optimizer state in Keras' variable order; ``None`` when distnn
    cannot lay it out as Keras does."""
    optimizer = model.optimizer
    layout = _optimizer_layout(optimizer)
    if layout is None or not optimizer.built:
        return None
    segments = {id(v): segment for v, segment in zip(model._bound_variables, model._segments)}
    order = [v for v in keras_config.trainable_order(model) if id(v) in segments]
    items: list[tuple[str, Any]] = [("iterations", np.array(optimizer.iterations, dtype=np.int64))]
    if not callable(optimizer._learning_rate):  # Keras tracks a schedule's rate as no variable
        items.append(("learning_rate", np.array(optimizer.learning_rate, dtype=np.float32)))
    for names in layout:
        for v in order:
            start, size = segments[id(v)]
            items.extend((f"{name} of {v.name}", optimizer.slots[name][start:start + size].reshape(v.shape))
                         for name in names)
    return items


# ------------------------------------------------------------------------------------------ saving
def _write_weights(target: Any, model: Any, config: dict, include_optimizer: bool) -> None:
    """The HDF5 weights file into the seekable binary file object ``target``."""
    h5py = _h5py()
    with h5py.File(target, "w") as f:
        for group_path, layer, variables in keras_config.weight_groups(config, model):
            group = f.require_group(group_path)
            group.attrs["name"] = layer.name
            for i, variable in enumerate(variables):
                group.create_dataset(str(i), data=backend.to_numpy(variable.value))
        if include_optimizer and model.compiled:
            items = _optimizer_variables(model)
            if items is None:
                warnings.warn(f"The state of optimizer {type(model.optimizer).__name__} is not written in Keras' "
                              "format (distnn does not know its Keras layout); the weights and compile settings "
                              "are. Save in distnn's format to keep it", stacklevel=4)
                return
            group = f.require_group("optimizer/vars")
            group.attrs["name"] = model.optimizer.name
            for i, (_, array) in enumerate(items):
                group.create_dataset(str(i), data=backend.to_numpy(array))


def _check_model_kind(model: Any) -> None:
    model._require_built("save()")
    if type(model).__name__ not in _MODEL_CLASSES:
        raise ValueError(f"Keras' format holds Sequential and functional models; {type(model).__name__} is a "
                         "subclassed model. Save it in distnn's format (a path not ending in .keras)")


def save_model(model: Any, filepath: Any) -> None:
    """Write ``model`` as Keras 3 does: the zip is written atomically, the HDF5 part first into a
    temporary file beside it (h5py needs a seekable file; no copy of the weights in memory)."""
    _check_model_kind(model)
    filepath = os.fspath(filepath)
    config = keras_config.keras_model_config(model)
    compile_config = keras_config.to_keras_compile(saving.compile_config(model))
    if compile_config is not None:
        config["compile_config"] = compile_config
    metadata = {"keras_version": KERAS_VERSION, "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
                "saved_by": "distnn"}
    directory = os.path.dirname(os.path.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory, prefix=".tmp-keras-") as weights:
        _write_weights(weights, model, config, include_optimizer=True)
        with atomic_file(filepath) as f, ZipStreamWriter(f) as archive:
            archive.write_bytes("metadata.json", json.dumps(metadata).encode())
            archive.write_bytes("config.json", json.dumps(config).encode())
            archive.write_file(WEIGHTS_MEMBER, weights)


def save_weights(model: Any, filepath: Any) -> None:
    """The weights alone, as Keras 3's ``save_weights("w.weights.h5")``: a plain HDF5 file."""
    _check_model_kind(model)
    filepath = os.fspath(filepath)
    config = keras_config.keras_model_config(model)
    with atomic_file(filepath) as f:
        _write_weights(f, model, config, include_optimizer=False)


# ----------------------------------------------------------------------------------------- reading
class _H5Reader:
    """Datasets of an open HDF5 file, reached and checked as the module docstring says."""

    def __init__(self, h5file: Any, where: str):
        self.h5py = _h5py()
        self.file, self.where = h5file, where

    def node(self, path: str) -> Any:
        """The object at ``path`` through hard links only; ``None`` when a part is missing."""
        obj = self.file
        for part in path.split("/"):
            link = obj.get(part, getlink=True)
            if link is None:
                return None
            if not isinstance(link, self.h5py.HardLink):
                raise ValueError(f"{self.where}: {path} is reached through a {type(link).__name__}; Keras files "
                                 "hold hard links only, and another kind may point at another file")
            obj = obj[part]
        return obj

    def datasets(self, path: str, expected: list[tuple[tuple[int, ...], str]]) -> list[Any]:
        """The datasets ``path/0``, ``path/1``... which must be exactly ``len(expected)``, each of the
        expected shape, with a numeric dtype, and stored inside the file."""
        group = self.node(path) if expected else None
        if group is None:
            if expected:
                raise ValueError(f"{self.where}: the file holds no weights at {path} for {expected[0][1]}")
            return []
        if not isinstance(group, self.h5py.Group) or len(group) != len(expected):
            count = len(group) if isinstance(group, self.h5py.Group) else "no group"
            raise ValueError(f"{self.where}: {path} holds {count} entries, but the model has "
                             f"{len(expected)} weights there ({', '.join(name for _, name in expected)})")
        found = []
        for i, (shape, name) in enumerate(expected):
            dataset = self.node(f"{path}/{i}")
            if not isinstance(dataset, self.h5py.Dataset):
                raise ValueError(f"{self.where}: {path}/{i} (for {name}) is not a dataset")
            if tuple(dataset.shape or ()) != tuple(shape):
                raise ValueError(f"{self.where}: {path}/{i} has shape {dataset.shape}, but {name} has shape "
                                 f"{tuple(shape)}")
            dtype = dataset.dtype
            if dtype.kind not in _READABLE_KINDS or dtype.fields is not None or dtype.itemsize > 8:
                raise ValueError(f"{self.where}: {path}/{i} has dtype {dtype}; weights are numbers")
            if dataset.is_virtual or dataset.external:
                raise ValueError(f"{self.where}: {path}/{i} keeps its data outside the file (virtual or external "
                                 "storage); refusing to read it")
            found.append(dataset)
        return found

    def read(self, dataset: Any, target: Any = None) -> np.ndarray:
        """The dataset's values, read straight into ``target`` when it is a writable C-contiguous host
        array of the dataset's shape (h5py converts the dtype), else into a new array."""
        direct = isinstance(target, np.ndarray) and target.flags.c_contiguous and target.flags.writeable
        out = target if direct else np.empty(dataset.shape, dtype=np.float32 if dataset.dtype.kind == "f"
                                             else np.int64)
        try:
            if out.size:
                dataset.read_direct(out)
        except Exception as exc:  # h5py raises OSError and others on damaged data
            raise ValueError(f"{self.where}: cannot read {dataset.name} ({type(exc).__name__}: {exc})") from None
        return out


def _weight_plan(reader: _H5Reader, config: dict, model: Any) -> list[tuple[Any, Any]]:
    """``(dataset, variable)`` for every weight of ``model``, all checked before any is read."""
    plan = []
    for path, _, variables in keras_config.weight_groups(config, model):
        datasets = reader.datasets(path, [(v.shape, v.name) for v in variables])
        plan.extend(zip(datasets, variables))
    return plan


def _assign(reader: _H5Reader, dataset: Any, variable: Any) -> None:
    array = reader.read(dataset, variable.value)
    if array is not variable.value:
        variable.assign(backend.to_device(array.astype(variable.value.dtype, copy=False)))


def _read_optimizer(reader: _H5Reader, model: Any) -> None:
    if reader.node("optimizer") is None:
        return
    items = _optimizer_variables(model)
    if items is None:
        warnings.warn(f"{reader.where}: the optimizer state is not loaded: distnn does not know the Keras layout of "
                      f"{type(model.optimizer).__name__}; training continues from fresh optimizer state", stacklevel=4)
        return
    group = reader.node("optimizer/vars")
    scalars = [item for item in items if item[0] in ("iterations", "learning_rate")]
    if group is not None and len(group) == len(scalars):
        # Keras builds an optimizer's slots at its first step: a model compiled but never trained
        # holds only the step count and the learning rate.
        items = scalars
    datasets = reader.datasets("optimizer/vars", [(tuple(np.shape(array)), what) for what, array in items])
    optimizer = model.optimizer
    for (what, array), dataset in zip(items, datasets):
        if what == "iterations":
            optimizer.iterations = int(reader.read(dataset))
        elif what == "learning_rate":
            optimizer.learning_rate = float(reader.read(dataset))
        else:
            values = reader.read(dataset)
            array[...] = backend.to_device(values.astype(array.dtype, copy=False))


def load_model(filepath: Any, custom_objects: dict | None = None, compile: bool = True) -> Any:  # noqa: A002
    """A model from a Keras 3 ``.keras`` file (written by Keras or by distnn)."""
    where = os.fspath(filepath)
    h5py = _h5py()
    with ArchiveReader(where, MEMBERS) as archive:
        metadata = archive.read_json("metadata.json")
        if not isinstance(metadata, dict):
            raise ValueError(f"{where}: metadata.json must be a JSON object. Received: {metadata!r:.200}")
        config = archive.read_json("config.json")
        if not isinstance(config, dict) or config.get("class_name") not in _MODEL_CLASSES:
            found = config.get("class_name") if isinstance(config, dict) else type(config).__name__
            raise ValueError(f"{where}: the file holds a {found!r}; distnn reads Keras' Sequential and functional "
                             "models (a subclassed model's class cannot be rebuilt without its code)")
        model_config = keras_config.from_keras_entry({k: v for k, v in config.items() if k != "compile_config"},
                                                     custom_objects, where)
        compile_section = keras_config.from_keras_compile(config.get("compile_config"), custom_objects, where)
        # A stored weight takes at least 2 bytes (float16): the file's size bounds what it can hold.
        budget = archive.member_size(WEIGHTS_MEMBER) // 2
        model = saving._rebuild({"model": model_config}, custom_objects, [(WEIGHTS_MEMBER, (budget,))], where)
        archive.verify_member(WEIGHTS_MEMBER)
        with archive.member_stream(WEIGHTS_MEMBER) as stream, _open_h5(h5py, stream, where) as h5file:
            reader = _H5Reader(h5file, f"{where}: {WEIGHTS_MEMBER}")
            for dataset, variable in _weight_plan(reader, config, model):
                _assign(reader, dataset, variable)
            if compile and compile_section:
                saving._compile(model, compile_section, custom_objects, where)
                _read_optimizer(reader, model)
    return model


def _open_h5(h5py: Any, source: Any, where: str) -> Any:
    try:
        return h5py.File(source, "r")
    except Exception as exc:  # h5py raises OSError and others on what is no HDF5 file
        raise ValueError(f"{where}: not a readable HDF5 file ({type(exc).__name__}: {exc})") from None


def load_weights(model: Any, filepath: Any) -> None:
    """Weights from a Keras 3 ``.weights.h5`` file into the built ``model``. Every dataset is checked
    and read before any is assigned, so a damaged file leaves the model as it was."""
    where = os.fspath(filepath)
    h5py = _h5py()
    model._require_built("load_weights()")
    _check_model_kind(model)
    if not os.path.isfile(where):
        raise OSError(f"{where}: no such file")
    config = keras_config.keras_model_config(model)
    with _open_h5(h5py, where, where) as h5file:
        reader = _H5Reader(h5file, where)
        plan = _weight_plan(reader, config, model)
        values = [reader.read(dataset) for dataset, _ in plan]
    for (_, variable), value in zip(plan, values):
        variable.assign(backend.to_device(value.astype(variable.value.dtype, copy=False)))
