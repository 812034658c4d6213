"""The functional API: ``Model(inputs, outputs)`` over any graph of layer and op calls.

The graph is the ``Node``s that calling layers (and ``distnn.ops``) on symbolic tensors recorded
(``distnn.ops.symbolic``). ``Functional`` sorts them once; ``call`` evaluates them in that order on
real arrays, so a layer used twice (a shared layer) runs twice and its gradients add up on the tape.
"""
from __future__ import annotations

from typing import Any

from distnn import backend
from distnn.layers.base import Layer
from distnn.layers.core import InputLayer
from distnn.models import functional_config
from distnn.models.model import Model
from distnn.ops import symbolic


def _structure_of(tensors: Any, what: str) -> Any:
    if isinstance(tensors, symbolic.KerasTensor):
        return tensors
    if isinstance(tensors, dict):
        return {k: _structure_of(v, what) for k, v in tensors.items()}
    if isinstance(tensors, (list, tuple)):
        return [_structure_of(t, what) for t in tensors]
    raise TypeError(f"Model {what} must be symbolic tensors (from Input or layers called on it). "
                    f"Received: {tensors!r}")


def sorted_nodes(outputs: list[symbolic.KerasTensor]) -> list[symbolic.Node]:
    """The nodes that produce ``outputs``, each after the nodes it depends on."""
    order: list[symbolic.Node] = []
    state: dict[int, int] = {}  # 1: being visited, 2: done
    stack = [(t.node, False) for t in reversed(outputs) if t.node is not None]
    while stack:
        node, expanded = stack.pop()
        if state.get(id(node)) == 2:
            continue
        if expanded:
            state[id(node)] = 2
            order.append(node)
            continue
        state[id(node)] = 1
        stack.append((node, True))
        for tensor in reversed(node.input_tensors):
            if tensor.node is not None and state.get(id(tensor.node)) != 2:
                stack.append((tensor.node, False))
    return order


class Functional(Model):
    """A model defined by its symbolic ``inputs`` and ``outputs`` (lists, dicts or single tensors)."""

    def __init__(self, inputs: Any, outputs: Any, name: str | None = None, trainable: bool = True, **kwargs: Any):
        Model.__init__(self, name=name, trainable=trainable, **kwargs)
        self._inputs_struct = _structure_of(inputs, "inputs")
        self._outputs_struct = _structure_of(outputs, "outputs")
        self.inputs = symbolic.flatten(self._inputs_struct)
        self.outputs = symbolic.flatten(self._outputs_struct)
        for tensor in self.inputs:
            if not isinstance(tensor.node.operation, InputLayer) if tensor.node else True:
                raise ValueError(f"Model inputs must come from Input(...). Received: {tensor!r}")
        self._nodes = sorted_nodes(self.outputs)
        reachable = {id(t) for node in self._nodes for t in node.input_tensors} | {id(t) for t in self.outputs}
        for tensor in self.inputs:
            if id(tensor) not in reachable:
                raise ValueError(f"Input {tensor.name!r} is not connected to the outputs of model {self.name!r}")
        for node in self._nodes:
            for tensor in node.input_tensors:
                if tensor.node is not None and isinstance(tensor.node.operation, InputLayer) and \
                        all(tensor is not i for i in self.inputs):
                    raise ValueError(f"Graph disconnected: cannot obtain the value of {tensor.name!r}, which is "
                                     f"not among the inputs of model {self.name!r}")
        self._layers = [node.operation for node in self._nodes
                        if isinstance(node.operation, Layer) and not isinstance(node.operation, InputLayer)]
        self._layers = list(dict.fromkeys(self._layers))
        self.output_names = list(self._outputs_struct) if isinstance(self._outputs_struct, dict) else [
            t.node.operation.name if isinstance(t.node.operation, Layer) else t.name for t in self.outputs]
        self.input_names = [t.node.operation.name for t in self.inputs]
        self._build_by_running(symbolic.map_structure(_dummy_input, self._inputs_struct))

    @property
    def layers(self) -> list[Layer]:
        return [t.node.operation for t in self.inputs] + list(self._layers)

    def _tracked_layers(self) -> list[Layer]:
        return list(self._layers)

    @property
    def input_shape(self) -> Any:
        shapes = [t.shape for t in self.inputs]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def output_shape(self) -> Any:
        shapes = [t.shape for t in self.outputs]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def input(self) -> Any:
        return self.inputs[0] if len(self.inputs) == 1 else self.inputs

    @property
    def output(self) -> Any:
        return self.outputs[0] if len(self.outputs) == 1 else self.outputs

    def _flat_inputs(self, inputs: Any) -> list:
        if isinstance(inputs, dict):
            if isinstance(self._inputs_struct, dict):
                missing = [k for k in self._inputs_struct if k not in inputs]
                if missing:
                    raise ValueError(f"Model {self.name!r} expects inputs {list(self._inputs_struct)}; "
                                     f"missing {missing}")
                return symbolic.flatten({k: inputs[k] for k in self._inputs_struct})
            try:
                return [inputs[name] for name in self.input_names]
            except KeyError as exc:
                raise ValueError(f"Model {self.name!r} expects inputs named {self.input_names}. "
                                 f"Received keys: {sorted(inputs)}") from exc
        flat = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if len(flat) != len(self.inputs):
            raise ValueError(f"Model {self.name!r} expects {len(self.inputs)} input(s), but it received "
                             f"{len(flat)} input tensors")
        return list(flat)

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        values: dict[int, Any] = {id(t): x for t, x in zip(self.inputs, self._flat_inputs(inputs))}

        def lookup(leaf: Any) -> Any:
            return values[id(leaf)] if isinstance(leaf, symbolic.KerasTensor) else leaf

        for node in self._nodes:
            if isinstance(node.operation, InputLayer):
                continue
            args = symbolic.map_structure(lookup, node.args)
            kwargs = symbolic.map_structure(lookup, node.kwargs)
            result = node.operation(*args, **kwargs)
            for tensor, value in zip(symbolic.flatten(node.outputs), symbolic.flatten(result)):
                values[id(tensor)] = value
        return symbolic.map_structure(lookup, self._outputs_struct)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.output_shape

    def _defines_output_shape(self) -> bool:
        return False

    # ------------------------------------------------------------------------------- config
    def get_config(self) -> dict:
        """Keras 3's functional config: each layer with its inbound nodes; tensors are referenced as
        ``[layer name, node index, tensor index]``."""
        return functional_config.get_config(self)

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None) -> "Functional":
        return functional_config.from_config(cls, config, custom_objects)


Model._functional_class = Functional  # what Model(inputs, outputs) builds


def _dummy_input(tensor: symbolic.KerasTensor) -> Any:
    if any(d is None for d in tensor.shape[1:]):
        shape = tuple(1 if d is None else d for d in tensor.shape)
    else:
        shape = (1, *tensor.shape[1:])
    return backend.xp().zeros(shape, dtype=tensor.dtype)
