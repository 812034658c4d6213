"""The steps of an epoch, in both data-parallel modes, for every kind of input.

*Same data on every rank* (``own=False``): step k takes global batch k and rank r computes rows
``shard_bounds(len(batch), r, size)`` of it, so N ranks reproduce one process.
*Each rank its own shard* (``own=True``): rank r computes its own batch k whole; the step's global
batch is the concatenation of the ranks' batches in rank order, ranks whose data ran out join
with empty batches, and every rank runs the same number of steps
(docs/architecture.md, "Input pipelines and data-parallel modes").

A ``Step`` carries what the training step needs: this rank's rows, how many rows lower ranks
hold (``offset``, for per-sample random draws) and the step's global sample count.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from distnn import backend
from distnn.data import arrays
from distnn.data.adapters import ArraySource, BatchSource, batch_fingerprint
from distnn.data.prefetch import Prefetcher


class RankMismatchError(ValueError):
    """Ranks called a training method with different arguments, settings or data."""


@dataclasses.dataclass
class Step:
    index: int
    x: Any
    ys: list
    sample_weight: Any
    count: int
    offset: int
    global_count: int


@dataclasses.dataclass
class _Part:
    """This rank's converted rows of one batch (made in the loader thread)."""

    x: Any
    ys: list
    sample_weight: Any
    count: int
    batch_length: int
    fingerprint: int


def rank_counts(lengths: list[int], batch_size: int, step: int) -> list[int]:
    """Own-shard mode: how many rows each rank contributes to ``step`` (0 once its shard is done)."""
    return [int(min(batch_size, max(0, n - step * batch_size))) for n in lengths]


class ArrayTrainPlan:
    """``fit`` over arrays.

    Args:
        source: the training arrays.
        batch_size: the global batch (same data) or each rank's batch (own shards).
        steps_per_epoch: a cap on the steps, or ``None``.
        shuffle: a new order each epoch.
        rank, size: this rank and the number of ranks.
        lengths: own-shard mode: every rank's number of samples (``None``: same data).
    """

    def __init__(self, source: ArraySource, batch_size: int, steps_per_epoch: int | None, shuffle: bool,
                 rank: int, size: int, lengths: list[int] | None = None):
        self.source, self.batch_size, self.shuffle = source, batch_size, shuffle
        self.rank, self.size, self.lengths = rank, size, lengths
        counts = lengths if lengths is not None else [len(source)]
        self.num_steps = max(arrays.steps_per_epoch(n, batch_size) for n in counts)
        if steps_per_epoch is not None:
            self.num_steps = min(self.num_steps, steps_per_epoch)
        self.samples = sum(counts)
        self.ran_out = False

    def epoch(self, seed: int, epoch: int, first_step: int) -> Iterator[Step]:
        steps = self._steps(seed, epoch, first_step)
        if not self.source.file_backed and backend.device() == "cpu":  # rows of in-memory arrays are gathered in place
            yield from steps
            return
        # Files are read, and on a device each batch is uploaded, by a loader thread one step ahead,
        # so the next batch's copy overlaps the current step (docs/architecture.md, "Devices").
        with Prefetcher(lambda: steps) as prefetched:
            yield from prefetched

    def _steps(self, seed: int, epoch: int, first_step: int) -> Iterator[Step]:
        B = self.batch_size
        if self.lengths is None:
            order = arrays.epoch_order(len(self.source), self.shuffle, seed, epoch)[:self.num_steps * B]
            for step, batch in enumerate(arrays.global_batches(order, B, first_step), first_step):
                start, stop = arrays.shard_bounds(len(batch), self.rank, self.size)
                yield Step(step, *self.source.take(batch[start:stop]), stop - start, start, len(batch))
            return
        order = arrays.epoch_order(len(self.source), self.shuffle, seed, epoch, rank=self.rank)
        for step in range(first_step, self.num_steps):
            counts = rank_counts(self.lengths, B, step)
            local = order[step * B:step * B + counts[self.rank]]
            yield Step(step, *self.source.take(local), counts[self.rank], sum(counts[:self.rank]), sum(counts))


