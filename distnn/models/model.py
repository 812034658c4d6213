"""``Model``: a layer with training, the flat parameter buffer and saving (docs/architecture.md, "Models").

Three ways to make one, as in Keras 3:

- ``Model(inputs, outputs)`` — the functional API (``distnn.models.functional.Functional``);
- ``class MyModel(Model)`` with layers as attributes and a ``call`` — subclassing;
- ``Sequential([...])`` — a linear stack (``distnn.models.sequential``).

Once built, a model owns one contiguous 1-D array of all trainable parameters, ``model.params``, one
of the same layout for their gradients, ``model.grads``, and one for non-trainable state,
``model.state``; every weight is a view into them. The layout follows the order in which backward
completes the gradients: the reverse of the order in which the build pass first called each layer.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

import numpy as np

from distnn import backend, saving
from distnn.interop import keras_format, onnx_export
from distnn.layers import base as layer_base
from distnn.layers.base import Layer, Variable
from distnn.models import summary as summary_module
from distnn.ops import symbolic
from distnn.training import TrainingMixin


class Model(TrainingMixin, Layer):
    """A layer that trains: ``compile`` / ``fit`` / ``evaluate`` / ``predict``, ``save``, ``summary``.

    ``Model(inputs, outputs, name=...)`` builds a functional model; subclasses define ``call``.
    """

    # The class Model(inputs, outputs) makes: set by distnn.models.functional, which subclasses Model
    # (so this module does not import it: docs/architecture.md, "Modules and dependencies").
    _functional_class: type | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> "Model":
        if cls is Model and (args or "inputs" in kwargs or "outputs" in kwargs):
            return Model._functional_class.__new__(Model._functional_class)
        return super().__new__(cls)

    def __init__(self, *args: Any, name: str | None = None, trainable: bool = True, dtype: Any = None,
                 **kwargs: Any):
        if args or "inputs" in kwargs or "outputs" in kwargs:
            raise TypeError("Model(inputs, outputs) builds a functional model; a Model subclass takes neither")
        Layer.__init__(self, name=name, trainable=trainable, dtype=dtype, **kwargs)
        TrainingMixin.__init__(self)
        self.params: Any = None
        self.grads: Any = None
        self.state: Any = None
        self._segments: list[tuple[int, int]] = []
        self._regularized: list[Variable] = []
        self._constrained: list[Variable] = []
        self._bound_variables: list[Variable] = []
        self._layer_cache: list[Layer] | None = None  # _flatten_layers() once built: read every step

    # ------------------------------------------------------------------------------ structure
    @property
    def layers(self) -> list[Layer]:
        """The layers directly inside this model (an ``Input`` is not a layer, as in Keras)."""
        return self._tracked_layers()

    def _flatten_layers(self, include_self: bool = True) -> list[Layer]:
        if self._layer_cache is None:
            return Layer._flatten_layers(self, include_self)
        return self._layer_cache if include_self else self._layer_cache[1:]

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        layers = self.layers
        if index is not None:
            if not -len(layers) <= index < len(layers):
                raise ValueError(f"Was asked to retrieve layer at index {index} but model {self.name!r} only has "
                                 f"{len(layers)} layers")
            return layers[index]
        for layer in layers:
            if layer.name == name:
                return layer
        raise ValueError(f"No such layer: {name}. Existing layers are: {[layer.name for layer in layers]}")

    # ----------------------------------------------------------------------------------- build
    def build(self, input_shape: Any = None) -> None:
        """Build every layer by running the model once on zeros of ``input_shape`` (batch axis first),
        then gather the weights into the flat buffers."""
        if input_shape is None:
            raise ValueError(f"Model {self.name!r} cannot be built without an input shape. Call it on data, "
                             "or call build((None, features))")
        self._build_by_running(_zeros_for(input_shape, self.dtype))

    def _build_by_running(self, dummy: Any) -> None:
        log: list[Layer] = []
        with layer_base.logging_calls(log):
            self.built = True  # the call below must not try to build this model again
            try:
                self(dummy, training=False)
            except Exception:
                self.built = False
                raise
        self._clear_losses()
        self._bind_buffers(log)

    def _bind_buffers(self, call_order: list[Layer] | None = None) -> None:
        """Gather every weight into the flat buffers, in the order backward completes them."""
        xp = backend.xp()
        self._layer_cache = None
        owners = Layer._flatten_layers(self)
        self._layer_cache = list(owners)
        if call_order:
            first_call = {}
            for layer in call_order:
                first_call.setdefault(id(layer), len(first_call))
            owners = sorted(owners, key=lambda layer: -first_call.get(id(layer), -1))
        trainable_ids = {id(v) for v in self.trainable_weights}
        ordered = [v for layer in owners for v in layer._variables]
        trainable = [v for v in ordered if id(v) in trainable_ids]
        frozen = [v for v in ordered if id(v) not in trainable_ids]
        dtype = next((v.dtype for v in trainable + frozen if np.dtype(v.dtype).kind == "f"), np.dtype(self.dtype))
        self.params = xp.zeros(sum(v.size for v in trainable), dtype=dtype)
        self.grads = xp.zeros_like(self.params)
        self.state = xp.zeros(sum(v.size for v in frozen), dtype=dtype)
        self._segments = []
        offset = 0
        for v in trainable:
            self.params[offset:offset + v.size] = v.value.ravel()
            v.value = self.params[offset:offset + v.size].reshape(v.shape)
            v.grad = self.grads[offset:offset + v.size].reshape(v.shape)
            self._segments.append((offset, v.size))
            offset += v.size
        offset = 0
        for v in frozen:
            if np.dtype(v.dtype) != self.state.dtype:  # integer state (a counter) keeps its own array
                continue
            self.state[offset:offset + v.size] = v.value.ravel()
            v.value = self.state[offset:offset + v.size].reshape(v.shape)
            offset += v.size
        self.state = self.state[:offset]
        self._bound_variables = trainable
        self._regularized = [v for v in trainable if v.regularizer is not None]
        self._constrained = [v for v in trainable if v.constraint is not None]
        if self.compiled:
            self._prepare_optimizer()

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise ValueError(f"Model {self.name!r} has not been built yet, so {what} is unavailable. Call it on "
                             "data, pass input_shape to the first layer, add an Input, or call build() first")

    def _ensure_bound(self) -> None:
        """Rebind the flat buffers when the trainable set changed (a layer frozen after build)."""
        if {id(v) for v in self.trainable_weights} != {id(v) for v in self._bound_variables}:
            self._bind_buffers([layer for layer in reversed(self._bound_order())])

    def _bound_order(self) -> list[Layer]:
        owner = {id(v): layer for layer in self._flatten_layers() for v in layer._variables}
        order: list[Layer] = []
        for v in self._bound_variables:
            layer = owner.get(id(v))
            if layer is not None and layer not in order:
                order.append(layer)
        return order

    # ------------------------------------------------------------------------------- weights
    def count_params(self) -> int:
        self._require_built("count_params()")
        return sum(v.size for v in self.variables)

    def structure_hash(self) -> str:
        """A digest of the architecture and weight shapes; ranks compare it before training."""
        description = [(type(layer).__name__, layer.get_config() if _has_config(layer) else None,
                        [(v.name, v.shape) for v in layer._variables]) for layer in self._flatten_layers()]
        return hashlib.sha256(json.dumps(description, default=str).encode()).hexdigest()

    # -------------------------------------------------------------------------------- summary
    def summary(self, line_length: int | None = None, positions: Any = None,
                print_fn: Callable[[str], Any] | None = None, expand_nested: bool = False,
                show_trainable: bool = False, layer_range: Any = None) -> None:
        """Print the layers, output shapes and parameter counts in Keras 3's table layout.

        Under MPI only rank 0 prints (unless a ``print_fn`` is given), like every other output.
        """
        summary_module.print_summary(self, line_length=line_length, positions=positions, print_fn=print_fn,
                                     expand_nested=expand_nested, show_trainable=show_trainable,
                                     layer_range=layer_range)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"

    # ------------------------------------------------------------------------------- config
    def get_config(self) -> dict:
        """Subclassed models: the constructor arguments ``__init__`` saved (override to serialize)."""
        return {"name": self.name, "trainable": self.trainable}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(saving.serialize_model_config(self), **kwargs)

    # -------------------------------------------------------------------------------- saving
    def save(self, filepath: str, overwrite: bool = True, **kwargs: Any) -> None:
        """Write config, weights and optimizer state to one zip file: Keras 3's format for a path
        ending in ``.keras`` (``distnn.interop.keras_format``), else distnn's (``distnn.saving``)."""
        if kwargs:
            raise TypeError(f"save() got unexpected keyword arguments: {sorted(kwargs)}")
        _check_overwrite(filepath, overwrite)
        (keras_format.save_model if keras_format.is_keras_path(filepath) else saving.save_model)(self, filepath)

    def save_weights(self, filepath: str, overwrite: bool = True) -> None:
        """Weights only: Keras 3's HDF5 file for a path ending in ``.weights.h5``, else distnn's zip."""
        _check_overwrite(filepath, overwrite)
        (keras_format.save_weights if keras_format.is_keras_weights_path(filepath) else saving.save_weights)(
            self, filepath)

    def load_weights(self, filepath: str, skip_mismatch: bool = False) -> None:
        if skip_mismatch:
            raise ValueError("load_weights(skip_mismatch=True) is not supported: every weight must match")
        (keras_format.load_weights if keras_format.is_keras_weights_path(filepath) else saving.load_weights)(
            self, filepath)


    def export(self, filepath: str, format: str = "onnx", verbose: bool = True,  # noqa: A002 - Keras' name
               input_signature: Any = None) -> None:
        """Keras 3's ``export``: the inference graph as ONNX (``format="onnx"``, the one format distnn
        writes; Keras' TensorFlow formats need TensorFlow), with a dynamic batch axis."""
        if format != "onnx":
            raise ValueError(f"distnn exports format='onnx' only (Keras' other formats need TensorFlow). "
                             f"Received: format={format!r}")
        if input_signature is not None:
            raise ValueError("export(input_signature=...) is not supported: the inputs are the model's own, "
                             "with a dynamic batch axis")
        path = onnx_export.export_onnx(self, filepath)
        if verbose:
            print(f"Saved the ONNX model to {path}")


def _check_overwrite(filepath: str, overwrite: bool) -> None:
    """``overwrite=False`` refuses an existing file (Keras asks on a terminal; under MPI nobody answers)."""
    if not overwrite and os.path.exists(filepath):
        raise FileExistsError(f"{os.fspath(filepath)} exists and overwrite=False: remove it or pass overwrite=True")


def _has_config(layer: Layer) -> bool:
    try:
        layer.get_config()
        return True
    except Exception:  # a subclassed model whose get_config needs arguments it did not save
        return False


def _zeros_for(input_shape: Any, dtype: str) -> Any:
    """Zero arrays of batch size 1 for a shape (or a structure of shapes) with a ``None`` batch axis."""
    if symbolic.is_shape(input_shape):
        shape = tuple(input_shape)
        if any(d is None for d in shape[1:]):
            raise ValueError(f"Cannot build for input shape {shape}: only the batch axis may be None")
        return backend.xp().zeros((1, *shape[1:]), dtype=dtype)
    if isinstance(input_shape, dict):
        return {k: _zeros_for(v, dtype) for k, v in input_shape.items()}
    return [_zeros_for(s, dtype) for s in input_shape]
