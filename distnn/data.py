"""Input checking, epoch ordering, batching and sharding of global batches across ranks.

``fit(batch_size=B)`` means the *global* batch (DESIGN.md): each step takes B samples of the
epoch's order and splits them into contiguous, near-equal shards, one per rank. Every rank runs the
same number of steps; a rank whose shard is empty still joins the step's collectives.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from distnn import backend


def as_array(data: Any, name: str, dtype: Any = None) -> np.ndarray:
    """``data`` as an ndarray with at least one sample axis, checked for emptiness and NaN/inf."""
    if data is None:
        raise ValueError(f"{name} must be an array. Received: {name}=None")
    array = np.asarray(data) if dtype is None else np.asarray(data, dtype=dtype)
    if array.ndim == 0:
        raise ValueError(f"{name} must have a sample axis. Received a scalar: {name}={array!r}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples). Received: {name}.shape={array.shape}")
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers. Received dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); clean the data before training")
    return array


def as_structure(data: Any, name: str) -> Any:
    """``as_array`` on every leaf of an array, a list/tuple of arrays or a dict of arrays."""
    if isinstance(data, dict):
        return {key: as_array(value, f"{name}[{key!r}]") for key, value in data.items()}
    if isinstance(data, (list, tuple)) and data and all(hasattr(d, "shape") for d in data):
        return [as_array(value, f"{name}[{i}]") for i, value in enumerate(data)]
    return as_array(data, name)


def leaves(data: Any) -> list:
    """The arrays of a structure made by ``as_structure`` (dicts in key order)."""
    if isinstance(data, dict):
        return list(data.values())
    return list(data) if isinstance(data, list) else [data]


def num_samples(data: Any, name: str) -> int:
    lengths = {len(a) for a in leaves(data)}
    if len(lengths) > 1:
        raise ValueError(f"All arrays of {name} must have the same number of samples. Received lengths "
                         f"{[len(a) for a in leaves(data)]}")
    return lengths.pop()


def check_lengths(**arrays: Any) -> int:
    """All given arrays (None skipped) have the same number of samples; returns it."""
    lengths = {name: len(a) for name, a in arrays.items() if a is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError("Data cardinality is ambiguous: make sure all arrays contain the same number of "
                         f"samples. Received: {', '.join(f'{k} size: {v}' for k, v in lengths.items())}")
    return next(iter(lengths.values()))


def check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
    return int(batch_size)


def epoch_order(num_samples: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a function of (seed, epoch) only, so every rank — and a
    resumed run — draws the same permutation without communicating."""
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def shard_bounds(count: int, rank: int, size: int) -> tuple[int, int]:
    """The contiguous part ``[start, stop)`` of ``count`` items that ``rank`` of ``size`` takes."""
    return rank * count // size, (rank + 1) * count // size


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    return -(-num_samples // batch_size)


def global_batches(order: np.ndarray, batch_size: int, first_step: int = 0) -> Iterator[np.ndarray]:
    """Index arrays of each global batch of ``order``, starting at step ``first_step``."""
    for start in range(first_step * batch_size, len(order), batch_size):
        yield order[start:start + batch_size]


def take(array: Any, index: Any) -> Any:
    """Rows ``index`` of a host array (or of each array of a list/dict), moved to the device
    (``None`` stays ``None``)."""
    if array is None:
        return None
    if isinstance(array, dict):
        return {key: backend.to_device(value[index]) for key, value in array.items()}
    if isinstance(array, list):
        return [backend.to_device(value[index]) for value in array]
    return backend.to_device(array[index])


def class_weights_to_sample_weights(y: np.ndarray, class_weight: dict, num_classes: int) -> np.ndarray:
    """Per-sample weights from Keras' ``class_weight={class_id: weight}``."""
    labels = y.argmax(axis=-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(len(y), -1)[:, 0].astype(np.int64)
    unknown = set(class_weight) - set(range(num_classes))
    if unknown:
        raise ValueError(f"class_weight has keys {sorted(unknown)} outside the classes 0..{num_classes - 1}")
    table = np.ones(num_classes)
    for cls, weight in class_weight.items():
        table[int(cls)] = weight
    return table[labels.astype(np.int64)]
