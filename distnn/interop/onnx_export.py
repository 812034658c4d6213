"""``model.export("m.onnx", format="onnx")``: the inference graph of a Sequential or functional model
as ONNX (opset 17), built with the ``onnx`` package's helpers; the batch axis is dynamic.

Each layer becomes a few standard ONNX operators and its weights become initializers (host copies,
in the layouts ONNX wants: convolution kernels ``OI<spatial>``). Channels-last convolutions and
poolings are wrapped in transposes, since ONNX's are channels-first. BatchNormalization exports its
inference form folded into one scale and one shift, Dropout is the identity, nested models are
inlined; recurrent layers become ONNX's RNN/GRU/LSTM operators, MultiHeadAttention its matrix
products and softmax. A layer without a converter here fails by name. See docs/architecture.md, "ONNX export".
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from distnn import backend, layers
from distnn.interop import keras_config
from distnn.layers.core import InputLayer

OPSET = 17
# The IR version of opset 17: what onnxruntime releases of the last years all read.
IR_VERSION = 8


class _Graph:
    """The ONNX nodes and initializers being built, with unique value names."""

    def __init__(self, helper: Any, numpy_helper: Any):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self._names: dict[str, int] = {}

    def name(self, base: str) -> str:
        count = self._names.get(base, 0)
        self._names[base] = count + 1
        return base if count == 0 else f"{base}_{count}"

    def constant(self, base: str, value: Any) -> str:
        name = self.name(base)
        array = np.asarray(backend.to_numpy(value))
        array = array.astype(np.float32) if array.dtype.kind == "f" else array
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], base: str, **attributes: Any) -> str:
        output = self.name(base)
        self.nodes.append(self.helper.make_node(op_type, inputs, [output], name=output, **attributes))
        return output


# ------------------------------------------------------------------------------------- activations
def _activation(graph: _Graph, name: Any, x: str, base: str) -> str:
    options: dict = {}
    if isinstance(name, dict):  # a parametrized activation: {"class_name": "gelu", "config": {...}}
        name, options = name.get("class_name"), name.get("config") or {}
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus", "softsign": "Softsign",
              "elu": "Elu", "selu": "Selu", "exponential": "Exp"}
    if name in (None, "linear"):
        return x
    if name in simple:
        return graph.op(simple[name], [x], f"{base}/{name}")
    if name == "softmax":
        return graph.op("Softmax", [x], f"{base}/softmax", axis=-1)
    if name in ("swish", "silu"):
        return graph.op("Mul", [x, graph.op("Sigmoid", [x], f"{base}/sigmoid")], f"{base}/{name}")
    if name == "leaky_relu":
        return graph.op("LeakyRelu", [x], f"{base}/leaky_relu", alpha=float(options.get("negative_slope", 0.2)))
    if name == "relu6":
        return graph.op("Clip", [x, graph.constant(f"{base}/zero", np.float32(0)),
                                 graph.constant(f"{base}/six", np.float32(6))], f"{base}/relu6")
    if name == "hard_sigmoid":  # Keras 3: relu6(x + 3) / 6
        return graph.op("HardSigmoid", [x], f"{base}/hard_sigmoid", alpha=1 / 6, beta=0.5)
    if name == "gelu" and options.get("approximate"):  # x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = graph.op("Mul", [graph.op("Mul", [x, x], f"{base}/square"), x], f"{base}/cube")
        inner = graph.op("Add", [x, graph.op("Mul", [cube, graph.constant(f"{base}/c", np.float32(0.044715))],
                                             f"{base}/ccube")], f"{base}/inner")
        tanh = graph.op("Tanh", [graph.op("Mul", [inner, graph.constant(f"{base}/k", np.float32(np.sqrt(2 / np.pi)))],
                                          f"{base}/kinner")], f"{base}/tanh")
        one = graph.op("Add", [tanh, graph.constant(f"{base}/one", np.float32(1))], f"{base}/tanh1")
        return graph.op("Mul", [graph.op("Mul", [x, one], f"{base}/xtanh"),
                                graph.constant(f"{base}/half", np.float32(0.5))], f"{base}/gelu")
    if name == "gelu":  # Keras' default approximate=False: x/2 (1 + erf(x / sqrt 2))
        scaled = graph.op("Mul", [x, graph.constant(f"{base}/rsqrt2", np.float32(1 / np.sqrt(2)))], f"{base}/scaled")
        erf = graph.op("Add", [graph.op("Erf", [scaled], f"{base}/erf"), graph.constant(f"{base}/one", np.float32(1))],
                       f"{base}/erf1")
        return graph.op("Mul", [graph.op("Mul", [x, erf], f"{base}/xerf"),
                                graph.constant(f"{base}/half", np.float32(0.5))], f"{base}/gelu")
    raise ValueError(f"ONNX export: the activation {name!r} (in {base}) has no converter")


# ------------------------------------------------------------------------------------------ layers
def _channels_first(graph: _Graph, layer: Any, x: str, rank: int) -> tuple[str, Callable[[str], str]]:
    """``x`` in ONNX's channels-first layout, and the function that brings a result back."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return x, lambda y: y
    to_first = [0, rank - 1, *range(1, rank - 1)]
    to_last = [0, *range(2, rank), 1]
    moved = graph.op("Transpose", [x], f"{layer.name}/to_channels_first", perm=to_first)
    return moved, lambda y: graph.op("Transpose", [y], f"{layer.name}/to_channels_last", perm=to_last)


