"""Model configurations in Keras 3's ``config.json`` schema, both ways, and the weight-group paths of
its ``model.weights.h5`` (docs/architecture.md, "Keras 3 files").

distnn's own configurations already follow Keras 3's layout (``class_name``/``config``, functional
``inbound_nodes``); the differences are Keras' bookkeeping: every serialized object carries a
``module`` and ``registered_name``, dtypes are ``DTypePolicy`` objects, Keras has options distnn
lacks, and the layers of a functional model are listed in the order Keras' graph walk visits them,
which also names the weight groups. This module only transforms JSON; it never imports a module a
file names: classes are looked up by name in distnn's registry (or ``custom_objects``) when the
translated configuration is rebuilt by ``distnn.saving``.
"""
from __future__ import annotations

import re
from typing import Any

from distnn import layers, serialization
from distnn.layers.base import Layer
from distnn.layers.core import InputLayer
from distnn.ops import symbolic

# Keras options distnn does not have, at the value that means "not used". A key at this value is
# dropped when reading; any other value reaches distnn's constructor, which refuses it by name.
KERAS_NEUTRAL = {
    "kernel_constraint": None, "bias_constraint": None, "beta_constraint": None, "gamma_constraint": None,
    "embeddings_constraint": None, "quantization_config": None, "lora_rank": None, "lora_alpha": None,
    "activity_regularizer": None, "groups": 1, "renorm": False, "renorm_clipping": None, "renorm_momentum": 0.99,
    "sparse": False, "ragged": False, "optional": False, "input_axes": None, "output_axes": None,
    "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None, "loss_scale_factor": None,
    "gradient_accumulation_steps": None, "mean": None, "variance": None, "invert": False, "ignore_class": None,
    "sliding_window": None, "use_gate": False,
}
# Keras' bookkeeping around a serialized object, not part of what it is.
_BOOKKEEPING = ("registered_name", "build_config", "compile_config", "shared_object_id")
# Compile settings that choose how Keras executes a step, not what it computes.
_EXECUTION_SETTINGS = ("run_eagerly", "steps_per_execution", "jit_compile", "auto_scale_loss")

FUNCTIONAL_MODULE = "keras.src.models.functional"
# distnn's registry tables and the Keras modules that hold the same objects.
_KERAS_MODULES = {f"distnn.{kind}": f"keras.{kind}" for kind in (
    "layers", "initializers", "regularizers", "constraints", "losses", "metrics", "optimizers",
    "optimizers.schedules", "activations")}
_DISTNN_TABLES = {keras: table for table, keras in _KERAS_MODULES.items()}
_DISTNN_TABLES.update({"keras": "distnn.models", "keras.models": "distnn.models", FUNCTIONAL_MODULE: "distnn.models"})


def snake_case(name: str) -> str:
    """Keras' ``naming.to_snake_case``: the weight-group name of a class (``Conv2D`` -> ``conv2d``)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def model_classes() -> dict[str, type]:
    """distnn's model classes by name, from the registry (``distnn.models`` lists them itself)."""
    return serialization.builtin_objects("distnn.models")


# --------------------------------------------------------------------------------- distnn -> Keras
def _dtype_policy(dtype: Any) -> Any:
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": dtype}, "registered_name": None}


# Keras' activation functions' parameters at their defaults: distnn saves a parametrized activation
# as {"class_name": "elu", "config": {"alpha": 1.0}}; a Keras layer config holds only its name.
_ACTIVATION_DEFAULTS = {"elu": {"alpha": 1.0}, "leaky_relu": {"negative_slope": 0.2}, "gelu": {"approximate": False},
                        "softmax": {"axis": -1}, "relu": {"negative_slope": 0.0, "max_value": None, "threshold": 0.0},
                        "celu": {"alpha": 1.0}, "glu": {"axis": -1}, "squareplus": {"b": 4.0},
                        "soft_shrink": {"threshold": 0.5}, "hard_shrink": {"threshold": 0.5}}


def _keras_activation(value: dict) -> str:
    name, config = value.get("class_name"), value.get("config") or {}
    defaults = _ACTIVATION_DEFAULTS.get(name, {})
    if any(key not in defaults or config[key] != defaults[key] for key in config):
        raise ValueError(f"Keras' format names a layer's activation without parameters; {name}({config}) needs "
                         "them: use an activation layer, or save in distnn's format (a path not ending in .keras)")
    return name


