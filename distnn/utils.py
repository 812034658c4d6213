"""Utilities with Keras names: ``to_categorical``, ``normalize``, ``set_random_seed``, gradient checks."""
from __future__ import annotations

import random
from typing import Any

import numpy as np

_global_rng = np.random.default_rng()


def set_random_seed(seed: int) -> None:
    """Make a run reproducible with one call: seeds Python, numpy and distnn's own generator.

    Under MPI every rank calls this with the same seed; weights still come from rank 0's broadcast,
    and so do the data order and the random layers' masks (from rank 0's data seed:
    docs/architecture.md, "Random layers and exactness").
    """
    global _global_rng
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer. Received: seed={seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    _global_rng = np.random.default_rng(int(seed))


def global_rng() -> np.random.Generator:
    """distnn's process-wide generator (initial weights, the run's data seed, unseeded ``SeedGenerator``s)."""
    return _global_rng


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


def clear_session() -> None:
    """Reset automatic layer names (``dense``, ``dense_1``, ...), as Keras' ``clear_session``."""
    from distnn.layers.base import reset_name_counters  # noqa: PLC0415 - layers import this module

    reset_name_counters()


def __getattr__(name: str) -> Any:
    # The gradient checker imports the layer machinery; load it only when asked for.
    if name in ("check_gradients", "check_layer_gradients", "check_loss_gradients", "check_model_gradients"):
        from distnn import gradient_check  # noqa: PLC0415

        return getattr(gradient_check, name)
    raise AttributeError(f"module 'distnn.utils' has no attribute {name!r}")