class BatchTrainPlan:
    """``fit`` over a ``PyDataset`` or an iterable of batches.

    Each step the ranks exchange four numbers per rank (has a batch, its rows, the batch's length,
    its fingerprint) in one small allreduce: own-shard mode needs the others' row counts; in
    same-data mode it proves every rank still holds the identical batch.

    Args:
        source: the batches.
        convert: ``(x, y, sample_weight) -> (x, ys, sample_weight)``: checked host arrays (run in the
            loader thread).
        x_dtypes: the model's input dtypes, applied to this rank's rows.
        steps_per_epoch: steps per epoch, or ``None`` (a PyDataset's length; an iterable until it
            runs out).
        shuffle: shuffle a PyDataset's batch order each epoch.
        comm: the communicator.
        own: each rank its own data.
        lengths: own-shard mode, PyDataset: every rank's number of batches.
    """

    def __init__(self, source: BatchSource, convert: Callable, x_dtypes: list, steps_per_epoch: int | None,
                 shuffle: bool, comm: Any, own: bool, lengths: list[int] | None = None):
        self.source, self.convert, self.x_dtypes = source, convert, x_dtypes
        self.shuffle, self.comm, self.own = shuffle, comm, own
        self.num_steps = steps_per_epoch
        if steps_per_epoch is None and source.num_batches is not None:
            self.num_steps = max(lengths) if own and lengths else source.num_batches
        self.samples = None
        self.ran_out = False

    def epoch(self, seed: int, epoch: int, first_step: int) -> Iterator[Step]:
        self.source.begin_epoch()
        if self.source.kind == "py_dataset":
            count = self.source.num_batches
            rank = self.comm.rank if self.own else None
            order = arrays.epoch_order(count, self.shuffle, seed, epoch, rank=rank)[first_step:self.num_steps]
            raw = self.source.epoch_batches(order)
            depth = self.source.data.max_queue_size
        else:
            raw = self.source.epoch_batches(skip=first_step)
            if self.num_steps is not None:  # never read ahead past the epoch: the iterator continues
                raw = _islice(raw, self.num_steps - first_step)
            depth = 2
        exhausted = False
        try:
            with Prefetcher(lambda: self._parts(raw), depth=depth) as parts:
                step = first_step
                while self.num_steps is None or step < self.num_steps:
                    agreed = self._agree(next(parts, None), step)
                    if agreed is None:
                        exhausted = True
                        break
                    yield agreed
                    step += 1
        finally:
            self.ran_out = exhausted and self.num_steps is not None
            self.source.end_epoch(exhausted)

    def _parts(self, raw: Iterator[tuple]) -> Iterator[_Part]:
        rank, size = self.comm.rank, self.comm.size
        for x, y, sample_weight in raw:
            fingerprint = batch_fingerprint(x, y, sample_weight) if size > 1 and not self.own else 0
            x, ys, sample_weight = self.convert(x, y, sample_weight)
            length = len(arrays.leaves(x)[0])
            start, stop = (0, length) if self.own else arrays.shard_bounds(length, rank, size)
            rows = slice(start, stop)
            yield _Part(arrays.take(x, rows, self.x_dtypes, "x"), [arrays.take(t, rows, name="y") for t in ys],
                        arrays.take(sample_weight, rows, name="sample_weight"), stop - start, length, fingerprint)

    def _agree(self, part: _Part | None, step: int) -> Step | None:
        """The step every rank takes, or ``None`` when all ranks' data ran out."""
        comm = self.comm
        if comm.size == 1:
            if part is None:
                return None
            return Step(step, part.x, part.ys, part.sample_weight, part.count, 0, part.count)
        table = np.zeros((comm.size, 4))
        if part is not None:
            table[comm.rank] = (1, part.count, part.batch_length, part.fingerprint)
        comm.allreduce(table, op="sum")  # float64 holds the 32-bit fingerprints exactly
        has, counts, lengths, prints = (table[:, i].astype(np.int64) for i in range(4))
        if not has.any():
            return None
        if not self.own:
            _check_same_batches(has, lengths, prints, step)
            start, stop = arrays.shard_bounds(int(lengths[0]), comm.rank, comm.size)
            return Step(step, part.x, part.ys, part.sample_weight, stop - start, start, int(lengths[0]))
        if part is None:
            part = self._empty_part()
        return Step(step, part.x, part.ys, part.sample_weight, part.count, int(counts[:comm.rank].sum()),
                    int(counts.sum()))

    def _empty_part(self) -> _Part:
        """Zero rows shaped like the first batch: a rank whose data ran out still joins the step."""
        x, ys, sample_weight = self.convert(*self.source.first)
        rows = slice(0, 0)
        return _Part(arrays.take(x, rows, self.x_dtypes, "x"), [arrays.take(t, rows, name="y") for t in ys],
                     arrays.take(sample_weight, rows, name="sample_weight"), 0, 0, 0)


