"""MPI worker for tests/test_distributed_overlap.py: a ``BucketReducer``'s bookkeeping of final
elements. Buckets of 10 elements over variables of 7, 16 and 12 elements; each report must start
exactly the buckets whose every element is final (and, in order, none after a waiting one), and the
sums must equal the ranks' total. Prints "OK <checks>" on each rank.

Usage: mpiexec -n N python bucket_reports.py
"""
import numpy as np

import distnn.distributed as dist
from distnn.distributed import create_communicator
from distnn.distributed.overlap import BucketReducer

world = dist.init()
comm = create_communicator("mpi")
sizes = [7, 16, 12]  # buffer [0, 7) [7, 23) [23, 35); buckets [0, 10) [10, 20) [20, 30) [30, 35)
grads = np.zeros(sum(sizes), dtype="float32")
variables = [type("V", (), {})() for _ in sizes]
reducer = BucketReducer(comm, grads, variables, sizes, bucket_bytes=10 * grads.itemsize)
checks = 0


def started(expected, after):
    global checks
    checks += 1
    if len(reducer._requests) != expected:
        raise AssertionError(f"rank {world.rank}: {len(reducer._requests)} buckets started after {after}, "
                             f"expected {expected}")


for step in range(2):  # twice: begin() resets the bookkeeping
    reducer.begin()
    grads[...] = np.arange(grads.size) * (world.rank + 1) + step
    reducer.on_final([variables[1]])  # [7, 23): bucket 0 still lacks [0, 7)
    started(0, "the middle variable")
    reducer.on_final_prefix(variables[0], 3)  # [0, 3)
    started(0, "a prefix short of bucket 0")
    reducer.on_final_prefix(variables[0], 3)  # a repeated prefix adds nothing
    reducer.on_final_prefix(variables[0], 7)  # [0, 7): bucket 0 and bucket 1 ([10, 20)) complete
    started(2, "the first variable's prefix reaching its end")
    reducer.on_final([variables[0]])  # the whole variable after its prefix: nothing counted twice
    started(2, "the first variable after its prefixes")
    reducer.on_final_prefix(variables[2], 7)  # [23, 30): bucket 2 complete, bucket 3 ([30, 35)) not
    started(3, "the last variable's first 7 elements")
    reducer.on_final([variables[2]])
    started(4, "every variable")
    reducer.finish()
    total = sum(r + 1 for r in range(world.size))
    expected = np.arange(grads.size) * total + step * world.size
    checks += 1
    if not np.array_equal(grads, expected.astype("float32")):
        raise AssertionError(f"rank {world.rank}: sums {grads} != {expected}")
print(f"OK {checks}", flush=True)
