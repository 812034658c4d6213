"""Hierarchical allreduce (ChainerMN style): node-local over shared memory, a ring across nodes.

On a cluster the network between nodes is the slow part; the flat ring sends `2 (N - 1) / N` of
the buffer over every link of the ring, and with several ranks per node its cross-node links carry
it once per node boundary the ring crosses, in each direction. The hierarchical allreduce instead

1. reduces within each node (the node's ranks share memory: MPI's shared-memory transport, the
   ring or `MPI_Allreduce` by size, as `auto` picks for one machine),
2. runs the ring across one leader per node (the node-local rank 0), the only traffic on the
   network: `2 (nodes - 1) / nodes` of the buffer per leader,
3. broadcasts the result from the leader within its node.

Node membership comes from `MPI_Comm_split_type(COMM_TYPE_SHARED)`, never from host names (ranks
of containers or of emulated nodes can share a host name, and one host can have many names).
Compression applies to the cross-node ring only (the network): node-local steps move full
precision over shared memory. Every rank ends with the same values: each leader's ring leaves
identical values on all leaders, which the broadcasts copy. See docs/architecture.md,
"Hierarchical allreduce".
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn.distributed import stall, startup
from distnn.distributed.communicator import MpiCommunicator
from distnn.distributed.ring import AutoCommunicator, RingCommunicator


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
            return
        node, leaders = self._node, self._leaders
        if node is not None:
            node._reduce(flat, "sum")  # every rank of the node holds the node's sum
        if leaders is not None:
            leaders._reduce(flat, "sum")
        if op == "average" and (leaders is not None or self.nodes == 1):
            # On the leaders, or on one node on every rank (each holds the identical node sum).
            np.divide(flat, self._size, out=flat)
        if node is not None and self.nodes > 1:
            self._monitor.wait(node.comm.Ibcast(flat, root=0))


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
