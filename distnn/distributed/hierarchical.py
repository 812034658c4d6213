"""Hierarchical allreduce (ChainerMN style): node-local over shared memory, a ring across nodes.

On a cluster the network between nodes is the slow part; the flat ring sends `2 (N - 1) / N` of
the buffer over every link of the ring, and with several ranks per node its cross-node links carry
it once per node boundary the ring crosses, in each direction. The hierarchical allreduce instead

1. reduces within each node to its leader, the node-local rank 0 (`MPI_Ireduce` over the
   shared memory of the node's ranks),
2. runs the ring across the leaders, the only traffic on the network: `2 (nodes - 1) / nodes`
   of the buffer per leader,
3. broadcasts the result from the leader within its node (`MPI_Ibcast`),

in pieces, so that the node-local steps of some pieces overlap the network transfer of another.
On one node it is the node-local allreduce alone (`auto`'s ring or `MPI_Allreduce` by size), with
one rank per node the leaders' ring alone.

Node membership comes from `MPI_Comm_split_type(COMM_TYPE_SHARED)`, never from host names (ranks
of containers or of emulated nodes can share a host name, and one host can have many names).
Compression applies to the cross-node ring only (the network): node-local steps move full
precision over shared memory. Every rank ends with the same values: each leader's ring leaves
identical values on all leaders, which the broadcasts copy. See docs/architecture.md,
"Hierarchical allreduce".
"""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from distnn.distributed import stall, startup
from distnn.distributed.communicator import MpiCommunicator
from distnn.distributed.ring import AutoCommunicator, RingCommunicator, chunk_bounds

PIECE_BYTES = 4 << 20  # pipelining unit of the multi-node path (measured, see `_pipelined`)
PIPELINE_DEPTH = 2  # pieces reduced (and broadcast) ahead of the one in the leaders' ring


