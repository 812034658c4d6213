"""The process-wide communicator, Horovod style: `init()`, `rank()`, `size()`, ...

The same script runs alone (`python train.py`) and under an MPI launcher
(`mpiexec -n 4 python train.py`, `srun`, `distnn-run`). `init` looks at the environment
the launcher leaves and imports mpi4py only under one, because importing mpi4py
initialises MPI, which a plain run must not touch (it may even fail without a process
manager). Under MPI with more than one rank, an uncaught exception on any rank prints its
traceback and aborts the whole job instead of leaving the other ranks blocked forever in
their next collective.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import threading
import traceback
from typing import Any

import numpy as np

from distnn.distributed import compression as compression_lib
from distnn.distributed.communicator import (ALLREDUCE_DTYPES, NAMES, Communicator,
                                             SingleProcessCommunicator, create_communicator)

# Variables set by MPI launchers in every process they start: MPICH/Intel MPI hydra and
# Slurm's pmi2 (PMI_*), Open MPI (OMPI_*), PMIx-based launchers (PMIX_RANK), MPICH's
# gforker/hydra local info (MPI_LOCALNRANKS).
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
_WORLD_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")

_communicator: Communicator | None = None
_previous_hooks: tuple | None = None


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher.

    `DISTNN_USE_MPI=1` forces MPI (e.g. a launcher that sets none of the usual variables),
    `DISTNN_USE_MPI=0` forces a single process.
    """
    forced = os.environ.get("DISTNN_USE_MPI", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return any(variable in os.environ for variable in LAUNCHER_VARIABLES)


def _launcher_world_size() -> int:
    for variable in _WORLD_SIZE_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return 1


def init(backend: str = "auto", compression: str | compression_lib.Compressor | None = None,
         ) -> Communicator:
    """Creates the process-wide communicator (collective: every rank must call it).

    Outside an MPI launch (or with `backend="single"`) this is a
    `SingleProcessCommunicator` and mpi4py is never imported. Calling `init` again
    replaces the communicator.

    Args:
        backend: `"auto"`, `"ring"`, `"mpi"` or `"single"` (see `create_communicator`).
        compression: `None`, `"none"`, `"fp16"` or a `Compressor`, used by `allreduce`.

    Returns:
        The communicator, also returned by `get_communicator()` from now on.
    """
    global _communicator
    if backend not in NAMES:
        raise ValueError(f"`backend` must be one of {NAMES}. Received: backend={backend!r}")
    if backend != "single" and launched_by_mpi():
        if importlib.util.find_spec("mpi4py") is not None:
            _communicator = create_communicator(backend, compression=compression)
        elif _launcher_world_size() > 1:
            raise RuntimeError(
                f"This process was started by an MPI launcher with {_launcher_world_size()} "
                "processes, but mpi4py is not installed, so the processes cannot communicate "
                "(each would train alone). Install it: `pip install mpi4py mpich`.")
        else:
            _communicator = SingleProcessCommunicator(compression)
    else:
        _communicator = SingleProcessCommunicator(compression)
    _set_abort_hooks(_communicator)
    _share_cores(_communicator)
    return _communicator


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _share_cores(comm: Communicator) -> None:
    """Give each rank its share of the node's cores for BLAS/OpenMP when nobody chose a count.

    `distnn-run` sets the thread variables before the ranks start; a plain `mpiexec -n 4` does
    not, and then every rank's BLAS would start one thread per core, oversubscribing the node
    (a PyTorch MLP epoch went from 2.2 s to 21 s that way). The pools are already loaded
    by now, so they are resized at run time with threadpoolctl.
    """
    if comm.size == 1 or any(os.environ.get(name) for name in _THREAD_VARIABLES):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 - only under MPI

    threadpool_limits(max(1, cores // comm.local_size))


def install_early_abort_hook() -> None:
    """Under an MPI launcher, make an exception raised before `init` (say, while loading data) still
    end the whole job: the hook initialises MPI only then, to abort. Called by `import distnn`;
    mpi4py stays unimported until needed. Without it the other ranks would wait forever in their
    first collective."""
    if not launched_by_mpi() or _previous_hooks is not None:
        return
    previous = sys.excepthook

    def initialise_then_abort(exc_type, exc, tb) -> None:
        try:
            comm = get_communicator()  # installs the real hooks when there are several ranks
        except Exception:  # MPI itself is unusable: at least report the original error
            comm = None
        hook = sys.excepthook if comm is not None and comm.size > 1 else previous
        if hook is initialise_then_abort:
            hook = previous
        hook(exc_type, exc, tb)

    sys.excepthook = initialise_then_abort


def _set_abort_hooks(comm: Communicator) -> None:
    """With several ranks, makes an uncaught exception (main or any thread) abort the job."""
    global _previous_hooks
    if _previous_hooks is not None:  # undo an earlier init's hooks
        sys.excepthook, threading.excepthook = _previous_hooks
        _previous_hooks = None
    if comm.size == 1:
        return

    def report_and_abort(exc_type, exc, tb) -> None:
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        prefix = f"[rank {comm.rank}] "
        sys.stderr.write("".join(prefix + line for line in text.splitlines(keepends=True)))
        sys.stderr.write(f"{prefix}aborting the MPI job ({comm.size} ranks) after an uncaught "
                         f"{exc_type.__name__}\n")
        comm.abort(1)

    def thread_hook(args) -> None:
        if args.exc_type is SystemExit:  # ends only that thread, as by default
            return
        report_and_abort(args.exc_type, args.exc_value, args.exc_traceback)

    _previous_hooks = (sys.excepthook, threading.excepthook)
    sys.excepthook, threading.excepthook = report_and_abort, thread_hook


def is_initialized() -> bool:
    """Whether `init` has run (explicitly or through `get_communicator`)."""
    return _communicator is not None


def get_communicator() -> Communicator:
    """The process-wide communicator, created with `init()`'s defaults on first use."""
    return _communicator if _communicator is not None else init()


def rank() -> int:
    """Index of this process in the job (0 when running alone)."""
    return get_communicator().rank


def size() -> int:
    """Number of processes in the job (1 when running alone)."""
    return get_communicator().size


def local_rank() -> int:
    """Index of this process among those on its node (picks the GPU)."""
    return get_communicator().local_rank


def local_size() -> int:
    """Number of processes on this node."""
    return get_communicator().local_size


def is_root() -> bool:
    """Whether this is rank 0, the process that prints and writes files."""
    return rank() == 0


def barrier() -> None:
    """Waits until every process reaches this call."""
    get_communicator().barrier()


def allreduce(array: Any, op: str = "average") -> np.ndarray:
    """Returns the average (default, as in Horovod) or sum of `array` over all processes.

    Args:
        array: array-like of the same shape on every process; it is not modified.
            float32/float64 keep their dtype, other dtypes are reduced in float64.
        op: `"average"` or `"sum"`.

    Returns:
        A new array.
    """
    result = np.array(array, order="C", copy=True)
    if result.dtype not in ALLREDUCE_DTYPES:
        result = result.astype(np.float64)
    return get_communicator().allreduce(result, op=op)


def broadcast(array: Any, root: int = 0) -> np.ndarray:
    """Returns a copy of `root`'s `array` on every process (`array` is not modified).

    Args:
        array: array-like of the same shape and dtype on every process.
        root: rank whose values are broadcast.
    """
    return get_communicator().bcast(np.array(array, order="C", copy=True), root=root)


def allgather(array: Any) -> np.ndarray:
    """Concatenates every process's `array` along axis 0 in rank order (lengths may differ)."""
    return get_communicator().allgather(np.asarray(array))


def broadcast_object(obj: Any, root: int = 0) -> Any:
    """Returns `root`'s picklable `obj` on every process."""
    return get_communicator().bcast_obj(obj, root=root)


def allgather_object(obj: Any) -> list:
    """Returns the list of every process's picklable `obj`, in rank order."""
    return get_communicator().allgather_obj(obj)
