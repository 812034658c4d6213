"""Collectives on device arrays: the one place that decides how a GPU buffer crosses ranks.

``Communicator.allreduce`` / ``bcast`` / ``allgather`` hand a device array (cupy, or the strict
test mode's) here; host arrays never come here. Three paths (docs/architecture.md, "Devices"):

- ``nccl``: cupy's NCCL bindings. Rank 0's unique id is broadcast over the MPI communicator, one
  NCCL communicator per distnn communicator (so one per job), run on the current CUDA stream, so
  it is ordered after the kernels that produced the buffer without a host synchronisation.
  NCCL refuses two ranks on one GPU, so ``auto`` only picks it when every rank has its own.
- ``cuda_aware``: the MPI library reads device memory itself (mpi4py passes
  ``__cuda_array_interface__``); the stream is synchronised first, since MPI is outside its order.
  Detected with ``MPIX_Query_cuda_support`` (MPICH, Open MPI), or forced by
  ``DISTNN_CUDA_AWARE_MPI=1``; only with the plain MPI communicator without compression, whose
  reduction is MPI's own (the ring and compression communicators compute on host buffers).
- ``host``: staged through a reused host buffer (page-locked on a GPU, so the copies run at full
  PCIe speed): download, the communicator's host collective, upload. Exact like the host path,
  because it *is* the host path; the only one the strict mode can run.

``DISTNN_DEVICE_COLLECTIVES`` = ``auto`` (default) | ``nccl`` | ``cuda_aware`` | ``host`` chooses.
"""
from __future__ import annotations

import ctypes
import os
import weakref
from typing import Any

import numpy as np

from distnn import backend

PATHS = ("auto", "nccl", "cuda_aware", "host")
_nccl_by_communicator: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_staging: dict[tuple[int, str], np.ndarray] = {}  # (id of the communicator, dtype) -> reused host buffer


def requested_path() -> str:
    path = os.environ.get("DISTNN_DEVICE_COLLECTIVES", "auto").lower()
    if path not in PATHS:
        raise ValueError(f"DISTNN_DEVICE_COLLECTIVES must be one of {PATHS}. Received: {path!r}")
    return path


def mpi_is_cuda_aware(mpi: Any) -> bool:
    """Whether the MPI library under mpi4py reads device memory (``DISTNN_CUDA_AWARE_MPI`` overrides)."""
    forced = os.environ.get("DISTNN_CUDA_AWARE_MPI", "")
    if forced in ("0", "1"):
        return forced == "1"
    query = getattr(mpi, "Query_cuda_support", None)
    if query is not None:
        return bool(query())
    try:  # MPICH and Open MPI export it from libmpi, which mpi4py's extension links
        function = ctypes.CDLL(mpi.__file__).MPIX_Query_cuda_support
    except (AttributeError, OSError):
        return False
    function.restype = ctypes.c_int
    return bool(function())


def choose_path(comm: Any) -> str:
    """The path this communicator's ``allreduce`` and ``bcast`` take for a device array."""
    path = requested_path()
    on_gpu = backend.device() == "gpu"
    if path in ("nccl", "cuda_aware") and not on_gpu:
        raise RuntimeError(f"DISTNN_DEVICE_COLLECTIVES={path} needs a GPU; this process's device is "
                           f"{backend.device()!r} (use 'host' or 'auto')")
    plain_mpi = getattr(comm, "name", "") == "mpi" and comm.compression.name == "none"
    if path == "cuda_aware" and not plain_mpi:
        raise ValueError("DISTNN_DEVICE_COLLECTIVES=cuda_aware needs the 'mpi' communicator without compression. "
                         f"Received: communicator={comm!r}")
    if not on_gpu:
        return "host"
    if path != "auto":
        return path
    if comm.local_size <= _device_count() and _nccl_available():
        return "nccl"
    if plain_mpi and mpi_is_cuda_aware(comm._MPI):
        return "cuda_aware"
    return "host"


def allreduce(comm: Any, array: Any, op: str) -> Any:
    """``comm.allreduce`` for a device array (already checked: float dtype, valid op, size > 1)."""
    if _run(comm, "allreduce", array, op=op) != "host" and op == "average":  # the device paths only sum
        array /= comm.size
    return array


