"""The process-wide communicator, Horovod style: `init()`, `rank()`, `size()`, ...

The same script runs alone (`python train.py`) and under an MPI launcher
(`mpiexec -n 4 python train.py`, `srun --mpi=pmi2`, `distnn-run`). Under a launcher,
`import distnn` starts MPI at once (distnn.distributed.launcher_start); `init` creates the
communicator, collectively, and refuses a launch whose processes MPI does not connect
(distnn.distributed.launch_env).

Queries (`rank`, `size`, `local_rank`, `local_size`, `is_root`, `is_initialized`) never start a
collective: before `init` they answer from what MPI's start at import computed on every rank, so a
query made on some ranks only (a print on rank 0, `model.summary()`) cannot leave them waiting for
the others. Collectives (`barrier`, `allreduce`, ...) create the communicator on first use, which
every rank then does.
"""
from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from distnn.distributed import aborts, launch_env, launcher_start, threads
from distnn.distributed import compression as compression_lib
from distnn.distributed.backends import NAMES, create_communicator
from distnn.distributed.communicator import ALLREDUCE_DTYPES, Communicator, SingleProcessCommunicator
from distnn.distributed.launch_env import LAUNCHER_VARIABLES, LaunchMismatchError, launched_by_mpi
from distnn.distributed.launcher_start import start_under_launcher

__all__ = ["LAUNCHER_VARIABLES", "LaunchMismatchError", "launched_by_mpi", "start_under_launcher", "init",
           "is_initialized", "get_communicator", "rank", "size", "local_rank", "local_size", "is_root", "barrier",
           "allreduce", "broadcast", "allgather", "broadcast_object", "allgather_object"]

_communicator: Communicator | None = None


def init(backend: str = "auto", compression: str | compression_lib.Compressor | None = None,
         ) -> Communicator:
    """Creates the process-wide communicator (collective: every rank must call it).

    Outside an MPI launch (or with `backend="single"`) this is a
    `SingleProcessCommunicator` and mpi4py is never imported. Calling `init` again
    replaces the communicator.

    Args:
        backend: `"auto"`, `"ring"`, `"hierarchical"`, `"mpi"` or `"single"` (see
            `create_communicator`).
        compression: `None`, `"none"`, `"fp16"` or a `Compressor`, used by `allreduce`.

    Returns:
        The communicator, also returned by `get_communicator()` from now on.

    Raises:
        LaunchMismatchError: the environment says the job has several processes (Slurm,
            torchrun, horovodrun, Open MPI's or another MPI's launcher) but MPI connects none
            of them; the message names the variable and the fix.
    """
    global _communicator
    if backend not in NAMES:
        raise ValueError(f"`backend` must be one of {NAMES}. Received: backend={backend!r}")
    if backend == "single":
        communicator: Communicator = SingleProcessCommunicator(compression)
    elif launched_by_mpi() and importlib.util.find_spec("mpi4py") is not None:
        communicator = create_communicator(backend, compression=compression)
        launch_env.check_world_size(communicator.size)
    elif launched_by_mpi() and launch_env.launcher_world_size() > 1:
        raise RuntimeError(
            f"This process was started by an MPI launcher with {launch_env.launcher_world_size()} "
            "processes, but mpi4py is not installed, so the processes cannot communicate "
            "(each would train alone). Install it: `pip install mpi4py mpich`.")
    else:
        launch_env.check_world_size(1 if launched_by_mpi() else None)
        communicator = SingleProcessCommunicator(compression)
    aborts.install_abort_hooks(communicator.rank, communicator.size)
    threads.share_cores(communicator)
    _communicator = communicator
    return communicator


def is_initialized() -> bool:
    """Whether `init` has run (explicitly or through `get_communicator`)."""
    return _communicator is not None


def get_communicator() -> Communicator:
    """The process-wide communicator, created with `init()`'s defaults on first use."""
    return _communicator if _communicator is not None else init()


def _placement() -> launcher_start.Placement:
    """rank, size, local rank and local size, without starting a collective."""
    if _communicator is not None:
        comm = _communicator
        return launcher_start.Placement(comm.rank, comm.size, comm.local_rank, comm.local_size)
    placement = launcher_start.placement()
    if placement is not None:
        return placement
    if launched_by_mpi() and importlib.util.find_spec("mpi4py") is not None:
        # MPI did not start at import (an inconsistent launch): `init` raises the explanation.
        # Nothing collective has happened on any rank, so this one call cannot hang.
        comm = init()
        return launcher_start.Placement(comm.rank, comm.size, comm.local_rank, comm.local_size)
    return launcher_start.Placement(0, 1, 0, 1)


def rank() -> int:
    """Index of this process in the job (0 when running alone); never a collective."""
    return _placement().rank


def size() -> int:
    """Number of processes in the job (1 when running alone); never a collective."""
    return _placement().size


def local_rank() -> int:
    """Index of this process among those on its node (picks the GPU); never a collective."""
    return _placement().local_rank


def local_size() -> int:
    """Number of processes on this node; never a collective."""
    return _placement().local_size


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
