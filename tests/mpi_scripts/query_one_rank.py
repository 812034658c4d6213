"""MPI worker for tests/test_distributed_world.py: queries made on one rank only, before `init`,
must not start a collective (the other ranks would never join it and the job would hang).

Usage: mpiexec -n N python query_one_rank.py

The last rank asks every query, prints a model summary and checks a callback's `is_root`; then
every rank calls `init` and one allreduce. Each rank prints one line.
"""
import numpy as np

import distnn
import distnn.distributed as dist
from mpi4py import MPI

world = MPI.COMM_WORLD
if world.rank == world.size - 1:
    assert not dist.is_initialized()
    queries = (dist.rank(), dist.size(), dist.local_rank(), dist.local_size(), dist.is_root())
    assert queries == (world.rank, world.size, world.rank, world.size, world.rank == 0), queries
    model = distnn.Sequential([distnn.Input((3,)), distnn.layers.Dense(2)])
    model.summary()  # prints on rank 0 only: asks for the rank
    assert not distnn.callbacks.Callback().is_root
    assert not dist.is_initialized(), "a query created the communicator"
dist.init()
total = dist.allreduce(np.ones(4), op="sum")
assert np.array_equal(total, np.full(4, world.size)), total
print(f"query_one_rank OK rank={dist.rank()} local_rank={dist.local_rank()}", flush=True)
