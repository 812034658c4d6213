"""Metrics with Keras names.

A metric's whole state is a short float64 vector of *sums* (for example ``[sum of values, count]``),
so combining ranks is one allreduce of the concatenated states and the result equals what one
process computes on all the data (docs/architecture.md). ``batch_state`` gives a batch's contribution,
``result_from`` turns a state into the value; the Keras-style ``update_state`` / ``result`` /
``reset_state`` accumulate it.

Plain functions ``fn(y_true, y_pred) -> per-sample values`` are accepted as custom metrics and
averaged over samples.

A custom metric is written the Keras 3 way: state variables from ``add_variable`` (or
``add_weight``), ``update_state``, ``result`` and optionally ``reset_state``. The base class adapts it
to the sums above: a batch's state is the change ``update_state`` makes to the variables, and
``result_from`` assigns summed totals to the variables before calling ``result``. So under MPI **the
state variables are summed across ranks** (and over the steps of an epoch): a metric whose variables
are sums or counts (true positives, a total and a count) gives the single-process value; one whose
variables are not additive (a running maximum, a mean stored as such) does not.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from distnn import serialization
from distnn.backend import get_array_module


def _weighted_sum(values: Any, sample_weight: Any) -> tuple[float, float]:
    values = values.reshape(values.shape[0], -1).mean(axis=1) if values.ndim > 1 else values
    if sample_weight is None:
        return float(values.sum()), float(values.shape[0])
    w = sample_weight.reshape(-1).astype(values.dtype, copy=False)
    return float((values * w).sum()), float(w.sum())


# --------------------------------------------------------------------------- per-sample functions
def categorical_accuracy(y_true: Any, y_pred: Any) -> Any:
    return (y_true.argmax(axis=-1) == y_pred.argmax(axis=-1)).astype(y_pred.dtype)


def sparse_categorical_accuracy(y_true: Any, y_pred: Any) -> Any:
    labels = y_true.reshape(y_pred.shape[:-1])
    return (labels == y_pred.argmax(axis=-1)).astype(y_pred.dtype)


def binary_accuracy(y_true: Any, y_pred: Any, threshold: float = 0.5) -> Any:
    return ((y_pred > threshold) == (y_true > 0.5)).astype(y_pred.dtype).reshape(y_pred.shape[0], -1).mean(1)


def top_k_categorical_accuracy(y_true: Any, y_pred: Any, k: int = 5) -> Any:
    xp = get_array_module(y_pred)
    target = y_true.argmax(axis=-1)
    target_score = xp.take_along_axis(y_pred, target[..., None], axis=-1)
    # In the top k when fewer than k classes score strictly higher (ties count in its favour, as Keras).
    return ((y_pred > target_score).sum(axis=-1) < k).astype(y_pred.dtype)


def mean_squared_error(y_true: Any, y_pred: Any) -> Any:
    d = y_pred - y_true
    return (d * d).reshape(d.shape[0], -1).mean(axis=1)


def mean_absolute_error(y_true: Any, y_pred: Any) -> Any:
    return get_array_module(y_pred).abs(y_pred - y_true).reshape(y_pred.shape[0], -1).mean(axis=1)


# ------------------------------------------------------------------------------- metric objects
class Metric:
    """Base class: a state vector of sums, its per-batch contribution and the result it gives.

    Built-in metrics define ``batch_state`` / ``result_from`` on ``state``; custom ones (Keras 3
    style) define ``update_state`` / ``result`` on variables from ``add_variable`` (module docstring).
    """

    default_state_size = 2

    def __init__(self, name: str | None = None, dtype: Any = None):
        self.name = name or type(self).__name__.lower()
        self.dtype = np.dtype(dtype or "float32").name
        self._variables: list = []
        self.state = np.zeros(self.default_state_size)

    # ------------------------------------------------------------------ Keras 3 variable state
    def add_variable(self, shape: Any = (), initializer: Any = "zeros", dtype: Any = None,
                     aggregation: str = "sum", name: str | None = None) -> Any:
        """A state variable; its per-batch changes are summed across ranks (``aggregation="sum"``)."""
        from distnn import backend, initializers  # noqa: PLC0415 - keeps metrics import-light
        from distnn.layers.base import Variable  # noqa: PLC0415

        if aggregation != "sum":
            raise ValueError(f"Metric {self.name!r}: distnn sums metric variables across ranks, so only "
                             f"aggregation='sum' is supported. Received: aggregation={aggregation!r}")
        shape = () if shape is None else tuple(int(d) for d in shape)
        value = initializers.get(initializer)(shape, np.dtype(dtype or self.dtype).name, np.random.default_rng(0))
        variable = Variable(f"{self.name}/{name or f'variable_{len(self._variables)}'}",
                            backend.to_device(np.asarray(value)), trainable=False)
        self._variables.append(variable)
        self._initial_values = [v.numpy() for v in self._variables]
        return variable

    def add_weight(self, shape: Any = (), initializer: Any = "zeros", dtype: Any = None,
                   aggregation: str = "sum", name: str | None = None) -> Any:
        """Keras' older name for ``add_variable``."""
        return self.add_variable(shape=shape, initializer=initializer, dtype=dtype, aggregation=aggregation,
                                 name=name)

    @property
    def variables(self) -> list:
        return list(self._variables)

    @property
    def state_size(self) -> int:
        return sum(v.size for v in self._variables) if self._variables else self.default_state_size

    def _variable_values(self) -> np.ndarray:
        return np.concatenate([v.numpy().astype(np.float64).ravel() for v in self._variables])

    def _assign_variables(self, values: np.ndarray) -> None:
        offset = 0
        for v in self._variables:
            v.assign(np.asarray(values[offset:offset + v.size]).reshape(v.shape).astype(v.dtype))
            offset += v.size

    def batch_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> np.ndarray:
        """A custom metric's batch contribution: what ``update_state`` adds to its variables."""
        if type(self).update_state is Metric.update_state or not self._variables:
            raise NotImplementedError(f"Metric {type(self).__name__} must implement update_state() with state "
                                      "variables from add_variable(), or batch_state()/result_from()")
        before = self._variable_values()
        initial = self._initial_state_offset()
        # From the initial values, not the running ones: a float32 difference of large running totals
        # would lose the batch's low bits (the training loop keeps the totals in float64).
        self._assign_variables(initial)
        try:
            self.update_state(y_true, y_pred, sample_weight)
            return self._variable_values() - initial
        finally:
            self._assign_variables(before)

    def result_from(self, state: np.ndarray) -> float:
        """A custom metric's value for summed ``state``: the totals go into its variables, then ``result``."""
        if not self._variables:
            raise NotImplementedError(f"Metric {type(self).__name__} must implement result_from()")
        self._assign_variables(np.asarray(self._initial_state_offset()) + state)
        return float(np.asarray(self.result()))

    def _initial_state_offset(self) -> np.ndarray:
        """Initial variable values (zeros unless an initializer said otherwise): totals add to them."""
        return np.concatenate([v.astype(np.float64).ravel() for v in self._initial_values])

    # ------------------------------------------------------------------------- Keras methods
    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        self.state += self.batch_state(y_true, y_pred, sample_weight)

    def result(self) -> float:
        return self.result_from(self.state)

    def reset_state(self) -> None:
        self.state[:] = 0
        for v, initial in zip(self._variables, getattr(self, "_initial_values", [])):
            v.assign(initial)

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config: dict) -> "Metric":
        return cls(**config)