class HierarchicalCommunicator(AutoCommunicator):
    """`allreduce` in three steps: within the node, across node leaders, back within the node.

    On one node it is the node-local allreduce alone; with one rank per node, the leaders' ring
    alone. Buffers under `ring_threshold` bytes on the wire use `MPI_Allreduce` on all ranks (few
    message rounds: latency, not bandwidth, bounds them).

    Args:
        comm: an mpi4py communicator; `None` means `MPI.COMM_WORLD`.
        compression: see `Communicator`; applied to the cross-node ring.
        ring_threshold: buffers of at least this many bytes on the wire take the hierarchical
            path (default 0: every buffer; `create_communicator("auto")` passes its measured
            crossover).
    """

    name = "hierarchical"

    def __init__(self, comm=None, compression=None, ring_threshold: int | str | None = 0) -> None:
        super().__init__(comm, compression, ring_threshold)
        MPI, monitor = self._MPI, self._monitor
        monitor.begin(self._label, "hierarchical communicator creation")
        monitor.wait(self.comm.Ibarrier())  # every rank is here: the blocking splits return at once
        node_comm = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self._rank)
        is_leader = node_comm.Get_rank() == 0
        leader_comm = self.comm.Split(0 if is_leader else MPI.UNDEFINED, key=self._rank)
        counts = np.array([1 if is_leader else 0], np.int64)
        monitor.wait(self.comm.Iallreduce(MPI.IN_PLACE, counts, op=MPI.SUM))
        monitor.end()
        self.nodes = int(counts[0])
        # Node-local reduction in full precision: shared memory, nothing to save on the wire.
        self._node = AutoCommunicator(node_comm) if node_comm.Get_size() > 1 else None
        self._leaders = (RingCommunicator(leader_comm, self.compression)
                         if is_leader and self.nodes > 1 else None)
        for created in (node_comm, leader_comm):
            if created != MPI.COMM_NULL:
                created.Free()

    def select(self, nbytes: int) -> str:
        """The algorithm (`"hierarchical"` or `"mpi"`) used for `nbytes` bytes on the wire."""
        return "hierarchical" if nbytes >= self._ring_threshold else "mpi"

    def _reduce(self, flat: np.ndarray, op: str) -> None:
        if flat.size < self._ring_min_count[flat.dtype]:
            MpiCommunicator._reduce(self, flat, op)
        elif self._node is None:  # one rank per node: the leaders' ring is the whole allreduce
            self._leaders._reduce(flat, op)
        elif self.nodes == 1:  # one node: the node-local allreduce is the whole allreduce
            self._node._reduce(flat, op)
        else:
            self._pipelined(flat, op)

    def _pipelined(self, flat: np.ndarray, op: str) -> None:
        """Node reduce, leaders' ring and node broadcast, piece by piece, overlapped.

        The node-local `MPI_Ireduce` of the next pieces and the `MPI_Ibcast` of the previous ones
        progress while the leader waits in the ring's transfers of the current piece, so the
        network stays busy during the node-local work. Measured on the emulated cluster (2 nodes x
        2 ranks on 2 cores, 1 Gbit/s, 16 MiB): the three steps one after the other took 227 ms, as
        long as the flat ring (211 ms); pipelined in 4 MiB pieces 153 ms (the link's own time for
        the leaders' ring is 141 ms); 1 MiB pieces 166 ms; all 64 pieces of 1 MiB of a 64 MiB
        buffer in flight at once took 3.4 s (4 MiB, 2 ahead: 0.57 s), hence `PIPELINE_DEPTH`.
        """
        node_comm, leaders, MPI, wait = self._node.comm, self._leaders, self._MPI, self._monitor.wait
        bounds = chunk_bounds(flat.size, max(1, -(-flat.nbytes // PIECE_BYTES)))
        pieces = [flat[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        leader = leaders is not None

        def start_reduce(piece: np.ndarray):
            if leader:
                return node_comm.Ireduce(MPI.IN_PLACE, piece, op=MPI.SUM, root=0)
            return node_comm.Ireduce(piece, None, op=MPI.SUM, root=0)

        reduces = deque(start_reduce(piece) for piece in pieces[:PIPELINE_DEPTH])
        broadcasts: deque = deque()
        for k, piece in enumerate(pieces):
            wait(reduces.popleft())
            if k + PIPELINE_DEPTH < len(pieces):
                reduces.append(start_reduce(pieces[k + PIPELINE_DEPTH]))
            if leader:
                leaders._reduce(piece, "sum")
                if op == "average":
                    np.divide(piece, self._size, out=piece)
            broadcasts.append(node_comm.Ibcast(piece, root=0))
            if len(broadcasts) > PIPELINE_DEPTH:
                wait(broadcasts.popleft())
        self._monitor.wait_all(list(broadcasts))


def spans_nodes_with_shared_memory(comm: Any = None) -> bool:
    """Whether the ranks of `comm` span several nodes and some node runs several of them (then the
    hierarchical allreduce pays off). Collective: every rank of `comm` must call it.

    Args:
        comm: an mpi4py communicator; `None` means `MPI.COMM_WORLD`.
    """
    MPI = startup.start_mpi()
    base = MPI.COMM_WORLD if comm is None else comm
    if base.Get_size() == 1:
        return False
    monitor = stall.monitor(MPI)
    label = stall.WORLD if base.Get_size() == MPI.COMM_WORLD.Get_size() else f"communicator at {id(base):x}"
    monitor.begin(label, "node layout")
    monitor.wait(base.Ibarrier())
    node_comm = base.Split_type(MPI.COMM_TYPE_SHARED, key=base.Get_rank())
    # max over ranks of (ranks off this node, ranks on this node)
    layout = np.array([base.Get_size() - node_comm.Get_size(), node_comm.Get_size()], np.int64)
    node_comm.Free()
    monitor.wait(base.Iallreduce(MPI.IN_PLACE, layout, op=MPI.MAX))
    monitor.end()
    return bool(layout[0] > 0 and layout[1] > 1)
