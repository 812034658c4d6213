"""The ``Layer`` base class and ``Variable``, the handle to one weight (docs/architecture.md, "Layers").

A layer creates its weights in ``build`` with ``add_weight`` and computes in ``call``; gradients are
the framework's job. Each weight is a ``Variable`` whose ``value`` and ``grad`` are arrays; once the
layer is part of a built model they are *views* into the model's flat parameter and gradient buffers.

Writing a custom layer (Keras 3's way — no backward needed)::

    class Linear(Layer):
        def __init__(self, units=32, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="random_normal")
            self.b = self.add_weight(shape=(self.units,), initializer="zeros")

        def call(self, inputs):
            return inputs @ self.w + self.b

``call`` runs on plain arrays in inference and on tape tensors in training, so it must use
operators and ``distnn.ops``. A layer may instead define ``backward(grad) -> dL/dx`` (filling its
weights' ``grad`` in place); it is then one *fused* node on the tape and its ``call`` sees raw arrays
(the built-in Dense, Conv, pooling and normalization layers do this for speed). Such a ``backward``
may call ``self.weight_gradients_written()`` once its weight gradients are written and before it
computes dL/dx, so that distributed training starts summing them meanwhile.
"""
from __future__ import annotations

import contextlib
import inspect
import re
from typing import Any, Callable

import numpy as np

from distnn import backend, constraints, initializers, regularizers, weight_budget
from distnn.ops import core as tape_core
from distnn.ops import symbolic
from distnn.ops.operators import TensorOperators
from distnn.global_state import global_rng, unique_name


_AGGREGATIONS = ("none", "mean", "sum", "only_first_replica")  # Keras 3's