def _to_keras(value: Any, layer_config: bool = False) -> Any:
    """distnn's serialized objects (``{"module": "distnn.<table>", "class_name", "config"}``) inside
    ``value`` in Keras' form: Keras' module and a ``registered_name`` (a custom class, which has no
    module, is written under its registered name for Keras' own registry)."""
    if isinstance(value, list):
        return [_to_keras(v) for v in value]
    if not isinstance(value, dict):
        return value
    if str(value.get("class_name", "")).startswith("__"):  # functional graph references
        return value
    out = {}
    for key, item in value.items():
        if layer_config and key == "synchronized":  # Keras' flag is TensorFlow-only (see _from_keras)
            continue
        if layer_config and key == "dtype" and isinstance(item, str):
            out[key] = _dtype_policy(item)
        elif layer_config and key == "activation" and isinstance(item, dict) and "module" not in item:
            out[key] = _keras_activation(item)
        else:
            out[key] = _to_keras(item, layer_config=key == "config" and "class_name" in value and
                                 value.get("module") == "distnn.layers")
    if "class_name" in value:
        module = value.get("module")
        if module is None:
            out["module"], out["registered_name"] = None, value["class_name"]
        else:
            out["module"] = _KERAS_MODULES.get(module, module)
            out["registered_name"] = "function" if value["class_name"] == "function" else None
    return out


def _keras_quirks(entry: dict) -> dict:
    """The few layer configs whose Keras spelling differs from distnn's (Keras 3.15): its
    SpatialDropout layers take no ``trainable``, UpSampling1D's ``size`` is a plain integer."""
    name, config = entry["class_name"], dict(entry["config"])
    if name in ("SpatialDropout1D", "SpatialDropout2D"):
        config.pop("trainable", None)
    if name == "UpSampling1D" and isinstance(config.get("size"), list):
        config["size"] = config["size"][0]
    return {**entry, "config": config}


def to_keras_entry(entry: dict) -> dict:
    """A layer or model entry of ``distnn.layers.serialize`` in Keras 3's schema."""
    class_name = entry["class_name"]
    config = entry.get("config", {})
    if class_name == "InputLayer":
        return {"module": "keras.layers", "class_name": class_name, "config": {
            "batch_shape": config["batch_shape"], "dtype": config.get("dtype", "float32"), "sparse": False,
            "ragged": False, "name": config["name"], "optional": False}, "registered_name": None}
    if class_name == "Sequential":
        layer_entries = sequential_layers([to_keras_entry(e) for e in config["layers"]], config["name"])
        inputs = [e for e in layer_entries if e["class_name"] == "InputLayer"]
        shape = inputs[0]["config"]["batch_shape"] if inputs else None
        return {"module": "keras", "class_name": "Sequential", "config": {
            "name": config["name"], "trainable": config.get("trainable", True), "dtype": _dtype_policy("float32"),
            "layers": layer_entries, "build_input_shape": shape}, "registered_name": None,
            "build_config": {"input_shape": shape}}
    if class_name == "Functional":
        for layer in config["layers"]:
            if layer["class_name"] == "__operation__":
                raise ValueError(f"The op {layer['config']['name']!r} called in functional model {config['name']!r} "
                                 "cannot be written in Keras' format: wrap it in a layer, or save in distnn's "
                                 "format (a path not ending in .keras)")
        layer_entries = [{**to_keras_entry(e), "name": e["name"], "inbound_nodes": e["inbound_nodes"]}
                         for e in config["layers"]]
        return {"module": FUNCTIONAL_MODULE, "class_name": "Functional", "config": {
            "name": config["name"], "trainable": config.get("trainable", True), "layers": layer_entries,
            "input_layers": config["input_layers"], "output_layers": config["output_layers"]},
            "registered_name": "Functional", "build_config": {"input_shape": None}}
    return _keras_quirks(_to_keras(entry))


