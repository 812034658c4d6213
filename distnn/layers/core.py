"""Core layers: ``Input``, ``Dense``, ``Activation``, ``Dropout``, ``Flatten``, ``Reshape``, ``Identity``,
``Lambda``."""
from __future__ import annotations

import inspect
import json
import math
from typing import Any

import numpy as np

from distnn import activations, backend, ops, random, serialization
from distnn.ops import symbolic
from distnn.layers.base import Layer
from distnn.layers.kernel_layer import (affine_backward, affine_forward, init_kernel_options, kernel_options_config,
                                        polled_matmul)
from distnn.layers.conv import normalize_data_format


class InputLayer(Layer):
    """The source of a functional model's input: holds the shape of one sample and its dtype.

    Args:
        shape: shape of one sample, without the batch axis.
        batch_size: fixed batch size, if any (distnn batches are sized by ``fit``; kept in the shape).
        dtype: dtype of the input (``"int32"`` for token ids); default ``backend.floatx()``.
        batch_shape: full shape with the batch axis (instead of ``shape``).
        sparse: only ``False``/``None`` (dense inputs) is supported.
    """

    def __init__(self, shape: tuple | None = None, batch_size: int | None = None, dtype: Any = None,
                 sparse: bool | None = None, batch_shape: tuple | None = None, name: str | None = None,
                 batch_input_shape: tuple | None = None, **kwargs: Any):
        batch_shape = batch_shape if batch_shape is not None else batch_input_shape
        if shape is None and batch_shape is None:
            raise ValueError("Input needs shape=(...) of one sample. Received: shape=None")
        if sparse:
            raise ValueError("distnn has dense tensors only. Received: sparse=True")
        kwargs.pop("input_shape", None)
        shape = tuple(batch_shape)[1:] if batch_shape is not None else \
            ((shape,) if isinstance(shape, int) else tuple(shape))
        super().__init__(name=name or None, dtype=dtype, input_shape=shape, **kwargs)
        self.batch_size = batch_size if batch_shape is None else tuple(batch_shape)[0]
        self.built = True
        self.output_tensor = symbolic.symbolic_call(
            self, (), {}, specs=symbolic.Spec((self.batch_size, *shape), self.dtype), name=self.name)
        self._inbound_nodes.append(self.output_tensor.node)

    def call(self, x, training=False):
        return x

    def get_config(self):
        return {"batch_shape": [self.batch_size, *self.input_spec_shape[1:]], "dtype": self.dtype,
                "sparse": False, "name": self.name}


def Input(shape: tuple | None = None, batch_size: int | None = None, dtype: Any = None, sparse: bool | None = None,
          batch_shape: tuple | None = None, name: str | None = None, tensor: Any = None) -> Any:
    """Keras' ``Input``: a symbolic tensor to build a functional model from (or to start a ``Sequential``)."""
    if tensor is not None:
        raise ValueError("Input(tensor=...) is not supported: distnn inputs are always fed by the model's caller")
    return InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, sparse=sparse, batch_shape=batch_shape,
                      name=name).output_tensor


class Dense(Layer):
    """Densely connected layer: ``activation(x @ kernel + bias)``.

    Args:
        units: positive integer, dimension of the output space.
        activation: activation name or callable (default: linear).
        use_bias: whether to add a bias vector.
        kernel_initializer, bias_initializer: initializers (names or objects).
        kernel_regularizer, bias_regularizer: regularizers (names or objects).

    Input shape:
        ``(batch_size, ..., input_dim)``; the kernel applies to the last axis.

    Output shape:
        ``(batch_size, ..., units)``.
    """

    def __init__(self, units: int, activation: Any = None, use_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None, kernel_constraint: Any = None,
                 bias_constraint: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"Received an invalid value for `units`, expected a positive integer. "
                             f"Received: units={units}")
        self.units = int(units)
        self.supports_masking = True
        init_kernel_options(self, activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
                            bias_regularizer, kernel_constraint, bias_constraint)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"{self.name}: the last axis of the input must be known. "
                             f"Received: input_shape={input_shape}")
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer, constraint=self.kernel_constraint,
                                      name="kernel")
        self.bias = (self.add_weight(shape=(self.units,), initializer=self.bias_initializer,
                                     regularizer=self.bias_regularizer, constraint=self.bias_constraint, name="bias")
                     if self.use_bias else None)
        self.built = True

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def call(self, x, training=False):
        self._x = x.reshape(-1, x.shape[-1])
        y = affine_forward(self, self._x, self.kernel.value, training)
        return y.reshape(*x.shape[:-1], self.units)

    def backward(self, grad):
        g = affine_backward(self, grad.reshape(-1, self.units), self._x, self.kernel.grad)
        self.weight_gradients_written()
        if not self.propagate_input_grad:
            return None
        dx = polled_matmul(self, g, self.kernel.value.T, self._buffer("dx", self._x.shape), axis=1)
        return dx.reshape(*grad.shape[:-1], self._x.shape[-1])

    def get_config(self):
        return {**super().get_config(), "units": self.units, **kernel_options_config(self)}