def _padding(layer: Any, kernel: list[int], dilation: list[int]) -> dict:
    if layer.padding == "same":
        return {"auto_pad": "SAME_UPPER"}  # Keras' "same" puts the odd pixel at the end
    if layer.padding == "causal":
        return {"pads": [(kernel[0] - 1) * dilation[0], 0]}
    return {"pads": [0] * (2 * len(kernel))}


def _conv(graph: _Graph, layer: Any, x: str, shape: tuple) -> str:
    rank = len(shape)
    kernel = np.asarray(backend.to_numpy(layer.kernel.value))  # <spatial>, in, out
    weights = np.transpose(kernel, (rank - 1, rank - 2, *range(rank - 2)))  # out, in, <spatial>
    moved, back = _channels_first(graph, layer, x, rank)
    inputs = [moved, graph.constant(f"{layer.name}/kernel", weights)]
    if layer.use_bias:
        inputs.append(graph.constant(f"{layer.name}/bias", layer.bias.value))
    size, dilation = list(layer.kernel_size), list(layer.dilation_rate)
    y = graph.op("Conv", inputs, f"{layer.name}/conv", kernel_shape=size, strides=list(layer.strides),
                 dilations=dilation, **_padding(layer, size, dilation))
    return _activation(graph, layer.get_config()["activation"], back(y), layer.name)


def _pool(op_type: str) -> Callable:
    def convert(graph: _Graph, layer: Any, x: str, shape: tuple) -> str:
        size = list(layer.pool_size)
        moved, back = _channels_first(graph, layer, x, len(shape))
        extra = {"count_include_pad": 0} if op_type == "AveragePool" else {}
        return back(graph.op(op_type, [moved], f"{layer.name}/pool", kernel_shape=size, strides=list(layer.strides),
                             **_padding(layer, size, [1] * len(size)), **extra))
    return convert


def _global_pool(op_type: str) -> Callable:
    def convert(graph: _Graph, layer: Any, x: str, shape: tuple) -> str:
        rank = len(shape)
        axes = list(range(2, rank)) if layer.data_format == "channels_first" else list(range(1, rank - 1))
        return graph.op(op_type, [x], f"{layer.name}/reduce", axes=axes, keepdims=int(bool(layer.keepdims)))
    return convert


def _dense(graph: _Graph, layer: Any, x: str, shape: tuple) -> str:
    y = graph.op("MatMul", [x, graph.constant(f"{layer.name}/kernel", layer.kernel.value)], f"{layer.name}/matmul")
    if layer.use_bias:
        y = graph.op("Add", [y, graph.constant(f"{layer.name}/bias", layer.bias.value)], f"{layer.name}/bias_add")
    return _activation(graph, layer.get_config()["activation"], y, layer.name)


