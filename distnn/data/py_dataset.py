"""``PyDataset`` (Keras 3's class; ``Sequence`` is its Keras 2 name) and its parallel batch loader.

A subclass returns whole batches from ``__getitem__(index)`` and their count from ``__len__``;
``fit`` calls ``on_epoch_begin`` / ``on_epoch_end`` around each epoch. ``workers`` threads (or
processes with ``use_multiprocessing=True``) load up to ``max_queue_size`` batches ahead, in order.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence as SequenceABC
from typing import Any

from distnn import arguments


class PyDataset:
    """Base class for data sets that return whole batches by index (Keras 3's ``PyDataset``).

    Args:
        workers: how many threads (or processes) load batches in parallel.
        use_multiprocessing: load in worker processes (forked, so the data set need not be
            picklable; its batches are sent back pickled). Use it when ``__getitem__`` holds the
            GIL (pure-Python decoding); threads suffice for numpy and file reads.
        max_queue_size: how many batches may be loaded ahead of training.

    Example:
        ```python
        class Batches(distnn.utils.PyDataset):
            def __init__(self, x, y, batch_size, **kwargs):
                super().__init__(**kwargs)
                self.x, self.y, self.batch_size = x, y, batch_size

            def __len__(self):
                return -(-len(self.x) // self.batch_size)

            def __getitem__(self, index):
                rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
                return self.x[rows], self.y[rows]

        model.fit(Batches(x, y, 64, workers=4), epochs=3)
        ```
    """

    # Class defaults, so a subclass that forgets ``super().__init__()`` still works (as in Keras).
    _workers = 1
    _use_multiprocessing = False
    _max_queue_size = 10

    def __init__(self, workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10):
        self.workers = workers
        self.use_multiprocessing = use_multiprocessing
        self.max_queue_size = max_queue_size

    @property
    def workers(self) -> int:
        return self._workers

    @workers.setter
    def workers(self, value: int) -> None:
        self._workers = _positive_int("workers", value)

    @property
    def use_multiprocessing(self) -> bool:
        return self._use_multiprocessing

    @use_multiprocessing.setter
    def use_multiprocessing(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"use_multiprocessing must be a bool. Received: use_multiprocessing={value!r}")
        self._use_multiprocessing = value

    @property
    def max_queue_size(self) -> int:
        return self._max_queue_size

    @max_queue_size.setter
    def max_queue_size(self, value: int) -> None:
        self._max_queue_size = _positive_int("max_queue_size", value)

    def __getitem__(self, index: int) -> Any:
        """Batch ``index``: ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``."""
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__(index) returning a batch")

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define __len__() returning its number of batches")

    @property
    def num_batches(self) -> int:
        """The number of batches (``len(self)``)."""
        return len(self)

    def on_epoch_begin(self) -> None:
        """Called before each epoch's first batch is requested."""

    def on_epoch_end(self) -> None:
        """Called after each epoch's last batch (e.g. to reshuffle)."""


Sequence = PyDataset  # Keras 2's name (keras.utils.Sequence)


def _positive_int(name: str, value: Any) -> int:
    if not arguments.is_integer(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
    return int(value)


# ------------------------------------------------------------------------------ loading
_forked_dataset: Any = None  # the data set a forked worker process reads from (inherited, not pickled)


def _load_in_worker(index: int) -> Any:
    return _forked_dataset[index]


def load_batches(dataset: PyDataset, indices: SequenceABC[int]) -> Iterator[Any]:
    """``dataset[i]`` for ``i`` in ``indices``, in that order, loaded by the data set's workers.

    Call it from the main thread when ``use_multiprocessing`` is set: the worker processes are
    forked here, once per epoch, so they see the state ``on_epoch_end`` left (as Keras does).
    """
    # Loaded here only: `import distnn` stays light (docs/architecture.md).
    import multiprocessing  # noqa: PLC0415
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    depth = dataset.max_queue_size
    if dataset.use_multiprocessing:
        global _forked_dataset
        _forked_dataset = dataset
        pool = multiprocessing.get_context("fork").Pool(dataset.workers)
        _forked_dataset = None
        return _ordered(lambda i: pool.apply_async(_load_in_worker, (i,)).get, indices, depth,
                        finish=pool.terminate)
    if dataset.workers == 1:
        return (dataset[i] for i in indices)
    executor = ThreadPoolExecutor(dataset.workers, thread_name_prefix="distnn-pydataset")
    return _ordered(lambda i: executor.submit(dataset.__getitem__, i).result, indices, depth,
                    finish=lambda: executor.shutdown(wait=False, cancel_futures=True))


def _ordered(start: Any, indices: SequenceABC[int], depth: int, finish: Any) -> Iterator[Any]:
    """Keep ``depth`` loads in flight; yield their results in order. ``start(i)`` begins loading
    batch ``i`` and returns a function that waits for it."""
    pending: deque = deque()
    remaining = iter(indices)
    try:
        for index in remaining:
            pending.append(start(index))
            if len(pending) >= depth:
                break
        while pending:
            result = pending.popleft()()
            next_index = next(remaining, None)
            if next_index is not None:
                pending.append(start(next_index))
            yield result
    finally:
        finish()