def sequential_layers(entries: list[dict], name: str) -> list[dict]:
    """A Sequential's Keras layer entries: a first layer's ``batch_input_shape`` (Keras 2's way,
    which distnn keeps for ``Dense(..., input_shape=...)``) becomes the ``InputLayer`` Keras 3 writes."""
    inputs = [e for e in entries if e["class_name"] == "InputLayer"]
    rest = [e for e in entries if e["class_name"] != "InputLayer"]
    if not rest or "batch_input_shape" not in rest[0]["config"]:
        return entries
    first = {**rest[0], "config": dict(rest[0]["config"])}
    shape = first["config"].pop("batch_input_shape")
    if not inputs:
        dtype = first["config"].get("dtype", {})
        dtype = dtype.get("config", {}).get("name", "float32") if isinstance(dtype, dict) else dtype
        inputs = [to_keras_entry({"class_name": "InputLayer", "config": {"batch_shape": shape, "dtype": dtype,
                                                                         "name": f"{name}_input"}})]
    return [*inputs, first, *rest[1:]]


def keras_operation_order(model: Any) -> list[Layer]:
    """The operations of a distnn functional model in the order Keras 3 lists them (``map_graph`` of
    ``keras/src/ops/function.py``): by depth from the outputs, deepest first, ties in the order a
    depth-first walk from the outputs first reaches them. That order lists a functional model's
    layers in ``config.json`` and names their weight groups (``dense``, ``dense_1``...), so a file
    Keras reads must follow it exactly."""
    finished: set[int] = set()
    index: dict[int, int] = {}
    nodes: list[symbolic.Node] = []  # post-order: inputs first
    for output in _keras_flatten(model._outputs_struct):
        stack: list[tuple[symbolic.Node, bool]] = [(output.node, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                if id(node) not in finished:
                    finished.add(id(node))
                    nodes.append(node)
                continue
            if id(node) in finished:
                continue
            index.setdefault(id(node.operation), len(index))
            stack.append((node, True))
            if not isinstance(node.operation, InputLayer):
                stack.extend((t.node, False) for t in reversed(node.input_tensors) if t.node is not None)
    in_graph = {id(node) for node in nodes}
    node_depth: dict[int, int] = {}
    op_depth: dict[int, int] = {}
    operations: dict[int, Any] = {}
    for node in reversed(nodes):
        depth = max(node_depth.setdefault(id(node), 0), op_depth.get(id(node.operation), 0))
        op_depth[id(node.operation)] = node_depth[id(node)] = depth
        operations[id(node.operation)] = node.operation
        for tensor in node.input_tensors:
            parent = tensor.node
            if parent is not None and id(parent) in in_graph:
                node_depth[id(parent)] = max(depth + 1, node_depth.get(id(parent), 0))
    for tensor in model.inputs:  # an input not connected to the outputs still belongs to the model
        if id(tensor.node.operation) not in op_depth:
            op_depth[id(tensor.node.operation)], index[id(tensor.node.operation)] = 0, -1
            operations[id(tensor.node.operation)] = tensor.node.operation
    return [operations[key] for key in sorted(operations, key=lambda k: (-op_depth[k], index[k]))]


def _keras_flatten(structure: Any) -> list:
    """Keras' ``tree.flatten``: dict entries in sorted key order."""
    if isinstance(structure, dict):
        return [leaf for key in sorted(structure) for leaf in _keras_flatten(structure[key])]
    if isinstance(structure, (list, tuple)):
        return [leaf for item in structure for leaf in _keras_flatten(item)]
    return [structure]


def keras_model_config(model: Any) -> dict:
    """The ``config.json`` entry of ``model`` (without ``compile_config``), functional layers (also
    of nested models) in Keras' order."""
    classes = model_classes()
    Functional, Sequential = classes["Functional"], classes["Sequential"]  # noqa: N806 - classes

    def convert(layer: Any) -> dict:
        entry = to_keras_entry(layers.serialize(layer))
        if isinstance(layer, Sequential):
            inputs = [e for e in entry["config"]["layers"] if e["class_name"] == "InputLayer"]
            entry["config"]["layers"] = sequential_layers(inputs + [convert(sub) for sub in layer.layers], layer.name)
        elif isinstance(layer, Functional):
            by_name = {e["name"]: e for e in entry["config"]["layers"]}
            nested = {sub.name: sub for sub in layer.layers}
            entry["config"]["layers"] = [
                {**convert(nested[op.name]), "name": op.name, "inbound_nodes": by_name[op.name]["inbound_nodes"]}
                if isinstance(nested.get(op.name), (Functional, Sequential)) else by_name[op.name]
                for op in keras_operation_order(layer)]
        return entry

    return convert(model)


# --------------------------------------------------------------------------------- Keras -> distnn
def _from_keras_object(value: dict, custom_objects: dict | None, where: str) -> dict:
    """The head of one serialized object: a Keras module becomes the distnn table of the same objects;
    a class from any other module is looked up by its registered name only, never imported."""
    module = value.get("module")
    out = {k: v for k, v in value.items() if k != "module"}
    if module is None or module == "keras" or str(module).startswith("keras."):
        table = _DISTNN_TABLES.get(module)
        if table is not None:
            out["module"] = table
        if table == "distnn.optimizers.schedules" and isinstance(out.get("config"), dict):
            # Keras names a schedule after its class; distnn's schedules take no name
            out["config"] = {k: v for k, v in out["config"].items() if k != "name"}
        return out
    name = value.get("registered_name") or value.get("class_name")
    if value.get("class_name") == "function":
        name = value.get("registered_name") if value.get("registered_name") != "function" else value.get("config")
    if not isinstance(name, str) or serialization.get_registered_object(name, custom_objects) is None and \
            serialization.get_registered_object(name.rpartition(">")[2], custom_objects) is None:
        raise ValueError(f"{where}: {value.get('class_name')!r} comes from module {module!r}, which distnn never "
                         "imports from a file; register a distnn class of that name "
                         "(@distnn.saving.register_keras_serializable) or pass it in custom_objects")
    if value.get("class_name") == "function":
        out["config"] = name
    else:
        out["class_name"] = name
    return out


def from_keras_entry(value: Any, custom_objects: dict | None, where: str) -> Any:
    """Keras' serialized form of anything in ``config.json`` -> distnn's: Keras modules mapped to
    distnn's registry tables, bookkeeping dropped, ``DTypePolicy`` -> its dtype name, Keras-only
    options at their neutral value dropped."""
    if isinstance(value, list):
        return [from_keras_entry(v, custom_objects, where) for v in value]
    if not isinstance(value, dict):
        return value
    if "class_name" in value and "module" in value:
        if value["class_name"] in ("DTypePolicy", "FloatDTypePolicy"):
            return (value.get("config") or {}).get("name")
        value = _from_keras_object(value, custom_objects, where)
    out = {}
    for key, item in value.items():
        if key in _BOOKKEEPING:
            continue
        if key == "synchronized" or (key in KERAS_NEUTRAL and item == KERAS_NEUTRAL[key]) or \
                (key.endswith("_constraint") and item is None):
            # BatchNormalization: distnn synchronizes statistics across ranks by default (the
            # exactness contract); Keras' flag only concerns TensorFlow distribution strategies.
            continue
        if key == "inbound_nodes" and isinstance(item, list):
            # Keras records the mask argument of every call, mostly None; distnn passes a mask only
            # to layers whose call takes one, so a None mask is left out.
            item = [{**node, "kwargs": {k: v for k, v in node["kwargs"].items() if (k, v) != ("mask", None)}}
                    if isinstance(node, dict) and isinstance(node.get("kwargs"), dict) else node for node in item]
        out[key] = item if key == "module" else from_keras_entry(item, custom_objects, where)
    return out


def from_keras_compile(config: Any, custom_objects: dict | None, where: str) -> dict | None:
    """Keras' ``compile_config`` -> the compile section distnn's loader takes (``None`` when absent)."""
    if not config:
        return None
    if not isinstance(config, dict):
        raise ValueError(f"{where}: compile_config must be a JSON object. Received: {config!r:.200}")
    settings = from_keras_entry({k: v for k, v in config.items() if k not in _EXECUTION_SETTINGS},
                                custom_objects, where)
    unknown = set(settings) - {"optimizer", "loss", "loss_weights", "metrics", "weighted_metrics"}
    if unknown:
        raise ValueError(f"{where}: compile_config holds settings distnn lacks: {sorted(unknown)}")
    return settings


def to_keras_compile(compile_section: dict | None) -> dict | None:
    """distnn's compile section (``saving.compile_config``) in Keras 3's ``compile_config`` form."""
    if compile_section is None:
        return None
    return {**_to_keras(compile_section), "run_eagerly": False, "steps_per_execution": 1, "jit_compile": "auto"}


# ------------------------------------------------------------------------------------ weight groups
# Keras keeps a recurrent layer's weights in its cell (``layers/lstm/cell/vars``); distnn's recurrent
# layers hold them directly, in the cell's order (kernel, recurrent kernel, bias).
_CELL_LAYERS = ("SimpleRNN", "LSTM", "GRU")


def weight_groups(entry: dict, model: Any, prefix: str = "") -> list[tuple[str, Any, list]]:
    """``(h5 group path, distnn layer, its variables there)`` for the model, its layers and their
    sublayers, named as Keras' saver names them: a model's layers under ``layers/``, each by the
    snake-cased class name made unique within its container (``dense``, ``dense_1``), a sublayer by
    the attribute holding it (``forward_layer``, ``query_dense``), variables in ``<path>/vars``.
    ``entry`` is the model's Keras config (read from a file or made by ``keras_model_config``),
    whose layer list is in Keras' order; layers are matched to ``model``'s by name. A layer reached
    twice (shared) is listed where Keras first saves it."""
    seen: set[int] = set()
    return _model_groups(entry, model, prefix, seen)


def _model_groups(entry: dict, model: Any, prefix: str, seen: set[int]) -> list[tuple[str, Any, list]]:
    seen.add(id(model))
    groups: list[tuple[str, Any, list]] = [(f"{prefix}vars", model, [])]
    used: dict[str, int] = {}
    config = entry.get("config", {})
    layer_entries = config.get("layers", []) if isinstance(config, dict) else []
    if entry.get("class_name") == "Sequential":  # Keras' Sequential.layers leaves out its InputLayer
        layer_entries = [e for e in layer_entries if e.get("class_name") != "InputLayer"]
    for index, layer_entry in enumerate(layer_entries):
        base = snake_case(str(layer_entry.get("class_name")))
        name = base if base not in used else f"{base}_{used[base] + 1}"
        used[base] = used.get(base, -1) + 1
        layer = _matching_layer(model, layer_entry, index)
        if id(layer) in seen:
            continue
        path = f"{prefix}layers/{name}/"
        if layer_entry.get("class_name") in ("Sequential", "Functional"):
            groups.extend(_model_groups(layer_entry, layer, path, seen))
        else:
            groups.extend(_layer_groups(layer, path, seen))
    return groups


def _layer_groups(layer: Any, path: str, seen: set[int]) -> list[tuple[str, Any, list]]:
    seen.add(id(layer))
    if type(layer).__name__ in _CELL_LAYERS:
        groups = [(f"{path}vars", layer, []), (f"{path}cell/vars", layer, own_variables(layer))]
    else:
        groups = [(f"{path}vars", layer, own_variables(layer))]
    # Keras walks attributes in name order, private ones last; a sublayer gets its attribute's name
    for attribute in sorted(vars(layer), key=lambda name: (name.startswith("_"), name)):
        value = getattr(layer, attribute)
        if isinstance(value, Layer) and id(value) not in seen:
            groups.extend(_layer_groups(value, f"{path}{attribute.lstrip('_')}/", seen))
    return groups


def trainable_order(model: Any) -> list:
    """The model's trainable variables in the order Keras lists ``model.trainable_variables`` (its
    optimizer's variables follow it): layers in order, each layer's own variables, then its
    sublayers' in the order they were created."""
    order: list = []
    seen: set[int] = set()
    classes = model_classes()

    def visit(layer: Any) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        order.extend(v for v in own_variables(layer) if v.trainable)
        if isinstance(layer, classes["Functional"]):
            sublayers = keras_operation_order(layer)
        else:
            sublayers = layer.layers if isinstance(layer, classes["Sequential"]) else layer._tracked_layers()
        for sub in sublayers:
            visit(sub)

    visit(model)
    return order


def _matching_layer(model: Any, entry: dict, index: int) -> Any:
    if isinstance(model, model_classes()["Sequential"]):
        return model.layers[index]
    name = entry.get("name") or entry.get("config", {}).get("name")
    return model.get_layer(name)


def own_variables(layer: Any) -> list:
    """A layer's own variables in Keras' saved order: trainable ones, then the others, each in
    creation order (``Layer.save_own_variables``). Sublayers' variables are theirs."""
    if isinstance(layer, model_classes()["Model"]):
        return []
    variables = list(layer._variables)
    return [v for v in variables if v.trainable] + [v for v in variables if not v.trainable]
