"""A functional model's configuration in Keras 3's layout, and the graph rebuilt from it.

Each layer entry carries its ``inbound_nodes``: the arguments of each call, with symbolic tensors
written as ``{"class_name": "__keras_tensor__", "config": {"shape", "dtype", "keras_history":
[layer name, node index, tensor index]}}``. Ops from ``distnn.ops`` called on symbolic tensors are
saved as ``{"class_name": "__operation__", "config": {"name": op name}}`` entries. Loading never runs
code: classes come from the registry (``distnn.serialization``) and ops from ``distnn.ops`` by name.
"""
from __future__ import annotations

from typing import Any

from distnn import layers, ops
from distnn.layers.base import Layer
from distnn.layers.core import InputLayer
from distnn.ops import symbolic

_TENSOR = "__keras_tensor__"
_OPERATION = "__operation__"
_SLICE = "__slice__"
_TUPLE = "__tuple__"


def graph_nodes(model: Any) -> list[symbolic.Node]:
    """The model's input nodes, then its other nodes in evaluation order."""
    return [t.node for t in model.inputs] + [n for n in model._nodes if not isinstance(n.operation, InputLayer)]


def node_names(model: Any) -> dict[int, tuple[str, int]]:
    """``id(node) -> (node name, index among the nodes of that name in this model)``: a shared layer's
    calls are its nodes 0, 1, ...; an op's node has a name of its own."""
    counts: dict[str, int] = {}
    names = {}
    for node in graph_nodes(model):
        names[id(node)] = (node.name, counts.get(node.name, 0))
        counts[node.name] = counts.get(node.name, 0) + 1
    return names


def _encode_constant(value: Any) -> Any:
    if isinstance(value, slice):
        return {"class_name": _SLICE, "config": [value.start, value.stop, value.step]}
    if value is Ellipsis:
        return {"class_name": "__ellipsis__", "config": None}
    return value


def is_functional(model: Any) -> bool:
    """Whether ``model`` is defined by a graph of nodes (a ``Functional``): told by its attributes, so
    that the summary needs no import of the model classes."""
    return hasattr(model, "_nodes") and hasattr(model, "_inputs_struct")


def get_config(model: Any) -> dict:
    names = node_names(model)

    def encode(value: Any) -> Any:
        if isinstance(value, symbolic.KerasTensor):
            name, index = names[id(value.node)]
            return {"class_name": _TENSOR, "config": {"shape": list(value.shape), "dtype": value.dtype,
                                                      "keras_history": [name, index,
                                                                        value.node.output_tensors.index(value)]}}
        if isinstance(value, dict):
            return {k: encode(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return {"class_name": _TUPLE, "config": [encode(v) for v in value]}
        if isinstance(value, list):
            return [encode(v) for v in value]
        return _encode_constant(value)

    entries: dict[str, dict] = {}
    order: list[str] = []
    for node in graph_nodes(model):
        operation = node.operation
        name = node.name
        if name not in entries:
            entry = layers.serialize(operation) if isinstance(operation, Layer) else \
                {"class_name": _OPERATION, "config": {"name": getattr(operation, "name", operation.__name__)}}
            entries[name] = {**entry, "name": name, "inbound_nodes": []}
            order.append(name)
        if not isinstance(operation, InputLayer):
            entries[name]["inbound_nodes"].append({"args": encode(list(node.args)), "kwargs": encode(node.kwargs)})

    def refs(struct: Any) -> Any:
        if isinstance(struct, symbolic.KerasTensor):
            name, index = names[id(struct.node)]
            return [name, index, struct.node.output_tensors.index(struct)]
        if isinstance(struct, dict):
            return {k: refs(v) for k, v in struct.items()}
        return [refs(t) for t in struct]

    return {"name": model.name, "trainable": model.trainable, "layers": [entries[n] for n in order],
            "input_layers": refs(model._inputs_struct), "output_layers": refs(model._outputs_struct)}


def from_config(cls: type, config: dict, custom_objects: dict | None = None) -> Any:
    produced: dict[tuple[str, int], list] = {}  # (operation name, node index) -> its output tensors
    pending = []
    for entry in config["layers"]:
        if entry["class_name"] == _OPERATION:
            operation = getattr(ops, entry["config"]["name"], None)
            if operation is None:
                raise ValueError(f"Unknown op {entry['config']['name']!r} in a functional model configuration")
        else:
            operation = layers.deserialize(entry, custom_objects)
        if isinstance(operation, InputLayer):
            produced[(entry["name"], 0)] = [operation.output_tensor]
            continue
        for index, node in enumerate(entry["inbound_nodes"]):
            pending.append((entry["name"], index, operation, node))

    def ready(value: Any) -> bool:
        if isinstance(value, dict):
            if value.get("class_name") == _TENSOR:
                name, index, _ = value["config"]["keras_history"]
                return (name, index) in produced
            return all(ready(v) for v in value.values())
        if isinstance(value, list):
            return all(ready(v) for v in value)
        return True

    def decode(value: Any) -> Any:
        if isinstance(value, dict):
            kind = value.get("class_name")
            if kind == _TENSOR:
                name, index, tensor_index = value["config"]["keras_history"]
                return produced[(name, index)][tensor_index]
            if kind == _SLICE:
                return slice(*value["config"])
            if kind == _TUPLE:
                return tuple(decode(v) for v in value["config"])
            if kind == "__ellipsis__":
                return Ellipsis
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    while pending:  # a node runs once every tensor it takes exists (shared layers interleave)
        runnable = [p for p in pending if ready(p[3])]
        if not runnable:
            raise ValueError(f"Functional model {config.get('name')!r}: the configuration's graph is disconnected "
                             f"or cyclic at {[(p[0], p[1]) for p in pending][:5]}")
        for item in runnable:
            name, index, operation, node = item
            outputs = operation(*decode(node["args"]), **decode(node["kwargs"]))
            produced[(name, index)] = symbolic.flatten(outputs)
            pending.remove(item)

    def resolve(struct: Any) -> Any:
        if isinstance(struct, dict):
            return {k: resolve(v) for k, v in struct.items()}
        if len(struct) == 3 and isinstance(struct[0], str):
            return produced[(struct[0], struct[1])][struct[2]]
        return [resolve(s) for s in struct]

    inputs = resolve(config["input_layers"])
    outputs = resolve(config["output_layers"])
    return cls(inputs, outputs, name=config.get("name"), trainable=config.get("trainable", True))