class Activation(Layer):
    """Applies an activation function to its input.

    Args:
        activation: activation name or callable.

    Input shape:
        Arbitrary.

    Output shape:
        Same as the input.
    """

    def __init__(self, activation: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)
        self.supports_masking = True

    def call(self, x, training=False):
        self._x = x
        self._y = self.activation(x)
        return self._y

    def backward(self, grad):
        if self.fused_output_activation:
            return grad
        return self.activation.backward(grad.copy(), self._x, self._y)

    def get_config(self):
        return {**super().get_config(), "activation": activations.serialize(self.activation)}


class Dropout(Layer):
    """Inverted dropout: in training, zero a fraction ``rate`` of inputs and scale the rest by
    ``1 / (1 - rate)``; in inference, the identity.

    Args:
        rate: float in [0, 1), the fraction of inputs to drop.
        noise_shape: shape of the binary mask, broadcast over the input (``None`` entries take the
            input's size), as in Keras.
        seed: seed of this layer's ``SeedGenerator``, for reproducible masks (``distnn.random``).
    """

    def __init__(self, rate: float, noise_shape: tuple | None = None, seed: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"Invalid value for `rate`, expected a float in [0, 1). Received: rate={rate}")
        self.rate = float(rate)
        self.supports_masking = True
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)
        self.seed = seed
        self.seed_generator = random.SeedGenerator(seed, name=f"{self.name}/seed_generator")

    def call(self, x, training=False):
        self._mask = None
        if not training or self.rate == 0:
            return x
        # Per global sample inside a training step, so N ranks drop what one process drops.
        self._mask = random.dropout_mask(x, self.rate, self.noise_shape, self.seed_generator)
        return x * self._mask

    def backward(self, grad):
        return grad if self._mask is None else grad * self._mask

    def get_config(self):
        return {**super().get_config(), "rate": self.rate,
                "noise_shape": None if self.noise_shape is None else list(self.noise_shape), "seed": self.seed}


class Flatten(Layer):
    """Flattens every axis but the batch axis: ``(batch, d1, d2, ...)`` -> ``(batch, d1*d2*...)``.

    Args:
        data_format: ``"channels_last"`` (default) or ``"channels_first"``. With channels first,
            ``(batch, channels, ...)`` is first moved to ``(batch, ..., channels)``, as Keras does, so
            that a channels-first model flattens its features in the same order as its channels-last
            twin (and weights can move between them).
    """

    def __init__(self, data_format: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.data_format = normalize_data_format(data_format)

    def compute_output_shape(self, input_shape):
        dims = input_shape[1:]
        return (input_shape[0], None if None in dims else math.prod(dims))

    def _moves_channels(self, ndim: int) -> bool:
        return self.data_format == "channels_first" and ndim > 2

    def call(self, x, training=False):
        if self._moves_channels(x.ndim):
            x = backend.get_array_module(x).moveaxis(x, 1, -1)
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad):
        grad = grad.reshape(self._shape)
        return backend.get_array_module(grad).moveaxis(grad, -1, 1) if self._moves_channels(grad.ndim) else grad

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}


