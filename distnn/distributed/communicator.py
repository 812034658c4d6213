"""Communicators: one interface over a single process, MPI collectives and the ring.

Every communicator has the same MPI-named methods (ChainerMN style), so the training loop
never asks which backend it runs on:

```python
comm = create_communicator("auto")     # or "single", "mpi", "ring"
comm.allreduce(flat_grads, op="average")  # in place
comm.bcast(flat_weights, root=0)          # in place
preds = comm.allgather(local_preds)       # concatenated in rank order
```

Array collectives work on C-contiguous numpy arrays and move raw buffers (no pickling);
the ``*_obj`` variants move small picklable Python objects. This module never imports
mpi4py at import time: importing mpi4py initialises MPI, which a plain single-process run
must not do.

The MPI communicators start every collective non-blocking and complete it in the stall
monitor's wait loop (distnn.distributed.stall), which gives each one a deadline and lets
signal handlers run while a rank waits.
"""
from __future__ import annotations

import abc
import os
import pickle
import sys
from typing import Any

import numpy as np

from distnn import backend
from distnn.distributed import compression as compression_lib
from distnn.distributed import device_collectives
from distnn.distributed import stall, startup

ALLREDUCE_OPS = ("sum", "average")
ALLREDUCE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def import_mpi():
    """Imports and returns ``mpi4py.MPI``, initialising MPI if needed, with a clear error if absent."""
    return startup.start_mpi()


def _check_array(array: Any) -> None:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"`array` must be a numpy.ndarray. Received: array of type "
                        f"{type(array).__name__}")
    if not array.flags.c_contiguous:
        raise ValueError("`array` must be C-contiguous (collectives work in place on its "
                         "buffer); use numpy.ascontiguousarray. Received: array with "
                         f"shape={array.shape}, strides={array.strides}")


class Communicator(abc.ABC):
    """Collective operations among the processes of one training job.

    Public methods validate their arguments and delegate the transfer to the `_allreduce`,
    `_bcast` and `_allgather` hooks of the subclasses.

    Args:
        compression: `None`, `"none"`, `"fp16"` or a `Compressor`: the dtype in which
            `allreduce` transfers floating-point data.
    """

    name: str = "base"

    def __init__(self, compression: str | compression_lib.Compressor | None = None) -> None:
        self.compression = compression_lib.get(compression)

    @property
    @abc.abstractmethod
    def rank(self) -> int:
        """Index of this process, `0 <= rank < size`."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Number of processes."""

    @property
    @abc.abstractmethod
    def local_rank(self) -> int:
        """Index of this process among those sharing its node's memory."""

    @property
    @abc.abstractmethod
    def local_size(self) -> int:
        """Number of processes sharing this node's memory."""

    def allreduce(self, array: np.ndarray, op: str = "sum") -> np.ndarray:
        """Reduces `array` over all processes, in place.

        Every process passes an array of the same shape and dtype; afterwards each holds
        the elementwise sum (or the average: the sum divided by `size`), bit-identical on
        all processes.

        Args:
            array: C-contiguous float32 or float64 ndarray, any shape (size 0 included).
            op: `"sum"` or `"average"`.

        Returns:
            `array` itself.
        """
        on_device = backend.is_device_array(array)  # device arrays: see device_collectives
        if not on_device:
            _check_array(array)
        if array.dtype not in ALLREDUCE_DTYPES:
            raise TypeError(f"`array` must be float32 or float64. Received: array with "
                            f"dtype={array.dtype}")
        if op not in ALLREDUCE_OPS:
            raise ValueError(f"`op` must be one of {ALLREDUCE_OPS}. Received: op={op!r}")
        if self.size > 1 and array.size > 0:
            if on_device:
                return device_collectives.allreduce(self, array, op)
            self._allreduce(array.reshape(-1), op)
        return array

    def bcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrites `array` on every process with the `root` process's values, in place.

        Args:
            array: C-contiguous ndarray of the same shape and dtype on every process.
            root: rank whose values are broadcast.

        Returns:
            `array` itself.
        """
        on_device = backend.is_device_array(array)
        if not on_device:
            _check_array(array)
        self._check_root(root)
        if self.size > 1 and array.size > 0:
            if on_device:
                return device_collectives.bcast(self, array, root)
            self._bcast(array, root)
        return array

    def allgather(self, array: np.ndarray) -> np.ndarray:
        """Concatenates every process's `array` along axis 0, in rank order.

        Axis-0 lengths may differ between processes; the other dimensions and the dtype
        must agree.

        Args:
            array: ndarray with at least one dimension (made C-contiguous if needed).

        Returns:
            A new array of shape `(sum of axis-0 lengths,) + array.shape[1:]`.
        """
        if backend.is_device_array(array):
            return device_collectives.allgather(self, array)
        if not isinstance(array, np.ndarray):
            raise TypeError(f"`array` must be a numpy.ndarray. Received: array of type "
                            f"{type(array).__name__}")
        if array.ndim == 0:
            raise ValueError("`array` must have at least one dimension (the one gathered). "
                             "Received: array with shape=()")
        return self._allgather(np.ascontiguousarray(array))

    def _check_root(self, root: int) -> None:
        if not isinstance(root, (int, np.integer)) or not 0 <= root < self.size:
            raise ValueError(f"`root` must be a rank in [0, {self.size}). Received: root={root!r}")

    @abc.abstractmethod
    def _allreduce(self, flat: np.ndarray, op: str) -> None:
        """Reduces the validated, non-empty 1-D `flat` in place (only called when size > 1)."""

    @abc.abstractmethod
    def _bcast(self, array: np.ndarray, root: int) -> None:
        """Broadcasts the validated, non-empty `array` in place (only called when size > 1)."""

    @abc.abstractmethod
    def _allgather(self, array: np.ndarray) -> np.ndarray:
        """Gathers the C-contiguous `array` (ndim >= 1) from all processes along axis 0."""

    @abc.abstractmethod
    def bcast_obj(self, obj: Any, root: int = 0) -> Any:
        """Returns `root`'s picklable `obj` on every process."""

    @abc.abstractmethod
    def allgather_obj(self, obj: Any) -> list:
        """Returns the list of every process's `obj`, in rank order."""

    @abc.abstractmethod
    def gather_obj(self, obj: Any, root: int = 0) -> list | None:
        """Returns the list of every process's `obj` on `root`, `None` elsewhere."""

    @abc.abstractmethod
    def barrier(self) -> None:
        """Returns once every process has called it."""

    @abc.abstractmethod
    def abort(self, code: int = 1) -> None:
        """Ends every process of the job at once with exit status `code` (does not return)."""

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} name={self.name!r} rank={self.rank} size={self.size} "
                f"compression={self.compression!r}>")


