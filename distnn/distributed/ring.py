"""Ring-allreduce on MPI point-to-point messages, and the size-based `auto` choice.

The ring (Patarasuk & Yuan, 2009; Baidu/Horovod) cuts the buffer into `size` chunks and
runs `size - 1` reduce-scatter steps, after which rank `r` holds the full sum of chunk
`(r + 1) % size`, then `size - 1` allgather steps that circulate the summed chunks. Each
rank sends `2 (size - 1) / size` of the buffer, independent of `size`: bandwidth-optimal.

Each reduce-scatter step moves its chunk in segments of `segment_bytes` through one small
receive buffer: the segment just received is still in cache when it is added, which
measured 1.2-1.4x faster than whole-chunk steps at 64-256 MiB. Non-blocking
`Isend`/`Irecv` overlapping segment k's addition with segment k+1's transfer measured no
faster than a blocking exchange (the shared-memory copies of the MPI library only advance
inside MPI calls), so each segment is one `Isend`/`Irecv` pair completed before the
addition, in the stall monitor's wait loop (distnn.distributed.stall) like every collective.
"""
from __future__ import annotations

import os
import re
import sys

import numpy as np

from distnn.distributed.communicator import MpiCommunicator

SEGMENT_BYTES = 1 << 20

# Smallest buffer (bytes on the wire) for which `auto` uses the ring instead of
# MPI_Allreduce, keyed by (ranks, oversubscribed), measured with `distnn-bench allreduce`
# on MPICH 5 (ch4, shared memory) on 2 cores: below it MPI's latency-optimised
# algorithms win. Oversubscribed ranks (more than cores) pay a time slice per message
# round, which favours MPI's fewer rounds up to larger sizes.
_RING_THRESHOLDS = {(2, False): 1 << 20, (3, True): 4 << 20, (4, True): 8 << 20}
_DEFAULT_THRESHOLD = {False: 1 << 20, True: 16 << 20}

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


def parse_bytes(text: str | int) -> int:
    """Parses a byte count such as `4096`, `"4K"`, `"64MiB"` or `"1G"` (binary units).

    Args:
        text: the count, an int or a string.
    """
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        value = int(text)
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
        if match is None or match.group(2).upper() not in _UNITS:
            raise ValueError(f"Expected a byte count such as 4096, 4K, 64M or 1G. "
                             f"Received: {text!r}")
        value = int(match.group(1)) * _UNITS[match.group(2).upper()]
    if value < 0:
        raise ValueError(f"Expected a non-negative byte count. Received: {text!r}")
    return value


