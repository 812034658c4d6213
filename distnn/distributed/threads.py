"""BLAS/OpenMP thread counts of the ranks sharing a node."""
from __future__ import annotations

import os

from distnn.distributed.communicator import Communicator

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def share_cores(comm: Communicator) -> None:
    """Give each rank its share of the node's cores for BLAS/OpenMP when nobody chose a count.

    `distnn-run` sets the thread variables before the ranks start; a plain `mpiexec -n 4` does
    not, and then every rank's BLAS would start one thread per core, oversubscribing the node
    (a PyTorch MLP epoch went from 2.2 s to 21 s that way). The pools are already loaded
    by now, so they are resized at run time with threadpoolctl.
    """
    if comm.size == 1 or any(os.environ.get(name) for name in THREAD_VARIABLES):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 - only under MPI

    threadpool_limits(max(1, cores // comm.local_size))