class SingleProcessCommunicator(Communicator):
    """The communicator of a process running alone, without MPI.

    Collectives are identities (`allgather` returns a copy), so the training loop runs
    unchanged on one process. Compression does not apply: nothing is transferred.
    """

    name = "single"

    rank = property(lambda self: 0)
    size = property(lambda self: 1)
    local_rank = property(lambda self: 0)
    local_size = property(lambda self: 1)
    cross_rank, cross_size, is_homogeneous = 0, 1, True

    def _allreduce(self, flat: np.ndarray, op: str) -> None:
        raise AssertionError("unreachable: Communicator.allreduce skips the transfer when size is 1")

    def _bcast(self, array: np.ndarray, root: int) -> None:
        raise AssertionError("unreachable: Communicator.bcast skips the transfer when size is 1")

    def _allgather(self, array: np.ndarray) -> np.ndarray:
        return array.copy()

    def bcast_obj(self, obj: Any, root: int = 0) -> Any:
        self._check_root(root)
        return obj

    def allgather_obj(self, obj: Any) -> list:
        return [obj]

    def gather_obj(self, obj: Any, root: int = 0) -> list:
        self._check_root(root)
        return [obj]

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(code)


class MpiCommunicator(Communicator):
    """Collectives of the MPI library (`MPI_Iallreduce`, `MPI_Ibcast`, `MPI_Iallgatherv`...).

    The communicator works on a duplicate of `comm`, so its messages never match those
    the user's own code sends on `comm`. Every collective is non-blocking, completed by the
    stall monitor's wait loop (see distnn.distributed.stall).

    Args:
        comm: an mpi4py communicator; `None` means `MPI.COMM_WORLD`.
        compression: see `Communicator`. With `"fp16"` the buffer is converted to float16,
            reduced by `MPI_Iallreduce` with an operation that adds in float32, and
            converted back.
    """

    name = "mpi"

    def __init__(self, comm=None, compression=None) -> None:
        super().__init__(compression)
        self._MPI = MPI = import_mpi()
        base = MPI.COMM_WORLD if comm is None else comm
        self._monitor = monitor = stall.monitor(MPI)
        # Communicators spanning every rank share the world's collective count, which tells the
        # monitor who has left (see stall.py); others are counted on their own.
        self._label = (stall.WORLD if base.Get_size() == MPI.COMM_WORLD.Get_size()
                       else f"communicator of {base.Get_size()} ranks at {id(self):x}")
        monitor.begin(self._label, "communicator creation")
        monitor.wait(base.Ibarrier())  # every rank is here: the blocking calls below return at once
        self.comm = base.Dup()
        # Processes that can share memory form one node: the MPI-3 way, robust to host
        # names that differ in spelling or are shared by containers.
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.comm.rank)
        self._local_rank, self._local_size = node.rank, node.size
        node.Free()
        # Horovod's cross communicator: the ranks with this local rank, one per node.
        cross = self.comm.Split(self._local_rank, key=self.comm.rank)
        self.cross_rank, self.cross_size = cross.rank, cross.size
        cross.Free()
        self._rank, self._size = self.comm.rank, self.comm.size
        # [local size, -local size, more ranks than cores]: reduced with MAX, the largest and
        # smallest node and whether some node is oversubscribed. There MPI's busy-polling waits
        # take turns on the cores, so every extra message round costs a scheduler time slice;
        # decided collectively because the algorithms that depend on it must agree on all ranks.
        layout = np.array([self._local_size, -self._local_size, self._local_size > (os.cpu_count() or 1)], np.int64)
        monitor.wait(self.comm.Iallreduce(MPI.IN_PLACE, layout, op=MPI.MAX))
        monitor.end()
        self.oversubscribed = bool(layout[2])
        self.is_homogeneous = bool(layout[0] == -layout[1])  # every node runs as many ranks
        self._buffers: dict[tuple[str, np.dtype], np.ndarray] = {}
        # Looked up on every call, so computed once: small allreduces are latency-bound.
        self._wire_dtypes = {dtype: self.compression.wire_dtype(dtype) for dtype in ALLREDUCE_DTYPES}
        self._wire_mpi: dict[tuple[str, np.dtype], Any] = {}

    rank = property(lambda self: self._rank)
    size = property(lambda self: self._size)
    local_rank = property(lambda self: self._local_rank)
    local_size = property(lambda self: self._local_size)

    def buffer(self, key: str, dtype: np.dtype, count: int) -> np.ndarray:
        """A reusable scratch array of `count` elements (a view of a cached, grown buffer).

        Collectives call this instead of allocating on every call.
        """
        cache_key = (key, np.dtype(dtype))
        cached = self._buffers.get(cache_key)
        if cached is None or cached.size < count:
            cached = self._buffers[cache_key] = np.empty(count, dtype)
        return cached[:count]

    def _allreduce(self, flat: np.ndarray, op: str) -> None:
        self._monitor.begin(self._label, "allreduce", (flat.dtype, flat.shape))
        self._reduce(flat, op)
        self._monitor.end()

    def _reduce(self, flat: np.ndarray, op: str) -> None:
        """The allreduce algorithm (inside the monitor's bookkeeping); subclasses choose another."""
        wire_dtype = self._wire_dtypes[flat.dtype]
        if wire_dtype == flat.dtype:
            self._monitor.wait(self.comm.Iallreduce(self._MPI.IN_PLACE, flat, op=self._MPI.SUM))
        else:
            wire = self.buffer("wire", wire_dtype, flat.size)
            np.copyto(wire, flat, casting="same_kind")
            datatype, sum_op = self._wire_sum(wire_dtype)
            self._monitor.wait(self.comm.Iallreduce(self._MPI.IN_PLACE, [wire, datatype], op=sum_op))
            np.copyto(flat, wire)
        if op == "average":
            np.divide(flat, self._size, out=flat)

    def start_sum(self, flat: np.ndarray, wire: np.ndarray | None = None) -> Any:
        """Starts summing the 1-D `flat` in place over the ranks; returns the MPI request.

        `wire`: a same-length scratch array of the wire dtype when compressing (`flat` is copied
        into it; after completion the caller copies it back). For the gradient buckets reduced
        during backward (distnn.distributed.overlap), completed by the caller's own polling.
        """
        if wire is None:
            return self.comm.Iallreduce(self._MPI.IN_PLACE, flat, op=self._MPI.SUM)
        np.copyto(wire, flat, casting="same_kind")
        datatype, sum_op = self._wire_sum(wire.dtype)
        return self.comm.Iallreduce(self._MPI.IN_PLACE, [wire, datatype], op=sum_op)

    def poll(self, request: Any) -> bool:
        """Advances one request of `start_sum` (MPI_Test); True once it is complete."""
        return request.Test()

    def complete(self, requests: list, array: np.ndarray) -> None:
        """Completes the requests of `start_sum` that sum parts of `array`, in the stall monitor's
        wait loop, as one allreduce of `array`."""
        self._monitor.begin(self._label, "allreduce", (array.dtype, array.shape))
        self._monitor.wait_all(requests)
        self._monitor.end()

    def _wire_sum(self, dtype: np.dtype):
        """`(MPI datatype, MPI op)` that add compressed `dtype` buffers in float32.

        The datatype is opaque bytes and the op user-defined because not every MPI library
        has (or reduces) float16; each add rounds once, like native float16 arithmetic.
        """
        dtype = np.dtype(dtype)
        if ("op", dtype) not in self._wire_mpi:
            def upcast_sum(inbuf, inoutbuf, datatype):
                inout = np.frombuffer(inoutbuf, dtype)
                inout[...] = np.add(np.frombuffer(inbuf, dtype), inout, dtype=np.float32)
            self._wire_mpi[("op", dtype)] = self._MPI.Op.Create(upcast_sum, commute=True)
            self._wire_mpi[("datatype", dtype)] = (
                self._MPI.BYTE.Create_contiguous(dtype.itemsize).Commit())
        return self._wire_mpi[("datatype", dtype)], self._wire_mpi[("op", dtype)]

    def _bcast(self, array: np.ndarray, root: int) -> None:
        self._monitor.begin(self._label, "bcast", (array.dtype, array.shape))
        self._monitor.wait(self.comm.Ibcast(array, root=root))
        self._monitor.end()

    def _allgather(self, array: np.ndarray) -> np.ndarray:
        self._monitor.begin(self._label, "allgather", (array.dtype, array.shape))
        shapes = [pickle.loads(item) for item in self._gather_bytes(pickle.dumps((array.shape, array.dtype.str)))]
        if any(shape[1:] != array.shape[1:] or dtype != array.dtype.str for shape, dtype in shapes):
            raise ValueError("`allgather` needs the same dtype and trailing dimensions on every "
                             "rank. Received (shape, dtype) per rank: "
                             f"{[(shape, np.dtype(dtype).name) for shape, dtype in shapes]}")
        row = int(np.prod(array.shape[1:], dtype=np.int64))
        counts = [shape[0] * row for shape, _ in shapes]
        out = np.empty((sum(shape[0] for shape, _ in shapes),) + array.shape[1:], array.dtype)
        self._monitor.wait(self.comm.Iallgatherv(array, [out, counts]))
        self._monitor.end()
        return out

    def _gather_bytes(self, payload: bytes, root: int | None = None) -> list[bytes] | None:
        """Every rank's `payload`, in rank order (on `root` only when given; `None` elsewhere)."""
        MPI, wait = self._MPI, self._monitor.wait
        lengths = np.empty(self._size, np.int64)
        mine = np.array([len(payload)], np.int64)
        receiving = root is None or root == self._rank
        if root is None:
            wait(self.comm.Iallgather(mine, lengths))
        else:
            wait(self.comm.Igather(mine, lengths if receiving else None, root=root))
        out = bytearray(int(lengths.sum())) if receiving else None
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if receiving else None
        target = [out, (lengths, offsets), MPI.BYTE] if receiving else None
        if root is None:
            wait(self.comm.Iallgatherv([payload, MPI.BYTE], target))
        else:
            wait(self.comm.Igatherv([payload, MPI.BYTE], target, root=root))
        if not receiving:
            return None
        view = memoryview(out)
        return [view[o:o + n] for o, n in zip(offsets.tolist(), lengths.tolist())]

    def bcast_obj(self, obj: Any, root: int = 0) -> Any:
        self._check_root(root)
        wait = self._monitor.wait
        self._monitor.begin(self._label, "bcast_obj")
        payload = bytearray(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)) if self._rank == root else bytearray()
        length = np.array([len(payload)], np.int64)
        wait(self.comm.Ibcast(length, root=root))
        if self._rank != root:
            payload = bytearray(int(length[0]))
        wait(self.comm.Ibcast([payload, self._MPI.BYTE], root=root))
        self._monitor.end()
        return obj if self._rank == root else pickle.loads(payload)

    def allgather_obj(self, obj: Any) -> list:
        self._monitor.begin(self._label, "allgather_obj")
        parts = self._gather_bytes(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))
        self._monitor.end()
        return [pickle.loads(part) for part in parts]

    def gather_obj(self, obj: Any, root: int = 0) -> list | None:
        self._check_root(root)
        self._monitor.begin(self._label, "gather_obj")
        parts = self._gather_bytes(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL), root=root)
        self._monitor.end()
        return None if parts is None else [pickle.loads(part) for part in parts]

    def barrier(self) -> None:
        self._monitor.begin(self._label, "barrier")
        self._monitor.wait(self.comm.Ibarrier())
        self._monitor.end()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)
