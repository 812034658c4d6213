"""Losses with Keras names, classes and string aliases.

A loss returns **per-sample** values (``call``) and their gradient w.r.t. the prediction
(``gradient``); the training loop weights the samples and divides by the *global* number of
samples in the step, which keeps N-rank training identical to one process (docs/architecture.md).

Softmax followed by categorical cross-entropy is fused: when the model's last activation is
softmax, ``fused_gradient`` gives dL/d(logits) = ``p * sum(y) - y`` directly, which is exact and
stable. Sigmoid with binary cross-entropy is fused the same way.

A custom loss subclasses ``Loss`` and implements ``call`` and ``gradient``::

    class MeanCubicError(Loss):
        def call(self, y_true, y_pred):
            return (abs(y_pred - y_true) ** 3).mean(axis=-1)

        def gradient(self, y_true, y_pred):
            d = y_pred - y_true
            return 3 * d * abs(d) / y_pred.shape[-1]
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn import serialization
from distnn.backend import get_array_module

EPSILON = 1e-7  # Keras' backend.epsilon(): probabilities are clipped to [eps, 1 - eps]
REDUCTIONS = ("sum_over_batch_size", "mean", "sum", "mean_with_sample_weight", "none", None)  # Keras 3's
# What compile/fit trains on: the mean over the step's global batch; the others hold for direct calls
# only (docs/architecture.md, "Loss reductions").
TRAINING_REDUCTIONS = ("sum_over_batch_size", "mean")


class Loss:
    """Base class. ``call`` -> per-sample loss of shape ``(batch,)``; ``gradient`` -> dloss_i/dy_pred."""

    def __init__(self, name: str | None = None, reduction: str | None = "sum_over_batch_size"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}. Received: reduction={reduction!r}")
        self.name = name or _snake(type(self).__name__)
        self.reduction = reduction

    def call(self, y_true: Any, y_pred: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement call()")

    def gradient(self, y_true: Any, y_pred: Any) -> Any:
        """Optional fused dloss_i/dy_pred; without it the tape differentiates ``call``."""
        raise NotImplementedError(f"{type(self).__name__} has no fused gradient")

    @property
    def has_fused_gradient(self) -> bool:
        return type(self).gradient is not Loss.gradient

    def fusable_with(self, activation_name: str) -> bool:
        """Whether ``fused_gradient`` applies after the given output activation."""
        return False

    def fused_gradient(self, y_true: Any, y_pred: Any) -> Any:
        """dloss_i/d(pre-activation), given ``y_pred`` = activation output (see ``fusable_with``)."""
        raise NotImplementedError

    def check_targets(self, y_true: Any, output_shape: tuple) -> None:
        """Raise a clear error when labels cannot match predictions of ``output_shape``."""
        if tuple(y_true.shape[1:]) != tuple(output_shape[1:]):
            raise ValueError(f"{self.name}: labels of shape {tuple(y_true.shape)} do not match the model "
                             f"output shape {tuple(output_shape)} (expected (n, {', '.join(map(str, output_shape[1:]))}))")

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        """The loss of a batch, reduced as Keras 3 does: the values of ``call`` times
        ``sample_weight``, then ``"sum_over_batch_size"``/``"mean"`` (default): their sum over their
        count; ``"sum"``: their sum; ``"mean_with_sample_weight"``: their sum over the sum of the
        weights; ``"none"``/``None``: the weighted values themselves."""
        xp = get_array_module(y_pred)
        y_true, y_pred = xp.asarray(y_true), xp.asarray(y_pred)
        values = self.call(y_true, y_pred)
        if sample_weight is not None:
            weights = xp.asarray(sample_weight, dtype=values.dtype)
            if weights.ndim == values.ndim + 1 and weights.shape[-1] == 1:
                weights = weights[..., 0]  # (batch, 1) weights for per-sample values
            values = values * weights.reshape(weights.shape + (1,) * (values.ndim - weights.ndim))
        if self.reduction in (None, "none") or values.ndim == 0:
            return values
        total = values.sum()
        if self.reduction == "sum":
            return total
        if self.reduction == "mean_with_sample_weight" and sample_weight is not None:
            weight_sum = float(weights.sum())
            return total / weight_sum if weight_sum else total * 0
        return total / values.size if values.size else total

    def get_config(self) -> dict:
        return {"name": self.name, "reduction": self.reduction}

    @classmethod
    def from_config(cls, config: dict) -> "Loss":
        return cls(**config)


def _snake(name: str) -> str:
    import re  # noqa: PLC0415

    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _per_sample(values: Any) -> Any:
    """Mean over every axis but the batch axis (Keras' averaging of element-wise losses)."""
    return values.reshape(values.shape[0], -1).mean(axis=1)


def _elements_per_sample(array: Any) -> int:
    return int(np.prod(array.shape[1:])) if array.ndim > 1 else 1


def _log_softmax(z: Any, axis: int = -1) -> Any:
    xp = get_array_module(z)
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class CategoricalCrossentropy(Loss):
    """Cross-entropy between one-hot (or soft) labels and predicted class probabilities.

    Args:
        from_logits: whether ``y_pred`` are logits rather than probabilities.
        label_smoothing: in [0, 1]; labels become ``y * (1 - ls) + ls / num_classes``.
    """

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0, axis: int = -1, **kwargs: Any):
        super().__init__(**kwargs)
        if not 0 <= label_smoothing <= 1:
            raise ValueError(f"label_smoothing must be in [0, 1]. Received: label_smoothing={label_smoothing}")
        if axis != -1:
            raise ValueError(f"{type(self).__name__} supports the class axis -1 only. Received: axis={axis}")
        self.from_logits, self.label_smoothing, self.axis = bool(from_logits), float(label_smoothing), axis

    def _targets(self, y_true: Any) -> Any:
        if self.label_smoothing:
            return y_true * (1 - self.label_smoothing) + self.label_smoothing / y_true.shape[-1]
        return y_true

    def call(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        y = self._targets(y_true)
        if self.from_logits:
            return _per_sample(-(y * _log_softmax(y_pred)).sum(axis=-1))
        q = y_pred / y_pred.sum(axis=-1, keepdims=True)
        return _per_sample(-(y * xp.log(xp.clip(q, EPSILON, 1 - EPSILON))).sum(axis=-1))

    def gradient(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        y = self._targets(y_true)
        scale = 1.0 / _elements_per_sample(y_pred[..., 0])
        if self.from_logits:
            p = xp.exp(_log_softmax(y_pred))
            return (p * y.sum(axis=-1, keepdims=True) - y) * scale
        s = y_pred.sum(axis=-1, keepdims=True)
        q = y_pred / s
        inside = (q > EPSILON) & (q < 1 - EPSILON)  # the clip has zero gradient outside
        yq = xp.where(inside, y / q, 0)
        # L = -sum_k y_k log(p_k / s): dL/dp_j = (-y_j / q_j + sum_k y_k) / s over unclipped terms.
        return (-yq + (yq * q).sum(axis=-1, keepdims=True)) / s * scale

    def fusable_with(self, activation_name):
        return activation_name == "softmax" and not self.from_logits

    def fused_gradient(self, y_true, y_pred):
        # dL/dlogits of the *clipped* loss that call() reports: classes whose probability is clipped
        # contribute nothing, so ym = y * inside and the gradient is p * sum(ym) - ym.
        xp = get_array_module(y_pred)
        ym = xp.where((y_pred > EPSILON) & (y_pred < 1 - EPSILON), self._targets(y_true), 0)
        return (y_pred * ym.sum(axis=-1, keepdims=True) - ym) / _elements_per_sample(y_pred[..., 0])

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing, "axis": self.axis}


class SparseCategoricalCrossentropy(Loss):
    """Cross-entropy with integer class labels of shape ``(batch,)`` or ``(batch, 1)``.

    Args:
        from_logits: whether ``y_pred`` are logits rather than probabilities.
    """

    def __init__(self, from_logits: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.from_logits = bool(from_logits)
        self._dense = CategoricalCrossentropy(from_logits=from_logits)

    def _one_hot(self, y_true: Any, y_pred: Any) -> Any:
        xp = get_array_module(y_pred)
        labels = y_true.reshape(y_pred.shape[:-1]).astype(np.int64)
        one_hot = xp.zeros(y_pred.shape, dtype=y_pred.dtype)
        xp.put_along_axis(one_hot, labels[..., None], 1, axis=-1)
        return one_hot

    def call(self, y_true, y_pred):
        return self._dense.call(self._one_hot(y_true, y_pred), y_pred)

    def gradient(self, y_true, y_pred):
        return self._dense.gradient(self._one_hot(y_true, y_pred), y_pred)

    def fusable_with(self, activation_name):
        return self._dense.fusable_with(activation_name)

    def fused_gradient(self, y_true, y_pred):
        return self._dense.fused_gradient(self._one_hot(y_true, y_pred), y_pred)

    def check_targets(self, y_true, output_shape):
        expected = tuple(output_shape[1:-1])
        if tuple(y_true.shape[1:]) not in (expected, (*expected, 1)):
            raise ValueError(f"{self.name}: integer labels of shape {tuple(y_true.shape)} do not match the "
                             f"model output shape {tuple(output_shape)}; expected integer class ids of shape "
                             f"{(None, *expected)}")
        xp = get_array_module(y_true)
        if y_true.size and (y_true.min() < 0 or y_true.max() >= output_shape[-1]
                            or not bool(xp.all(y_true == xp.round(y_true)))):
            raise ValueError(f"{self.name}: labels must be integers in [0, {output_shape[-1]}). Received values "
                             f"in [{float(y_true.min())}, {float(y_true.max())}]")

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


class BinaryCrossentropy(Loss):
    """Binary cross-entropy, averaged over the last axis.

    Args:
        from_logits: whether ``y_pred`` are logits rather than probabilities.
        label_smoothing: in [0, 1]; labels become ``y * (1 - ls) + 0.5 * ls``.
    """

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0, **kwargs: Any):
        super().__init__(**kwargs)
        if not 0 <= label_smoothing <= 1:
            raise ValueError(f"label_smoothing must be in [0, 1]. Received: label_smoothing={label_smoothing}")
        self.from_logits, self.label_smoothing = bool(from_logits), float(label_smoothing)

    def _targets(self, y_true: Any) -> Any:
        return y_true * (1 - self.label_smoothing) + 0.5 * self.label_smoothing if self.label_smoothing else y_true

    def call(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        y = self._targets(y_true)
        if self.from_logits:
            values = xp.maximum(y_pred, 0) - y_pred * y + xp.log1p(xp.exp(-xp.abs(y_pred)))
        else:
            p = xp.clip(y_pred, EPSILON, 1 - EPSILON)
            values = -(y * xp.log(p) + (1 - y) * xp.log(1 - p))
        return _per_sample(values)

    def gradient(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        y = self._targets(y_true)
        n = _elements_per_sample(y_pred)
        if self.from_logits:
            return (0.5 * xp.tanh(0.5 * y_pred) + 0.5 - y) / n
        inside = (y_pred > EPSILON) & (y_pred < 1 - EPSILON)
        p = xp.clip(y_pred, EPSILON, 1 - EPSILON)
        return xp.where(inside, (p - y) / (p * (1 - p)), 0) / n

    def fusable_with(self, activation_name):
        return activation_name == "sigmoid" and not self.from_logits

    def fused_gradient(self, y_true, y_pred):
        # dL/dlogit of the clipped loss that call() reports: zero where the probability is clipped.
        xp = get_array_module(y_pred)
        inside = (y_pred > EPSILON) & (y_pred < 1 - EPSILON)
        return xp.where(inside, y_pred - self._targets(y_true), 0) / _elements_per_sample(y_pred)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits, "label_smoothing": self.label_smoothing}


class MeanSquaredError(Loss):
    def call(self, y_true, y_pred):
        d = y_pred - y_true
        return _per_sample(d * d)

    def gradient(self, y_true, y_pred):
        return 2 * (y_pred - y_true) / _elements_per_sample(y_pred)


class MeanAbsoluteError(Loss):
    def call(self, y_true, y_pred):
        return _per_sample(get_array_module(y_pred).abs(y_pred - y_true))

    def gradient(self, y_true, y_pred):
        return get_array_module(y_pred).sign(y_pred - y_true) / _elements_per_sample(y_pred)


class Huber(Loss):
    """Quadratic for ``|error| <= delta``, linear beyond.

    Args:
        delta: the point where the loss changes from quadratic to linear.
    """

    def __init__(self, delta: float = 1.0, **kwargs: Any):
        super().__init__(**kwargs)
        if delta <= 0:
            raise ValueError(f"Huber delta must be > 0. Received: delta={delta}")
        self.delta = float(delta)

    def call(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        e = xp.abs(y_pred - y_true)
        return _per_sample(xp.where(e <= self.delta, 0.5 * e * e, self.delta * (e - 0.5 * self.delta)))

    def gradient(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        e = y_pred - y_true
        return xp.clip(e, -self.delta, self.delta) / _elements_per_sample(y_pred)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


class KLDivergence(Loss):
    """``sum(y_true * log(y_true / y_pred))`` over the last axis, both clipped to [eps, 1]."""

    def call(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        y = xp.clip(y_true, EPSILON, 1)
        p = xp.clip(y_pred, EPSILON, 1)
        return _per_sample((y * xp.log(y / p)).sum(axis=-1))

    def gradient(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        y = xp.clip(y_true, EPSILON, 1)
        inside = (y_pred > EPSILON) & (y_pred < 1)
        return xp.where(inside, -y / xp.clip(y_pred, EPSILON, 1), 0) / _elements_per_sample(y_pred[..., 0])


class LossFunctionWrapper(Loss):
    """A loss from a plain function ``fn(y_true, y_pred, **kwargs)`` written with ``distnn.ops``
    (Keras' ``LossFunctionWrapper``); the tape differentiates it."""

    def __init__(self, fn: Any, name: str | None = None, reduction: str | None = "sum_over_batch_size",
                 **kwargs: Any):
        if isinstance(fn, (str, dict)):  # from a saved configuration: the function by its saved name
            fn = serialization.deserialize_keras_object(fn, module_objects=_TABLE, printable_module_name="loss")
        if not callable(fn):
            raise TypeError(f"LossFunctionWrapper needs a function (y_true, y_pred). Received: fn={fn!r}")
        super().__init__(name=name or getattr(fn, "__name__", "loss"), reduction=reduction)
        self.fn, self.fn_kwargs = fn, kwargs

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred, **self.fn_kwargs)

    def get_config(self):
        try:
            fn = serialization.serialize_keras_object(self.fn)
        except ValueError as exc:
            raise ValueError(f"Cannot save the custom loss {self.name!r}: {exc}") from exc
        return {**super().get_config(), "fn": fn, **self.fn_kwargs}


_BY_NAME: dict[str, Any] = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
    "huber": Huber, "huber_loss": Huber,
    "kl_divergence": KLDivergence, "kld": KLDivergence, "kullback_leibler_divergence": KLDivergence,
}
_CLASSES = {cls.__name__: cls for cls in _BY_NAME.values()}
_TABLE: dict[str, Any] = {**_BY_NAME, **_CLASSES, "LossFunctionWrapper": LossFunctionWrapper}
serialization.register_builtins("distnn.losses", _TABLE)


def get(identifier: Any, custom_objects: dict | None = None) -> Loss:
    """Resolve a loss from a name (Keras spelling or alias), a class, a saved configuration, an
    instance or a function ``(y_true, y_pred)`` (a registered one also by its name)."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if isinstance(identifier, (str, dict)):
        identifier = serialization.resolve(identifier, _TABLE, "loss", custom_objects)
        if isinstance(identifier, Loss):
            return identifier
    if callable(identifier) and not isinstance(identifier, type):
        return LossFunctionWrapper(identifier)
    raise TypeError(f"loss must be a string, a Loss instance or a function (y_true, y_pred). "
                    f"Received: loss={identifier!r}")


def serialize(loss: Loss) -> dict:
    return serialization.serialize_keras_object(loss)


def deserialize(config: str | dict, custom_objects: dict | None = None) -> Loss:
    return get(config, custom_objects)