def _batch_normalization(graph: _Graph, layer: Any, x: str, shape: tuple) -> str:
    """Inference: ``(x - mean) / sqrt(var + eps) * gamma + beta`` folded into ``x * scale + shift``."""
    def host(name: str, default: float) -> np.ndarray:
        variable = getattr(layer, name, None)
        value = np.asarray(backend.to_numpy(variable.value), dtype=np.float64) if variable is not None else None
        return value if value is not None else np.full(np.shape(backend.to_numpy(layer.moving_mean.value)), default)

    scale = host("gamma", 1.0) / np.sqrt(host("moving_variance", 1.0) + layer.epsilon)
    shift = host("beta", 0.0) - host("moving_mean", 0.0) * scale
    axes = [layer.axis] if isinstance(layer.axis, (int, np.integer)) else list(layer.axis)
    axes = sorted(a % len(shape) for a in axes)
    broadcast = [shape[a] if a in axes else 1 for a in range(1, len(shape))]
    y = graph.op("Mul", [x, graph.constant(f"{layer.name}/scale", scale.reshape(broadcast))], f"{layer.name}/scale")
    return graph.op("Add", [y, graph.constant(f"{layer.name}/shift", shift.reshape(broadcast))], f"{layer.name}/shift")


def _flatten(graph: _Graph, layer: Any, x: str, shape: tuple) -> str:
    if getattr(layer, "data_format", "channels_last") == "channels_first" and len(shape) > 2:
        x = graph.op("Transpose", [x], f"{layer.name}/to_channels_last", perm=[0, *range(2, len(shape)), 1])
    return graph.op("Flatten", [x], f"{layer.name}/flatten", axis=1)


def _reshape(graph: _Graph, layer: Any, x: str, shape: tuple) -> str:
    target = np.array([0, *layer.target_shape], dtype=np.int64)  # 0: keep the (dynamic) batch size
    return graph.op("Reshape", [x, graph.constant(f"{layer.name}/shape", target)], f"{layer.name}/reshape")


def _zero_padding(graph: _Graph, layer: Any, x: str, shape: tuple) -> str:
    padding = np.asarray(layer.padding).reshape(-1, 2)  # (before, after) per spatial axis
    begin, end = [0] * len(shape), [0] * len(shape)
    spatial = range(2, len(shape)) if layer.data_format == "channels_first" else range(1, len(shape) - 1)
    for axis, (before, after) in zip(spatial, padding):
        begin[axis], end[axis] = int(before), int(after)
    pads = graph.constant(f"{layer.name}/pads", np.array(begin + end, dtype=np.int64))
    return graph.op("Pad", [x, pads], f"{layer.name}/pad")


def _embedding(graph: _Graph, layer: Any, x: str, shape: tuple) -> str:
    if layer.mask_zero:
        raise ValueError(f"ONNX export: {layer.name} has mask_zero=True; ONNX graphs carry no masks")
    return graph.op("Gather", [graph.constant(f"{layer.name}/embeddings", layer.embeddings.value), x],
                    f"{layer.name}/gather", axis=0)


def _layer_normalization(graph: _Graph, layer: Any, x: str, shape: tuple) -> str:
    axes = sorted(a % len(shape) for a in ([layer.axis] if isinstance(layer.axis, int) else layer.axis))
    if axes != list(range(axes[0], len(shape))) or layer.rms_scaling:
        raise ValueError(f"ONNX export: {layer.name} normalizes axes {layer.axis} (rms_scaling="
                         f"{layer.rms_scaling}); the exporter handles trailing axes without rms_scaling")
    size = [shape[a] for a in axes]
    gamma = backend.to_numpy(layer.gamma.value) if layer.scale else np.ones(size, np.float32)
    beta = backend.to_numpy(layer.beta.value) if layer.center else np.zeros(size, np.float32)
    return graph.op("LayerNormalization", [x, graph.constant(f"{layer.name}/gamma", np.reshape(gamma, size)),
                                           graph.constant(f"{layer.name}/beta", np.reshape(beta, size))],
                    f"{layer.name}/layer_norm", axis=axes[0], epsilon=float(layer.epsilon))


_RNN_ACTIVATIONS = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu"}


def _rnn_activation(layer: Any, key: str) -> str:
    name = layer.get_config()[key]
    if name not in _RNN_ACTIVATIONS:
        raise ValueError(f"ONNX export: {layer.name} uses {key}={name!r}; ONNX's recurrent operators take "
                         f"{sorted(_RNN_ACTIVATIONS)}")
    return _RNN_ACTIVATIONS[name]


