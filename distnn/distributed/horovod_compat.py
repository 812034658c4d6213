"""Horovod's API on distnn: a Horovod Keras script runs with ``import distnn.distributed as hvd``.

The collectives take Horovod's keywords (``root_rank``, ``name``, ``average``/``op``,
``prescale_factor``...) and have in-place ``_`` variants; ``init`` (``world.init``'s launch check)
refuses the processes ``horovodrun`` starts in Gloo mode, which MPI does not connect; ``cross_rank`` /
``cross_size`` / ``is_homogeneous`` describe the nodes; ``join`` serves ranks with fewer batches.
Where Horovod's meaning of ``batch_size`` differs from distnn's global batch, a model compiled with
``DistributedOptimizer`` trains as under Horovod (docs/architecture.md, "Input pipelines and
data-parallel modes").
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn.distributed import compression as compression_lib
from distnn.distributed import world
from distnn.distributed.optimizer import DistributedOptimizer, check_op, join as _join



def init(*args: Any, comm: Any = None, process_sets: Any = None, **kwargs: Any) -> Any:
    """Horovod's ``hvd.init()``, also distnn's ``init(backend=..., compression=...)`` (collective).

    Args:
        comm: Horovod's choice of MPI communicator: only ``None`` (the whole job) is supported.
        process_sets: only ``None``: distnn has one process set, the whole job.
        *args, **kwargs: ``distnn.distributed.world.init``'s ``backend`` and ``compression``.

    Returns:
        The process-wide communicator.
    """
    if comm is not None or process_sets is not None:
        raise ValueError("distnn runs every rank in one job: init(comm=...) and init(process_sets=...) are not "
                         f"supported. Received: comm={comm!r}, process_sets={process_sets!r}")
    return world.init(*args, **kwargs)  # refuses horovodrun's Gloo mode (launch_env)


def shutdown() -> None:
    """Horovod's ``hvd.shutdown()``: waits until every rank got here. MPI itself is finalized when the
    process exits (it cannot be restarted within a process), so the communicator stays usable."""
    world.get_communicator().barrier()


def cross_rank() -> int:
    """Horovod's cross rank: this rank's index among the ranks with its local rank (one per node;
    its node's index on homogeneous nodes). Computed when the communicator was made, from MPI's
    shared-memory split, never from host names; a query, never a collective."""
    return world.get_communicator().cross_rank


def cross_size() -> int:
    """The number of ranks with this local rank (the number of nodes on homogeneous nodes)."""
    return world.get_communicator().cross_size


def is_homogeneous() -> bool:
    """Whether every node runs the same number of ranks."""
    return world.get_communicator().is_homogeneous


def mpi_threads_supported() -> bool:
    """Whether MPI was initialised with ``MPI_THREAD_MULTIPLE`` (False without MPI)."""
    comm = world.get_communicator()
    mpi = getattr(comm, "_MPI", None)
    return bool(mpi is not None and mpi.Query_thread() == mpi.THREAD_MULTIPLE)


def mpi_enabled() -> bool:
    """Whether the ranks communicate through MPI (False for a single process)."""
    return getattr(world.get_communicator(), "_MPI", None) is not None


def mpi_built() -> bool:
    """Whether mpi4py is installed."""
    import importlib.util  # noqa: PLC0415

    return importlib.util.find_spec("mpi4py") is not None


def gloo_enabled() -> bool:
    """Always False: distnn has no Gloo transport."""
    return False


gloo_built = gloo_enabled


def join(device: int = -1) -> int:
    """Horovod's ``hvd.join()`` (``distnn.distributed.optimizer.join``); ``device`` is accepted."""
    return _join()


# ----------------------------------------------------------------------------- collectives
def _op(op: Any, average: Any) -> str:
    if isinstance(average, str) and op is None:  # distnn's own spelling: allreduce(x, "sum")
        return check_op(average)
    return check_op(op, average)


def _no_process_set(process_set: Any) -> None:
    if process_set is not None:
        raise ValueError(f"distnn has one process set, the whole job. Received: process_set={process_set!r}")


def allreduce(tensor: Any, average: Any = None, device_dense: str = "", device_sparse: str = "",
              compression: Any = compression_lib.Compression.none, op: Any = None, prescale_factor: float = 1.0,
              postscale_factor: float = 1.0, name: str | None = None, process_set: Any = None) -> np.ndarray:
    """The average (default) or sum of ``tensor`` over the ranks, as a new array (Horovod's signature;
    ``allreduce(x, "sum")`` also works). float32/float64 keep their dtype, other dtypes are
    reduced in float64.

    Args:
        tensor: array-like of the same shape on every rank; not modified.
        op: ``hvd.Average`` or ``hvd.Sum`` (``average=True/False``: Horovod's older spelling).
        compression: ``hvd.Compression.fp16`` rounds the values to float16 before and after the
            reduction, as Horovod's compressed transfer does (the sum itself is exact).
        prescale_factor, postscale_factor: multiply before and after the reduction.
        name, device_dense, device_sparse: accepted for Horovod scripts (collectives match by order).
    """
    _no_process_set(process_set)
    op = _op(op, average)
    result = np.array(tensor, order="C", copy=True)
    if result.dtype not in (np.float32, np.float64):
        result = result.astype(np.float64)
    return _allreduce_into(result, op, compression, prescale_factor, postscale_factor)


def allreduce_(tensor: np.ndarray, average: Any = None, device_dense: str = "", device_sparse: str = "",
               compression: Any = compression_lib.Compression.none, op: Any = None, prescale_factor: float = 1.0,
               postscale_factor: float = 1.0, name: str | None = None, process_set: Any = None) -> np.ndarray:
    """``allreduce`` in place: ``tensor`` (a C-contiguous float32/float64 numpy array) receives the result."""
    _no_process_set(process_set)
    _check_in_place(tensor, "allreduce_", floats_only=True)
    return _allreduce_into(tensor, _op(op, average), compression, prescale_factor, postscale_factor)


def _allreduce_into(array: np.ndarray, op: str, compression: Any, prescale: float, postscale: float) -> np.ndarray:
    compressor = compression_lib.get(compression)
    if prescale != 1.0:
        array *= prescale
    wire = compressor.wire_dtype(array.dtype)
    if wire != array.dtype:
        array[...] = array.astype(wire)
    world.get_communicator().allreduce(array, op=op)
    if wire != array.dtype:
        array[...] = array.astype(wire)
    if postscale != 1.0:
        array *= postscale
    return array


def broadcast(tensor: Any, root_rank: int = 0, name: str | None = None, process_set: Any = None,
              root: int | None = None) -> np.ndarray:
    """A copy of ``root_rank``'s ``tensor`` on every rank (``root=`` is distnn's older spelling)."""
    _no_process_set(process_set)
    root_rank = root if root is not None else root_rank
    return world.get_communicator().bcast(np.array(tensor, order="C", copy=True), root=root_rank)


def broadcast_(tensor: np.ndarray, root_rank: int = 0, name: str | None = None, process_set: Any = None) -> np.ndarray:
    """``broadcast`` in place into ``tensor`` (a C-contiguous numpy array)."""
    _no_process_set(process_set)
    _check_in_place(tensor, "broadcast_")
    return world.get_communicator().bcast(tensor, root=root_rank)


def allgather(tensor: Any, name: str | None = None, process_set: Any = None) -> np.ndarray:
    """Every rank's ``tensor`` concatenated along axis 0 in rank order (lengths may differ)."""
    _no_process_set(process_set)
    return world.get_communicator().allgather(np.asarray(tensor))


def broadcast_object(obj: Any, root_rank: int = 0, name: str | None = None, process_set: Any = None,
                     root: int | None = None) -> Any:
    """``root_rank``'s picklable ``obj`` on every rank."""
    _no_process_set(process_set)
    return world.get_communicator().bcast_obj(obj, root=root if root is not None else root_rank)


def allgather_object(obj: Any, name: str | None = None, process_set: Any = None) -> list:
    """Every rank's picklable ``obj``, in rank order."""
    _no_process_set(process_set)
    return world.get_communicator().allgather_obj(obj)


def broadcast_variables(variables: Any, root_rank: int = 0, process_set: Any = None) -> None:
    """Overwrite ``variables`` (distnn ``Variable``s such as ``model.variables``, or numpy arrays) with
    ``root_rank``'s values, in place, one broadcast each (collective)."""
    _no_process_set(process_set)
    comm = world.get_communicator()
    for variable in variables:
        if hasattr(variable, "assign"):
            value = np.ascontiguousarray(variable.numpy())
            variable.assign(comm.bcast(value, root=root_rank))
        else:
            _check_in_place(variable, "broadcast_variables")
            comm.bcast(variable, root=root_rank)


def _check_in_place(tensor: Any, function: str, floats_only: bool = False) -> None:
    if not isinstance(tensor, np.ndarray) or not tensor.flags.c_contiguous or not tensor.flags.writeable:
        raise TypeError(f"{function} works in place on a writable, C-contiguous numpy array. Received: "
                        f"{type(tensor).__name__}; use {function.rstrip('_')}, which returns a new array")
    if floats_only and tensor.dtype not in (np.float32, np.float64):
        raise TypeError(f"{function} reduces float32 or float64 arrays in place. Received dtype {tensor.dtype}; use "
                        f"{function.rstrip('_')}, which returns a float64 result")


def load_model(filepath: Any, custom_optimizers: Any = None, custom_objects: dict | None = None,
               compression: Any = compression_lib.Compression.none) -> Any:
    """``horovod.keras.load_model``: the model, its optimizer wrapped in ``DistributedOptimizer``
    (so ``fit`` keeps Horovod's semantics)."""
    from distnn.models import load_model as load  # noqa: PLC0415 - distributed does not import models

    objects = dict(custom_objects or {})
    for optimizer_class in custom_optimizers or []:
        objects[optimizer_class.__name__] = optimizer_class
    model = load(filepath, custom_objects=objects or None)
    if getattr(model, "optimizer", None) is not None:
        model._horovod = DistributedOptimizer(model.optimizer, compression=compression)
    return model
