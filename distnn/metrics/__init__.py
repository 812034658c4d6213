"""Metrics with Keras names (see ``distnn.metrics.base`` for the state contract)."""
from __future__ import annotations

from typing import Any, Callable

from distnn import serialization
from distnn.metrics.base import (LossMean, Mean, MeanMetricWrapper, Metric, Precision, Recall, binary_accuracy,
                                 categorical_accuracy, mean_absolute_error, mean_squared_error,
                                 sparse_categorical_accuracy, top_k_categorical_accuracy)
from distnn.metrics.zoo import (AUC, BinaryCrossentropy, CategoricalCrossentropy, CosineSimilarity, F1Score,
                                FBetaScore, LogCoshError, MeanIoU, R2Score, RootMeanSquaredError,
                                SparseCategoricalCrossentropy, SparseTopKCategoricalAccuracy)

_ZOO = (AUC, BinaryCrossentropy, CategoricalCrossentropy, CosineSimilarity, F1Score, FBetaScore, LogCoshError,
        MeanIoU, R2Score, RootMeanSquaredError, SparseCategoricalCrossentropy, SparseTopKCategoricalAccuracy)


_FUNCTIONS: dict[str, Callable] = {
    "categorical_accuracy": categorical_accuracy,
    "sparse_categorical_accuracy": sparse_categorical_accuracy,
    "binary_accuracy": binary_accuracy,
    "top_k_categorical_accuracy": top_k_categorical_accuracy,
    "mean_squared_error": mean_squared_error, "mse": mean_squared_error,
    "mean_absolute_error": mean_absolute_error, "mae": mean_absolute_error,
}
_CLASSES: dict[str, type[Metric]] = {
    "precision": Precision, "recall": Recall, "auc": AUC, "f1_score": F1Score, "fbeta_score": FBetaScore,
    "root_mean_squared_error": RootMeanSquaredError, "rmse": RootMeanSquaredError, "r2_score": R2Score,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy, "cosine_similarity": CosineSimilarity, "logcosh": LogCoshError,
    "log_cosh_error": LogCoshError,
}
VALID_NAMES = sorted([*_FUNCTIONS, *_CLASSES, "accuracy", "acc"])
_TABLE: dict[str, Any] = {**_FUNCTIONS,
                          **{cls.__name__: cls for cls in (Metric, Mean, MeanMetricWrapper, Precision, Recall, *_ZOO)}}
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
        return _built(identifier, output_shape)
    if isinstance(identifier, str):
        if identifier in ("accuracy", "acc"):
            return MeanMetricWrapper(resolve_accuracy(output_shape, label_shape), name=identifier)
        if identifier in _CLASSES:
            return _built(_CLASSES[identifier](name=identifier), output_shape)
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
        return _built(identifier, output_shape)
    if callable(identifier) and not isinstance(identifier, type):
        return MeanMetricWrapper(identifier)
    raise TypeError(f"metric must be a string, a Metric or a function. Received: {identifier!r}")


def _built(metric: Metric, output_shape: tuple) -> Metric:
    """A metric whose state size depends on the model's output learns it here (F1Score, R2Score)."""
    build = getattr(metric, "build_for_output", None)
    if build is not None:
        build(tuple(output_shape))
    return metric


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