def _recurrent(graph: _Graph, layer: Any, x: str, shape: tuple) -> list[str]:
    """SimpleRNN, GRU and LSTM as ONNX's RNN, GRU and LSTM operators, time-major (onnxruntime does
    not run ``layout=1``), between transposes.
    Keras orders an LSTM's gates i, f, c, o and ONNX i, o, f, c; GRU gates are z, r, h in both, and
    Keras' ``reset_after=True`` is ONNX's ``linear_before_reset=1``."""
    kind = type(layer).__name__
    if layer.go_backwards and layer.return_sequences:
        raise ValueError(f"ONNX export: {layer.name} has go_backwards=True with return_sequences=True: Keras returns "
                         "the outputs in reversed order, ONNX's reverse direction in input order")
    units = layer.units
    kernel = np.asarray(backend.to_numpy(layer.kernel.value))
    recurrent = np.asarray(backend.to_numpy(layer.recurrent_kernel.value))
    bias = np.zeros(kernel.shape[1], np.float32) if layer.bias is None else \
        np.asarray(backend.to_numpy(layer.bias.value))
    attributes: dict = {"hidden_size": units, "direction": "reverse" if layer.go_backwards else "forward"}
    if kind == "LSTM":
        order = np.concatenate([np.arange(g * units, (g + 1) * units) for g in (0, 3, 1, 2)])  # i o f c
        kernel, recurrent, bias = kernel[:, order], recurrent[:, order], bias[order]
        biases = np.concatenate([bias, np.zeros_like(bias)])
        activations = [_rnn_activation(layer, "recurrent_activation"), *[_rnn_activation(layer, "activation")] * 2]
    elif kind == "GRU":
        biases = np.concatenate([bias[0], bias[1]] if layer.reset_after else [bias, np.zeros_like(bias)])
        attributes["linear_before_reset"] = int(layer.reset_after)
        activations = [_rnn_activation(layer, "recurrent_activation"), _rnn_activation(layer, "activation")]
    else:
        biases = np.concatenate([bias, np.zeros_like(bias)])
        activations = [_rnn_activation(layer, "activation")]
    op_type = {"SimpleRNN": "RNN"}.get(kind, kind)
    time_major = graph.op("Transpose", [x], f"{layer.name}/time_major", perm=[1, 0, 2])
    inputs = [time_major, graph.constant(f"{layer.name}/W", kernel.T[None]),
              graph.constant(f"{layer.name}/R", recurrent.T[None]), graph.constant(f"{layer.name}/B", biases[None])]
    outputs = [graph.name(f"{layer.name}/{part}") for part in ("Y", "Y_h", "Y_c")[:3 if kind == "LSTM" else 2]]
    graph.nodes.append(graph.helper.make_node(op_type, inputs, outputs, name=outputs[0], activations=activations,
                                              **attributes))
    direction_axis = graph.constant(f"{layer.name}/direction_axis", np.array([0], np.int64))
    states = [graph.op("Squeeze", [state, direction_axis], f"{layer.name}/state") for state in outputs[1:]]
    if layer.return_sequences:  # Y: (steps, directions, batch, units)
        squeezed = graph.op("Squeeze", [outputs[0], graph.constant(f"{layer.name}/sequence_axis",
                                                                   np.array([1], np.int64))], f"{layer.name}/steps")
        y = graph.op("Transpose", [squeezed], f"{layer.name}/sequences", perm=[1, 0, 2])
    else:
        y = states[0]
    return [y, *states] if layer.return_state else [y]


