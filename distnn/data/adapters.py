"""What ``fit``/``evaluate``/``predict`` accept as data, behind two small interfaces.

- ``ArraySource``: arrays in memory, memory-mapped or file-backed (``NpyArray``), or lists/dicts
  of them; rows are addressable, so each rank takes just its rows of each batch.
- ``BatchSource``: a ``PyDataset`` or a Python iterable/generator yielding whole batches
  ``x`` / ``(x,)`` / ``(x, y)`` / ``(x, y, sample_weight)``; the first batch is read at the start
  (it describes the input for the rank consistency check) and kept for the first epoch.

Both convert each batch on its own (``take``: rows, then the model's input dtypes, then the
device), never the whole data set (docs/architecture.md, "Input pipelines and data-parallel modes").
"""
from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from distnn.data import arrays
from distnn.data.py_dataset import PyDataset, load_batches


def kind_of(x: Any) -> str:
    """``"py_dataset"``, ``"iterable"`` (a generator, iterator or other iterable of batches) or ``"arrays"``."""
    if isinstance(x, PyDataset):
        return "py_dataset"
    if x is None or isinstance(x, (np.ndarray, list, tuple, dict, str, bytes)) or hasattr(x, "shape"):
        return "arrays"
    if hasattr(x, "__next__") or hasattr(x, "__iter__"):
        return "iterable"
    return "arrays"  # as_array names what is wrong with it


def unpack_batch(item: Any) -> tuple[Any, Any, Any]:
    """``(x, y, sample_weight)`` of one batch as Keras reads it: a tuple of 1 to 3 parts, else ``x``."""
    if isinstance(item, tuple):
        if not 1 <= len(item) <= 3:
            raise ValueError("A batch must be x, (x,), (x, y) or (x, y, sample_weight). Received a tuple of "
                             f"{len(item)} elements")
        return (*item, *([None] * (3 - len(item))))
    return item, None, None


def raw_leaves(part: Any) -> list:
    """The arrays of one part of a raw batch: a dict's values, a list's or tuple's items, else itself."""
    if part is None:
        return []
    if isinstance(part, dict):
        return list(part.values())
    return list(part) if isinstance(part, (list, tuple)) else [part]


def batch_fingerprint(x: Any, y: Any = None, sample_weight: Any = None) -> int:
    """A CRC-32 over the fingerprints of a batch's arrays (``arrays.fingerprint``: sampled rows)."""
    text = "".join(arrays.fingerprint(np.asarray(leaf)) for part in (x, y, sample_weight) for leaf in raw_leaves(part))
    return zlib.crc32(text.encode())


class ArraySource:
    """``(x, ys, sample_weight)`` arrays; ``take`` converts one batch of rows.

    Args:
        x: an array or a list/dict of arrays (checked by ``as_structure``).
        ys: the targets, one array per model output.
        sample_weight: per-sample weights or ``None``.
        x_dtypes: the dtype each leaf of ``x`` becomes, batch by batch (``None`` keeps it).
    """

    def __init__(self, x: Any, ys: list, sample_weight: Any, x_dtypes: list):
        self.x, self.ys, self.sample_weight, self.x_dtypes = x, ys, sample_weight, x_dtypes

    def __len__(self) -> int:
        return len(arrays.leaves(self.x)[0])

    @property
    def file_backed(self) -> bool:
        """Whether reading rows touches files (then a loader thread reads ahead)."""
        parts = arrays.leaves(self.x) + list(self.ys) + ([self.sample_weight] if self.sample_weight is not None else [])
        return any(arrays.is_file_backed(a) for a in parts)

    def take(self, index: Any) -> tuple[Any, list, Any]:
        return (arrays.take(self.x, index, self.x_dtypes, "x"), [arrays.take(t, index, name="y") for t in self.ys],
                arrays.take(self.sample_weight, index, name="sample_weight"))

    def rows(self, start: int, stop: int) -> "ArraySource":
        """The rows ``[start, stop)`` as a source of their own, without copying (``validation_split``)."""
        return ArraySource(_rows(self.x, start, stop), [_rows(t, start, stop) for t in self.ys],
                           _rows(self.sample_weight, start, stop), self.x_dtypes)


