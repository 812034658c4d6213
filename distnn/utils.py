"""Utilities with Keras names: ``to_categorical``, ``normalize``, ``set_random_seed``, ``clear_session``,
``PyDataset`` (``Sequence``), the gradient checks, and (as in Keras 3) the serialization registry's functions.

Nothing inside distnn imports this module: it only gathers public names (the generator and the
layer-name counters live in ``distnn.global_state``), so it may import anything without a cycle.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn.data.py_dataset import PyDataset, Sequence
from distnn.global_state import clear_session, global_rng, set_random_seed
from distnn.gradient_check import (check_gradients, check_layer_gradients, check_loss_gradients,
                                   check_model_gradients)
from distnn.plotting import plot_history  # matplotlib is imported only when it is called
from distnn.serialization import (CustomObjectScope, custom_object_scope, deserialize_keras_object,
                                  get_custom_objects, get_registered_name, get_registered_object,
                                  register_keras_serializable, serialize_keras_object)

__all__ = ["to_categorical", "normalize", "set_random_seed", "clear_session", "global_rng", "PyDataset", "Sequence",
           "check_gradients",
           "check_layer_gradients", "check_loss_gradients", "check_model_gradients", "plot_history",
           # Keras 3 also offers the serialization registry under keras.utils
           "CustomObjectScope", "custom_object_scope", "deserialize_keras_object", "get_custom_objects",
           "get_registered_name", "get_registered_object", "register_keras_serializable", "serialize_keras_object"]


def to_categorical(y: Any, num_classes: int | None = None, dtype: str = "float32") -> np.ndarray:
    """One-hot encode integer class labels (Keras' ``to_categorical``).

    Args:
        y: integer labels of any shape (a trailing axis of size 1 is dropped, as in Keras).
        num_classes: number of classes; ``max(y) + 1`` when omitted.
        dtype: dtype of the result.

    Returns:
        An array of shape ``y.shape + (num_classes,)``.
    """
    y = np.asarray(y)
    if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ValueError("to_categorical expects integer class labels. Received non-integer values")
    y = y.astype(np.int64)
    if y.ndim > 1 and y.shape[-1] == 1:
        y = y.reshape(y.shape[:-1])
    if y.size and y.min() < 0:
        raise ValueError(f"to_categorical expects labels >= 0. Received: min label {int(y.min())}")
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    elif y.size and y.max() >= num_classes:
        raise ValueError(f"Label {int(y.max())} is out of range for num_classes={num_classes}")
    out = np.zeros((y.size, num_classes), dtype=dtype)
    out[np.arange(y.size), y.ravel()] = 1
    return out.reshape(*y.shape, num_classes)


def normalize(x: Any, axis: int = -1, order: int = 2) -> np.ndarray:
    """Scale ``x`` to unit ``order``-norm along ``axis`` (zero vectors stay zero)."""
    x = np.asarray(x)
    norm = np.linalg.norm(x, ord=order, axis=axis, keepdims=True)
    return x / np.where(norm == 0, 1, norm)