def _multi_head_attention(graph: _Graph, layer: Any, inputs: list[str], shapes: list[tuple]) -> str:
    """Scaled dot-product attention over the sequence axis, from the four projections' weights."""
    query, value = inputs[0], inputs[1]
    key = inputs[2] if len(inputs) > 2 else value
    if layer.attention_axes not in (None, (1,), [1]) or len(shapes[0]) != 3:
        raise ValueError(f"ONNX export: {layer.name} attends over axes {layer.attention_axes} of rank-"
                         f"{len(shapes[0])} inputs; the exporter handles sequences (batch, steps, features)")

    def project(x: str, dense: Any, heads_last: bool) -> str:
        kernel = np.asarray(backend.to_numpy(dense.kernel.value))
        base = f"{layer.name}/{dense.name}"
        if heads_last:  # (heads, dim, out): the attention output, back to features
            y = graph.op("MatMul", [x, graph.constant(f"{base}/kernel", kernel.reshape(-1, kernel.shape[-1]))], base)
        else:  # (features, heads, dim): split into heads, (batch, heads, steps, dim)
            y = graph.op("MatMul", [x, graph.constant(f"{base}/kernel", kernel.reshape(kernel.shape[0], -1))], base)
        if dense.use_bias:
            y = graph.op("Add", [y, graph.constant(f"{base}/bias", np.reshape(backend.to_numpy(dense.bias.value), -1))],
                         f"{base}/bias_add")
        if heads_last:
            return y
        heads = graph.constant(f"{base}/heads", np.array([0, 0, *kernel.shape[1:]], np.int64))
        return graph.op("Transpose", [graph.op("Reshape", [y, heads], f"{base}/split")], f"{base}/heads_first",
                        perm=[0, 2, 1, 3])

    q, k, v = project(query, layer.query_dense, False), project(key, layer.key_dense, False), \
        project(value, layer.value_dense, False)
    scores = graph.op("MatMul", [q, graph.op("Transpose", [k], f"{layer.name}/keys_t", perm=[0, 1, 3, 2])],
                      f"{layer.name}/scores")
    scores = graph.op("Mul", [scores, graph.constant(f"{layer.name}/scale", np.float32(1 / np.sqrt(layer.key_dim)))],
                      f"{layer.name}/scaled")
    weights = graph.op("Softmax", [scores], f"{layer.name}/weights", axis=-1)
    attended = graph.op("Transpose", [graph.op("MatMul", [weights, v], f"{layer.name}/attended")],
                        f"{layer.name}/steps_first", perm=[0, 2, 1, 3])
    merged = graph.op("Reshape", [attended, graph.constant(f"{layer.name}/merge", np.array(
        [0, 0, layer.num_heads * layer.value_dim], np.int64))], f"{layer.name}/merged")
    return project(merged, layer.output_dense, True)


def _identity(graph: _Graph, layer: Any, x: str, shape: tuple) -> str:
    return graph.op("Identity", [x], f"{layer.name}/identity")


def _activation_layer(graph: _Graph, layer: Any, x: str, shape: tuple) -> str:
    y = _activation(graph, layer.get_config()["activation"], x, layer.name)
    return y if y != x else _identity(graph, layer, x, shape)


def _merge(op_type: str, average: bool = False) -> Callable:
    def convert(graph: _Graph, layer: Any, inputs: list[str], shapes: list[tuple]) -> str:
        if op_type == "Concat":
            return graph.op("Concat", inputs, f"{layer.name}/concat", axis=int(layer.axis))
        if op_type in ("Sub", "Mul"):  # binary in ONNX: fold left
            y = inputs[0]
            for other in inputs[1:]:
                y = graph.op(op_type, [y, other], f"{layer.name}/{op_type.lower()}")
            return y
        y = graph.op(op_type, inputs, f"{layer.name}/{op_type.lower()}")
        if average:
            y = graph.op("Mul", [y, graph.constant(f"{layer.name}/inverse_count", np.float32(1 / len(inputs)))],
                         f"{layer.name}/average")
        return y
    return convert


_SINGLE_INPUT = {
    layers.Dense: _dense, layers.Conv1D: _conv, layers.Conv2D: _conv,
    layers.MaxPooling1D: _pool("MaxPool"), layers.MaxPooling2D: _pool("MaxPool"),
    layers.AveragePooling1D: _pool("AveragePool"), layers.AveragePooling2D: _pool("AveragePool"),
    layers.GlobalAveragePooling1D: _global_pool("ReduceMean"),
    layers.GlobalAveragePooling2D: _global_pool("ReduceMean"),
    layers.GlobalMaxPooling1D: _global_pool("ReduceMax"), layers.GlobalMaxPooling2D: _global_pool("ReduceMax"),
    layers.BatchNormalization: _batch_normalization, layers.Dropout: _identity, layers.Identity: _identity,
    layers.Flatten: _flatten, layers.Reshape: _reshape, layers.Activation: _activation_layer,
    layers.ZeroPadding1D: _zero_padding, layers.ZeroPadding2D: _zero_padding, layers.Embedding: _embedding,
    layers.LayerNormalization: _layer_normalization,
}
_RECURRENT = (layers.SimpleRNN, layers.GRU, layers.LSTM)
_MERGING = {layers.Add: _merge("Sum"), layers.Subtract: _merge("Sub"), layers.Multiply: _merge("Mul"),
            layers.Average: _merge("Sum", average=True), layers.Maximum: _merge("Max"),
            layers.Minimum: _merge("Min"), layers.Concatenate: _merge("Concat")}


