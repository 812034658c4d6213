"""The ``Layer`` base class and ``Variable``, the handle to one weight.

A layer creates its weights in ``build`` with ``add_weight``. Each weight is a ``Variable`` whose
``value`` and ``grad`` are arrays; once the layer is part of a built model they are *views* into the
model's flat parameter and gradient buffers (see DESIGN.md), so ``backward`` must write gradients
in place (``xp.matmul(a, b, out=v.grad)``, ``v.grad[...] = ...``) and never rebind them.

Writing a custom layer::

    class Scale(Layer):
        def build(self, input_shape):
            self.w = self.add_weight("w", (input_shape[-1],), initializer="ones")

        def call(self, x, training=False):
            self.x = x
            return x * self.w.value

        def backward(self, grad):
            self.w.grad[...] = (grad * self.x).reshape(-1, grad.shape[-1]).sum(0)
            return grad * self.w.value
"""
from __future__ import annotations

import collections
import re
from typing import Any

import numpy as np

from distnn import activations, backend, initializers, regularizers, weight_budget
from distnn.utils import global_rng

_name_counters: collections.Counter = collections.Counter()
_registry: dict[str, type] = {}


def reset_name_counters() -> None:
    _name_counters.clear()


def _snake_case(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()  # Keras: Conv2D -> conv2d


def _unique_name(base: str) -> str:
    count = _name_counters[base]
    _name_counters[base] += 1
    return base if count == 0 else f"{base}_{count}"


def register_serializable(cls: type | None = None, *, name: str | None = None):
    """Class decorator: make a custom layer, loss or activation loadable by ``load_model`` by name.

    Equivalent to passing it in ``custom_objects`` every time. Nothing is ever unpickled: only
    registered or explicitly given classes can be rebuilt from a saved config.
    """
    def register(klass: type) -> type:
        klass._registered_name = name or klass.__name__  # saved configs use this name
        _registry[klass._registered_name] = klass
        return klass

    return register(cls) if cls is not None else register


def registered_objects() -> dict[str, type]:
    return dict(_registry)


def serializable_name(cls: type) -> str:
    """The ``class_name`` saved for ``cls``: its registered name, else its class name. Looked up on
    the class itself, so an unregistered subclass of a registered class keeps its own name."""
    return vars(cls).get("_registered_name", cls.__name__)


def normalize_tuple(value: Any, n: int, arg_name: str) -> tuple[int, ...]:
    """``3`` -> ``(3, 3)``; checks that a tuple has ``n`` positive integers."""
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * n
    value = tuple(value)
    if len(value) != n or not all(isinstance(v, (int, np.integer)) and v > 0 for v in value):
        raise ValueError(f"{arg_name} must be a positive integer or a tuple of {n} positive integers. "
                         f"Received: {arg_name}={value}")
    return tuple(int(v) for v in value)


def init_kernel_options(layer: "Layer", activation: Any, use_bias: bool, kernel_initializer: Any,
                        bias_initializer: Any, kernel_regularizer: Any, bias_regularizer: Any) -> None:
    """Resolve and set, under Keras' attribute names, the activation, bias switch, initializers and
    regularizers of a layer with a kernel (``Dense``, ``Conv1D``, ``Conv2D``)."""
    layer.activation = activations.get(activation)
    layer.use_bias = bool(use_bias)
    layer.kernel_initializer = initializers.get(kernel_initializer)
    layer.bias_initializer = initializers.get(bias_initializer)
    layer.kernel_regularizer = regularizers.get(kernel_regularizer)
    layer.bias_regularizer = regularizers.get(bias_regularizer)


def affine_forward(layer: "Layer", rows: Any, kernel: Any, training: bool) -> Any:
    """``activation(rows @ kernel + bias)`` for a kernel layer: ``Dense`` on its inputs, a convolution
    on its im2col matrix. Keeps what ``affine_backward`` needs; training reuses the layer's buffers."""
    xp = backend.get_array_module(rows)
    # Training reuses one buffer per shape; inference returns fresh arrays the caller may keep.
    z = xp.matmul(rows, kernel, out=layer._buffer("z", (rows.shape[0], kernel.shape[1])) if training else None)
    if layer.bias is not None:
        z += layer.bias.value
    if layer.activation.needs_input:
        layer._z = z
        y = layer.activation(z, out=layer._buffer("y", z.shape) if training else None)
    else:
        y = layer.activation(z, out=z)  # in place: backward needs only the output
    layer._y = y
    return y


def affine_backward(layer: "Layer", g: Any, rows: Any, kernel_grad: Any) -> Any:
    """From dL/dy (2-D, may be overwritten) to dL/d(rows @ kernel + bias); writes the kernel and bias
    gradients in place (views of the model's flat gradient buffer) and returns dL/dz."""
    xp = backend.get_array_module(g)
    if not layer.fused_output_activation:
        g = layer.activation.backward(g, getattr(layer, "_z", None), layer._y)
    xp.matmul(rows.T, g, out=kernel_grad)
    if layer.bias is not None:  # a GEMV with ones: several times faster than g.sum(axis=0) on tall g
        ones = layer._buffer("ones", (g.shape[0],))
        ones.fill(1)
        xp.matmul(ones, g, out=layer.bias.grad)
    return g


def kernel_options_config(layer: "Layer") -> dict:
    """The ``get_config`` entries of the options set by ``init_kernel_options``."""
    return {"activation": activations.serialize(layer.activation), "use_bias": layer.use_bias,
            "kernel_initializer": initializers.serialize(layer.kernel_initializer),
            "bias_initializer": initializers.serialize(layer.bias_initializer),
            "kernel_regularizer": regularizers.serialize(layer.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(layer.bias_regularizer)}


class Variable:
    """One weight of a layer: ``value`` (the array), ``grad`` (its gradient, same shape) and metadata.

    ``grad`` is ``None`` for non-trainable state such as BatchNormalization's moving statistics.
    """

    def __init__(self, name: str, value: Any, trainable: bool = True, regularizer: Any = None):
        self.name = name
        self.value = value
        self.trainable = trainable
        self.regularizer = regularizer
        self.grad = backend.get_array_module(value).zeros_like(value) if trainable else None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def dtype(self) -> Any:
        return self.value.dtype

    @property
    def size(self) -> int:
        return int(self.value.size)

    def numpy(self) -> np.ndarray:
        """A host copy of the current value."""
        return np.array(backend.to_numpy(self.value))

    def assign(self, value: Any) -> None:
        """Overwrite the value in place (it stays a view of the model's flat buffer)."""
        value = backend.to_device(value)
        if tuple(value.shape) != self.shape:
            raise ValueError(f"Cannot assign a value of shape {tuple(value.shape)} to variable "
                             f"{self.name!r} of shape {self.shape}")
        self.value[...] = value

    def __repr__(self) -> str:
        return f"<Variable {self.name} shape={self.shape} trainable={self.trainable}>"


class Layer:
    """Base class of all layers (Keras API: ``build`` / ``call`` / ``get_config``, plus ``backward``).

    Args:
        trainable: whether the layer's weights are updated by training.
        name: layer name; unique automatic names (``dense``, ``dense_1``, ...) when omitted.
        dtype: float dtype of the weights (default ``backend.floatx()``).
        input_shape: shape of one sample (without the batch axis), for the first layer of a model.
        batch_input_shape: full input shape with the batch axis (its size is ignored).
        input_dim: for 2-D inputs, the number of features (``input_shape=(input_dim,)``).
    """

    def __init__(self, trainable: bool = True, name: str | None = None, dtype: Any = None,
                 input_shape: tuple | None = None, batch_input_shape: tuple | None = None,
                 input_dim: int | None = None, **kwargs: Any):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments: {sorted(kwargs)}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string. Received: name={name!r}")
        self.name = name or _unique_name(_snake_case(type(self).__name__))
        self.trainable = bool(trainable)
        self.dtype = np.dtype(dtype or backend.floatx()).name
        self.built = False
        self.input_spec_shape: tuple | None = None  # full input shape (None batch axis) once known
        if input_dim is not None:
            input_shape = (input_dim,)
        if batch_input_shape is not None:
            input_shape = tuple(batch_input_shape)[1:]
        if input_shape is not None:
            input_shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
            if not all(d is None or (isinstance(d, (int, np.integer)) and d > 0) for d in input_shape):
                raise ValueError(f"{self.name}: input_shape must hold positive integers. "
                                 f"Received: input_shape={input_shape}")
            self.input_spec_shape = (None, *input_shape)
        self._declared_input = self.input_spec_shape is not None
        self._variables: list[Variable] = []
        self._buffers: dict[str, Any] = {}
        # The model clears this on its first layer: no layer before it needs dL/dx, which saves
        # the largest GEMM of a typical first Dense/Conv backward.
        self.propagate_input_grad = True
        # Set by the model when the loss supplies dL/d(pre-activation) directly (softmax + CCE).
        self.fused_output_activation = False

    # ----------------------------------------------------------------------------- weights
    def add_weight(self, name: str, shape: tuple[int, ...], initializer: Any = "glorot_uniform",
                   regularizer: Any = None, trainable: bool = True, dtype: Any = None) -> Variable:
        """Create a weight initialised on the host and moved to the device; returns its ``Variable``."""
        init = initializers.get(initializer)
        weight_budget.charge(shape, f"{self.name}/{name}")  # loading a file: refuse before allocating
        value = backend.to_device(init(tuple(shape), dtype or self.dtype, global_rng()))
        variable = Variable(f"{self.name}/{name}", value, trainable=trainable,
                            regularizer=regularizers.get(regularizer))
        self._variables.append(variable)
        return variable

    @property
    def variables(self) -> list[Variable]:
        return list(self._variables)

    @property
    def weights(self) -> list[Variable]:
        return self.trainable_weights + self.non_trainable_weights

    @property
    def trainable_weights(self) -> list[Variable]:
        return [v for v in self._variables if v.trainable] if self.trainable else []

    @property
    def non_trainable_weights(self) -> list[Variable]:
        if not self.trainable:
            return list(self._variables)
        return [v for v in self._variables if not v.trainable]

    def get_weights(self) -> list[np.ndarray]:
        """Host copies of the weights, in creation order (as Keras)."""
        return [v.numpy() for v in self._variables]

    def set_weights(self, weights: list[Any]) -> None:
        if len(weights) != len(self._variables):
            raise ValueError(f"Layer {self.name!r} expects {len(self._variables)} weight arrays. "
                             f"Received: {len(weights)}")
        for variable, value in zip(self._variables, weights):
            variable.assign(value)

    def count_params(self) -> int:
        if not self.built:
            raise ValueError(f"Layer {self.name!r} is not built yet: its input shape is unknown, so it "
                             "has no weights to count. Call build() or pass input_shape first")
        return sum(v.size for v in self._variables)

    def regularization_penalty(self) -> float:
        return sum(v.regularizer.penalty(v.value) for v in self.trainable_weights if v.regularizer)

    # ------------------------------------------------------------------------- computation
    def build(self, input_shape: tuple) -> None:
        """Create weights for inputs of ``input_shape`` (batch axis first, ``None``)."""
        self.built = True

    def call(self, x: Any, training: bool = False) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement call()")

    def backward(self, grad: Any) -> Any:
        """Fill parameter gradients in place from ``grad`` = dL/dy and return dL/dx."""
        raise NotImplementedError(f"{type(self).__name__} must implement backward()")

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return tuple(input_shape)

    def empty_shard_forward(self) -> None:
        """Called instead of ``call`` on a rank whose shard of a training step is empty. A layer that
        communicates in ``call`` (synchronized BatchNormalization) joins those collectives here."""

    def empty_shard_backward(self) -> None:
        """Called instead of ``backward`` on a rank whose shard of a training step is empty."""

    def build_for(self, input_shape: tuple) -> tuple:
        """Build the layer for ``input_shape`` if needed and return its output shape."""
        input_shape = (None, *tuple(input_shape)[1:])
        if self.input_spec_shape is not None and self.built:
            self._check_input_shape(input_shape)
        if not self.built:
            self.input_spec_shape = input_shape
            self.build(input_shape)
            self.built = True
        return tuple(self.compute_output_shape(input_shape))

    def _check_input_shape(self, input_shape: tuple) -> None:
        expected = self.input_spec_shape
        if len(expected) != len(input_shape) or any(
                e is not None and r is not None and e != r for e, r in zip(expected[1:], input_shape[1:])):
            raise ValueError(f"Input to layer {self.name!r} is incompatible: expected shape "
                             f"{expected}, received {input_shape}")

    def __call__(self, x: Any, training: bool = False) -> Any:
        """Run the layer eagerly on ``x`` (building it on first use)."""
        x = backend.to_device(x)
        self.build_for((None, *x.shape[1:]))
        self._check_input_shape((None, *x.shape[1:]))
        return self.call(x, training=training)

    def _buffer(self, key: str, shape: tuple, dtype: Any = None) -> Any:
        """A reusable scratch array: allocated once per shape, so training steps allocate nothing."""
        buf = self._buffers.get(key)
        dtype = dtype or self.dtype
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = backend.xp().empty(shape, dtype=dtype)
            self._buffers[key] = buf
        return buf

    # ------------------------------------------------------------------------------ config
    def get_config(self) -> dict:
        """JSON-serialisable constructor arguments; ``from_config`` rebuilds the layer."""
        config: dict[str, Any] = {"name": self.name, "trainable": self.trainable, "dtype": self.dtype}
        if self.input_spec_shape is not None and getattr(self, "_declared_input", False):
            config["batch_input_shape"] = list(self.input_spec_shape)
        return config

    @classmethod
    def from_config(cls, config: dict) -> "Layer":
        return cls(**config)

    @property
    def input_shape(self) -> tuple:
        if self.input_spec_shape is None:
            raise AttributeError(f"Layer {self.name!r} has no defined input shape yet")
        return self.input_spec_shape

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"
