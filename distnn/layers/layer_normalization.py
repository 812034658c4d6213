"""Normalizations over each sample's own values, no batch statistics: ``LayerNormalization``,
``GroupNormalization`` and ``UnitNormalization`` (Keras 3's arguments and weight layouts).

Each sample is normalized on its own, so these layers need no communication under data
parallelism: a shard of the batch gives exactly the rows the whole batch would. All three have a
fused backward (docs/architecture.md, "Layers"): LayerNormalization sits twice in every Transformer
block, on the hot path.

LayerNormalization and GroupNormalization share one kernel: the input is viewed so that the
statistics are taken over some axes of the view (the normalized axes: the trailing features of a
layer norm, flattened to one axis when they are contiguous; a group's channels and positions for a
group norm), and ``gamma``/``beta`` broadcast over the view.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn import backend, constraints, initializers, regularizers
from distnn.layers.base import Layer
from distnn.layers.normalization import _normalize_axes


def _check_epsilon(epsilon: Any) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
        raise ValueError(f"epsilon must be a positive float. Received: epsilon={epsilon!r}")
    return float(epsilon)


def _standardize(layer: Layer, x: Any, axes: tuple[int, ...], epsilon: float) -> tuple[Any, Any]:
    """``(x - mean) / sqrt(variance + epsilon)`` over ``axes`` and that inverse deviation (keepdims).
    The result lives in the layer's scratch buffer during a training step."""
    xp = backend.get_array_module(x)
    xhat = xp.subtract(x, x.mean(axis=axes, keepdims=True), out=layer._buffer("xhat", x.shape, x.dtype))
    square = xp.square(xhat, out=layer._buffer("square", x.shape, x.dtype))
    inv = 1.0 / xp.sqrt(square.mean(axis=axes, keepdims=True) + epsilon)
    xhat *= inv
    return xhat, inv


def _standardize_backward(layer: Layer, dxhat: Any, xhat: Any, inv: Any, axes: tuple[int, ...]) -> Any:
    """dL/dx of ``xhat = (x - mean) * inv`` given dL/dxhat (overwritten with the result):
    ``inv * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))``, means over ``axes``."""
    xp = backend.get_array_module(dxhat)
    product = xp.multiply(dxhat, xhat, out=layer._buffer("square", xhat.shape, xhat.dtype))
    projection = product.mean(axis=axes, keepdims=True)
    dxhat -= dxhat.mean(axis=axes, keepdims=True)
    dxhat -= xp.multiply(xhat, projection, out=product)
    dxhat *= inv
    return dxhat


class _SampleNormalization(Layer):
    """Shared forward and fused backward; subclasses define the view (``_view``) and the weights."""

    def _init_weight_options(self, epsilon: Any, center: bool, scale: bool, beta_initializer: Any,
                             gamma_initializer: Any, beta_regularizer: Any, gamma_regularizer: Any,
                             beta_constraint: Any, gamma_constraint: Any) -> None:
        self.epsilon = _check_epsilon(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)

    def _add_weights(self, shape: tuple, gamma: bool, beta: bool) -> None:
        # Keras' creation order: get_weights() lists [gamma, beta].
        self.gamma = self.add_weight(shape=shape, initializer=self.gamma_initializer,
                                     regularizer=self.gamma_regularizer, constraint=self.gamma_constraint,
                                     name="gamma") if gamma else None
        self.beta = self.add_weight(shape=shape, initializer=self.beta_initializer,
                                    regularizer=self.beta_regularizer, constraint=self.beta_constraint,
                                    name="beta") if beta else None

    def _view(self, shape: tuple) -> tuple[tuple, tuple[int, ...], tuple]:
        """For an input of ``shape``: the shape to view it with, the axes of that view to normalize
        over, and the shape that ``gamma``/``beta`` broadcast as against the view."""
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x, training=False):
        xp = backend.get_array_module(x)
        view_shape, self._axes, self._param_shape = self._view(x.shape)
        v = x.reshape(view_shape)
        self._xhat, self._inv = self._normalized(v)
        y = self._buffer("y", v.shape, v.dtype)
        if self.gamma is not None:
            xp.multiply(self._xhat, self.gamma.value.reshape(self._param_shape), out=y)
        else:
            y[...] = self._xhat
        if self.beta is not None:
            y += self.beta.value.reshape(self._param_shape)
        return y.reshape(x.shape)

    def _normalized(self, v: Any) -> tuple[Any, Any]:
        return _standardize(self, v, self._axes, self.epsilon)

    def backward(self, grad):
        g = grad.reshape(self._xhat.shape)
        reduce = tuple(a for a in range(g.ndim) if self._param_shape[a] == 1)
        if self.beta is not None:
            self.beta.grad[...] = g.sum(axis=reduce).reshape(self.beta.grad.shape)
        if self.gamma is not None:
            # Not the "y" buffer: the output may still be read after backward (metrics on a model output).
            product = backend.get_array_module(g).multiply(g, self._xhat, out=self._buffer("dgamma", g.shape, g.dtype))
            self.gamma.grad[...] = product.sum(axis=reduce).reshape(self.gamma.grad.shape)
        if not self.propagate_input_grad:
            return None
        if self.gamma is not None:
            g *= self.gamma.value.reshape(self._param_shape)  # the incoming gradient is ours to overwrite
        return self._normalized_backward(g).reshape(grad.shape)

    def _normalized_backward(self, dxhat: Any) -> Any:
        return _standardize_backward(self, dxhat, self._xhat, self._inv, self._axes)

    def _weight_options_config(self) -> dict:
        return {"epsilon": self.epsilon, "center": self.center, "scale": self.scale,
                "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
                "beta_constraint": constraints.serialize(self.beta_constraint),
                "gamma_constraint": constraints.serialize(self.gamma_constraint)}