def _check_same_batches(has: np.ndarray, lengths: np.ndarray, prints: np.ndarray, step: int) -> None:
    """Same-data mode: every rank must hold the identical batch at every step."""
    def ranks(mask: np.ndarray) -> str:
        found = [str(r) for r in np.flatnonzero(mask)]
        return ("rank " if len(found) == 1 else "ranks ") + ", ".join(found)

    if not has.all():
        problem = f"{ranks(~has.astype(bool))} ran out of batches while {ranks(has.astype(bool))} did not"
    elif (lengths != lengths[0]).any() or (prints != prints[0]).any():
        problem = f"{ranks((lengths != lengths[0]) | (prints != prints[0]))} hold a different batch than rank 0"
    else:
        return
    raise RankMismatchError(
        f"Ranks' data diverged at step {step}: {problem}. Their first batches were identical, so distnn "
        "split each batch across the ranks (same-data mode); in that mode every rank must produce the same "
        "batches. For own-shard mode each rank's data must differ from the first batch on (e.g. a "
        "generator shuffling with a seed that includes the rank).")


def _islice(iterator: Iterator, count: int) -> Iterator:
    for _, item in zip(range(count), iterator):
        yield item


# ------------------------------------------------------------------------- evaluate, predict
def array_parts(source: ArraySource, batch_size: int, rank: int, size: int, own: bool
                ) -> Iterator[tuple[Any, list, Any, int]]:
    """``evaluate``/``predict`` over arrays: this rank's block (same data) or all its rows (own
    shards), in batches of ``batch_size``: ``(x, ys, sample_weight, count)``."""
    start, stop = (0, len(source)) if own else arrays.shard_bounds(len(source), rank, size)

    def parts() -> Iterator[tuple]:
        for lo in range(start, stop, batch_size):
            rows = slice(lo, min(lo + batch_size, stop))
            yield (*source.take(rows), rows.stop - rows.start)

    if not source.file_backed:
        yield from parts()
        return
    with Prefetcher(parts) as prefetched:
        yield from prefetched


def batch_parts(source: BatchSource, convert: Callable, x_dtypes: list, steps: int | None, rank: int, size: int,
                own: bool, lengths_out: list | None = None) -> Iterator[tuple[Any, list, Any, int]]:
    """``evaluate``/``predict`` over batches: this rank's rows of each batch (same data: its shard;
    own shards: all), ``steps`` batches or until the data runs out. No collective per batch: the
    results are reduced or gathered at the end. ``lengths_out`` collects each batch's length
    (``predict`` puts the gathered rows back in batch order with it). The caller calls
    ``source.end_epoch`` when done."""
    source.begin_epoch()
    if source.kind == "py_dataset":
        raw = source.epoch_batches(np.arange(source.num_batches)[:steps])
    else:
        raw = source.epoch_batches()
        if steps is not None:
            raw = _islice(raw, steps)

    def parts() -> Iterator[tuple]:
        for x, y, sample_weight in raw:
            x, ys, sample_weight = convert(x, y, sample_weight)
            length = len(arrays.leaves(x)[0])
            if lengths_out is not None:
                lengths_out.append(length)
            start, stop = (0, length) if own else arrays.shard_bounds(length, rank, size)
            rows = slice(start, stop)
            yield (arrays.take(x, rows, x_dtypes, "x"), [arrays.take(t, rows, name="y") for t in ys],
                   arrays.take(sample_weight, rows, name="sample_weight"), stop - start)

    with Prefetcher(parts, depth=source.data.max_queue_size if source.kind == "py_dataset" else 2) as prefetched:
        yield from prefetched
