"""Losses with Keras names, classes, functions and string aliases (see ``distnn.losses.base``)."""
from __future__ import annotations

from typing import Any, Callable

from distnn import serialization
from distnn.backend import get_array_module
from distnn.losses.base import (EPSILON, REDUCTIONS, TRAINING_REDUCTIONS, BinaryCrossentropy,
                                CategoricalCrossentropy, Huber, KLDivergence, Loss, MeanAbsoluteError,
                                MeanSquaredError, SparseCategoricalCrossentropy)
from distnn.losses.zoo import (BinaryFocalCrossentropy, CategoricalFocalCrossentropy, CategoricalHinge,
                               CosineSimilarity, Dice, Hinge, LogCosh, MeanAbsolutePercentageError,
                               MeanSquaredLogarithmicError, Poisson, SquaredHinge, Tversky)


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
    "mean_absolute_percentage_error": MeanAbsolutePercentageError, "mape": MeanAbsolutePercentageError,
    "mean_squared_logarithmic_error": MeanSquaredLogarithmicError, "msle": MeanSquaredLogarithmicError,
    "log_cosh": LogCosh, "logcosh": LogCosh, "poisson": Poisson, "hinge": Hinge, "squared_hinge": SquaredHinge,
    "categorical_hinge": CategoricalHinge, "cosine_similarity": CosineSimilarity,
    "categorical_focal_crossentropy": CategoricalFocalCrossentropy,
    "binary_focal_crossentropy": BinaryFocalCrossentropy, "dice": Dice, "tversky": Tversky,
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
        loss_class = getattr(identifier, "_loss_class", None)  # distnn.losses.hinge and the like
        return loss_class() if loss_class else LossFunctionWrapper(identifier)
    raise TypeError(f"loss must be a string, a Loss instance or a function (y_true, y_pred). "
                    f"Received: loss={identifier!r}")


def serialize(loss: Loss) -> dict:
    return serialization.serialize_keras_object(loss)


def deserialize(config: str | dict, custom_objects: dict | None = None) -> Loss:
    return get(config, custom_objects)


def _functional(name: str, cls: type[Loss]) -> Callable[..., Any]:
    """Keras' function form of a loss: per-sample values of ``cls(**kwargs)``."""
    def fn(y_true: Any, y_pred: Any, **kwargs: Any) -> Any:
        xp = get_array_module(y_pred)
        return cls(**kwargs).call(xp.asarray(y_true), xp.asarray(y_pred))

    fn.__name__, fn._loss_class = name, cls
    fn.__doc__ = f"Per-sample values of ``{cls.__name__}(**kwargs)`` (numpy or cupy)."
    return fn


mean_absolute_percentage_error = mape = _functional("mean_absolute_percentage_error", MeanAbsolutePercentageError)
mean_squared_logarithmic_error = msle = _functional("mean_squared_logarithmic_error", MeanSquaredLogarithmicError)
log_cosh = logcosh = _functional("log_cosh", LogCosh)
poisson = _functional("poisson", Poisson)
hinge = _functional("hinge", Hinge)
# Horovod's Keras examples pass these to compile(): they train with the classes' fused gradients.
categorical_crossentropy = _functional("categorical_crossentropy", CategoricalCrossentropy)
sparse_categorical_crossentropy = _functional("sparse_categorical_crossentropy", SparseCategoricalCrossentropy)
squared_hinge = _functional("squared_hinge", SquaredHinge)
categorical_hinge = _functional("categorical_hinge", CategoricalHinge)
cosine_similarity = _functional("cosine_similarity", CosineSimilarity)
categorical_focal_crossentropy = _functional("categorical_focal_crossentropy", CategoricalFocalCrossentropy)
binary_focal_crossentropy = _functional("binary_focal_crossentropy", BinaryFocalCrossentropy)
dice = _functional("dice", Dice)
tversky = _functional("tversky", Tversky)
categorical_crossentropy = _functional("categorical_crossentropy", CategoricalCrossentropy)
sparse_categorical_crossentropy = _functional("sparse_categorical_crossentropy", SparseCategoricalCrossentropy)
binary_crossentropy = _functional("binary_crossentropy", BinaryCrossentropy)
mean_squared_error = _functional("mean_squared_error", MeanSquaredError)
mean_absolute_error = _functional("mean_absolute_error", MeanAbsoluteError)
huber = _functional("huber", Huber)
kl_divergence = _functional("kl_divergence", KLDivergence)
