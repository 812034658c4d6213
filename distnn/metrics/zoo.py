"""Keras 3's further metrics: AUC, F-scores, regression, IoU, top-k and loss metrics.

Every state is a vector of sums, so N ranks give the single-process value (docs/architecture.md):
AUC's state is its confusion histogram over the thresholds (true/false positives/negatives per
threshold), summed across ranks, never per-rank AUCs. Metrics whose state size depends on the
number of classes or outputs learn it from the model's output shape when compiled
(``build_for_output``) unless their arguments give it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn import backend
from distnn.backend import get_array_module
from distnn.losses import base as loss_base
from distnn.losses import zoo as loss_zoo
from distnn.metrics.base import Mean, Metric, _weighted_sum

EPSILON = 1e-7  # Keras' backend.epsilon()


def _divide_no_nan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64)
    return np.where(b != 0, np.asarray(a, dtype=np.float64) / np.where(b != 0, b, 1), 0.0)


def _host(array: Any) -> np.ndarray:
    return np.asarray(backend.to_numpy(array), dtype=np.float64)


def _sample_weights(sample_weight: Any, shape: tuple) -> np.ndarray:
    """Per-entry weights of shape ``shape`` from per-sample (or per-entry) weights."""
    if sample_weight is None:
        return np.ones(shape)
    w = _host(sample_weight)
    w = w.reshape(w.shape[0], *([1] * (len(shape) - 1))) if w.size == shape[0] else w.reshape(shape)
    return np.broadcast_to(w, shape)


class _SizedMetric(Metric):
    """A built-in metric whose state size is set per instance."""

    def __init__(self, state_size: int, name: str | None, dtype: Any):
        self.default_state_size = int(state_size)
        super().__init__(name, dtype)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        change = self.batch_state(y_true, y_pred, sample_weight)  # first: it may size the state
        self.state += change

    def _resize(self, state_size: int) -> None:
        self.default_state_size = int(state_size)
        self.state = np.zeros(self.default_state_size)


# ------------------------------------------------------------------------------------------- AUC
class AUC(_SizedMetric):
    """Area under the ROC or precision-recall curve from a confusion histogram over thresholds (Keras 3).

    Args:
        num_thresholds: thresholds evenly spaced in [0, 1] (with -eps and 1 + eps at the ends).
        curve: ``"ROC"`` or ``"PR"``.
        summation_method: ``"interpolation"``, ``"minoring"`` or ``"majoring"``.
        thresholds: explicit thresholds in [0, 1], instead of ``num_thresholds``.
        from_logits: apply a sigmoid to the predictions first.
        multi_label, num_labels, label_weights: only the Keras default (one AUC over all labels).
    """

    def __init__(self, num_thresholds: int = 200, curve: str = "ROC", summation_method: str = "interpolation",
                 name: str | None = None, dtype: Any = None, thresholds: Any = None, multi_label: bool = False,
                 num_labels: Any = None, label_weights: Any = None, from_logits: bool = False):
        if curve.upper() not in ("ROC", "PR"):
            raise ValueError(f"AUC curve must be 'ROC' or 'PR'. Received: curve={curve!r}")
        if summation_method not in ("interpolation", "minoring", "majoring"):
            raise ValueError("AUC summation_method must be 'interpolation', 'minoring' or 'majoring'. "
                             f"Received: summation_method={summation_method!r}")
        if multi_label or num_labels is not None or label_weights is not None:
            raise ValueError("distnn's AUC computes one curve over all labels (Keras' multi_label=False); "
                             f"Received: multi_label={multi_label}, num_labels={num_labels}, "
                             f"label_weights={label_weights}")
        if thresholds is not None:
            inner = sorted(float(t) for t in thresholds)
            if any(not 0 <= t <= 1 for t in inner):
                raise ValueError(f"AUC thresholds must lie in [0, 1]. Received: thresholds={thresholds}")
            num_thresholds = len(inner) + 2
        else:
            if num_thresholds <= 1:
                raise ValueError(f"AUC num_thresholds must be > 1. Received: num_thresholds={num_thresholds}")
            inner = [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)]
        self.num_thresholds, self.curve, self.summation_method = int(num_thresholds), curve.upper(), summation_method
        self.from_logits, self.multi_label = bool(from_logits), False
        self._thresholds_given = thresholds is not None
        self.thresholds = np.array([0.0 - EPSILON, *inner, 1.0 + EPSILON])
        super().__init__(4 * self.num_thresholds, name or "auc", dtype)

    def batch_state(self, y_true, y_pred, sample_weight=None):
        p = _host(y_pred)
        if self.from_logits:
            p = 0.5 * np.tanh(0.5 * p) + 0.5
        y = _host(y_true).reshape(p.shape)
        w = _sample_weights(sample_weight, p.shape).ravel()
        p, y = p.ravel(), y.ravel()
        # Bucket k = how many thresholds lie strictly below the prediction; then the prediction is
        # "positive" at threshold j exactly when k > j, so each count is a suffix sum of the histogram.
        buckets = np.searchsorted(self.thresholds, p, side="left")
        n = self.num_thresholds
        positives = np.bincount(buckets, weights=w * y, minlength=n + 1)
        negatives = np.bincount(buckets, weights=w * (1 - y), minlength=n + 1)
        tp = np.cumsum(positives[::-1])[::-1][1:]
        fp = np.cumsum(negatives[::-1])[::-1][1:]
        return np.concatenate([tp, fp, negatives.sum() - fp, positives.sum() - tp])

    def result_from(self, state):
        n = self.num_thresholds
        tp, fp, tn, fn = (np.asarray(state[i * n:(i + 1) * n], dtype=np.float64) for i in range(4))
        if self.curve == "PR" and self.summation_method == "interpolation":
            return self._interpolate_pr_auc(tp, fp, fn)
        recall = _divide_no_nan(tp, tp + fn)
        if self.curve == "ROC":
            x, y = _divide_no_nan(fp, fp + tn), recall
        else:
            x, y = recall, _divide_no_nan(tp, tp + fp)
        if self.summation_method == "interpolation":
            heights = (y[:-1] + y[1:]) / 2
        elif self.summation_method == "minoring":
            heights = np.minimum(y[:-1], y[1:])
        else:
            heights = np.maximum(y[:-1], y[1:])
        return float(((x[:-1] - x[1:]) * heights).sum())

    @staticmethod
    def _interpolate_pr_auc(tp, fp, fn):
        """Davis & Goadrich's interpolation of precision between thresholds, as Keras 3."""
        dtp = tp[:-1] - tp[1:]
        p = tp + fp
        dp = p[:-1] - p[1:]
        slope = _divide_no_nan(dtp, np.maximum(dp, 0))
        intercept = tp[1:] - slope * p[1:]
        ratio = np.where((p[:-1] > 0) & (p[1:] > 0), _divide_no_nan(p[:-1], np.maximum(p[1:], 0)), 1.0)
        return float(_divide_no_nan(slope * (dtp + intercept * np.log(ratio)), np.maximum(tp[1:] + fn[1:], 0)).sum())

    def get_config(self):
        config = {**super().get_config(), "num_thresholds": self.num_thresholds, "curve": self.curve,
                  "summation_method": self.summation_method, "from_logits": self.from_logits}
        if self._thresholds_given:
            config["thresholds"] = self.thresholds[1:-1].tolist()
        return config