class Mean(Metric):
    """Weighted mean of per-sample values; the base of function-backed metrics."""

    def result_from(self, state):
        return float(state[0] / state[1]) if state[1] else 0.0


class MeanMetricWrapper(Mean):
    """Averages ``fn(y_true, y_pred)`` over samples (with optional sample weights)."""

    def __init__(self, fn: Callable[[Any, Any], Any] | str | dict, name: str | None = None, dtype: Any = None,
                 **fn_kwargs: Any):
        if isinstance(fn, (str, dict)):  # from a saved configuration: the function by its saved name
            fn = serialization.deserialize_keras_object(fn, module_objects=_TABLE, printable_module_name="metric")
        if not callable(fn):
            raise TypeError(f"MeanMetricWrapper needs a function (y_true, y_pred). Received: fn={fn!r}")
        super().__init__(name or getattr(fn, "__name__", "metric"), dtype)
        self.fn, self.fn_kwargs = fn, fn_kwargs

    def batch_state(self, y_true, y_pred, sample_weight=None):
        return np.array(_weighted_sum(self.fn(y_true, y_pred, **self.fn_kwargs), sample_weight))

    def get_config(self):
        return {**super().get_config(), "fn": serialize(self.fn), **self.fn_kwargs}


class LossMean(Mean):
    """The running mean of a loss: ``state = [sum of weighted per-sample losses, sample count]``."""

    def __init__(self, name: str = "loss"):
        super().__init__(name)

    def batch_state(self, values, count, sample_weight=None):  # noqa: D102 - (loss values, count)
        return np.array([float(values), float(count)])


class _ConfusionMetric(Metric):
    """Precision / recall from thresholded predictions: state = [true positives, false positives or negatives]."""

    def __init__(self, thresholds: float = 0.5, name: str | None = None, dtype: Any = None):
        super().__init__(name, dtype)
        self.thresholds = float(thresholds)

    def _counts(self, y_true, y_pred, sample_weight):
        pred = y_pred > self.thresholds
        true = y_true.reshape(y_pred.shape) > 0.5
        w = 1 if sample_weight is None else sample_weight.reshape(-1, *([1] * (y_pred.ndim - 1)))
        return pred, true, w

    def get_config(self):
        return {**super().get_config(), "thresholds": self.thresholds}


class Precision(_ConfusionMetric):
    def batch_state(self, y_true, y_pred, sample_weight=None):
        pred, true, w = self._counts(y_true, y_pred, sample_weight)
        return np.array([float(((pred & true) * w).sum()), float(((pred & ~true) * w).sum())])

    def result_from(self, state):
        return float(state[0] / (state[0] + state[1])) if state[0] + state[1] else 0.0