class LayerNormalization(_SampleNormalization):
    """Layer normalization (Ba et al., 2016): each sample is standardized over ``axis``, then scaled
    by ``gamma`` and shifted by ``beta``, both spanning ``axis``::

        y = gamma * (x - mean) / sqrt(variance + epsilon) + beta

    Args:
        axis: the axis or axes to normalize over (not the batch axis), default -1.
        epsilon: small float added to the variance.
        center: learn the offset ``beta``.
        scale: learn the scale ``gamma``.
        rms_scaling: Keras 3's option: ``center`` and ``scale`` are ignored and the output is
            ``x * gamma / sqrt(variance + epsilon)`` — the input itself (not centred) scaled by its
            standard deviation, exactly as Keras 3 computes it.
        beta_initializer, gamma_initializer: initializers of the two weights.
        beta_regularizer, gamma_regularizer: their regularizers.
        beta_constraint, gamma_constraint: their constraints (applied after each optimizer step).

    Input shape:
        Arbitrary, with known sizes on ``axis``.

    Output shape:
        Same as the input. A mask passes through.
    """

    def __init__(self, axis: Any = -1, epsilon: float = 1e-3, center: bool = True, scale: bool = True,
                 rms_scaling: bool = False, beta_initializer: Any = "zeros", gamma_initializer: Any = "ones",
                 beta_regularizer: Any = None, gamma_regularizer: Any = None, beta_constraint: Any = None,
                 gamma_constraint: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(axis, (list, tuple)):
            self.axis: Any = [int(a) if isinstance(a, (int, np.integer)) and not isinstance(a, bool) else a
                              for a in axis]
        elif isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
            self.axis = int(axis)
        else:
            raise TypeError(f"Expected an int or a list/tuple of ints for the argument 'axis'. Received: axis={axis!r}")
        self.rms_scaling = bool(rms_scaling)
        self._init_weight_options(epsilon, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
                                  gamma_regularizer, beta_constraint, gamma_constraint)
        self.supports_masking = True

    def build(self, input_shape):
        self._feature_axes = _normalize_axes(self.axis, len(input_shape), self)
        # In the order given, as Keras: axis=[2, 1] makes gamma (d2, d1), laid over the axes by a reshape.
        given = self.axis if isinstance(self.axis, list) else [self.axis]
        shape = tuple(input_shape[a % len(input_shape)] for a in given)
        if None in shape:
            raise ValueError(f"{self.name}: the normalized axes {self._feature_axes} must have known sizes. "
                             f"Received: input_shape={tuple(input_shape)}")
        self._add_weights(shape, gamma=self.scale or self.rms_scaling, beta=self.center and not self.rms_scaling)
        self.built = True

    def _view(self, shape):
        axes, ndim = self._feature_axes, len(shape)
        if axes == tuple(range(ndim - len(axes), ndim)):  # trailing axes: one row of features per position
            features = int(np.prod([shape[a] for a in axes]))
            return (-1, features), (1,), (1, features)
        return shape, axes, tuple(shape[a] if a in axes else 1 for a in range(ndim))

    def _normalized(self, v):
        if not self.rms_scaling:
            return super()._normalized(v)
        # Keras 3: x * rsqrt(var(x) + epsilon) — the deviation is that of x, the scaled value is x itself.
        centered, inv = _standardize(self, v, self._axes, self.epsilon)
        self._centered = centered
        scaled = backend.get_array_module(v).multiply(v, inv, out=self._buffer("scaled", v.shape, v.dtype))
        return scaled, inv

    def _normalized_backward(self, dxhat):
        if not self.rms_scaling:
            return super()._normalized_backward(dxhat)
        # d/dx of x * inv with inv = (var(x) + eps)^-1/2: inv * (u - centered * mean(u * scaled)).
        xp = backend.get_array_module(dxhat)
        product = xp.multiply(dxhat, self._xhat, out=self._buffer("square", dxhat.shape, dxhat.dtype))
        dxhat -= xp.multiply(self._centered, product.mean(axis=self._axes, keepdims=True), out=product)
        dxhat *= self._inv
        return dxhat

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "rms_scaling": self.rms_scaling,
                **self._weight_options_config()}