# ------------------------------------------------------------------------------------- F-scores
class FBetaScore(_SizedMetric):
    """F-beta score per class, or averaged (``"micro"``, ``"macro"``, ``"weighted"``), as Keras 3.

    Args:
        average: None (one score per class), "micro", "macro" or "weighted".
        beta: weight of recall against precision (> 0).
        threshold: predictions above it are positive; None: the largest prediction of each sample.
    """

    def __init__(self, average: str | None = None, beta: float = 1.0, threshold: float | None = None,
                 name: str = "fbeta_score", dtype: Any = None):
        if average not in (None, "micro", "macro", "weighted"):
            raise ValueError("average must be None, 'micro', 'macro' or 'weighted'. "
                             f"Received: average={average!r}")
        if beta <= 0:
            raise ValueError(f"beta must be > 0. Received: beta={beta}")
        if threshold is not None and not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1]. Received: threshold={threshold}")
        self.average, self.beta, self.threshold = average, float(beta), threshold
        self.num_classes: int | None = None
        super().__init__(4, name, dtype)

    def build_for_output(self, output_shape: tuple) -> None:
        classes = output_shape[-1]
        if classes is None:
            raise ValueError(f"{self.name} needs a known number of classes. Received: output shape {output_shape}")
        self.num_classes = int(classes)
        self._resize(4 * (1 if self.average == "micro" else self.num_classes))

    def batch_state(self, y_true, y_pred, sample_weight=None):
        p = _host(y_pred)
        if self.num_classes is None:
            self.build_for_output(p.shape)
        y = _host(y_true).reshape(p.shape)
        if self.threshold is None:
            predicted = (p >= p.max(axis=-1, keepdims=True)) & (np.abs(p) > 1e-9)
        else:
            predicted = p > self.threshold
        predicted = predicted.astype(np.float64).reshape(-1, p.shape[-1])
        y = y.reshape(-1, p.shape[-1])
        w = _sample_weights(sample_weight, (p.shape[0], 1)).repeat(y.shape[0] // p.shape[0], axis=0)
        axis = None if self.average == "micro" else 0
        parts = [(predicted * y * w).sum(axis=axis), (predicted * (1 - y) * w).sum(axis=axis),
                 ((1 - predicted) * y * w).sum(axis=axis), (y * w).sum(axis=axis)]
        return np.concatenate([np.atleast_1d(part) for part in parts])

    def result_from(self, state):
        tp, fp, fn, weights = np.split(np.asarray(state, dtype=np.float64), 4)
        precision = tp / (tp + fp + EPSILON)
        recall = tp / (tp + fn + EPSILON)
        score = precision * recall / (self.beta ** 2 * precision + recall + EPSILON) * (1 + self.beta ** 2)
        if self.average == "weighted":
            return float((score * weights / (weights.sum() + EPSILON)).sum())
        if self.average is not None:
            return float(score.mean())
        return score

    def get_config(self):
        return {**super().get_config(), "average": self.average, "beta": self.beta, "threshold": self.threshold}


class F1Score(FBetaScore):
    """F-beta with beta = 1."""

    def __init__(self, average: str | None = None, threshold: float | None = None, name: str = "f1_score",
                 dtype: Any = None):
        super().__init__(average=average, beta=1.0, threshold=threshold, name=name, dtype=dtype)

    def get_config(self):
        config = super().get_config()
        del config["beta"]
        return config


# ----------------------------------------------------------------------------------- regression
class RootMeanSquaredError(Mean):
    """``sqrt`` of the (weighted) mean squared error."""

    def __init__(self, name: str = "root_mean_squared_error", dtype: Any = None):
        super().__init__(name, dtype)

    def batch_state(self, y_true, y_pred, sample_weight=None):
        d = y_pred - y_true.reshape(y_pred.shape)
        return np.array(_weighted_sum(d * d, sample_weight))

    def result_from(self, state):
        return float(np.sqrt(state[0] / state[1])) if state[1] else 0.0


class R2Score(_SizedMetric):
    """Coefficient of determination per output, aggregated as Keras 3.

    Args:
        class_aggregation: "uniform_average", "variance_weighted_average" or None (one per output).
        num_regressors: for the adjusted R2 (0: not adjusted).
    """

    def __init__(self, class_aggregation: str | None = "uniform_average", num_regressors: int = 0,
                 name: str = "r2_score", dtype: Any = None):
        if class_aggregation not in (None, "uniform_average", "variance_weighted_average"):
            raise ValueError("class_aggregation must be None, 'uniform_average' or 'variance_weighted_average'. "
                             f"Received: class_aggregation={class_aggregation!r}")
        if num_regressors < 0:
            raise ValueError(f"num_regressors must be >= 0. Received: num_regressors={num_regressors}")
        self.class_aggregation, self.num_regressors = class_aggregation, int(num_regressors)
        self.num_outputs: int | None = None
        super().__init__(5, name, dtype)

    def build_for_output(self, output_shape: tuple) -> None:
        self.num_outputs = int(output_shape[-1]) if len(output_shape) > 1 else 1
        self._resize(4 * self.num_outputs + 1)

    def batch_state(self, y_true, y_pred, sample_weight=None):
        p = _host(y_pred)
        p = p.reshape(p.shape[0], -1)
        if self.num_outputs is None:
            self.build_for_output(p.shape)
        y = _host(y_true).reshape(p.shape)
        w = _sample_weights(sample_weight, p.shape)
        return np.concatenate([(y * w).sum(0), (y * y * w).sum(0), ((y - p) ** 2 * w).sum(0), w.sum(0),
                               [float(p.shape[0])]])

    def result_from(self, state):
        total_sum, squared_sum, residual, count = np.split(np.asarray(state[:-1], dtype=np.float64), 4)
        samples = float(state[-1])
        total = squared_sum - total_sum * _divide_no_nan(total_sum, count)
        scores = 1 - _divide_no_nan(residual, total)
        scores = np.where(total == 0, 0.0, scores)  # Keras replaces the infinite ratio with 0
        if self.class_aggregation == "uniform_average":
            r2 = float(scores.mean())
        elif self.class_aggregation == "variance_weighted_average":
            r2 = float((total * scores).sum() / total.sum()) if total.sum() else 0.0
        else:
            r2 = scores
        if self.num_regressors:
            if self.num_regressors > samples - 1 or self.num_regressors == samples - 1:
                return r2  # Keras warns and returns the unadjusted score here
            r2 = 1 - (1 - r2) * (samples - 1) / (samples - self.num_regressors - 1)
        return r2

    def get_config(self):
        return {**super().get_config(), "class_aggregation": self.class_aggregation,
                "num_regressors": self.num_regressors}


# ------------------------------------------------------------------------------------------ IoU
class MeanIoU(_SizedMetric):
    """Mean intersection-over-union over the classes from a confusion matrix (Keras 3).

    Args:
        num_classes: number of classes.
        ignore_class: a label whose entries are left out; None: none.
        sparse_y_true, sparse_y_pred: whether labels / predictions are class ids (else scores: argmax).
        axis: the class axis of dense labels or predictions.
    """

    def __init__(self, num_classes: int, name: str | None = None, dtype: Any = None, ignore_class: int | None = None,
                 sparse_y_true: bool = True, sparse_y_pred: bool = True, axis: int = -1):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1. Received: num_classes={num_classes}")
        self.num_classes, self.ignore_class = int(num_classes), ignore_class
        self.sparse_y_true, self.sparse_y_pred, self.axis = bool(sparse_y_true), bool(sparse_y_pred), int(axis)
        super().__init__(self.num_classes ** 2, name or "mean_io_u", dtype)

    def batch_state(self, y_true, y_pred, sample_weight=None):
        p, y = _host(y_pred), _host(y_true)
        w = _sample_weights(sample_weight, (p.shape[0],))
        p = p.argmax(axis=self.axis) if not self.sparse_y_pred else p
        y = y.argmax(axis=self.axis) if not self.sparse_y_true else y
        entries = max(p.size // p.shape[0], y.size // y.shape[0])
        p, y = p.reshape(-1), y.reshape(-1)
        w = np.repeat(w, entries) if w.size != p.size else w.reshape(-1)
        keep = np.ones(p.shape, dtype=bool) if self.ignore_class is None else y != self.ignore_class
        index = y[keep].astype(np.int64) * self.num_classes + p[keep].astype(np.int64)
        return np.bincount(index, weights=w[keep], minlength=self.num_classes ** 2).astype(np.float64)

    def result_from(self, state):
        matrix = np.asarray(state, dtype=np.float64).reshape(self.num_classes, self.num_classes)
        tp = np.diag(matrix)
        denominator = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
        valid = int((denominator != 0).sum())
        return float(_divide_no_nan(tp, denominator).sum() / valid) if valid else 0.0

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_class": self.ignore_class,
                "sparse_y_true": self.sparse_y_true, "sparse_y_pred": self.sparse_y_pred, "axis": self.axis}


# ------------------------------------------------------------------------------- mean of values
class _MeanOf(Mean):
    """The weighted mean over samples of per-sample values (``values``), configured by ``kwargs``."""

    def __init__(self, name: str, dtype: Any = None, **kwargs: Any):
        super().__init__(name, dtype)
        self._kwargs = kwargs

    def values(self, y_true: Any, y_pred: Any) -> Any:
        raise NotImplementedError

    def batch_state(self, y_true, y_pred, sample_weight=None):
        xp = get_array_module(y_pred)
        return np.array(_weighted_sum(self.values(xp.asarray(y_true), y_pred), sample_weight))

    def get_config(self):
        return {**super().get_config(), **self._kwargs}


class SparseTopKCategoricalAccuracy(_MeanOf):
    """Whether the integer label is among the ``k`` highest predictions (ties count, as Keras)."""

    def __init__(self, k: int = 5, name: str = "sparse_top_k_categorical_accuracy", dtype: Any = None,
                 from_sorted_ids: bool = False):
        if int(k) < 1:
            raise ValueError(f"k must be >= 1. Received: k={k}")
        super().__init__(name, dtype, k=int(k), from_sorted_ids=bool(from_sorted_ids))

    def values(self, y_true, y_pred):
        xp = get_array_module(y_pred)
        k = self._kwargs["k"]
        if self._kwargs["from_sorted_ids"]:  # y_pred: class ids, best first
            return (y_pred[..., :k] == y_true.reshape(y_pred.shape[:-1] + (1,))).any(axis=-1).astype(np.float64)
        labels = y_true.reshape(y_pred.shape[:-1] + (1,)).astype(np.int64)
        target = xp.take_along_axis(y_pred, labels, axis=-1)
        return ((y_pred > target).sum(axis=-1) < k).astype(y_pred.dtype)


class _LossValueMetric(_MeanOf):
    """The mean of a loss's per-sample values; ``sign`` -1 turns the cosine loss into the similarity."""

    loss_class: type = loss_base.Loss
    sign = 1

    def __init__(self, name: str, dtype: Any = None, **kwargs: Any):
        super().__init__(name, dtype, **kwargs)
        self._loss = self.loss_class(**kwargs)

    def values(self, y_true, y_pred):
        return self.sign * self._loss.call(y_true, y_pred)


class CategoricalCrossentropy(_LossValueMetric):
    loss_class = loss_base.CategoricalCrossentropy

    def __init__(self, name: str = "categorical_crossentropy", dtype: Any = None, from_logits: bool = False,
                 label_smoothing: float = 0.0, axis: int = -1):
        super().__init__(name, dtype, from_logits=from_logits, label_smoothing=label_smoothing, axis=axis)


class SparseCategoricalCrossentropy(_LossValueMetric):
    loss_class = loss_base.SparseCategoricalCrossentropy

    def __init__(self, name: str = "sparse_categorical_crossentropy", dtype: Any = None, from_logits: bool = False):
        super().__init__(name, dtype, from_logits=from_logits)


class BinaryCrossentropy(_LossValueMetric):
    loss_class = loss_base.BinaryCrossentropy

    def __init__(self, name: str = "binary_crossentropy", dtype: Any = None, from_logits: bool = False,
                 label_smoothing: float = 0.0):
        super().__init__(name, dtype, from_logits=from_logits, label_smoothing=label_smoothing)


class CosineSimilarity(_LossValueMetric):
    """The mean cosine similarity (positive: 1 is a perfect match)."""

    loss_class, sign = loss_zoo.CosineSimilarity, -1

    def __init__(self, name: str = "cosine_similarity", dtype: Any = None, axis: int = -1):
        super().__init__(name, dtype, axis=axis)


class LogCoshError(_LossValueMetric):
    loss_class = loss_zoo.LogCosh

    def __init__(self, name: str = "logcosh", dtype: Any = None):
        super().__init__(name, dtype)