class Reshape(Layer):
    """Reshapes each sample to ``target_shape`` (one entry may be -1).

    Input shape:
        ``(batch_size, ...)`` with a known sample size.

    Output shape:
        ``(batch_size, *target_shape)``.
    """

    def __init__(self, target_shape: tuple, **kwargs: Any):
        super().__init__(**kwargs)
        target_shape = tuple(int(d) for d in target_shape)
        if sum(d == -1 for d in target_shape) > 1 or any(d == 0 or d < -1 for d in target_shape):
            raise ValueError(f"target_shape must hold positive sizes and at most one -1. "
                             f"Received: target_shape={target_shape}")
        self.target_shape = target_shape

    def compute_output_shape(self, input_shape):
        size = math.prod(input_shape[1:])
        known = math.prod(d for d in self.target_shape if d != -1)
        if -1 in self.target_shape:
            if size % known:
                raise ValueError(f"{self.name}: cannot reshape samples of shape {input_shape[1:]} to "
                                 f"{self.target_shape}")
            shape = tuple(size // known if d == -1 else d for d in self.target_shape)
        else:
            shape = self.target_shape
        if math.prod(shape) != size:
            raise ValueError(f"{self.name}: total size of the new shape {self.target_shape} must equal "
                             f"the sample size {size} (input shape {input_shape[1:]})")
        return (input_shape[0], *shape)

    def call(self, x, training=False):
        self._shape = x.shape
        return x.reshape(x.shape[0], *self.compute_output_shape((None, *x.shape[1:]))[1:])

    def backward(self, grad):
        return grad.reshape(self._shape)

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}


