"""Normalization layers: ``BatchNormalization`` and the ``Normalization`` preprocessing layer.

Both keep their statistics as non-trainable variables, so a built model holds them in its
non-trainable buffer (``model.state``), broadcasts them from rank 0 and saves them with the model.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn import backend, initializers, regularizers
from distnn.layers.base import Layer


def _normalize_axes(axis: Any, ndim: int, layer: Layer) -> tuple[int, ...]:
    """Positive axis indices (never the batch axis) from an int or a sequence of ints."""
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    if not axes or not all(isinstance(a, (int, np.integer)) for a in axes):
        raise ValueError(f"{layer.name}: axis must be an integer or a tuple of integers. Received: axis={axis!r}")
    positive = tuple(sorted({int(a) % ndim if -ndim <= a < ndim else -1 for a in axes}))
    if any(a <= 0 for a in positive):
        raise ValueError(f"{layer.name}: every axis must be a feature axis of the {ndim}-D input (not the batch "
                         f"axis 0). Received: axis={axis!r}")
    return positive


class _Statistics:
    """Shapes shared by both layers: per-feature parameters broadcast against the input."""

    def __init__(self, input_shape: tuple, axes: tuple[int, ...], layer: Layer):
        if any(input_shape[a] is None for a in axes):
            raise ValueError(f"{layer.name}: the normalized axes {axes} of the input must have known sizes. "
                             f"Received: input_shape={input_shape}")
        self.axes = axes
        self.param_shape = tuple(input_shape[a] for a in axes)
        self.broadcast_shape = tuple(input_shape[a] if a in axes else 1 for a in range(len(input_shape)))
        self.reduce_axes = tuple(a for a in range(len(input_shape)) if a not in axes)

    def broadcast(self, value: Any) -> Any:
        return value.reshape(self.broadcast_shape)


class BatchNormalization(Layer):
    """Normalizes its inputs with batch statistics in training and moving statistics in inference.

    In training, ``y = gamma * (x - mean_B) / sqrt(var_B + epsilon) + beta`` over the batch (and
    every axis but ``axis``), and the moving statistics are updated as
    ``moving = moving * momentum + batch_value * (1 - momentum)``; in inference (``training=False``
    or ``trainable=False``, as in Keras 3) the moving statistics replace the batch ones.

    Under MPI the batch statistics are those of the *global* batch by default (``synchronized=True``):
    each training step allreduces the per-feature sums (two small collectives forward, one backward),
    so N ranks normalize exactly as one process does and their moving statistics stay identical.
    ``synchronized=False`` uses each rank's own shard, as Keras does by default — cheaper, but no
    longer equal to single-process training.

    Args:
        axis: the feature axis (or axes), default -1 (channels-last).
        momentum: momentum of the moving averages.
        epsilon: small float added to the variance.
        center: learn the offset ``beta``.
        scale: learn the scale ``gamma``.
        beta_initializer, gamma_initializer, moving_mean_initializer, moving_variance_initializer:
            initializers of the four weights.
        beta_regularizer, gamma_regularizer: regularizers of ``beta`` and ``gamma``.
        synchronized: compute batch statistics over all ranks' shards (the global batch).

    Input shape:
        Arbitrary.

    Output shape:
        Same as the input.
    """

    def __init__(self, axis: Any = -1, momentum: float = 0.99, epsilon: float = 1e-3, center: bool = True,
                 scale: bool = True, beta_initializer: Any = "zeros", gamma_initializer: Any = "ones",
                 moving_mean_initializer: Any = "zeros", moving_variance_initializer: Any = "ones",
                 beta_regularizer: Any = None, gamma_regularizer: Any = None, synchronized: bool = True,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.synchronized = bool(synchronized)
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1]. Received: momentum={momentum}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive. Received: epsilon={epsilon}")
        self.axis = axis if isinstance(axis, (int, np.integer)) else tuple(axis)
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)

    def build(self, input_shape):
        self._stats = _Statistics(input_shape, _normalize_axes(self.axis, len(input_shape), self), self)
        shape = self._stats.param_shape
        # Keras' creation order, so get_weights() lists [gamma, beta, moving_mean, moving_variance].
        self.gamma = (self.add_weight(shape=shape, initializer=self.gamma_initializer,
                                      regularizer=self.gamma_regularizer, name="gamma")
                      if self.scale else None)
        self.beta = (self.add_weight(shape=shape, initializer=self.beta_initializer,
                                     regularizer=self.beta_regularizer, name="beta")
                     if self.center else None)
        self.moving_mean = self.add_weight(shape=shape, initializer=self.moving_mean_initializer, trainable=False,
                                           name="moving_mean")
        self.moving_variance = self.add_weight(shape=shape, initializer=self.moving_variance_initializer,
                                               trainable=False, name="moving_variance")
        self.built = True

    def call(self, x, training=False):
        xp = backend.get_array_module(x)
        stats = self._stats
        self._training = bool(training) and self.trainable
        if self._training:
            # Sums, not means: they add up across ranks into the global batch's statistics.
            sums = self._global_sum(x.sum(axis=stats.reduce_axes, keepdims=True), x.size // self._features)
            self._count = self._global_count
            mean = sums / self._count
            centered = xp.subtract(x, mean, out=self._buffer("xhat", x.shape))
            square = xp.square(centered, out=self._buffer("square", x.shape))
            variance = self._global_sum(square.sum(axis=stats.reduce_axes, keepdims=True)) / self._count
            self._update_moving(self.moving_mean.value, mean)
            self._update_moving(self.moving_variance.value, variance)
        else:
            mean = stats.broadcast(self.moving_mean.value)
            variance = stats.broadcast(self.moving_variance.value)
            centered = x - mean
        self._inv_std = 1.0 / xp.sqrt(variance + self.epsilon)
        self._xhat = xhat = xp.multiply(centered, self._inv_std, out=centered)
        y = self._buffer("y", x.shape) if self._training else xp.empty_like(x)
        y[...] = xhat if self.gamma is None else xhat * stats.broadcast(self.gamma.value)
        if self.beta is not None:
            y += stats.broadcast(self.beta.value)
        return y

    @property
    def _features(self) -> int:
        return int(np.prod(self._stats.param_shape))

    def _communicator(self) -> Any:
        """The communicator to sum statistics over, or None (unsynchronized, or a single process)."""
        if not self.synchronized:
            return None
        from distnn.distributed.world import get_communicator  # noqa: PLC0415 - keeps MPI out of layer imports

        comm = get_communicator()
        return comm if comm.size > 1 else None

    def _global_sum(self, local: Any, count: int | None = None) -> Any:
        """``local`` summed over all ranks (and, with ``count``, the global element count in
        ``self._global_count``); the local values unchanged when not synchronized."""
        comm = self._communicator()
        if comm is None:
            if count is not None:
                self._global_count = count
            return local
        # Summed in float64 where the statistics live (the communicator dispatches device arrays:
        # docs/architecture.md, "Devices"); only the element count comes back to the host.
        xp = backend.get_array_module(local)
        sums = local.astype(xp.float64).ravel()
        if count is not None:
            sums = xp.concatenate([sums, xp.full(1, count, dtype=xp.float64)])
        comm.allreduce(sums, op="sum")
        if count is not None:
            self._global_count, sums = int(sums[-1]), sums[:-1]
        return sums.reshape(local.shape).astype(local.dtype, copy=False)

    def empty_shard_forward(self) -> None:
        """A rank with no samples in this step still joins the statistics' sums (with zeros) and
        applies the same moving-average update, so every rank's state stays identical."""
        if not (self.trainable and self._communicator()):
            return
        zeros = backend.xp().zeros(self._stats.broadcast_shape, dtype=self.dtype)
        mean = self._global_sum(zeros, 0) / self._global_count
        variance = self._global_sum(zeros) / self._global_count
        self._update_moving(self.moving_mean.value, mean)
        self._update_moving(self.moving_variance.value, variance)

    def empty_shard_backward(self) -> None:
        # Mirrors backward(): only the input gradient needs the global sums.
        if self.trainable and self.propagate_input_grad and self._communicator():
            self._global_sum(backend.xp().zeros((2, self._features), dtype=self.dtype))

    def _update_moving(self, moving: Any, batch_value: Any) -> None:
        moving *= self.momentum
        moving += (1.0 - self.momentum) * batch_value.reshape(moving.shape)

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        stats = self._stats
        dbeta = grad.sum(axis=stats.reduce_axes, keepdims=True)
        dgamma = (grad * self._xhat).sum(axis=stats.reduce_axes, keepdims=True)
        # The weight gradients stay this shard's: the training loop's allreduce sums them.
        if self.beta is not None:
            self.beta.grad[...] = dbeta.reshape(self.beta.grad.shape)
        if self.gamma is not None:
            self.gamma.grad[...] = dgamma.reshape(self.gamma.grad.shape)
        if not self.propagate_input_grad:
            return None
        scale = self._inv_std if self.gamma is None else self._inv_std * stats.broadcast(self.gamma.value)
        if not self._training:  # the moving statistics are constants
            return grad * scale
        if self._communicator():  # dx depends on the global batch's sums
            both = self._global_sum(xp.stack([dbeta.ravel(), dgamma.ravel()]))
            dbeta, dgamma = both[0].reshape(dbeta.shape), both[1].reshape(dgamma.shape)
        # d/dx of the batch-normalized value: the batch mean and variance depend on x too.
        dx = self._buffer("dx", grad.shape)
        xp.multiply(self._xhat, dgamma * (1.0 / self._count), out=dx)
        dx += dbeta * (1.0 / self._count)
        xp.subtract(grad, dx, out=dx)
        dx *= scale
        return dx

    def get_config(self):
        return {
            **super().get_config(), "axis": self.axis if isinstance(self.axis, int) else list(self.axis),
            "momentum": self.momentum, "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
            "beta_initializer": initializers.serialize(self.beta_initializer),
            "gamma_initializer": initializers.serialize(self.gamma_initializer),
            "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
            "beta_regularizer": regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
            "synchronized": self.synchronized,
        }


