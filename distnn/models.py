"""``Sequential``: a stack of layers with one flat parameter buffer (Keras API).

Structure, weights and configuration live here; ``compile`` / ``fit`` / ``evaluate`` / ``predict``
come from ``distnn.training.TrainingMixin``.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

import numpy as np

from distnn import backend
from distnn.layers.base import Layer, Variable, registered_objects, serializable_name
from distnn.layers.core import InputLayer
from distnn.training import TrainingMixin


def _layer_classes(custom_objects: dict | None) -> dict[str, type]:
    import distnn.layers as layers_module  # noqa: PLC0415 - every layer class, by name

    classes = {name: obj for name, obj in vars(layers_module).items()
               if isinstance(obj, type) and issubclass(obj, Layer)}
    return {**classes, **registered_objects(), **(custom_objects or {})}


class Sequential(TrainingMixin):
    """A linear stack of layers.

    Args:
        layers: optional list of layers to add.
        name: the model's name.

    Once built (from the first layer's ``input_shape``, an ``Input``, ``build()`` or the first
    data), the model owns one contiguous 1-D array of all trainable parameters, ``model.params``,
    and one of the same layout for their gradients, ``model.grads``; every weight is a reshaped
    view into them, in reverse layer order (DESIGN.md). Non-trainable state such as moving
    statistics lives in ``model.state``.
    """

    def __init__(self, layers: list[Layer] | None = None, name: str | None = None):
        super().__init__()
        self.name = name or "sequential"
        self._layers: list[Layer] = []
        self._input_shape: tuple | None = None
        self.built = False
        self.params: Any = None
        self.grads: Any = None
        self.state: Any = None
        for layer in layers or []:
            self.add(layer)

    # ------------------------------------------------------------------------------ structure
    @property
    def layers(self) -> list[Layer]:
        """The model's layers (an ``Input`` is not a layer, as in Keras)."""
        return list(self._layers)

    def add(self, layer: Layer) -> None:
        """Append a layer (or an ``Input``, which only fixes the input shape)."""
        if isinstance(layer, InputLayer):
            if self._layers or self._input_shape is not None:
                raise ValueError("An Input must come first in a Sequential model")
            self._input_shape = layer.input_spec_shape
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"Only Layer instances can be added to a Sequential model. Received: {layer!r}")
        if any(existing.name == layer.name for existing in self._layers):
            raise ValueError(f"All layers added to a Sequential model should have unique names. "
                             f"Name {layer.name!r} is already used")
        if not self._layers and self._input_shape is None and layer.input_spec_shape is not None:
            self._input_shape = layer.input_spec_shape
        self._layers.append(layer)
        self.built = False
        if self._input_shape is not None:
            self.build(self._input_shape)

    def pop(self) -> Layer:
        """Remove and return the last layer."""
        if not self._layers:
            raise TypeError("There are no layers in the model")
        layer = self._layers.pop()
        self.built = False
        if self._layers and self._input_shape is not None:
            self.build(self._input_shape)
        return layer

    def build(self, input_shape: tuple | None = None) -> None:
        """Build every layer for ``input_shape`` (batch axis first) and allocate the flat buffers."""
        if input_shape is None:
            input_shape = self._input_shape
        if input_shape is None:
            raise ValueError(f"Model {self.name!r} cannot be built: its input shape is unknown. Pass "
                             "input_shape to the first layer, add an Input, or call build((None, features))")
        if not self._layers:
            raise ValueError(f"Model {self.name!r} has no layers to build")
        self._input_shape = (None, *tuple(input_shape)[1:])
        shape = self._input_shape
        self._output_shapes = []
        for layer in self._layers:
            shape = layer.build_for(shape)
            self._output_shapes.append(shape)
        self._bind_buffers()
        self.built = True
        if self.compiled:  # add()/pop() after compile: the old optimizer state and fusion no longer fit
            self._prepare_optimizer()

    def _bind_buffers(self) -> None:
        """Gather every weight into the flat buffers; the variables become views into them."""
        xp = backend.xp()
        trainable = [v for layer in reversed(self._layers) for v in layer.trainable_weights]
        frozen = [v for layer in reversed(self._layers) for v in layer.non_trainable_weights]
        dtype = self._layers[0].dtype
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
            self.state[offset:offset + v.size] = v.value.ravel()
            v.value = self.state[offset:offset + v.size].reshape(v.shape)
            offset += v.size
        self._regularized = [v for v in trainable if v.regularizer is not None]
        # No layer before the first needs dL/dx; say so, to skip the largest backward GEMM.
        for i, layer in enumerate(self._layers):
            layer.propagate_input_grad = i > 0

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise ValueError(f"Model {self.name!r} has not been built yet, so {what} is unavailable. Pass "
                             "input_shape to the first layer, add an Input, or call build() first")

    @property
    def input_shape(self) -> tuple:
        self._require_built("input_shape")
        return self._input_shape

    @property
    def output_shape(self) -> tuple:
        self._require_built("output_shape")
        return self._output_shapes[-1]

    @property
    def variables(self) -> list[Variable]:
        return [v for layer in self._layers for v in layer.variables]

    @property
    def trainable_weights(self) -> list[Variable]:
        return [v for layer in self._layers for v in layer.trainable_weights]

    @property
    def non_trainable_weights(self) -> list[Variable]:
        return [v for layer in self._layers for v in layer.non_trainable_weights]

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        if index is not None:
            return self._layers[index]
        for layer in self._layers:
            if layer.name == name:
                return layer
        raise ValueError(f"No such layer: {name}. Existing layers are: {[l.name for l in self._layers]}")

    # ------------------------------------------------------------------------------- weights
    def count_params(self) -> int:
        self._require_built("count_params()")
        return sum(layer.count_params() for layer in self._layers)

    def get_weights(self) -> list[np.ndarray]:
        """Host copies of every weight, layer by layer in creation order (as Keras)."""
        return [w for layer in self._layers for w in layer.get_weights()]

    def set_weights(self, weights: list[Any]) -> None:
        variables = self.variables
        if len(weights) != len(variables):
            raise ValueError(f"Model {self.name!r} expects {len(variables)} weight arrays. Received: {len(weights)}")
        for variable, value in zip(variables, weights):
            variable.assign(value)

    def structure_hash(self) -> str:
        """A digest of the architecture and weight shapes; ranks compare it before training."""
        description = [(type(layer).__name__, layer.get_config(), [(v.name, v.shape) for v in layer.variables])
                       for layer in self._layers]
        return hashlib.sha256(json.dumps([self._input_shape, description], default=str).encode()).hexdigest()

    # -------------------------------------------------------------------------------- config
    def get_config(self) -> dict:
        return {"name": self.name,
                "input_shape": None if self._input_shape is None else list(self._input_shape),
                "layers": [{"class_name": serializable_name(type(layer)), "config": layer.get_config()}
                           for layer in self._layers]}

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None) -> "Sequential":
        classes = _layer_classes(custom_objects)
        model = cls(name=config.get("name"))
        layers = []
        for entry in config["layers"]:
            layer_cls = classes.get(entry["class_name"])
            if layer_cls is None:
                raise ValueError(f"Unknown layer class {entry['class_name']!r}: pass it in custom_objects or "
                                 "decorate it with @distnn.layers.register_serializable()")
            layers.append(layer_cls.from_config(entry["config"]))
        if config.get("input_shape") is not None:
            model._input_shape = tuple(config["input_shape"])
        for layer in layers:
            model.add(layer)
        return model

    # --------------------------------------------------------------------------------- summary
    def summary(self, line_length: int = 80, print_fn: Callable[[str], Any] | None = None) -> None:
        """Print the layers, output shapes and parameter counts in Keras 3's table layout.

        Under MPI only rank 0 prints (unless a ``print_fn`` is given), like every other output.
        """
        if print_fn is None:
            from distnn.distributed import rank  # noqa: PLC0415 - keeps MPI out of plain imports

            if rank() != 0:
                return
            print_fn = print
        widths = [int(line_length * 0.42), int(line_length * 0.32)]
        widths.append(line_length - sum(widths) - 4)

        def row(name: str, shape: str, count: str, bar: str = "│") -> str:
            return f"{bar} {name:<{widths[0]}} {bar} {shape:<{widths[1]}} {bar} {count:>{widths[2]}} {bar}"

        print_fn(f'Model: "{self.name}"')
        print_fn("┏" + "┳".join("━" * (w + 2) for w in widths) + "┓")
        print_fn(row("Layer (type)", "Output Shape", "Param #", bar="┃"))
        print_fn("┡" + "╇".join("━" * (w + 2) for w in widths) + "┩")
        for i, layer in enumerate(self._layers):
            shape = str(self._output_shapes[i]) if self.built else "?"
            params = f"{layer.count_params():,}" if layer.built else "0 (unbuilt)"
            print_fn(row(f"{layer.name} ({type(layer).__name__})", shape, params))
            if i < len(self._layers) - 1:
                print_fn("├" + "┼".join("─" * (w + 2) for w in widths) + "┤")
        print_fn("└" + "┴".join("─" * (w + 2) for w in widths) + "┘")
        if self.built:
            total = self.count_params()
            trainable = sum(v.size for v in self.trainable_weights)
            for label, count in (("Total", total), ("Trainable", trainable), ("Non-trainable", total - trainable)):
                size = count * np.dtype(self._layers[0].dtype).itemsize
                print_fn(f" {label} params: {count:,} ({_human_bytes(size)})")

    def __repr__(self) -> str:
        return f"<Sequential name={self.name}, layers={len(self._layers)}, built={self.built}>"

    # -------------------------------------------------------------------------------- saving
    def save(self, filepath: str) -> None:
        """Write config, weights and optimizer state to one zip file (see ``distnn.saving``)."""
        from distnn import saving  # noqa: PLC0415 - saving imports this module

        saving.save_model(self, filepath)

    def save_weights(self, filepath: str) -> None:
        from distnn import saving  # noqa: PLC0415

        saving.save_weights(self, filepath)

    def load_weights(self, filepath: str) -> None:
        from distnn import saving  # noqa: PLC0415

        saving.load_weights(self, filepath)


def _human_bytes(size: float) -> str:
    """Keras' summary sizes: ``27.79 KB``, ``0.00 B``."""
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} GB"


def load_model(filepath: str, custom_objects: dict | None = None, compile: bool = True) -> Sequential:  # noqa: A002
    """Load a model written by ``model.save`` (Keras' ``load_model``). Never unpickles."""
    from distnn import saving  # noqa: PLC0415

    return saving.load_model(filepath, custom_objects=custom_objects, compile=compile)

