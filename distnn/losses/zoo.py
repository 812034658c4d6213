"""Keras 3's regression, hinge, similarity, focal and overlap losses (``distnn.losses`` exports them).

Each has a fused ``gradient``, checked against finite differences in tests/test_losses_extra.py.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn.backend import get_array_module
from distnn.losses.base import (EPSILON, BinaryCrossentropy, CategoricalCrossentropy, Loss, _elements_per_sample,
                                _log_softmax, _per_sample)


_LOG_2 = 0.6931471805599453  # a Python float keeps float32 arrays float32 (numpy 2 promotion)


def _last_axis_mean(values: Any) -> Any:
    """Keras' ``mean(..., axis=-1)`` followed by distnn's mean over the remaining non-batch axes."""
    return _per_sample(values.mean(axis=-1) if values.ndim > 1 else values)


class MeanAbsolutePercentageError(Loss):
    """``100 * mean(|y_true - y_pred| / max(|y_true|, eps))`` over the last axis."""

    def call(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        return _last_axis_mean(100 * xp.abs(y_true - y_pred) / xp.maximum(xp.abs(y_true), EPSILON))

    def gradient(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        return 100 * xp.sign(y_pred - y_true) / xp.maximum(xp.abs(y_true), EPSILON) / _elements_per_sample(y_pred)


class MeanSquaredLogarithmicError(Loss):
    """``mean((log(max(y_pred, eps) + 1) - log(max(y_true, eps) + 1))^2)`` over the last axis."""

    def call(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        d = xp.log1p(xp.maximum(y_pred, EPSILON)) - xp.log1p(xp.maximum(y_true, EPSILON))
        return _last_axis_mean(d * d)

    def gradient(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        p = xp.maximum(y_pred, EPSILON)
        d = xp.log1p(p) - xp.log1p(xp.maximum(y_true, EPSILON))
        return xp.where(y_pred > EPSILON, 2 * d / (1 + p), 0) / _elements_per_sample(y_pred)


class LogCosh(Loss):
    """``mean(log(cosh(y_pred - y_true)))``, computed as ``x + softplus(-2x) - log 2`` (no overflow)."""

    def call(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        x = y_pred - y_true
        return _last_axis_mean(x + xp.logaddexp(0, -2 * x) - _LOG_2)

    def gradient(self, y_true, y_pred):
        return get_array_module(y_pred).tanh(y_pred - y_true) / _elements_per_sample(y_pred)


class Poisson(Loss):
    """``mean(y_pred - y_true * log(y_pred + eps))`` over the last axis."""

    def call(self, y_true, y_pred):
        return _last_axis_mean(y_pred - y_true * get_array_module(y_pred).log(y_pred + EPSILON))

    def gradient(self, y_true, y_pred):
        return (1 - y_true / (y_pred + EPSILON)) / _elements_per_sample(y_pred)


def _hinge_labels(y_true: Any) -> Any:
    """Keras converts labels that are all 0 or 1 to -1/1; other labels are used as given."""
    xp = get_array_module(y_true)
    return 2 * y_true - 1 if bool(xp.all((y_true == 0) | (y_true == 1))) else y_true


class Hinge(Loss):
    """``mean(max(1 - y_true * y_pred, 0))`` with labels -1/1 (0/1 labels are converted)."""

    def call(self, y_true, y_pred):
        return _last_axis_mean(get_array_module(y_pred).maximum(1 - _hinge_labels(y_true) * y_pred, 0))

    def gradient(self, y_true, y_pred):
        y = _hinge_labels(y_true)
        return -y * (1 - y * y_pred > 0) / _elements_per_sample(y_pred)


class SquaredHinge(Loss):
    """``mean(max(1 - y_true * y_pred, 0)^2)`` with labels -1/1 (0/1 labels are converted)."""

    def call(self, y_true, y_pred):
        margin = get_array_module(y_pred).maximum(1 - _hinge_labels(y_true) * y_pred, 0)
        return _last_axis_mean(margin * margin)

    def gradient(self, y_true, y_pred):
        y = _hinge_labels(y_true)
        return -2 * y * get_array_module(y_pred).maximum(1 - y * y_pred, 0) / _elements_per_sample(y_pred)


class CategoricalHinge(Loss):
    """``max(max((1 - y_true) * y_pred) - sum(y_true * y_pred) + 1, 0)`` over the last axis."""

    def call(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        pos = (y_true * y_pred).sum(axis=-1)
        neg = ((1 - y_true) * y_pred).max(axis=-1)
        return _per_sample(xp.maximum(neg - pos + 1, 0))

    def gradient(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        scaled = (1 - y_true) * y_pred
        pos = (y_true * y_pred).sum(axis=-1, keepdims=True)
        neg_index = scaled.argmax(axis=-1)[..., None]
        d_neg = xp.zeros_like(y_pred)
        xp.put_along_axis(d_neg, neg_index, 1, axis=-1)
        active = xp.take_along_axis(scaled, neg_index, axis=-1) - pos + 1 > 0
        return active * (d_neg * (1 - y_true) - y_true) / _elements_per_sample(y_pred[..., 0])


class CosineSimilarity(Loss):
    """``-sum(l2_normalize(y_true) * l2_normalize(y_pred))`` along ``axis`` (-1 is a perfect match).

    Args:
        axis: the axis along which the similarity is computed.
    """

    def __init__(self, axis: int = -1, **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(axis, (int, np.integer)):
            raise TypeError(f"CosineSimilarity axis must be an integer. Received: axis={axis!r}")
        self.axis = int(axis)

    def _moved(self, array: Any) -> Any:
        if not -array.ndim < self.axis < array.ndim or self.axis in (0, -array.ndim):
            raise ValueError(f"{self.name}: axis must be a non-batch axis of predictions of shape "
                             f"{tuple(array.shape)}. Received: axis={self.axis}")
        return get_array_module(array).moveaxis(array, self.axis, -1)

    def call(self, y_true, y_pred):
        y, p = _l2_normalize(self._moved(y_true)), _l2_normalize(self._moved(y_pred))
        return _per_sample(-(y * p).sum(axis=-1))

    def gradient(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        y, p = _l2_normalize(self._moved(y_true)), self._moved(y_pred)
        norm = xp.sqrt(xp.maximum((p * p).sum(axis=-1, keepdims=True), _L2_EPSILON))
        unit = p / norm
        # Below the epsilon the norm is a constant, so the projection term vanishes.
        projection = xp.where(norm * norm > _L2_EPSILON, (y * unit).sum(axis=-1, keepdims=True) * unit, 0)
        grad = -(y - projection) / norm / _elements_per_sample(p[..., 0])
        return xp.moveaxis(grad, -1, self.axis)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


_L2_EPSILON = 1e-12  # Keras' l2_normalize: x / sqrt(max(sum(x^2), 1e-12))


def _l2_normalize(x: Any) -> Any:
    xp = get_array_module(x)
    return x / xp.sqrt(xp.maximum((x * x).sum(axis=-1, keepdims=True), _L2_EPSILON))


def _check_focal(alpha: float, gamma: float, label_smoothing: float, axis: int, owner: str) -> None:
    if gamma < 0:
        raise ValueError(f"{owner} gamma must be >= 0. Received: gamma={gamma}")
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"label_smoothing must be in [0, 1]. Received: label_smoothing={label_smoothing}")
    if axis != -1:
        raise ValueError(f"{owner} supports the class axis -1 only. Received: axis={axis}")


def _focal_power_derivative(base: Any, gamma: float) -> Any:
    """d(base^gamma)/d(base), zero for gamma = 0 (where base^-1 would be inf at base = 0)."""
    return gamma * base ** (gamma - 1) if gamma else base * 0


class CategoricalFocalCrossentropy(CategoricalCrossentropy):
    """Focal cross-entropy ``-sum(alpha * (1 - p)^gamma * y * log p)`` over the classes (Keras 3).

    Args:
        alpha: weighting factor; gamma: focusing parameter (>= 0); from_logits, label_smoothing
        and axis as ``CategoricalCrossentropy``.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, from_logits: bool = False,
                 label_smoothing: float = 0.0, axis: int = -1, **kwargs: Any):
        _check_focal(alpha, gamma, label_smoothing, axis, type(self).__name__)
        super().__init__(from_logits=from_logits, label_smoothing=label_smoothing, axis=axis, **kwargs)
        self.alpha, self.gamma = float(alpha), float(gamma)

    def _probabilities(self, y_pred: Any) -> Any:
        xp = get_array_module(y_pred)
        q = xp.exp(_log_softmax(y_pred)) if self.from_logits else y_pred / y_pred.sum(axis=-1, keepdims=True)
        return q, xp.clip(q, EPSILON, 1 - EPSILON)

    def call(self, y_true, y_pred):
        _, c = self._probabilities(y_pred)
        xp = get_array_module(y_pred)
        return _per_sample((-self.alpha * (1 - c) ** self.gamma * self._targets(y_true) * xp.log(c)).sum(axis=-1))

    def gradient(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        q, c = self._probabilities(y_pred)
        y = self._targets(y_true)
        # dL/dc per class, zero where the clip holds; then through c = q = p / sum(p) or softmax(z).
        d_c = -self.alpha * y * (-_focal_power_derivative(1 - c, self.gamma) * xp.log(c) + (1 - c) ** self.gamma / c)
        d_c = xp.where((q > EPSILON) & (q < 1 - EPSILON), d_c, 0)
        centred = d_c - (d_c * q).sum(axis=-1, keepdims=True)
        scale = 1.0 / _elements_per_sample(y_pred[..., 0])
        if self.from_logits:
            return q * centred * scale
        return centred / y_pred.sum(axis=-1, keepdims=True) * scale

    def fusable_with(self, activation_name):
        return False

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


class BinaryFocalCrossentropy(BinaryCrossentropy):
    """Focal binary cross-entropy ``(1 - p_t)^gamma * bce``, averaged over the last axis (Keras 3).

    Args:
        apply_class_balancing: weight positives by ``alpha`` and negatives by ``1 - alpha``.
        alpha, gamma: as Keras; from_logits, label_smoothing as ``BinaryCrossentropy``.
        axis: -1 only.
    """

    def __init__(self, apply_class_balancing: bool = False, alpha: float = 0.25, gamma: float = 2.0,
                 from_logits: bool = False, label_smoothing: float = 0.0, axis: int = -1, **kwargs: Any):
        _check_focal(alpha, gamma, label_smoothing, axis, type(self).__name__)
        super().__init__(from_logits=from_logits, label_smoothing=label_smoothing, **kwargs)
        self.apply_class_balancing, self.alpha, self.gamma = bool(apply_class_balancing), float(alpha), float(gamma)
        self.axis = axis

    def _parts(self, y_true: Any, y_pred: Any) -> tuple:
        """Smoothed labels, probabilities, element-wise bce, its derivative and dp/d(y_pred)."""
        xp = get_array_module(y_pred)
        y = self._targets(y_true)
        if self.from_logits:
            p = 0.5 * xp.tanh(0.5 * y_pred) + 0.5
            bce = xp.maximum(y_pred, 0) - y_pred * y + xp.log1p(xp.exp(-xp.abs(y_pred)))
            return y, p, bce, p - y, p * (1 - p)
        c = xp.clip(y_pred, EPSILON, 1 - EPSILON)
        bce = -(y * xp.log(c) + (1 - y) * xp.log(1 - c))
        d_bce = xp.where((y_pred > EPSILON) & (y_pred < 1 - EPSILON), (c - y) / (c * (1 - c)), 0)
        return y, y_pred, bce, d_bce, 1

    def _weight(self, y: Any) -> Any:
        return y * self.alpha + (1 - y) * (1 - self.alpha) if self.apply_class_balancing else 1

    def call(self, y_true, y_pred):
        y, p, bce, _, _ = self._parts(y_true, y_pred)
        p_t = y * p + (1 - y) * (1 - p)
        return _last_axis_mean(self._weight(y) * (1 - p_t) ** self.gamma * bce)

    def gradient(self, y_true, y_pred):
        y, p, bce, d_bce, d_p = self._parts(y_true, y_pred)
        base = 1 - (y * p + (1 - y) * (1 - p))
        d_focal = -_focal_power_derivative(base, self.gamma) * (2 * y - 1) * d_p
        return self._weight(y) * (d_focal * bce + base ** self.gamma * d_bce) / _elements_per_sample(y_pred)

    def fusable_with(self, activation_name):
        return False

    def get_config(self):
        return {**super().get_config(), "apply_class_balancing": self.apply_class_balancing,
                "alpha": self.alpha, "gamma": self.gamma, "axis": self.axis}


class _OverlapLoss(Loss):
    """Dice and Tversky: one value per sample over all its non-batch entries.

    Keras 3's default ``axis=None`` pools the whole batch into one number, which is not a mean of
    per-sample values and so could not be exact under data parallelism (docs/architecture.md,
    "Training"); distnn computes it per sample, which equals Keras for a batch of one.
    """

    def __init__(self, axis: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        if axis is not None:
            raise ValueError(f"{type(self).__name__} computes one value per sample over all non-batch axes; "
                             f"only axis=None is supported. Received: axis={axis!r}")
        self.axis = axis

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


def _flat(array: Any) -> Any:
    return array.reshape(array.shape[0], -1)


class Dice(_OverlapLoss):
    """``1 - 2 * sum(y_true * y_pred) / (sum(y_true) + sum(y_pred) + eps)`` per sample."""

    def call(self, y_true, y_pred):
        y, p = _flat(y_true), _flat(y_pred)
        return 1 - 2 * (y * p).sum(axis=1) / (y.sum(axis=1) + p.sum(axis=1) + EPSILON)

    def gradient(self, y_true, y_pred):
        y, p = _flat(y_true), _flat(y_pred)
        inter = (y * p).sum(axis=1, keepdims=True)
        total = y.sum(axis=1, keepdims=True) + p.sum(axis=1, keepdims=True) + EPSILON
        return (-2 * (y * total - inter) / (total * total)).reshape(y_pred.shape)


class Tversky(_OverlapLoss):
    """``1 - TP / (TP + alpha * FP + beta * FN + eps)`` per sample, with Keras 3's terms
    ``FP = sum((1 - y_pred) * y_true)`` and ``FN = sum(y_pred * (1 - y_true))``."""

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, axis: Any = None, **kwargs: Any):
        super().__init__(axis=axis, **kwargs)
        self.alpha, self.beta = float(alpha), float(beta)

    def _terms(self, y: Any, p: Any) -> tuple:
        inter = (y * p).sum(axis=1, keepdims=True)
        denominator = (inter + self.alpha * ((1 - p) * y).sum(axis=1, keepdims=True)
                       + self.beta * (p * (1 - y)).sum(axis=1, keepdims=True) + EPSILON)
        return inter, denominator

    def call(self, y_true, y_pred):
        inter, denominator = self._terms(_flat(y_true), _flat(y_pred))
        return (1 - inter / denominator)[:, 0]

    def gradient(self, y_true, y_pred):
        y, p = _flat(y_true), _flat(y_pred)
        inter, denominator = self._terms(y, p)
        d_denominator = y - self.alpha * y + self.beta * (1 - y)
        return (-(y * denominator - inter * d_denominator) / (denominator * denominator)).reshape(y_pred.shape)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta}