class Normalization(Layer):
    """Feature-wise standardization ``(x - mean) / sqrt(variance)``, as ``keras.layers.Normalization``.

    The statistics are either given (``mean`` and ``variance``) or computed from data with
    ``adapt(data)``; adapted statistics are non-trainable weights, saved with the model.

    Args:
        axis: the axis (or axes) with their own mean and variance, default -1 (per feature or per
            channel); ``None`` normalizes with one scalar mean and variance.
        mean, variance: fixed statistics (scalars or arrays broadcastable to the kept axes);
            give both or neither.
        invert: apply the inverse transformation ``x * sqrt(variance) + mean`` instead.

    Input shape:
        Arbitrary.

    Output shape:
        Same as the input.
    """

    def __init__(self, axis: Any = -1, mean: Any = None, variance: Any = None, invert: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        if (mean is None) != (variance is None):
            raise ValueError(f"When setting values directly, both mean and variance must be set. "
                             f"Received: mean={mean} and variance={variance}")
        self.axis = None if axis is None else (axis if isinstance(axis, (int, np.integer)) else tuple(axis))
        self.input_mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.input_variance = None if variance is None else np.asarray(variance, dtype=np.float64)
        if self.input_variance is not None and np.any(self.input_variance < 0):
            raise ValueError(f"variance must be non-negative. Received: variance={variance}")
        self.invert = bool(invert)

    def build(self, input_shape):
        axes = () if self.axis is None else _normalize_axes(self.axis, len(input_shape), self)
        self._stats = _Statistics(input_shape, axes, self)
        shape = self._stats.param_shape
        if self.input_mean is None:
            self.mean = self.add_weight(shape=shape, initializer="zeros", trainable=False, name="mean")
            self.variance = self.add_weight(shape=shape, initializer="ones", trainable=False, name="variance")
            # Keras keeps a sample count for compatibility with older saved models; so do we.
            self.count = self.add_weight(shape=(), initializer="zeros", trainable=False, name="count")
        else:
            try:
                mean = np.broadcast_to(self.input_mean, shape)
                variance = np.broadcast_to(self.input_variance, shape)
            except ValueError as exc:
                raise ValueError(f"{self.name}: mean and variance must broadcast to the shape {shape} of the kept "
                                 f"axes. Received: mean shape {self.input_mean.shape}, variance shape "
                                 f"{self.input_variance.shape}") from exc
            self._fixed = (backend.to_device(mean, dtype=self.dtype), backend.to_device(variance, dtype=self.dtype))
        self.built = True

    def adapt(self, data: Any) -> None:
        """Compute the mean and variance of ``data`` (an array whose first axis is the samples)."""
        if self.input_mean is not None:
            raise ValueError(f"{self.name}: cannot adapt a Normalization layer created with fixed mean and variance")
        data = np.asarray(backend.to_numpy(data), dtype=np.float64)
        if data.ndim == 0 or len(data) == 0:
            raise ValueError(f"{self.name}.adapt needs a non-empty array of samples. Received: shape {data.shape}")
        if not np.all(np.isfinite(data)):
            raise ValueError(f"{self.name}.adapt: data contains NaN or infinite values")
        if not self.built:
            self.build_for((None, *data.shape[1:]))
        self._check_input_shape((None, *data.shape[1:]))
        stats = self._stats
        self.mean.assign(data.mean(axis=stats.reduce_axes).reshape(stats.param_shape))
        self.variance.assign(data.var(axis=stats.reduce_axes).reshape(stats.param_shape))
        self.count.assign(np.asarray(len(data)))

    def _statistics(self) -> tuple[Any, Any]:
        mean, variance = self._fixed if self.input_mean is not None else (self.mean.value, self.variance.value)
        xp = backend.get_array_module(mean)
        # Keras divides by max(sqrt(variance), epsilon): constant features pass through centred.
        return self._stats.broadcast(mean), xp.maximum(xp.sqrt(self._stats.broadcast(variance)), 1e-7)

    def call(self, x, training=False):
        mean, self._std = self._statistics()
        return x * self._std + mean if self.invert else (x - mean) / self._std

    def backward(self, grad):
        if not self.propagate_input_grad:  # usually the first layer: skip the pass over the input
            return None
        return grad * self._std if self.invert else grad / self._std

    def get_config(self):
        config = {**super().get_config(), "axis": self.axis if self.axis is None or isinstance(self.axis, int)
                  else list(self.axis), "invert": self.invert}
        if self.input_mean is not None:
            config.update(mean=self.input_mean.tolist(), variance=self.input_variance.tolist())
        return config
