"""Arrays: input checking, epoch ordering, batching and sharding of global batches across ranks.

``fit(batch_size=B)`` means the *global* batch (docs/architecture.md): each step takes B samples of the
epoch's order and splits them into contiguous, near-equal shards, one per rank. Every rank runs the
same number of steps; a rank whose shard is empty still joins the step's collectives.
"""
from __future__ import annotations

import mmap
import zlib
from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np

from distnn import arguments, backend


def as_array(data: Any, name: str, dtype: Any = None) -> Any:
    """``data`` as an ndarray with at least one sample axis, checked for emptiness and NaN/inf.

    A file-backed array (``NpyArray``, ``np.memmap``, ``np.load(mmap_mode="r")``) is returned as it
    is, never read whole: its values are checked batch by batch as training reads them
    (``check_finite`` in ``take``), so a data set larger than memory costs no up-front pass.
    """
    if data is None:
        raise ValueError(f"{name} must be an array. Received: {name}=None")
    array = data if is_file_backed(data) and dtype is None else \
        np.asarray(data) if dtype is None else np.asarray(data, dtype=dtype)
    if array.ndim == 0:
        raise ValueError(f"{name} must have a sample axis. Received a scalar: {name}={array!r}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples). Received: {name}.shape={array.shape}")
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers. Received dtype {array.dtype}")
    if not is_file_backed(array):
        check_finite(array, name)
    return array


