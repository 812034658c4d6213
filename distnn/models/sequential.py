"""``Sequential``: a ``Model`` whose layers run one after another (Keras API)."""
from __future__ import annotations

from typing import Any

from distnn.layers import deserialize as deserialize_layer, serialize as serialize_layer
from distnn.layers.base import Layer
from distnn.layers.core import InputLayer
from distnn.models.model import Model, _zeros_for
from distnn.ops import symbolic


class Sequential(Model):
    """A linear stack of layers.

    Args:
        layers: optional list of layers to add (an ``Input`` or ``InputLayer`` may come first).
        name: the model's name.

    The model builds as soon as its input shape is known (from the first layer's ``input_shape``,
    a leading ``Input``, ``build()`` or the first data).
    """

    def __init__(self, layers: list[Layer] | None = None, name: str | None = None, trainable: bool = True,
                 **kwargs: Any):
        super().__init__(name=name or "sequential", trainable=trainable, **kwargs)
        self._layers: list[Layer] = []
        self._input_shape: tuple | None = None
        self._input_dtype: str | None = None
        for layer in layers or []:
            self.add(layer)

    @property
    def layers(self) -> list[Layer]:
        return list(self._layers)

    def _tracked_layers(self) -> list[Layer]:
        return list(self._layers)

    def add(self, layer: Any) -> None:
        """Append a layer (an ``Input`` tensor or ``InputLayer`` only fixes the input shape)."""
        if isinstance(layer, symbolic.KerasTensor) and isinstance(getattr(layer.node, "operation", None), InputLayer):
            layer = layer.node.operation
        if isinstance(layer, InputLayer):
            if self._layers or self._input_shape is not None:
                raise ValueError("An Input must come first in a Sequential model")
            self._input_shape, self._input_dtype = layer.input_spec_shape, layer.dtype
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"Only Layer instances can be added to a Sequential model. Received: {layer!r}")
        if any(existing.name == layer.name for existing in self._layers):
            raise ValueError(f"All layers added to a Sequential model should have unique names. "
                             f"Name {layer.name!r} is already used")
        if not self._layers and self._input_shape is None and layer.input_spec_shape is not None \
                and getattr(layer, "_declared_input", False):
            self._input_shape = layer.input_spec_shape
        self._layers.append(layer)
        self.built, self._layer_cache = False, None
        if self._input_shape is not None:
            self.build(self._input_shape)

    def pop(self) -> Layer:
        """Remove and return the last layer."""
        if not self._layers:
            raise TypeError("There are no layers in the model")
        layer = self._layers.pop()
        self.built, self._layer_cache = False, None
        if self._layers and self._input_shape is not None:
            self.build(self._input_shape)
        return layer

    def build(self, input_shape: Any = None) -> None:
        """Build every layer for ``input_shape`` (batch axis first) and allocate the flat buffers."""
        if input_shape is None:
            input_shape = self._input_shape
        if input_shape is None:
            raise ValueError(f"Model {self.name!r} cannot be built: its input shape is unknown. Pass "
                             "input_shape to the first layer, add an Input, or call build((None, features))")
        if not self._layers:
            raise ValueError(f"Model {self.name!r} has no layers to build")
        self._input_shape = (None, *tuple(input_shape)[1:])
        self.input_spec_shape = self._input_shape
        shape = self._input_shape
        self._output_shapes = []
        for layer in self._layers:  # shapes first: a clear error names the layer that does not fit
            shape = layer.build_for(shape) if layer._defines_output_shape() else \
                self._traced_output_shape(layer, shape)
            self._output_shapes.append(shape)
        self._build_by_running(_zeros_for(self._input_shape, self._input_dtype or self.dtype))
        self._trace_graph()

    def _trace_graph(self) -> None:
        """Call the layers on a symbolic ``Input`` (once per build), so that ``model.inputs`` and each
        ``layer.output`` are graph tensors, as in Keras: ``Model(model.inputs, [l.output for l in
        model.layers])`` extracts features. A rebuild (``add``/``pop``) replaces the previous trace."""
        from distnn.layers.core import Input  # noqa: PLC0415 - core imports nothing from models

        for layer, node in getattr(self, "_traced_nodes", []):
            if node in layer._inbound_nodes:
                layer._inbound_nodes.remove(node)
        self._graph_input = Input(shape=self._input_shape[1:], dtype=self._input_dtype or self.dtype)
        self._traced_nodes = []
        x = self._graph_input
        for layer in self._layers:
            x = layer(x)
            self._traced_nodes.append((layer, layer._inbound_nodes[-1]))

    def _traced_output_shape(self, layer: Layer, shape: tuple) -> tuple:
        return symbolic.output_spec(layer, (symbolic.KerasTensor(shape, self._input_dtype or self.dtype),), {}).shape

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        x = inputs
        for layer in self._layers:
            x = layer(x)
        return x

    @property
    def input_shape(self) -> tuple:
        self._require_built("input_shape")
        return self._input_shape

    @property
    def output_shape(self) -> tuple:
        self._require_built("output_shape")
        return self._output_shapes[-1]

    @property
    def inputs(self) -> list:
        self._require_built("inputs")
        return [self._graph_input]

    @property
    def output_names(self) -> list[str]:
        return [self._layers[-1].name] if self._layers else []

    def compute_output_shape(self, input_shape: Any) -> Any:
        shape = tuple(input_shape)
        for layer in self._layers:
            shape = layer.build_for(shape) if layer._defines_output_shape() else \
                self._traced_output_shape(layer, shape)
        return shape

    def _defines_output_shape(self) -> bool:
        return True

    def get_config(self) -> dict:
        layers = [serialize_layer(layer) for layer in self._layers]
        if self._input_shape is not None and not getattr(self._layers[0] if self._layers else None,
                                                         "_declared_input", False):
            layers.insert(0, {"class_name": "InputLayer",
                              "config": {"batch_shape": list(self._input_shape),
                                         "dtype": self._input_dtype or self.dtype, "name": f"{self.name}_input"}})
        return {"name": self.name, "trainable": self.trainable, "layers": layers}

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None) -> "Sequential":
        model = cls(name=config.get("name"), trainable=config.get("trainable", True))
        if config.get("input_shape") is not None:  # distnn 0.1 files
            model._input_shape = tuple(config["input_shape"])
        for entry in config["layers"]:
            if entry.get("class_name") == "InputLayer":
                entry_config = entry["config"]
                shape = entry_config.get("batch_shape") or entry_config.get("batch_input_shape") or \
                    [None, *entry_config["shape"]]
                model._input_shape, model._input_dtype = tuple(shape), entry_config.get("dtype")
                continue
            layer = deserialize_layer(entry, custom_objects)
            if not model._layers and model._input_shape is None and getattr(layer, "_declared_input", False):
                model._input_shape = layer.input_spec_shape
            model._layers.append(layer)
        if model._input_shape is not None and model._layers:
            model.build(model._input_shape)
        return model
