"""Activation layers with Keras 3 names and arguments: ``ReLU``, ``LeakyReLU``, ``PReLU``, ``ELU``,
``Softmax``.

They compute with ``distnn.ops``, so the tape differentiates them (docs/architecture.md, "Layers");
all pass masks on, as Keras' do.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn import backend, constraints, initializers, regularizers
from distnn.layers.base import Layer
from distnn.ops import nn as ops_nn
from distnn.ops import numpy as ops
from distnn.ops import reduction
from distnn.ops.core import defop, value_of

# Keras' _large_negative_number for float32 and wider: what a masked Softmax adds to masked logits.
_LARGE_NEGATIVE = -1e9
_FLOAT16_LARGE_NEGATIVE = -3e4


def _non_negative(layer: str, argument: str, value: Any, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value >= 0:
        raise ValueError(f"The {argument} value of a {layer} layer cannot be None or negative. "
                         f"Received: {argument}={value!r}")
    return float(value)


@defop
def apply_activation(x, activation):
    """``activation(x)`` of a ``distnn.activations`` function, as one tape op (its own backward)."""
    return activation(x)


@apply_activation.defvjp
def _(node, g):
    x, activation = node.inputs
    return activation.backward(g.copy(), x, node.value), None


class ReLU(Layer):
    """Rectified linear unit, as ``keras.layers.ReLU``::

        f(x) = max_value                     if x >= max_value
        f(x) = x                             if threshold < x < max_value
        f(x) = negative_slope * (x - threshold)  otherwise

    Args:
        max_value: float >= 0, the largest output (``None``: unbounded).
        negative_slope: float >= 0, the slope below the threshold.
        threshold: float >= 0, the input below which values are damped.
    """

    def __init__(self, max_value: float | None = None, negative_slope: float = 0.0, threshold: float = 0.0,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.max_value = _non_negative("ReLU", "max_value", max_value, allow_none=True)
        self.negative_slope = _non_negative("ReLU", "negative_slope", negative_slope)
        self.threshold = _non_negative("ReLU", "threshold", threshold)
        self.supports_masking = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x):
        raw = value_of(x)
        above = backend.get_array_module(raw).greater(raw, self.threshold).astype(raw.dtype)
        y = x * above  # x where x > threshold, else 0 (the comparison has no gradient)
        if self.max_value is not None:
            y = ops.minimum(y, raw.dtype.type(self.max_value))
        if self.negative_slope:
            y = y + ops.minimum(x - raw.dtype.type(self.threshold), raw.dtype.type(0)) * self.negative_slope
        return y

    def get_config(self):
        return {**super().get_config(), "max_value": self.max_value, "negative_slope": self.negative_slope,
                "threshold": self.threshold}


class LeakyReLU(Layer):
    """``f(x) = x`` for ``x >= 0``, ``negative_slope * x`` otherwise, as ``keras.layers.LeakyReLU``.

    Args:
        negative_slope: float >= 0 (default 0.3, Keras' default); ``alpha`` is its legacy name.
    """

    def __init__(self, negative_slope: float = 0.3, **kwargs: Any):
        if "alpha" in kwargs:  # Keras 2's name, still accepted by Keras 3
            negative_slope = kwargs.pop("alpha")
        super().__init__(**kwargs)
        self.negative_slope = _non_negative("Leaky ReLU", "negative_slope", negative_slope)
        self.supports_masking = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x):
        return ops_nn.leaky_relu(x, negative_slope=self.negative_slope)

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


class PReLU(Layer):
    """Parametric ReLU, as ``keras.layers.PReLU``: ``f(x) = x`` for ``x >= 0``, ``alpha * x`` otherwise,
    with a learned ``alpha`` of the input's sample shape (size 1 along ``shared_axes``).

    Args:
        alpha_initializer, alpha_regularizer, alpha_constraint: of the ``alpha`` weight (default zeros).
        shared_axes: axes (1 = the first after the batch axis) along which ``alpha`` is shared, e.g.
            ``[1, 2]`` for one slope per channel of ``(batch, height, width, channels)`` images.
    """

    def __init__(self, alpha_initializer: Any = "Zeros", alpha_regularizer: Any = None, alpha_constraint: Any = None,
                 shared_axes: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.alpha_initializer = initializers.get(alpha_initializer)
        self.alpha_regularizer = regularizers.get(alpha_regularizer)
        self.alpha_constraint = constraints.get(alpha_constraint)
        if shared_axes is None:
            self.shared_axes = None
        else:
            axes = [shared_axes] if isinstance(shared_axes, (int, np.integer)) else list(shared_axes)
            if not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) and a >= 1 for a in axes):
                raise ValueError(f"shared_axes must be integers >= 1 (axis 0 is the batch axis). "
                                 f"Received: shared_axes={shared_axes!r}")
            self.shared_axes = [int(a) for a in axes]

    def build(self, input_shape):
        shape = list(input_shape[1:])
        for axis in self.shared_axes or []:
            if axis > len(shape):
                raise ValueError(f"{self.name}: shared_axes={self.shared_axes} names an axis beyond the input's "
                                 f"rank {len(input_shape)}. Received: input_shape={tuple(input_shape)}")
            shape[axis - 1] = 1
        if None in shape:
            raise ValueError(f"{self.name}: every non-shared axis must have a known size. "
                             f"Received: input_shape={tuple(input_shape)}")
        self.alpha = self.add_weight(shape=tuple(shape), initializer=self.alpha_initializer,
                                     regularizer=self.alpha_regularizer, constraint=self.alpha_constraint,
                                     name="alpha")
        self.built = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x):
        # Keras' formula: relu(x) - alpha * relu(-x).
        return ops_nn.relu(x) - self.alpha * ops_nn.relu(-x)

    def get_config(self):
        return {**super().get_config(), "alpha_initializer": initializers.serialize(self.alpha_initializer),
                "alpha_regularizer": regularizers.serialize(self.alpha_regularizer),
                "alpha_constraint": constraints.serialize(self.alpha_constraint), "shared_axes": self.shared_axes}


class ELU(Layer):
    """Exponential linear unit, as ``keras.layers.ELU``: ``x`` for ``x > 0``, ``alpha * (exp(x) - 1)``
    otherwise.

    Args:
        alpha: float, the scale of the negative part (default 1.0).
    """

    def __init__(self, alpha: float = 1.0, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
            raise ValueError(f"alpha of an ELU layer must be a number. Received: alpha={alpha!r}")
        self.alpha = float(alpha)
        self.supports_masking = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x):
        return ops_nn.elu(x, alpha=self.alpha)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


class Softmax(Layer):
    """Softmax over ``axis``, as ``keras.layers.Softmax``.

    Args:
        axis: an integer or a list of integers, the axes normalized over (default -1).

    Call arguments:
        mask: a boolean array broadcastable to the inputs (a mask with fewer axes covers the trailing
            ones); masked positions get probability 0.
    """

    def __init__(self, axis: Any = -1, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(axis, (int, np.integer)):
            axes = [axis]
        else:
            axes = list(axis) if isinstance(axis, (list, tuple)) else None
        if not axes or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes):
            raise ValueError(f"axis must be an integer or a non-empty list of integers. Received: axis={axis!r}")
        self.axis = int(axes[0]) if isinstance(axis, (int, np.integer)) else [int(a) for a in axes]
        self.supports_masking = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x, mask=None):
        raw = value_of(x)
        keep = None
        if mask is not None:
            keep = backend.get_array_module(raw).asarray(value_of(mask)).astype(raw.dtype)
            keep = keep.reshape(keep.shape + (1,) * (raw.ndim - keep.ndim))
            large = _FLOAT16_LARGE_NEGATIVE if raw.dtype == np.float16 else _LARGE_NEGATIVE
            x = x + (1.0 - keep) * raw.dtype.type(large)
        if isinstance(self.axis, list) and len(self.axis) > 1:
            y = ops.exp(x - reduction.logsumexp(x, axis=tuple(self.axis), keepdims=True))
        else:
            y = ops_nn.softmax(x, axis=self.axis[0] if isinstance(self.axis, list) else self.axis)
        # Zero the masked positions: a wholly masked axis would otherwise be uniform.
        return y if keep is None else y * keep

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
