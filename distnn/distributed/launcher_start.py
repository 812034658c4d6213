"""What happens at `import distnn` under an MPI launcher: MPI starts, the job-ending hooks go in,
and the process's place in the job (rank, node-local rank) is computed once, by every rank.

Starting MPI at import means that from then on an uncaught exception on any rank prints its
traceback and aborts the whole job, whatever the other ranks are doing, and a rank that leaves
early or stalls is named (distnn.distributed.stall). A plain run never imports mpi4py: importing it
initialises MPI, which a plain run must not touch (it may even fail without a process manager).

The node-local rank needs a collective (the shared-memory split). It is computed here, where every
rank of the job is (`import distnn`), so that the queries `local_rank()` / `local_size()` never
start a collective that only the ranks asking would join (docs/architecture.md, "Initialisation
without hidden collectives").
"""
from __future__ import annotations

import importlib.util
from typing import NamedTuple

from distnn.distributed import aborts, stall, startup
from distnn.distributed.launch_env import LaunchMismatchError, launched_by_mpi


class Placement(NamedTuple):
    """This process's place in the MPI job, as MPI's world and shared-memory split say."""

    rank: int
    size: int
    local_rank: int
    local_size: int


_placement: Placement | None = None


def start_under_launcher() -> None:
    """Called by `import distnn`: under an MPI launcher, start MPI now, install the abort hooks
    and the stall monitor, and compute this process's `Placement`.

    Nothing happens outside a launcher, without mpi4py, or when the launch is inconsistent (then
    `init` raises the `LaunchMismatchError` with the explanation).
    """
    global _placement
    if not launched_by_mpi() or importlib.util.find_spec("mpi4py") is None:
        return
    try:
        MPI = startup.start_mpi()
    except LaunchMismatchError:
        return
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    if size == 1:
        _placement = Placement(0, 1, 0, 1)
        return
    monitor = stall.monitor(MPI)
    aborts.install_abort_hooks(rank, size)
    monitor.begin(stall.WORLD, "node split at import")
    monitor.wait(world.Ibarrier())  # every rank is here: the blocking split returns at once
    node = world.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    _placement = Placement(rank, size, node.Get_rank(), node.Get_size())
    node.Free()
    monitor.end()


def placement() -> Placement | None:
    """This process's `Placement` when MPI started at import, else `None`."""
    return _placement