class GroupNormalization(_SampleNormalization):
    """Group normalization (Wu and He, 2018): the channels are split into ``groups`` groups, and each
    sample is standardized over each group's channels and all its other (spatial) axes; ``gamma``
    and ``beta`` are per channel. ``groups=1`` normalizes over everything but the batch axis;
    ``groups=-1`` (one channel per group) is instance normalization.

    Args:
        groups: number of groups, dividing the number of channels (default 32); -1 for one per channel.
        axis: the channel axis, default -1.
        epsilon, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
        gamma_regularizer, beta_constraint, gamma_constraint: as ``LayerNormalization``.

    Input shape:
        Arbitrary (at least 2-D), with a known number of channels.

    Output shape:
        Same as the input.
    """

    def __init__(self, groups: int = 32, axis: int = -1, epsilon: float = 1e-3, center: bool = True,
                 scale: bool = True, beta_initializer: Any = "zeros", gamma_initializer: Any = "ones",
                 beta_regularizer: Any = None, gamma_regularizer: Any = None, beta_constraint: Any = None,
                 gamma_constraint: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or not (groups > 0 or groups == -1):
            raise ValueError(f"groups must be a positive integer or -1. Received: groups={groups!r}")
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"axis must be an integer. Received: axis={axis!r}")
        self.groups, self.axis = int(groups), int(axis)
        self._init_weight_options(epsilon, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
                                  gamma_regularizer, beta_constraint, gamma_constraint)

    def build(self, input_shape):
        (self._channel_axis,) = _normalize_axes(self.axis, len(input_shape), self)
        channels = input_shape[self._channel_axis]
        if channels is None:
            raise ValueError(f"{self.name}: axis {self.axis} of the input is the channel axis and must have a known "
                             f"size. Received: input_shape={tuple(input_shape)}")
        self._groups = channels if self.groups == -1 else self.groups
        if channels < self._groups:
            raise ValueError(f"Number of groups ({self._groups}) cannot be more than the number of channels "
                             f"({channels}). Received: groups={self.groups}, input_shape={tuple(input_shape)}")
        if channels % self._groups:
            raise ValueError(f"Number of groups ({self._groups}) must divide the number of channels ({channels}). "
                             f"Received: groups={self.groups}, input_shape={tuple(input_shape)}")
        self._add_weights((channels,), gamma=self.scale, beta=self.center)
        self.built = True

    def _view(self, shape):
        # (batch, ..., channels, ...) -> (batch, ..., groups, channels per group, ...)
        c = self._channel_axis
        view = (*shape[:c], self._groups, shape[c] // self._groups, *shape[c + 1:])
        axes = tuple(a for a in range(1, len(view)) if a != c)
        param_shape = tuple(view[a] if a in (c, c + 1) else 1 for a in range(len(view)))
        return view, axes, param_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "axis": self.axis, **self._weight_options_config()}


class UnitNormalization(Layer):
    """Scales each sample to unit L2 norm over ``axis``: ``x / sqrt(max(sum(x**2), 1e-12))``, as Keras.

    Args:
        axis: the axis or axes to normalize over (not the batch axis), default -1.

    Input shape:
        Arbitrary.

    Output shape:
        Same as the input. A mask passes through.
    """

    def __init__(self, axis: Any = -1, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(axis, (list, tuple)):
            self.axis: Any = list(axis)
        elif isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
            self.axis = int(axis)
        else:
            raise TypeError(f"Invalid value for `axis` argument: expected an int or a list/tuple of ints. "
                            f"Received: axis={axis!r}")
        self.supports_masking = True

    def build(self, input_shape):
        self._axes = _normalize_axes(self.axis, len(input_shape), self)
        self.built = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x, training=False):
        xp = backend.get_array_module(x)
        square_sum = xp.square(x).sum(axis=self._axes, keepdims=True)
        self._unclamped = square_sum > 1e-12  # below, the norm is the constant 1e-6: no gradient through it
        self._inv = 1.0 / xp.sqrt(xp.maximum(square_sum, 1e-12))
        self._y = x * self._inv
        return self._y

    def backward(self, grad):
        if not self.propagate_input_grad:
            return None
        # d/dx of x * inv with inv = |x|^-1: inv * (g - y * sum(g * y)) where the norm is not clamped.
        projection = (grad * self._y).sum(axis=self._axes, keepdims=True) * self._unclamped
        grad -= self._y * projection
        grad *= self._inv
        return grad

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
