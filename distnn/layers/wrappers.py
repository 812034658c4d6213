"""Layer wrappers of Keras 3: ``Bidirectional`` (a recurrent layer run both ways) and
``TimeDistributed`` (a layer applied to every time step).

Both are written with ``distnn.ops`` around the layers they wrap, so on the tape the wrapped layers
stay fused nodes and the wrappers add only their reshapes, flips and merges.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn import serialization
from distnn.layers.base import Layer, _accepts
from distnn.ops import numpy as ops_np
from distnn.ops import symbolic
from distnn.ops.core import value_of

_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def serialize(layer: Layer) -> dict:
    return serialization.serialize_keras_object(layer)


def deserialize(entry: Any, custom_objects: dict | None = None) -> Layer:
    """A wrapped layer from its saved configuration (registered, built-in or given classes only)."""
    if isinstance(entry, Layer):
        return entry
    layer = serialization.deserialize_keras_object(entry, custom_objects, serialization.builtin_objects("distnn.layers"),
                                                   printable_module_name="layer")
    if not isinstance(layer, Layer):
        raise ValueError(f"A wrapped layer's configuration must describe a layer. Received: {entry!r:.200}")
    return layer


def _renamed_copy(layer: Layer, prefix: str, **changes: Any) -> Layer:
    config = layer.get_config()
    name = config.get("name") or layer.name
    config.update(name=prefix + name.removeprefix(prefix), **changes)
    return type(layer).from_config(config)


class Bidirectional(Layer):
    """Runs a recurrent layer forwards and a copy of it backwards over the sequence and merges them.

    Args:
        layer: the recurrent layer (``LSTM``, ``GRU``, ``SimpleRNN``); the wrapper builds fresh
            ``forward_<name>`` and ``backward_<name>`` copies of it, as Keras 3 does.
        merge_mode: ``"concat"`` (default), ``"sum"``, ``"mul"``, ``"ave"``, or ``None`` for the list
            ``[forward, backward]``.
        backward_layer: an explicit backward layer (with the opposite ``go_backwards`` and the same
            ``return_sequences`` and ``return_state``).

    Call arguments:
        sequences, mask, training: as the wrapped layer; ``initial_state``: the forward layer's states
        followed by the backward layer's.

    The backward layer's sequence output is flipped back to input order before merging. When
    returning sequences, masked steps output zeros (Keras forces ``zero_output_for_mask``).
    """

    def __init__(self, layer: Layer, merge_mode: str | None = "concat", backward_layer: Layer | None = None,
                 **kwargs: Any):
        if not isinstance(layer, Layer) or not hasattr(layer, "go_backwards"):
            raise ValueError(f"Bidirectional needs a recurrent layer (LSTM, GRU, SimpleRNN). Received: layer={layer!r}")
        if backward_layer is not None and (not isinstance(backward_layer, Layer) or
                                           not hasattr(backward_layer, "go_backwards")):
            raise ValueError(f"backward_layer must be a recurrent layer. Received: backward_layer={backward_layer!r}")
        if merge_mode not in _MERGE_MODES:
            raise ValueError(f"Invalid merge mode. Merge mode should be one of {_MERGE_MODES}. "
                             f"Received: merge_mode={merge_mode!r}")
        super().__init__(**kwargs)
        self.forward_layer = _renamed_copy(layer, "forward_")
        self.backward_layer = (_renamed_copy(layer, "backward_", go_backwards=not layer.go_backwards)
                               if backward_layer is None else backward_layer)
        if self.forward_layer.go_backwards == self.backward_layer.go_backwards:
            raise ValueError("Forward layer and backward layer should have different `go_backwards` values. "
                             f"Received: forward go_backwards={self.forward_layer.go_backwards}, backward "
                             f"go_backwards={self.backward_layer.go_backwards}")
        for attribute in ("return_sequences", "return_state"):
            forward, backward = getattr(self.forward_layer, attribute), getattr(self.backward_layer, attribute)
            if forward != backward:
                raise ValueError(f"Forward layer and backward layer must have the same {attribute}. Received: "
                                 f"{forward} for the forward layer and {backward} for the backward layer")
        for sub in (self.forward_layer, self.backward_layer):
            sub.zero_output_for_mask = sub.return_sequences
        self.merge_mode = merge_mode
        self.return_sequences = self.forward_layer.return_sequences
        self.return_state = self.forward_layer.return_state
        self.stateful = False
        self.supports_masking = True

    def build(self, input_shape):
        for sub in (self.forward_layer, self.backward_layer):
            sub.build_for(input_shape)
        self.built = True

    def compute_output_shape(self, input_shape, initial_state_shape=None):
        shape = self.forward_layer.compute_output_shape(input_shape)
        states = []
        if self.return_state:
            shape, states = shape[0], list(shape[1:])
        if self.merge_mode == "concat":
            shape = (*shape[:-1], 2 * shape[-1])
        outputs = [tuple(shape), tuple(shape)] if self.merge_mode is None else [tuple(shape)]
        if self.return_state:
            return outputs + states + states
        return outputs if self.merge_mode is None else outputs[0]

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        output_mask = mask if self.return_sequences else None
        masks = [output_mask, output_mask] if self.merge_mode is None else [output_mask]
        if self.return_state:
            return masks + [None] * (2 * self.forward_layer.state_count)
        return masks if self.merge_mode is None else output_mask

    def call(self, sequences, initial_state=None, mask=None, training=None):
        kwargs: dict[str, Any] = {"mask": mask}
        if training is not None:
            kwargs["training"] = training
        forward_state = backward_state = None
        if initial_state is not None:
            initial_state = list(initial_state)
            half = len(initial_state) // 2
            forward_state, backward_state = initial_state[:half], initial_state[half:]
        y = self.forward_layer(sequences, initial_state=forward_state, **kwargs)
        y_rev = self.backward_layer(sequences, initial_state=backward_state, **kwargs)
        states: list = []
        if self.return_state:
            states = list(y[1:]) + list(y_rev[1:])
            y, y_rev = y[0], y_rev[0]
        if self.return_sequences:
            y_rev = y_rev[:, ::-1]
        if self.merge_mode == "concat":
            output = [ops_np.concatenate([y, y_rev], axis=-1)]
        elif self.merge_mode == "sum":
            output = [y + y_rev]
        elif self.merge_mode == "ave":
            output = [(y + y_rev) / 2]
        elif self.merge_mode == "mul":
            output = [y * y_rev]
        else:
            output = [y, y_rev]
        if self.return_state:
            return output + states
        return output if self.merge_mode is None else output[0]

    def get_config(self):
        return {**super().get_config(), "merge_mode": self.merge_mode, "layer": serialize(self.forward_layer),
                "backward_layer": serialize(self.backward_layer)}

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None) -> "Bidirectional":
        config = dict(config)
        config["layer"] = deserialize(config["layer"], custom_objects)
        if config.get("backward_layer") is not None:
            config["backward_layer"] = deserialize(config["backward_layer"], custom_objects)
        return cls(**config)


class TimeDistributed(Layer):
    """Applies ``layer`` to every time step: ``(batch, timesteps, ...)`` is folded to
    ``(batch * timesteps, ...)``, passed through the layer once and unfolded.

    Input shape:
        ``(batch_size, timesteps, ...)``: at least 3 axes.

    Output shape:
        ``(batch_size, timesteps, *layer_output_shape[1:])``.
    """

    def __init__(self, layer: Layer, **kwargs: Any):
        if not isinstance(layer, Layer):
            raise ValueError(f"TimeDistributed needs a Layer instance. Received: layer={layer!r}")
        super().__init__(**kwargs)
        self.layer = layer
        self.supports_masking = True

    def _inner_shape(self, input_shape: tuple) -> tuple:
        if len(input_shape) < 3:
            raise ValueError(f"{self.name}: TimeDistributed needs inputs of at least 3 axes (batch, timesteps, "
                             f"...). Received: input_shape={tuple(input_shape)}")
        return (None, *input_shape[2:])

    def build(self, input_shape):
        self.layer.build_for(self._inner_shape(input_shape))
        self.built = True

    def compute_output_shape(self, input_shape):
        inner = self._inner_shape(input_shape)
        if self.layer._defines_output_shape():
            output = self.layer.compute_output_shape(inner)
        else:
            output = symbolic.output_spec(self.layer, (symbolic.KerasTensor(inner, self.dtype),), {}).shape
        return (input_shape[0], input_shape[1], *output[1:])

    def call(self, inputs, training=None, mask=None):
        batch, steps, *rest = np.shape(value_of(inputs))
        kwargs: dict[str, Any] = {} if training is None else {"training": training}
        mask = None if mask is None else value_of(mask)
        if mask is not None and mask.ndim > 2 and _accepts(self.layer.call, "mask"):  # a mask inside each step
            kwargs["mask"] = mask.reshape(batch * steps, *mask.shape[2:])
        outputs = self.layer(ops_np.reshape(inputs, (batch * steps, *rest)), **kwargs)
        return ops_np.reshape(outputs, (batch, steps, *np.shape(value_of(outputs))[1:]))

    def get_config(self):
        return {**super().get_config(), "layer": serialize(self.layer)}

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None) -> "TimeDistributed":
        config = dict(config)
        config["layer"] = deserialize(config["layer"], custom_objects)
        return cls(**config)