def _rows(array: Any, start: int, stop: int) -> Any:
    if array is None:
        return None
    if isinstance(array, dict):
        return {key: _rows(value, start, stop) for key, value in array.items()}
    if isinstance(array, list):
        return [_rows(value, start, stop) for value in array]
    return array.rows(start, stop) if hasattr(array, "rows") else array[start:stop]


class BatchSource:
    """A ``PyDataset`` or an iterable of batches.

    An iterator (``iter(it) is it``, e.g. a generator) continues across epochs, as in Keras; any
    other iterable is iterated afresh each epoch.
    """

    def __init__(self, data: Any, name: str):
        self.data, self.name = data, name
        self.kind = kind_of(data)
        if self.kind == "py_dataset":
            count = len(data)
            if not isinstance(count, (int, np.integer)) or count < 1:
                raise ValueError(f"{name}: a PyDataset needs at least one batch. Received: len({name})={count!r}")
            self.first = unpack_batch(data[0])
            self._iterator: Iterator | None = None
        else:
            self._iterator = iter(data)
            self._reiterable = self._iterator is not data
            try:
                self.first = unpack_batch(next(self._iterator))
            except StopIteration:
                raise ValueError(f"{name} yielded no batch: it is empty or already exhausted") from None
            self._pending_first = True

    @property
    def num_batches(self) -> int | None:
        """Batches per pass (``len`` of a PyDataset), ``None`` for an iterable."""
        return len(self.data) if self.kind == "py_dataset" else None

    def consistency_fields(self, name: str) -> tuple[dict, dict]:
        """Its settings (kind, the first batch's sample shapes and dtypes) and data (number of batches,
        the first batch's fingerprint) for the rank consistency check."""
        settings: dict[str, Any] = {name: f"<{self.kind}>"}
        for part, value in zip(("x", "y", "sample_weight"), self.first):
            for i, leaf in enumerate(raw_leaves(value)):
                leaf = np.asarray(leaf)
                settings[f"{name} batch {part}[{i}]"] = (tuple(int(d) for d in leaf.shape[1:]), leaf.dtype.str)
        data: dict[str, Any] = {f"{name} first batch": f"sampled-rows hash {batch_fingerprint(*self.first):08x}"}
        if self.num_batches is not None:
            data[f"len({name})"] = self.num_batches
        return settings, data

    def epoch_batches(self, order: np.ndarray | None = None, skip: int = 0) -> Iterator[tuple]:
        """One epoch's raw batches ``(x, y, sample_weight)``. ``order`` is the batch order of a PyDataset;
        an iterable skips ``skip`` batches (a run resumed mid-epoch). Call from the main thread:
        a PyDataset with ``use_multiprocessing`` forks its workers here."""
        if self.kind == "py_dataset":
            return map(unpack_batch, load_batches(self.data, list(order)))
        if self._iterator is None:  # a re-iterable iterable: a new pass
            self._iterator = iter(self.data)
        iterator = itertools.chain([self.first], self._iterator) if self._pending_first else self._iterator
        self._pending_first = False
        batches = map(unpack_batch, iterator)
        if skip:
            batches = itertools.islice(batches, skip, None)
        return batches

    def end_epoch(self, exhausted: bool) -> None:
        """After an epoch: a PyDataset's ``on_epoch_end`` runs; a re-iterable that ran out starts a
        new pass next epoch (one stopped by ``steps_per_epoch`` continues, as in Keras)."""
        if self.kind == "py_dataset":
            self.data.on_epoch_end()
        elif self._reiterable and exhausted:
            self._iterator = None

    def begin_epoch(self) -> None:
        if self.kind == "py_dataset":
            self.data.on_epoch_begin()