# ------------------------------------------------------------------------------------------ models
def _convert_model(graph: _Graph, model: Any, inputs: list[str]) -> list[str]:
    """The ONNX values of ``model``'s outputs given its inputs' value names; nested models inline."""
    classes = keras_config.model_classes()
    if isinstance(model, classes["Sequential"]):
        x, shape = inputs[0], model.input_shape
        for layer, output_shape in zip(model.layers, model._output_shapes):
            x = _convert_layer(graph, layer, [x], [shape])[0]
            shape = output_shape
        return [x]
    if not isinstance(model, classes["Functional"]):
        raise ValueError(f"ONNX export takes Sequential and functional models; {type(model).__name__} is a "
                         "subclassed model, whose call is Python code")
    values = {id(t): name for t, name in zip(model.inputs, inputs)}
    for node in model._nodes:
        if isinstance(node.operation, InputLayer):
            continue
        if not isinstance(node.operation, layers.Layer):
            raise ValueError(f"ONNX export: the op {node.name!r} in model {model.name!r} has no converter; wrap it "
                             "in a layer")
        used = {k: v for k, v in node.kwargs.items() if k != "training" and v not in (None, False)
                and not any(v is t for t in node.input_tensors)}
        if used:
            raise ValueError(f"ONNX export: {node.operation.name} is called with {sorted(used)}; the exporter "
                             "converts plain calls only")
        sources = node.input_tensors
        outputs = _convert_layer(graph, node.operation, [values[id(t)] for t in sources], [t.shape for t in sources])
        for tensor, name in zip(node.output_tensors, outputs):
            values[id(tensor)] = name
    return [values[id(t)] for t in model.outputs]


def _convert_layer(graph: _Graph, layer: Any, inputs: list[str], shapes: list[tuple]) -> list[str]:
    if isinstance(layer, keras_config.model_classes()["Model"]):
        return _convert_model(graph, layer, inputs)
    kind = type(layer)
    if kind in _MERGING:
        return [_MERGING[kind](graph, layer, inputs, shapes)]
    if kind is layers.MultiHeadAttention:
        return [_multi_head_attention(graph, layer, inputs, shapes)]
    if kind in _RECURRENT and len(inputs) == 1:
        return _recurrent(graph, layer, inputs[0], tuple(shapes[0]))
    if kind in _SINGLE_INPUT and len(inputs) == 1:
        return [_SINGLE_INPUT[kind](graph, layer, inputs[0], tuple(shapes[0]))]
    handled = sorted({c.__name__ for c in (*_SINGLE_INPUT, *_MERGING, *_RECURRENT, layers.MultiHeadAttention)})
    raise ValueError(f"ONNX export: layer {layer.name!r} ({kind.__name__}) has no converter; the exporter "
                     f"handles {handled}")


def export_onnx(model: Any, filepath: Any) -> str:
    """Write ``model``'s inference graph to ``filepath`` (ONNX, dynamic batch axis); returns the path."""
    try:
        import onnx  # noqa: PLC0415 - optional, and slow to import
        from onnx import helper, numpy_helper  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("ONNX export needs the onnx package: pip install 'distnn[interop]'") from exc
    model._require_built("export()")
    graph = _Graph(helper, numpy_helper)
    classes = keras_config.model_classes()
    sources = model.inputs
    names = [graph.name(t.node.operation.name if isinstance(model, classes["Functional"]) else "input")
             for t in sources]
    outputs = _convert_model(graph, model, names)
    output_tensors = model.outputs if isinstance(model, classes["Functional"]) else [None]
    output_shapes = [t.shape for t in output_tensors] if output_tensors[0] is not None else [model.output_shape]

    def value_info(name: str, shape: tuple, dtype: Any = "float32") -> Any:
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        return helper.make_tensor_value_info(name, elem, ["batch", *shape[1:]])

    final = []
    for i, name in enumerate(outputs):  # graph outputs get names of their own, not a layer's inner value
        final.append(graph.op("Identity", [name], f"output_{i}" if len(outputs) > 1 else "output"))
    onnx_graph = helper.make_graph(
        graph.nodes, model.name, [value_info(n, t.shape, t.dtype) for n, t in zip(names, sources)],
        [value_info(n, s) for n, s in zip(final, output_shapes)], initializer=graph.initializers)
    onnx_model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="distnn", ir_version=IR_VERSION)
    onnx.checker.check_model(onnx_model)
    filepath = os.fspath(filepath)
    onnx.save(onnx_model, filepath)
    return filepath