class Identity(Layer):
    """Returns its input unchanged (any structure), passing its mask through."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.built = True

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


class Lambda(Layer):
    """Wraps a function of tensors as a layer: ``Lambda(lambda x: ops.square(x))``.

    The function is differentiated through the ``distnn.ops`` it calls (and Python operators on its
    tensors), so it needs no gradient of its own.

    Args:
        function: called as ``function(inputs, **arguments)``; given ``mask=`` and ``training=`` too
            when its signature names them.
        output_shape: the output's shape without the batch axis (or a structure of such shapes), or a
            function of the full input shape. ``None``: found by running the function on small arrays.
        mask: the output mask: a function ``mask(inputs, input_mask)``, or a fixed mask (array).
            ``None``: the layer drops masks, as Keras' ``Lambda`` does.
        arguments: keyword arguments for ``function`` (JSON values, so that the layer can be saved).

    Saving stores functions by name, never as code: a function of ``distnn.ops``, one registered with
    ``@distnn.layers.register_serializable()``, or a named module-level function that the loader
    passes in ``custom_objects``. Saving a Lambda of an anonymous or nested function is an error.
    """

    def __init__(self, function: Any, output_shape: Any = None, mask: Any = None, arguments: dict | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        if not callable(function):
            raise TypeError(f"Lambda's function must be callable. Received: function={function!r}")
        if arguments is not None and not isinstance(arguments, dict):
            raise TypeError(f"arguments must be a dict of keyword arguments. Received: arguments={arguments!r}")
        if output_shape is not None and not callable(output_shape) and not symbolic.is_shape(output_shape) and \
                not isinstance(output_shape, (list, tuple, dict)):
            raise TypeError(f"output_shape must be a shape, a structure of shapes or a function. "
                            f"Received: output_shape={output_shape!r}")
        self.function = function
        self.arguments = dict(arguments or {})
        self.mask = mask if mask is None or callable(mask) else backend.to_device(np.asarray(mask))
        self.supports_masking = mask is not None
        self._output_shape = output_shape
        self._fn_expects_mask = _takes_argument(function, "mask")
        self._fn_expects_training = _takes_argument(function, "training")

    def call(self, inputs, mask=None, training=None):
        kwargs = dict(self.arguments)
        if self._fn_expects_mask:
            kwargs["mask"] = mask
        if self._fn_expects_training:
            kwargs["training"] = training
        return self.function(inputs, **kwargs)

    def _defines_output_shape(self) -> bool:
        return self._output_shape is not None

    def compute_output_shape(self, input_shape):
        if self._output_shape is None:  # trace the function on small arrays, as a symbolic call would
            inputs = symbolic.map_structure(lambda s: symbolic.KerasTensor(s, self.dtype), input_shape) \
                if not symbolic.is_shape(input_shape) else symbolic.KerasTensor(input_shape, self.dtype)
            spec = symbolic.output_spec(self.call, (inputs,), {})
            return symbolic.map_structure(lambda s: s.shape, spec)
        if callable(self._output_shape):
            return self._output_shape(input_shape)
        batch = symbolic.flatten(input_shape)[0] if not symbolic.is_shape(input_shape) else input_shape[0]
        return _map_shapes(lambda shape: (batch, *shape), self._output_shape)

    def compute_mask(self, inputs, mask=None):
        return self.mask(inputs, mask) if callable(self.mask) else self.mask

    def get_config(self):
        config = {**super().get_config(), "function": _function_config(self.function, self, "function")}
        if self._output_shape is not None:
            config["output_shape"] = _function_config(self._output_shape, self, "output_shape") \
                if callable(self._output_shape) else _shape_config(self._output_shape)
        if self.mask is not None:
            config["mask"] = _function_config(self.mask, self, "mask") if callable(self.mask) else \
                backend.to_numpy(self.mask).tolist()
        try:
            json.dumps(self.arguments)
        except TypeError as exc:
            raise ValueError(f"Cannot serialize Lambda layer {self.name!r}: its arguments must be JSON values "
                             f"(numbers, strings, lists, dicts). Received: arguments={self.arguments!r}") from exc
        config["arguments"] = self.arguments
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None) -> "Lambda":
        config = dict(config)
        name = config.get("name", "lambda")
        config["function"] = _function_from_config(config["function"], custom_objects, name)
        if isinstance(config.get("output_shape"), dict) and config["output_shape"].get("class_name") == "function":
            config["output_shape"] = _function_from_config(config["output_shape"], custom_objects, name)
        if isinstance(config.get("mask"), dict):
            config["mask"] = _function_from_config(config["mask"], custom_objects, name)
        return cls(**config)


def _takes_argument(function: Any, argument: str) -> bool:
    try:
        return argument in inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def _map_shapes(fn: Any, shapes: Any) -> Any:
    if symbolic.is_shape(shapes):
        return fn(tuple(shapes))
    if isinstance(shapes, dict):
        return {k: _map_shapes(fn, v) for k, v in shapes.items()}
    return type(shapes)(_map_shapes(fn, s) for s in shapes)


def _shape_config(shapes: Any) -> Any:
    return _map_shapes(list, shapes)


def _function_config(function: Any, layer: Layer, argument: str) -> dict:
    """A function saved by name only (never as code): a ``distnn.ops`` op, a registered function or a
    named module-level function."""
    name = getattr(function, "__name__", None)
    registered = serialization.get_registered_name(function)
    if serialization.get_registered_object(registered) is function:
        return {"class_name": "function", "config": registered}
    if name and getattr(ops, name, None) is function:
        return {"class_name": "function", "module": "distnn.ops", "config": name}
    qualname = getattr(function, "__qualname__", "")
    if not inspect.isfunction(function) or name == "<lambda>" or "<locals>" in qualname:
        raise ValueError(f"Cannot save Lambda layer {layer.name!r}: its {argument} {qualname or function!r} is "
                         "anonymous (a lambda), nested or not a plain function, and distnn never saves code. "
                         "Use a module-level function decorated with @distnn.layers.register_serializable() "
                         "(or pass it in custom_objects when loading)")
    return {"class_name": "function", "config": name}


def _function_from_config(entry: Any, custom_objects: dict | None, layer_name: str) -> Any:
    """The function a ``_function_config`` entry names; looked up, never executed from the file."""
    if not isinstance(entry, dict) or entry.get("class_name") != "function" or not isinstance(entry.get("config"),
                                                                                                  str):
        raise ValueError(f"Lambda layer {layer_name!r}: a saved function must be "
                         f"{{'class_name': 'function', 'config': name}}. Received: {entry!r:.200}")
    name = entry["config"]
    if entry.get("module") == "distnn.ops":
        function = getattr(ops, name, None) if not name.startswith("_") else None
        if callable(function):
            return function
        raise ValueError(f"Lambda layer {layer_name!r}: distnn.ops has no function {name!r}")
    function = serialization.get_registered_object(name, custom_objects)  # scopes, registry, custom_objects
    if function is None:
        raise ValueError(f"Lambda layer {layer_name!r} needs the function {name!r}: pass it in custom_objects "
                         "or decorate it with @distnn.layers.register_serializable()")
    return function
