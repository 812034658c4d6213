"""Background loading: run a batch iterator in a thread, a bounded number of items ahead.

Reading rows from files (``os.preadv``), numpy's row gathers and dtype casts release the GIL, so
while the main thread computes step k the loader thread prepares steps k+1...k+depth
(docs/architecture.md, "Input pipelines and data-parallel modes"). Collectives stay on the main
thread: the loader only reads and converts this rank's data.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from distnn import backend

_END = object()


class Prefetcher:
    """Iterate over ``make_iterator()`` run in a daemon thread, at most ``depth`` items ahead.

    An exception raised by the iterator is re-raised in the consumer at the item where it
    happened. ``close()`` (also on garbage collection, or leaving a ``with`` block) stops the
    thread at its next item, so a loop that breaks early leaves nothing running.
    """

    def __init__(self, make_iterator: Callable[[], Iterator[Any]], depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth must be >= 1. Received: depth={depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._finished = False
        self._stop = threading.Event()
        # The thread holds the queue and the event, not this object, so an abandoned Prefetcher is
        # collected and its __del__ stops the thread.
        self._thread = threading.Thread(target=_produce, args=(make_iterator, self._queue, self._stop, _device_scope()),
                                        name="distnn-prefetch", daemon=True)
        self._thread.start()

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Any:
        if self._finished:  # asked again after the end: the end again (own-shard steps pad on)
            raise StopIteration
        ok, item = self._queue.get()
        if not ok or item is _END:
            self._finished = True
            self.close()
            if not ok:
                raise item
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            while True:  # unblock a producer waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(timeout=5)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self._stop.set()


def _device_scope() -> Any:
    """The calling thread's GPU as a context to enter in the loader thread: cupy's current device is
    per thread, and a new thread would otherwise copy batches to GPU 0 whatever this rank's GPU."""
    if backend.device() != "gpu":
        return contextlib.nullcontext()
    cupy = backend.xp()
    return cupy.cuda.Device(cupy.cuda.runtime.getDevice())


def _produce(make_iterator: Callable[[], Iterator[Any]], items: queue.Queue, stop: threading.Event,
             device: Any) -> None:
    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        with device:
            for item in make_iterator():
                if not put((True, item)):
                    return
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
        put((False, exc))
        return
    put((True, _END))
