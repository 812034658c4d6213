"""A timeline of every training step, Horovod-style: one Chrome-trace / Perfetto JSON per job
(docs/architecture.md, "Timeline and step anatomy").

``DISTNN_TIMELINE=path`` (or the ``distnn.distributed.callbacks.Timeline(path)`` callback) records, on every rank, spans of the
training loop in memory: data wait, forward, backward, each gradient bucket's allreduce (on its own
track), the wait for the allreduce, the optimizer, the metrics allreduce, callbacks and checkpoint
writes. At the end of ``fit`` rank 0 gathers them and writes one JSON file with one process per
rank (``pid`` = rank) and a ``main`` and an ``allreduce`` thread each; load it in
``chrome://tracing`` or https://ui.perfetto.dev, or summarise it with ``distnn-bench anatomy``.

Off (the default), a span costs one module-global test: ``phase()`` returns a shared no-op context.
Clocks are aligned by a barrier when recording starts: every rank counts from the moment it left it.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

TIMELINE_ENV = "DISTNN_TIMELINE"
TRACKS = {"main": 0, "allreduce": 1}
_NULL = contextlib.nullcontext()
_recorder: "Recorder | None" = None


class Recorder:
    """This rank's spans since recording started, as ``(name, track, start ns, end ns, step, args)``."""

    def __init__(self, path: str, from_env: bool) -> None:
        self.path, self.from_env = path, from_env
        self.events: list[tuple] = []
        self.step = -1  # the training step the spans belong to (numbered from 0 over the job)
        self.origin = time.perf_counter_ns()

    def add(self, name: str, start_ns: int, end_ns: int, track: str = "main", **args: Any) -> None:
        self.events.append((name, track, start_ns, end_ns, self.step, args))

    def next_step(self) -> None:
        self.step += 1


class _Span:
    __slots__ = ("recorder", "name", "start")

    def __init__(self, recorder: Recorder, name: str) -> None:
        self.recorder, self.name = recorder, name

    def __enter__(self) -> None:
        self.start = time.perf_counter_ns()

    def __exit__(self, *exc: Any) -> None:
        self.recorder.add(self.name, self.start, time.perf_counter_ns())


def recorder() -> Recorder | None:
    """The active recorder, ``None`` when no timeline is being recorded."""
    return _recorder


def phase(name: str) -> Any:
    """``with phase("forward"):`` records a span on the main track (a no-op context when off)."""
    return _NULL if _recorder is None else _Span(_recorder, name)


def next_step(data_since: int | None = None) -> None:
    """A training step begins: the following spans belong to it; ``data_since`` (a
    ``perf_counter_ns`` time) starts its data wait, which ends now."""
    if _recorder is not None:
        _recorder.next_step()
        if data_since is not None:
            _recorder.add("data", data_since, time.perf_counter_ns())


def start(path: str, comm: Any, from_env: bool = False) -> Recorder:
    """Start recording on every rank (collective: a barrier aligns the ranks' clocks)."""
    global _recorder
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"The timeline path must be a non-empty file path. Received: path={path!r}")
    if _recorder is not None:
        if os.fspath(path) != _recorder.path:
            raise ValueError(f"A timeline is already being recorded to {_recorder.path!r}; one per job. "
                             f"Received: path={os.fspath(path)!r}")
        return _recorder
    comm.barrier()
    _recorder = Recorder(os.fspath(path), from_env)
    return _recorder


def agreed_settings() -> dict:
    """What ``fit``'s consistency check compares: whether this fit records (``start`` is a barrier, so
    a rank recording next to one that does not would wait there; the path may differ, rank 0 writes)."""
    return {f"timeline recording ({TIMELINE_ENV})": _recorder is not None or bool(os.environ.get(TIMELINE_ENV))}


def start_from_env(comm: Any) -> None:
    """At the start of ``fit``: record when ``DISTNN_TIMELINE`` names a file."""
    path = os.environ.get(TIMELINE_ENV)
    if path and _recorder is None:
        start(path, comm, from_env=True)


def write(comm: Any) -> None:
    """Gather every rank's spans on rank 0 and write the JSON file (collective). Recording goes on:
    a later ``fit`` rewrites the file with all spans so far."""
    if _recorder is None:
        return
    gathered = comm.gather_obj((_recorder.origin, _recorder.events), root=0)
    if gathered is None:
        return
    trace = {"traceEvents": trace_events(gathered), "displayTimeUnit": "ms"}
    temporary = f"{_recorder.path}.tmp{os.getpid()}"
    with open(temporary, "w") as file:
        json.dump(trace, file)
    os.replace(temporary, _recorder.path)


def write_from_env(comm: Any) -> None:
    """At the end of ``fit``: write the file ``DISTNN_TIMELINE`` asked for."""
    if _recorder is not None and _recorder.from_env:
        write(comm)


def stop() -> None:
    global _recorder
    _recorder = None


def trace_events(per_rank: list[tuple[int, list]]) -> list[dict]:
    """Chrome-trace events (``ph`` ``X``, ``ts``/``dur`` in microseconds from each rank's origin)."""
    events: list[dict] = []
    for rank, (origin, spans) in enumerate(per_rank):
        events.append({"ph": "M", "name": "process_name", "pid": rank, "tid": 0, "args": {"name": f"rank {rank}"}})
        for track, tid in TRACKS.items():
            events.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": tid, "args": {"name": track}})
        for name, track, start_ns, end_ns, step, args in spans:
            events.append({"name": name, "cat": track, "ph": "X", "pid": rank, "tid": TRACKS[track],
                           "ts": (start_ns - origin) / 1e3, "dur": max(end_ns - start_ns, 0) / 1e3,
                           "args": {"step": step, **args}})
    return events