def chunk_bounds(length: int, parts: int) -> list[int]:
    """Start offsets of `parts` near-equal chunks of `length` elements, plus `length`.

    Chunk `i` is `[bounds[i], bounds[i + 1])`; sizes differ by at most one and chunks may
    be empty when `length < parts`.
    """
    return [length * i // parts for i in range(parts + 1)]


def default_ring_threshold(size: int, oversubscribed: bool = False) -> int:
    """The measured ring-vs-MPI crossover in bytes; env `DISTNN_RING_THRESHOLD` overrides it.

    Args:
        size: number of ranks.
        oversubscribed: whether some node runs more ranks than it has cores.
    """
    override = os.environ.get("DISTNN_RING_THRESHOLD")
    if override:
        return parse_bytes(override)
    return _RING_THRESHOLDS.get((size, oversubscribed), _DEFAULT_THRESHOLD[oversubscribed])


class RingCommunicator(MpiCommunicator):
    """`MpiCommunicator` whose `allreduce` is the bandwidth-optimal ring.

    Any buffer length (0, fewer elements than ranks, primes) and any number of ranks.
    Every rank ends with bit-identical values: each chunk is summed by one rank and then
    copied to the others.

    Args:
        comm: an mpi4py communicator; `None` means `MPI.COMM_WORLD`.
        compression: see `Communicator`. With `"fp16"` segments travel as float16 and are
            added into the caller's float32 buffer, so partial sums keep float32
            precision; the final values are rounded to float16 once.
        segment_bytes: bytes per reduce-scatter message; `None` picks 1 MiB (measured
            fastest), or whole chunks when some node runs more ranks than it has cores
            (each message round then costs a scheduler time slice).
    """

    name = "ring"

    def __init__(self, comm=None, compression=None, segment_bytes: int | None = None) -> None:
        if segment_bytes is not None and (not isinstance(segment_bytes, (int, np.integer))
                                          or segment_bytes <= 0):
            raise ValueError(f"`segment_bytes` must be None or a positive integer. "
                             f"Received: segment_bytes={segment_bytes!r}")
        super().__init__(comm, compression)
        if segment_bytes is None:
            segment_bytes = sys.maxsize if self.oversubscribed else SEGMENT_BYTES
        self.segment_bytes = int(segment_bytes)
        self._right = (self._rank + 1) % self._size
        self._left = (self._rank - 1) % self._size

    def _reduce(self, flat: np.ndarray, op: str) -> None:
        n, rank = self._size, self._rank
        wire_dtype = self._wire_dtypes[flat.dtype]
        compressed = wire_dtype != flat.dtype
        bounds = chunk_bounds(flat.size, n)
        largest_chunk = -(-flat.size // n)
        # The segment count depends only on the global length, so sender and receiver of
        # every chunk cut it identically.
        n_segments = -(-largest_chunk // max(1, self.segment_bytes // wire_dtype.itemsize))
        segment = -(-largest_chunk // n_segments)
        incoming = self.buffer("recv", wire_dtype, segment)
        outgoing = self.buffer("send", wire_dtype, segment) if compressed else None

        for step in range(n - 1):  # reduce-scatter
            for (s_lo, s_hi), (r_lo, r_hi) in zip(
                    _segments(bounds, (rank - step) % n, n_segments),
                    _segments(bounds, (rank - step - 1) % n, n_segments)):
                received = self._sendrecv(flat[s_lo:s_hi], incoming[:r_hi - r_lo], outgoing)
                np.add(flat[r_lo:r_hi], received, out=flat[r_lo:r_hi])

        own = (rank + 1) % n  # the chunk this rank has now fully reduced
        if op == "average":
            np.divide(flat[bounds[own]:bounds[own + 1]], n, out=flat[bounds[own]:bounds[own + 1]])
        if compressed:
            # Other ranks receive this chunk rounded to the wire dtype; round the owner's
            # copy too so that all ranks hold identical values.
            for s_lo, s_hi in _segments(bounds, own, n_segments):
                np.copyto(outgoing[:s_hi - s_lo], flat[s_lo:s_hi], casting="same_kind")
                np.copyto(flat[s_lo:s_hi], outgoing[:s_hi - s_lo])

        for step in range(n - 1):  # allgather
            send_chunk, recv_chunk = (rank + 1 - step) % n, (rank - step) % n
            if not compressed and self._local_size == n:  # one node: straight into place
                self._sendrecv(flat[bounds[send_chunk]:bounds[send_chunk + 1]],
                               flat[bounds[recv_chunk]:bounds[recv_chunk + 1]], None)
                continue
            # Across nodes, in segments even uncompressed: a whole-chunk wait outlasts the stall
            # monitor's spinning, and while it sleeps between tests nothing feeds the TCP
            # socket. Measured on the emulated cluster, 2 nodes at 4 Gbit/s, 256 MiB: 0.16 GB/s
            # whole, 0.38 GB/s in segments (the link: 0.36-0.44). `local_size < size` holds on
            # every rank or on none, so all ranks cut alike.
            for (s_lo, s_hi), (r_lo, r_hi) in zip(_segments(bounds, send_chunk, n_segments),
                                                  _segments(bounds, recv_chunk, n_segments)):
                if not compressed:
                    self._sendrecv(flat[s_lo:s_hi], flat[r_lo:r_hi], None)
                    continue
                received = self._sendrecv(flat[s_lo:s_hi], incoming[:r_hi - r_lo], outgoing)
                np.copyto(flat[r_lo:r_hi], received)

    def _sendrecv(self, data: np.ndarray, into: np.ndarray, outgoing: np.ndarray | None) -> np.ndarray:
        """Sends `data` right (through `outgoing`, converted to its dtype, if given) and
        receives `into` from the left; returns `into`.

        Transfers are typed as raw bytes, so float16 needs no MPI float16 support.
        """
        if outgoing is not None:
            outgoing = outgoing[:data.size]
            np.copyto(outgoing, data, casting="same_kind")
            data = outgoing
        byte = self._MPI.BYTE
        self._monitor.wait_all([self.comm.Irecv([into, byte], self._left, 0),
                                self.comm.Isend([data, byte], self._right, 0)])
        return into


def _segments(bounds: list[int], chunk: int, n_segments: int):
    """The `(lo, hi)` element ranges of `chunk` cut into `n_segments` near-equal pieces."""
    lo, hi = bounds[chunk], bounds[chunk + 1]
    edges = chunk_bounds(hi - lo, n_segments)
    return [(lo + a, lo + b) for a, b in zip(edges[:-1], edges[1:])]


class AutoCommunicator(RingCommunicator):
    """Picks the ring or `MPI_Allreduce` per call, whichever is faster for the buffer size.

    The MPI library's latency-optimised algorithms win for small buffers, the ring for
    large ones (on MPICH's shared-memory path, 2 ranks, it reaches 3-4x the bandwidth of
    `MPI_Allreduce` from 32 MiB up).

    Args:
        comm: an mpi4py communicator; `None` means `MPI.COMM_WORLD`.
        compression: see `Communicator`.
        ring_threshold: buffers of at least this many bytes on the wire use the ring;
            `None` takes the measured default for the number of ranks (environment
            variable `DISTNN_RING_THRESHOLD`, e.g. `"4M"`, overrides it).
    """

    name = "auto"

    def __init__(self, comm=None, compression=None, ring_threshold: int | str | None = None) -> None:
        super().__init__(comm, compression)
        self._ring_threshold = (default_ring_threshold(self._size, self.oversubscribed) if ring_threshold is None
                                else parse_bytes(ring_threshold))
        # The per-call choice compares element counts: no arithmetic on the latency path.
        self._ring_min_count = {dtype: -(-self._ring_threshold // wire.itemsize)
                                for dtype, wire in self._wire_dtypes.items()}

    @property
    def ring_threshold(self) -> int:
        """Buffers of at least this many bytes on the wire use the ring."""
        return self._ring_threshold

    def select(self, nbytes: int) -> str:
        """The algorithm (`"ring"` or `"mpi"`) used for `nbytes` bytes on the wire."""
        return "ring" if nbytes >= self._ring_threshold else "mpi"

    def _reduce(self, flat: np.ndarray, op: str) -> None:
        if flat.size >= self._ring_min_count[flat.dtype]:
            RingCommunicator._reduce(self, flat, op)
        else:
            MpiCommunicator._reduce(self, flat, op)