class Recall(_ConfusionMetric):
    def batch_state(self, y_true, y_pred, sample_weight=None):
        pred, true, w = self._counts(y_true, y_pred, sample_weight)
        return np.array([float(((pred & true) * w).sum()), float(((~pred & true) * w).sum())])

    def result_from(self, state):
        return float(state[0] / (state[0] + state[1])) if state[0] + state[1] else 0.0


_FUNCTIONS: dict[str, Callable] = {
    "categorical_accuracy": categorical_accuracy,
    "sparse_categorical_accuracy": sparse_categorical_accuracy,
    "binary_accuracy": binary_accuracy,
    "top_k_categorical_accuracy": top_k_categorical_accuracy,
    "mean_squared_error": mean_squared_error, "mse": mean_squared_error,
    "mean_absolute_error": mean_absolute_error, "mae": mean_absolute_error,
}
_CLASSES: dict[str, type[Metric]] = {"precision": Precision, "recall": Recall}
VALID_NAMES = sorted([*_FUNCTIONS, *_CLASSES, "accuracy", "acc"])
_TABLE: dict[str, Any] = {**_FUNCTIONS,
                          **{cls.__name__: cls for cls in (Metric, Mean, MeanMetricWrapper, Precision, Recall)}}
serialization.register_builtins("distnn.metrics", _TABLE)


def resolve_accuracy(output_shape: tuple, label_shape: tuple) -> Callable:
    """Keras 3's choice for ``"accuracy"``, from the output and label shapes alone: one output unit is
    binary; integer labels (one axis fewer, or a last axis of 1) are sparse; else categorical — also for
    multi-label sigmoid outputs, where ``"binary_accuracy"`` must be asked for by name, as in Keras 3."""
    if output_shape[-1] == 1:
        return binary_accuracy
    if len(label_shape) < len(output_shape) or label_shape[-1] == 1:
        return sparse_categorical_accuracy
    return categorical_accuracy


def get(identifier: Any, output_shape: tuple = (None, 2), label_shape: tuple = (None, 2)) -> Metric:
    """Resolve a metric from a name (a built-in or a registered custom one), a saved configuration,
    a ``Metric`` instance or a per-sample function; ``"accuracy"`` from the shapes of the model's
    output and of the labels."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        if identifier in ("accuracy", "acc"):
            return MeanMetricWrapper(resolve_accuracy(output_shape, label_shape), name=identifier)
        if identifier in _CLASSES:
            return _CLASSES[identifier](name=identifier)
        if identifier in _FUNCTIONS:
            return MeanMetricWrapper(_FUNCTIONS[identifier], name=identifier)
        custom = serialization.get_registered_object(identifier)
        if custom is None:
            raise ValueError(f"Unknown metric {identifier!r}. Valid names: {VALID_NAMES} (a custom metric needs "
                             "custom_objects or @distnn.saving.register_keras_serializable())")
        identifier = custom() if isinstance(custom, type) else custom
    elif isinstance(identifier, dict):
        identifier = serialization.resolve(identifier, _TABLE, "metric")
    if isinstance(identifier, Metric):
        return identifier
    if callable(identifier) and not isinstance(identifier, type):
        return MeanMetricWrapper(identifier)
    raise TypeError(f"metric must be a string, a Metric or a function. Received: {identifier!r}")


def serialize(metric: Any) -> Any:
    """A metric as ``compile`` took it: a name stays a name; a ``Metric`` or a named function gets
    its saved configuration (a lambda cannot be saved)."""
    if isinstance(metric, str):
        return metric
    try:
        return serialization.serialize_keras_object(metric)
    except ValueError as exc:
        raise ValueError(f"Cannot save the custom metric {metric!r}: {exc}") from exc


def deserialize(config: Any, custom_objects: dict | None = None) -> Any:
    """What ``serialize`` described: a name as it is (``compile`` resolves it), else the ``Metric``
    or the function (``compile`` wraps it)."""
    if isinstance(config, str):
        return config
    return serialization.deserialize_keras_object(config, custom_objects, _TABLE, "metric")


# Keras' class-style names for the function metrics.
def CategoricalAccuracy(name: str = "categorical_accuracy") -> Metric:  # noqa: N802 - Keras spelling
    return MeanMetricWrapper(categorical_accuracy, name=name)


def SparseCategoricalAccuracy(name: str = "sparse_categorical_accuracy") -> Metric:  # noqa: N802
    return MeanMetricWrapper(sparse_categorical_accuracy, name=name)


def BinaryAccuracy(name: str = "binary_accuracy", threshold: float = 0.5) -> Metric:  # noqa: N802
    return MeanMetricWrapper(binary_accuracy, name=name, threshold=threshold)


def TopKCategoricalAccuracy(k: int = 5, name: str = "top_k_categorical_accuracy") -> Metric:  # noqa: N802
    return MeanMetricWrapper(top_k_categorical_accuracy, name=name, k=k)