def _snake_case(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()  # Keras: Conv2D -> conv2d


def normalize_tuple(value: Any, n: int, arg_name: str) -> tuple[int, ...]:
    """``3`` -> ``(3, 3)``; checks that a tuple has ``n`` positive integers."""
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * n
    value = tuple(value)
    if len(value) != n or not all(isinstance(v, (int, np.integer)) and v > 0 for v in value):
        raise ValueError(f"{arg_name} must be a positive integer or a tuple of {n} positive integers. "
                         f"Received: {arg_name}={value}")
    return tuple(int(v) for v in value)


class Variable(TensorOperators):
    """One weight of a layer: ``value`` (the array), ``grad`` (its gradient, same shape) and metadata.

    Usable directly in expressions inside ``call`` (``x @ self.kernel + self.bias``): on the tape a
    trainable variable is a leaf whose gradient lands in ``grad``. ``grad`` is ``None`` for
    non-trainable state such as BatchNormalization's moving statistics.
    """

    _is_distnn_variable = True

    def __init__(self, name: str, value: Any, trainable: bool = True, regularizer: Any = None,
                 constraint: Any = None):
        self.name = name
        self.value = value
        self.trainable = trainable
        self.regularizer = regularizer
        self.constraint = constraint
        self.grad = backend.get_array_module(value).zeros_like(value) if trainable else None

    @property
    def path(self) -> str:
        return self.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def dtype(self) -> Any:
        return self.value.dtype

    @property
    def ndim(self) -> int:
        return self.value.ndim

    @property
    def size(self) -> int:
        return int(self.value.size)

    def numpy(self) -> np.ndarray:
        """A host copy of the current value."""
        return np.array(backend.to_numpy(self.value))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = backend.to_numpy(self.value)
        return array if dtype is None else array.astype(dtype)

    def assign(self, value: Any) -> None:
        """Overwrite the value in place (it stays a view of the model's flat buffer)."""
        value = backend.to_device(tape_core.value_of(value))
        if tuple(value.shape) != self.shape:
            raise ValueError(f"Cannot assign a value of shape {tuple(value.shape)} to variable "
                             f"{self.name!r} of shape {self.shape}")
        self.value[...] = value

    def assign_add(self, value: Any) -> None:
        self.value += backend.to_device(tape_core.value_of(value))

    def assign_sub(self, value: Any) -> None:
        self.value -= backend.to_device(tape_core.value_of(value))

    def __repr__(self) -> str:
        return f"<Variable {self.name} shape={self.shape} trainable={self.trainable}>"


def record_masks(outputs: Any, out_mask: Any) -> None:
    """Attach ``out_mask`` to the outputs for the next layers; a list with one mask per output (a
    recurrent layer's ``return_state``) gives each output its own. The value is kept with its mask, so
    a freed array's ``id`` reused by a new one cannot pass the mask on."""
    flat = symbolic.flatten(outputs)
    masks = out_mask if isinstance(out_mask, (list, tuple)) and len(out_mask) == len(flat) and len(flat) > 1 \
        else [out_mask] * len(flat)
    for out, mask in zip(flat, masks):
        if mask is not None:
            _context.masks[id(out)] = (out, mask)


class _CallContext:
    """What enclosing calls pass down implicitly: the ``training`` flag (Keras propagates it to the
    layers a layer calls) and the masks of values computed in this call, keyed by ``id``."""

    def __init__(self) -> None:
        self.depth = 0
        self.training: bool | None = None
        # id(value) -> (value, mask): holding the value keeps its id from being reused by a later
        # array while the outermost call runs, which would hand that array a stale mask.
        self.masks: dict[int, tuple[Any, Any]] = {}
        self.call_log: list | None = None  # layers in first-call order while a model builds


_context = _CallContext()


@contextlib.contextmanager
def logging_calls(log: list):
    """Append every layer called inside the block to ``log`` (a model's build pass: the call order
    gives the flat buffer its backward-completion layout)."""
    outer, _context.call_log = _context.call_log, log
    try:
        yield log
    finally:
        _context.call_log = outer


@contextlib.contextmanager
def _entered(training: bool | None):
    outer_training = _context.training
    if training is not None and (_context.depth == 0 or outer_training is None):
        _context.training = training
    _context.depth += 1
    try:
        yield _context.training
    finally:
        _context.depth -= 1
        _context.training = outer_training
        if _context.depth == 0:
            _context.masks.clear()


_signature_cache: dict[Any, bool] = {}


def _accepts(method: Any, argument: str) -> bool:
    """Whether ``method`` takes ``argument`` (Keras passes ``training``/``mask`` only then); cached."""
    key = (getattr(method, "__func__", method), argument)
    if key not in _signature_cache:
        try:
            parameters = inspect.signature(method).parameters
            _signature_cache[key] = argument in parameters  # named explicitly, as Keras 3 requires
        except (TypeError, ValueError):
            _signature_cache[key] = False
    return _signature_cache[key]


def _to_array(x: Any) -> Any:
    if isinstance(x, tape_core.Tensor) or getattr(x, "_is_distnn_variable", False):
        return x
    if isinstance(x, (np.ndarray, list, float, int, np.generic)) or type(x).__module__.startswith("cupy"):
        return backend.to_device(x)
    return x


def _fused_vjp(node: Any, grad: Any) -> tuple:
    """Backward of a layer with its own ``backward``: restore that call's state, then run it."""
    layer, state, tape = node.kwargs["layer"], node.kwargs["state"], node.tape
    if not node.grad_owned:  # fused backward passes may overwrite their incoming gradient
        grad = grad.copy()
    layer.__dict__.update(state)
    layer.propagate_input_grad = bool(node.needs and node.needs[0])
    layer.fused_output_activation = node.kwargs.get("fused_activation", False)
    variables = [v for v in layer._variables if v.grad is not None]
    layer._backward_tape = tape
    try:
        if any(id(v) in tape.touched for v in variables):
            # A shared layer's second backward: gather into scratch, then add (the first one overwrote).
            xp = backend.get_array_module(grad)
            real = [v.grad for v in variables]
            for v in variables:
                v.grad = xp.zeros_like(v.grad)
            try:
                dx = layer.backward(grad)
            finally:
                for v, target in zip(variables, real):
                    target += v.grad
                    v.grad = target
        else:
            dx = layer.backward(grad)
            tape.touched.update(id(v) for v in variables)
    finally:
        layer._backward_tape = None
    return (dx,)


# A fused backward writes dL/dx into the layer's own scratch (after copying a gradient it does not own).
_fused_vjp.exclusive_results = True


def record_layer_node(tape: Any, layer: "Layer", outputs: Any, inputs: tuple, vjp: Callable, parents: tuple) -> Any:
    """One tape node for a call of a layer with its own ``backward``: the call's state is kept for
    ``vjp`` (``_fused_vjp`` or a wrapper of it), which writes the layer's variable gradients itself."""
    return tape_core.record(tape, outputs, inputs, {"layer": layer, "state": dict(vars(layer))}, vjp, parents,
                            writes=tuple(layer._variables))


class Layer:
    """Base class of all layers (Keras API: ``build`` / ``call`` / ``get_config``; ``backward`` optional).

    Args:
        trainable: whether the layer's weights are updated by training.
        name: layer name; unique automatic names (``dense``, ``dense_1``, ...) when omitted.
        dtype: float dtype of the weights (default ``backend.floatx()``).
        activity_regularizer: a regularizer applied to the layer's output (its value is added with
            ``add_loss``).
        input_shape: shape of one sample (without the batch axis), for the first layer of a model.
        batch_input_shape: full input shape with the batch axis (its size is ignored).
        input_dim: for 2-D inputs, the number of features (``input_shape=(input_dim,)``).
    """

    def __init__(self, trainable: bool = True, name: str | None = None, dtype: Any = None,
                 activity_regularizer: Any = None, input_shape: tuple | None = None,
                 batch_input_shape: tuple | None = None, input_dim: int | None = None, **kwargs: Any):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments: {sorted(kwargs)}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string. Received: name={name!r}")
        self.name = name or unique_name(_snake_case(type(self).__name__))
        self.trainable = bool(trainable)
        self.dtype = np.dtype(dtype or backend.floatx()).name
        self.built = False
        self.supports_masking = False
        self.activity_regularizer = regularizers.get(activity_regularizer)
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
        self._buffers: dict[Any, Any] = {}
        self._losses: list[Any] = []
        self._inbound_nodes: list[Any] = []
        self._call_slot: int | None = None  # this call's index on the active tape (shared layers)
        # Cleared by the tape when nothing before this call needs dL/dx (a model's first layer),
        # which saves the largest GEMM of a typical first Dense/Conv backward.
        self.propagate_input_grad = True
        # The tape whose VJP of this layer is running (_fused_vjp): its hooks for reporting final
        # gradients and polling transfers (weight_gradients_written, polled_matmul).
        self._backward_tape: Any = None
        # Set on an output layer when the loss supplies dL/d(pre-activation) (softmax + cross-entropy).
        self.fused_output_activation = False

    # ----------------------------------------------------------------------------- weights
    def add_weight(self, shape: Any = None, initializer: Any = None, dtype: Any = None, trainable: bool = True,
                   autocast: bool = True, regularizer: Any = None, constraint: Any = None,
                   aggregation: str = "none", name: str | None = None) -> Variable:
        """Create a weight (Keras 3's ``add_weight``), initialised on the host and moved to the device.

        The Keras 2 order ``add_weight(name, shape, initializer)`` (the rest by keyword) is accepted too.
        ``aggregation``: trainable weights are always updated from the gradient of the global batch
        (any value); a non-trainable weight is updated by each rank on its own (``"none"``), so the
        values that would combine ranks are refused. ``autocast`` has no effect: distnn computes in
        the weights' dtype (no mixed precision), as Keras does without a mixed-precision policy.
        """
        if aggregation not in _AGGREGATIONS or (not trainable and aggregation != "none"):
            allowed = _AGGREGATIONS if trainable else ("none",)
            raise ValueError(f"{self.name}: add_weight(aggregation=...) must be one of {allowed} for a "
                             f"{'' if trainable else 'non-'}trainable weight (distnn does not combine "
                             f"non-trainable weights across ranks). Received: aggregation={aggregation!r}")
        if isinstance(shape, str):  # Keras 2 / distnn 0.1: (name, shape, initializer, ...)
            if not isinstance(trainable, bool):
                raise TypeError(f"{self.name}: add_weight(name, shape, initializer, ...) takes the remaining "
                                f"arguments by keyword. Received a 4th positional argument {trainable!r}")
            name, shape, initializer, dtype = shape, initializer, dtype, None
        shape = () if shape is None else tuple(int(d) for d in shape)
        dtype = np.dtype(dtype or self.dtype).name
        default = "glorot_uniform" if np.dtype(dtype).kind == "f" else "zeros"
        init = initializers.get(initializer if initializer is not None else default)
        name = name or f"variable_{len(self._variables)}"
        weight_budget.charge(shape, f"{self.name}/{name}")  # loading a file: refuse before allocating
        value = backend.to_device(init(shape, dtype, global_rng()))
        variable = Variable(f"{self.name}/{name}", value, trainable=trainable,
                            regularizer=regularizers.get(regularizer), constraint=constraints.get(constraint))
        self._variables.append(variable)
        return variable

    def _tracked_layers(self) -> list["Layer"]:
        """Layers held in attributes (directly or in lists, tuples and dicts), in assignment order."""
        found: list[Layer] = []
        seen = {id(self)}

        def visit(value: Any) -> None:
            if isinstance(value, Layer):
                if id(value) not in seen:
                    seen.add(id(value))
                    found.append(value)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    visit(item)
            elif isinstance(value, dict):
                for item in value.values():
                    visit(item)

        for key, value in vars(self).items():
            if not key.startswith("_") or key in ("_layers", "_tracked"):
                visit(value)
        return found

    def _flatten_layers(self, include_self: bool = True) -> list["Layer"]:
        """This layer and every layer nested in it, depth first, each once."""
        result, seen = [], set()

        def visit(layer: Layer) -> None:
            if id(layer) in seen:
                return
            seen.add(id(layer))
            result.append(layer)
            for sub in layer._tracked_layers():
                visit(sub)

        visit(self)
        return result if include_self else result[1:]

    @property
    def variables(self) -> list[Variable]:
        return [v for layer in self._flatten_layers() for v in layer._variables]

    @property
    def weights(self) -> list[Variable]:
        return self.trainable_weights + self.non_trainable_weights

    @property
    def trainable_weights(self) -> list[Variable]:
        if not self.trainable:
            return []
        own = [v for v in self._variables if v.trainable]
        return own + [v for layer in self._tracked_layers() for v in layer.trainable_weights]

    @property
    def non_trainable_weights(self) -> list[Variable]:
        if not self.trainable:
            return self.variables
        own = [v for v in self._variables if not v.trainable]
        return own + [v for layer in self._tracked_layers() for v in layer.non_trainable_weights]

    @property
    def trainable_variables(self) -> list[Variable]:
        return self.trainable_weights

    @property
    def non_trainable_variables(self) -> list[Variable]:
        return self.non_trainable_weights

    def get_weights(self) -> list[np.ndarray]:
        """Host copies of the weights, in creation order (as Keras)."""
        return [v.numpy() for v in self.variables]

    def set_weights(self, weights: list[Any]) -> None:
        variables = self.variables
        if len(weights) != len(variables):
            raise ValueError(f"Layer {self.name!r} expects {len(variables)} weight arrays. "
                             f"Received: {len(weights)}")
        for variable, value in zip(variables, weights):
            variable.assign(value)

    def count_params(self) -> int:
        if not self.built:
            raise ValueError(f"Layer {self.name!r} is not built yet: its input shape is unknown, so it "
                             "has no weights to count. Call build() or pass input_shape first")
        return sum(v.size for v in self.variables)

    def regularization_penalty(self) -> float:
        return sum(v.regularizer.penalty(v.value) for v in self.trainable_weights if v.regularizer)

    # ------------------------------------------------------------------------------ losses
    def add_loss(self, loss: Any) -> None:
        """Add a scalar to the training loss (activity regularisation); ``losses`` lists this call's."""
        self._losses.append(loss)

    @property
    def losses(self) -> list[Any]:
        """The scalars added with ``add_loss`` during the last call, this layer's and its sublayers'."""
        return [loss for layer in self._flatten_layers() for loss in layer._losses]

    def _clear_losses(self) -> None:
        for layer in self._flatten_layers():
            layer._losses = []

    # ------------------------------------------------------------------------- computation
    def build(self, input_shape: Any) -> None:
        """Create weights for inputs of ``input_shape`` (batch axis first, ``None``)."""
        self.built = True

    def call(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement call()")

    def backward(self, grad: Any) -> Any:
        """Optional: fill parameter gradients in place from ``grad`` = dL/dy and return dL/dx."""
        raise NotImplementedError(f"{type(self).__name__} has no fused backward")

    def weight_gradients_written(self) -> None:
        """For a ``backward``: call it once all of this call's weight gradients are written and before
        computing dL/dx. In distributed training their gradient buckets then start reducing over the
        ranks while dL/dx is computed (docs/architecture.md, "Gradient buckets and overlap");
        otherwise it does nothing."""
        tape = self._backward_tape
        if tape is not None and tape.report_written is not None:
            tape.report_written()

    def compute_output_shape(self, input_shape: Any) -> Any:
        return tuple(input_shape)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        """The mask of the output (Keras): passed through when the layer supports masking."""
        return mask if self.supports_masking else None

    def empty_shard_forward(self) -> None:
        """Called instead of ``call`` on a rank whose shard of a training step is empty. A layer that
        communicates in ``call`` (synchronized BatchNormalization) joins those collectives here."""

    def empty_shard_backward(self) -> None:
        """Called instead of ``backward`` on a rank whose shard of a training step is empty."""

    @property
    def has_fused_backward(self) -> bool:
        return type(self).backward is not Layer.backward

    def _defines_output_shape(self) -> bool:
        return type(self).compute_output_shape is not Layer.compute_output_shape or self.has_fused_backward

    def build_for(self, input_shape: tuple) -> tuple:
        """Build the layer for ``input_shape`` if needed and return its output shape."""
        input_shape = (None, *tuple(input_shape)[1:])
        if self.input_spec_shape is not None and self.built:
            self._check_input_shape(input_shape)
        self._build_once(input_shape)
        return tuple(self.compute_output_shape(input_shape))

    def _build_once(self, input_shape: Any) -> None:
        if self.built:
            return
        if symbolic.is_shape(input_shape):
            self.input_spec_shape = (None, *tuple(input_shape)[1:])
        self.build(input_shape)
        self.built = True

    def _check_built_shape(self, shapes: Any) -> None:
        """A built layer's input must keep the shape it declared, and a layer with weights the size of
        the last axis its weights were made for (a variable length elsewhere is fine, as in Keras)."""
        if self.input_spec_shape is None or not symbolic.is_shape(shapes):
            return
        if self._declared_input:
            self._check_input_shape(tuple(shapes))
        elif self._variables and len(shapes) == len(self.input_spec_shape) and \
                None not in (shapes[-1], self.input_spec_shape[-1]) and shapes[-1] != self.input_spec_shape[-1]:
            raise ValueError(f"Input to layer {self.name!r} is incompatible: expected shape "
                             f"{self.input_spec_shape}, received {tuple(shapes)}")

    def _check_input_shape(self, input_shape: tuple) -> None:
        expected = self.input_spec_shape
        if len(expected) != len(input_shape) or any(
                e is not None and r is not None and e != r for e, r in zip(expected[1:], input_shape[1:])):
            raise ValueError(f"Input to layer {self.name!r} is incompatible: expected shape "
                             f"{expected}, received {input_shape}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the layer: eagerly on arrays (recording on the active tape), or symbolically on
        ``Input`` tensors, which adds a node to the functional graph."""
        if not args:
            raise TypeError(f"{self.name}: call the layer with its inputs as the first argument")
        inputs = args[0]
        if symbolic.is_symbolic((args, kwargs)):
            return self._symbolic_call(args, kwargs)
        inputs = symbolic.map_structure(_to_array, inputs)
        if _context.call_log is not None:
            _context.call_log.append(self)
        training = kwargs.pop("training", None)
        with _entered(training) as training:
            training = bool(training)
            shapes = symbolic.map_structure(lambda t: (None, *tuple(np.shape(tape_core.value_of(t)))[1:]), inputs)
            if not self.built:
                self._build_once(shapes)
            else:
                self._check_built_shape(shapes)
            # Found whether or not ``call`` takes it: a layer that only passes masks through
            # (``supports_masking`` or its own ``compute_mask``) still needs its input's mask.
            if "mask" in kwargs:  # an explicit host mask moves to the device, as the inputs do
                kwargs["mask"] = symbolic.map_structure(_to_array, kwargs["mask"])
            input_mask = kwargs["mask"] if "mask" in kwargs else self._input_mask(inputs)
            if "mask" not in kwargs and _accepts(self.call, "mask"):
                kwargs["mask"] = input_mask
            if _accepts(self.call, "training"):
                kwargs["training"] = training
            self._losses = []
            tape = tape_core.active_tape()
            self._call_slot = tape.next_call_slot(self) if tape is not None else None
            if tape is not None and self.has_fused_backward and len(args) == 1:
                outputs = self._fused_call(tape, inputs, kwargs)
            else:
                outputs = self.call(inputs, *args[1:], **kwargs)
            if self.activity_regularizer is not None:
                self.add_loss(self.activity_regularizer(outputs) / max(1, np.shape(tape_core.value_of(outputs))[0]))
            self._record_mask(inputs, outputs, input_mask)
        return outputs

    def _fused_call(self, tape: Any, inputs: Any, kwargs: dict) -> Any:
        """One tape node for the whole layer: ``call`` on raw arrays, ``backward`` as its VJP."""
        x = inputs
        parents = ((0, x),) if isinstance(x, tape_core.Tensor) and x.tape is tape else ()
        raw = tape_core.value_of(x)
        outputs = self.call(raw, **kwargs)
        if not parents and not any(v.grad is not None for v in self._variables):
            return outputs
        return record_layer_node(tape, self, outputs, (raw,), _fused_vjp, parents)

    def _input_mask(self, inputs: Any) -> Any:
        if not _context.masks:  # the common case costs one test
            return None
        masks = [_context.masks.get(id(t), (None, None))[1] for t in symbolic.flatten(inputs)]
        if all(m is None for m in masks):
            return None
        return masks[0] if len(masks) == 1 else masks

    def _record_mask(self, inputs: Any, outputs: Any, mask: Any) -> None:
        if mask is None and not self.supports_masking and type(self).compute_mask is Layer.compute_mask:
            return
        record_masks(outputs, self.compute_mask(inputs, mask))

    def _symbolic_call(self, args: tuple, kwargs: dict) -> Any:
        inputs = args[0]
        shapes = symbolic.map_structure(lambda t: t.shape if isinstance(t, symbolic.KerasTensor) else np.shape(t),
                                        inputs)
        if not self.built:
            self._build_once(shapes)
        else:
            self._check_built_shape(shapes)
        if self._defines_output_shape() and len(args) == 1 and not kwargs:
            specs = symbolic.specs_from_shapes(self.compute_output_shape(shapes), self.dtype)
        else:
            specs = symbolic.output_spec(self, args, kwargs)
        outputs = symbolic.symbolic_call(self, args, kwargs, specs=specs, name=self.name)
        self._inbound_nodes.append(symbolic.flatten(outputs)[0].node)
        return outputs

    # ------------------------------------------------------------------- graph connectivity
    def _node_attribute(self, attribute: str, what: str) -> Any:
        if not self._inbound_nodes:
            raise AttributeError(f"Layer {self.name!r} has no defined {what} yet: it was never called on a "
                                 "symbolic input")
        if len(self._inbound_nodes) > 1:
            raise AttributeError(f"Layer {self.name!r} has been called {len(self._inbound_nodes)} times, so its "
                                 f"{what} is ambiguous")
        node = self._inbound_nodes[0]
        tensors = node.input_tensors if attribute == "input" else node.output_tensors
        return tensors[0] if len(tensors) == 1 else tensors

    @property
    def input(self) -> Any:
        return self._node_attribute("input", "input")

    @property
    def output(self) -> Any:
        return self._node_attribute("output", "output")

    @property
    def output_shape(self) -> Any:
        output = self._node_attribute("output", "output shape")
        return [t.shape for t in output] if isinstance(output, list) else output.shape

    @property
    def input_shape(self) -> Any:
        if self.input_spec_shape is not None:
            return self.input_spec_shape
        inputs = self._node_attribute("input", "input shape")
        return [t.shape for t in inputs] if isinstance(inputs, list) else inputs.shape

    def _buffer(self, key: str, shape: tuple, dtype: Any = None) -> Any:
        """A scratch array reused across training steps (one per call slot, so a layer shared within a
        step keeps each call's arrays apart); a fresh array outside a recorded training step."""
        dtype = dtype or self.dtype
        if self._call_slot is None:
            return backend.xp().empty(shape, dtype=dtype)
        key = (key, self._call_slot)
        buf = self._buffers.get(key)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = backend.xp().empty(shape, dtype=dtype)
            self._buffers[key] = buf
        return buf

    # ------------------------------------------------------------------------------ config
    def get_config(self) -> dict:
        """JSON-serialisable constructor arguments; ``from_config`` rebuilds the layer."""
        config: dict[str, Any] = {"name": self.name, "trainable": self.trainable, "dtype": self.dtype}
        if self.activity_regularizer is not None:
            config["activity_regularizer"] = regularizers.serialize(self.activity_regularizer)
        if self.input_spec_shape is not None and getattr(self, "_declared_input", False):
            config["batch_input_shape"] = list(self.input_spec_shape)
        return config

    @classmethod
    def from_config(cls, config: dict) -> "Layer":
        return cls(**config)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name}, built={self.built}>"
