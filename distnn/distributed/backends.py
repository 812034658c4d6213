"""`create_communicator`: the table of backend names and the choice `auto` makes.

Its own module because it names every communicator class: the base classes
(distnn.distributed.communicator), the ring and `auto` (distnn.distributed.ring) and the
hierarchical one (distnn.distributed.hierarchical) each build on the one before and import
nothing above them.
"""
from __future__ import annotations

from distnn.distributed import compression as compression_lib
from distnn.distributed.communicator import Communicator, MpiCommunicator, SingleProcessCommunicator
from distnn.distributed.hierarchical import HierarchicalCommunicator, spans_nodes_with_shared_memory
from distnn.distributed.ring import AutoCommunicator, RingCommunicator

NAMES = ("auto", "ring", "hierarchical", "mpi", "single")


def create_communicator(name: str = "auto", comm=None,
                        compression: str | compression_lib.Compressor | None = None,
                        ) -> Communicator:
    """Creates a communicator by name.

    Args:
        name: `"auto"` (ring or MPI_Allreduce, whichever is faster for the buffer size; the
            hierarchical allreduce instead of the ring when the ranks span several nodes and some
            node runs several of them), `"ring"`, `"hierarchical"`, `"mpi"` or `"single"` (one
            process, no MPI).
        comm: the mpi4py communicator to work on; `None` means `MPI.COMM_WORLD`.
        compression: `None`, `"none"`, `"fp16"` or a `Compressor`.

    Returns:
        A `Communicator`. The MPI ones are created collectively: every process of `comm`
        must call this.
    """
    if name == "single":
        return SingleProcessCommunicator(compression)
    if name == "mpi":
        return MpiCommunicator(comm, compression)
    if name == "ring":
        return RingCommunicator(comm, compression)
    if name == "hierarchical":
        return HierarchicalCommunicator(comm, compression)
    if name == "auto":
        if spans_nodes_with_shared_memory(comm):
            return HierarchicalCommunicator(comm, compression, ring_threshold=None)
        return AutoCommunicator(comm, compression)
    raise ValueError(f"`name` must be one of {NAMES}. Received: name={name!r}")