# Rows checked per pass of ``check_finite``: bounds its temporary to a few MB whatever the data size.
_CHECK_BYTES = 8 * 1024 * 1024


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise when a float ``array`` holds NaN or infinity (in chunks: no temporary of its size)."""
    if array.dtype.kind != "f" or array.size == 0:
        return
    rows = max(1, _CHECK_BYTES // max(1, array.nbytes // len(array)))
    bad = 0
    for start in range(0, len(array), rows):
        chunk = np.asarray(array[start:start + rows])
        if not np.isfinite(chunk).all():
            bad += int((~np.isfinite(chunk)).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); clean the data before training")


def is_file_backed(array: Any) -> bool:
    """Whether ``array`` reads its rows from a file on access (``NpyArray``, a memory map)."""
    if getattr(array, "file_backed", False):
        return True
    while isinstance(array, np.ndarray):
        if isinstance(array, np.memmap):
            return True
        array = array.base
    return isinstance(array, mmap.mmap)


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


def epoch_order(num_samples: int, shuffle: bool, seed: int, epoch: int, rank: int | None = None) -> np.ndarray:
    """The sample order of one epoch: a function of (seed, epoch) only, so every rank — and a
    resumed run — draws the same permutation without communicating.

    With ``rank`` (own-shard mode: each rank orders its own data) the permutation also depends on
    the rank, so ranks holding the same data still visit it in different orders, as Horovod's
    independently shuffling workers do.
    """
    if not shuffle:
        return np.arange(num_samples)
    key = [seed, epoch] if rank is None else [seed, epoch, rank + 1]
    return np.random.default_rng(key).permutation(num_samples)


def shard_bounds(count: int, rank: int, size: int) -> tuple[int, int]:
    """The contiguous part ``[start, stop)`` of ``count`` items that ``rank`` of ``size`` takes."""
    return rank * count // size, (rank + 1) * count // size


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    return -(-num_samples // batch_size)


def global_batches(order: np.ndarray, batch_size: int, first_step: int = 0) -> Iterator[np.ndarray]:
    """Index arrays of each global batch of ``order``, starting at step ``first_step``."""
    for start in range(first_step * batch_size, len(order), batch_size):
        yield order[start:start + batch_size]


def take(array: Any, index: Any, dtypes: Any = None, name: str = "x") -> Any:
    """Rows ``index`` of a host array (or of each array of a list/dict), cast and moved to the device
    (``None`` stays ``None``).

    ``dtypes`` (one per leaf, in ``leaves`` order; ``None`` keeps the dtype) is applied to these rows
    only: a uint8 image set stays uint8 in memory and each batch becomes float32 on its way to the
    model. Rows of a file-backed array are checked for NaN/inf here, as they are read.
    """
    if array is None:
        return None
    arrays = leaves(array)
    dtypes = [None] * len(arrays) if dtypes is None else dtypes
    rows = []
    for position, (leaf, dtype) in enumerate(zip(arrays, dtypes)):
        part = leaf[index]
        if is_file_backed(leaf):
            part = np.asarray(part)
            check_finite(part, name if len(arrays) == 1 else f"{name}[{position}]")
        rows.append(backend.to_device(part if dtype is None else part.astype(dtype, copy=False)))
    if isinstance(array, dict):
        return dict(zip(array, rows))
    return rows if isinstance(array, list) else rows[0]


def class_weights_to_sample_weights(y: np.ndarray, class_weight: dict, num_classes: int) -> np.ndarray:
    """Per-sample weights from Keras' ``class_weight={class_id: weight}`` (integer ids, finite weights >= 0)."""
    if not isinstance(class_weight, Mapping):
        raise ValueError(f"class_weight must be a dict {{class id: weight}}. Received: class_weight={class_weight!r}")
    labels = y.argmax(axis=-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(len(y), -1)[:, 0].astype(np.int64)
    unknown = [k for k in class_weight if not arguments.is_integer(k) or not 0 <= k < num_classes]
    if unknown:
        raise ValueError(f"class_weight has keys {unknown} that are not class ids 0..{num_classes - 1}")
    table = np.ones(num_classes)
    for cls, weight in class_weight.items():
        table[int(cls)] = arguments.check_real(f"class_weight[{cls}]", weight, minimum=0)
    return table[labels.astype(np.int64)]


# An array up to this size is hashed whole; a larger one by sampled rows, each row up to twice
# _ROW_BYTES whole, else its first and last _ROW_BYTES (a 224x224x3 float32 image row of 588 KiB
# costs 64 KiB). A memory-mapped file is read only where sampled.
_WHOLE_BYTES = 64 * 1024
_ROW_BYTES = 32 * 1024
_SAMPLED_ROWS = 16


def fingerprint(array: np.ndarray) -> str:
    """A cheap hash (CRC-32) of ``array``'s shape, dtype and content: all of a small array, else its
    first and last rows and 16 more spread over it (at most 18 rows read, never the whole array).

    The rows depend only on the length, so equal arrays on different ranks (or in different runs)
    give the same value. A difference only in unsampled bytes goes unnoticed: this checks setup
    mistakes, such as ranks loading different files, and is no checksum. Costs 30-50 us for a
    64 x 784 float32 batch, 20 us for a 3.1 GB memory-mapped array (docs/architecture.md,
    "Reliability").
    """
    crc = zlib.crc32(repr((array.shape, array.dtype.str)).encode())
    if array.nbytes <= _WHOLE_BYTES:
        return f"{zlib.crc32(_bytes_of(array), crc):08x}"
    count = len(array)
    # Knuth's multiplicative hash spreads the rows without building a random generator (~10 us).
    rows = sorted({0, count - 1, *((k * 2654435761) % count for k in range(1, _SAMPLED_ROWS + 1))})
    row_bytes = array.nbytes // count
    if row_bytes <= 2 * _ROW_BYTES:
        return f"{zlib.crc32(_bytes_of(array[rows]), crc):08x}"  # one gather of the sampled rows
    for row in rows:
        raw = _bytes_of(array[row:row + 1])  # a view: a memory-mapped file reads just the touched pages
        crc = zlib.crc32(raw[-_ROW_BYTES:], zlib.crc32(raw[:_ROW_BYTES], crc))
    return f"{crc:08x}"


def _bytes_of(array: np.ndarray) -> np.ndarray:
    """The bytes of ``array`` in C order, as a flat uint8 view (copied only when not contiguous)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)