def bcast(comm: Any, array: Any, root: int) -> Any:
    _run(comm, "bcast", array, root=root)
    return array


def _run(comm: Any, collective: str, array: Any, **options: Any) -> str:
    """Runs ``collective`` in place on ``array`` over the path `choose_path` picks; returns the path.
    The host path hands ``options`` to the communicator's own collective; the device paths take the
    root (their reduction is always a sum)."""
    path = choose_path(comm)
    if path == "host":
        host = _stage_down(comm, array)
        getattr(comm, collective)(host, **options)
        array.set(host)
    elif path == "nccl":
        nccl_communicator(comm).run(collective, array, options.get("root", 0))
    else:
        _cuda_aware(comm, collective, array, options.get("root", 0))
    return path


def allgather(comm: Any, array: Any) -> Any:
    """Ragged along axis 0, so through the host (it is not on any training step's path)."""
    gathered = comm.allgather(backend.to_numpy(array))
    return backend.to_device(gathered)


def _stage_down(comm: Any, array: Any) -> np.ndarray:
    """A host copy of ``array`` in a buffer reused across calls (pinned on a GPU)."""
    key = (id(comm), array.dtype.str)
    buffer = _staging.get(key)
    if buffer is None or buffer.size < array.size:
        buffer = _staging[key] = _host_buffer(array.size, array.dtype)
    host = buffer[:array.size].reshape(array.shape)
    array.get(out=host)
    return host


def _host_buffer(count: int, dtype: np.dtype) -> np.ndarray:
    if backend.device() != "gpu":
        return np.empty(count, dtype)
    cupy = backend.xp()
    memory = cupy.cuda.alloc_pinned_memory(count * np.dtype(dtype).itemsize)
    return np.frombuffer(memory, dtype, count)


def _device_count() -> int:
    return backend.xp().cuda.runtime.getDeviceCount()


def _nccl_available() -> bool:
    try:
        from cupy.cuda import nccl  # noqa: F401, PLC0415 - optional, only on a GPU
    except ImportError:
        return False
    return True


def _cuda_aware(comm: Any, collective: str, array: Any, root: int = 0) -> None:
    mpi = comm._MPI
    backend.xp().cuda.get_current_stream().synchronize()  # MPI reads the buffer outside the stream's order
    comm._monitor.begin(comm._label, f"{collective} (CUDA-aware MPI)", (array.dtype, array.shape))
    if collective == "allreduce":
        comm._monitor.wait(comm.comm.Iallreduce(mpi.IN_PLACE, array, op=mpi.SUM))
    else:
        comm._monitor.wait(comm.comm.Ibcast(array, root=root))
    comm._monitor.end()


class _NcclCommunicator:
    """One NCCL communicator spanning the ranks of a distnn communicator."""

    def __init__(self, comm: Any) -> None:
        from cupy.cuda import nccl  # noqa: PLC0415 - optional, only on a GPU

        self._nccl = nccl
        unique_id = nccl.get_unique_id() if comm.rank == 0 else None
        unique_id = comm.bcast_obj(unique_id, root=0)  # over MPI: NCCL has no way to find its peers
        self._comm = nccl.NcclCommunicator(comm.size, unique_id, comm.rank)
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def run(self, collective: str, array: Any, root: int) -> None:
        """``allreduce`` (a sum) or ``bcast`` from ``root``, in place, on the current stream (so ordered
        after the kernels that wrote ``array``)."""
        stream = backend.xp().cuda.get_current_stream()
        if collective == "allreduce":
            self._comm.allReduce(array.data.ptr, array.data.ptr, array.size, self._types[array.dtype],
                                 self._nccl.NCCL_SUM, stream.ptr)
        else:
            self._comm.bcast(array.data.ptr, array.nbytes, self._nccl.NCCL_CHAR, root, stream.ptr)


def nccl_communicator(comm: Any) -> _NcclCommunicator:
    """The NCCL communicator spanning `comm`'s ranks, created on first use (a collective: all ranks call it)."""
    nccl = _nccl_by_communicator.get(comm)
    if nccl is None:
        nccl = _nccl_by_communicator[comm] = _NcclCommunicator(comm)
    return nccl
