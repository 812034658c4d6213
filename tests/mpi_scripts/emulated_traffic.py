"""MPI worker for tests/test_cluster_emulated.py: which traffic crosses the emulated link.

Usage: python emulated_traffic.py DEVICE   (in a launch over the two emulated nodes)

Every rank reads its namespace's byte counter of DEVICE (/proc/self/net/dev: the counters of the
namespace the process runs in) around (1) a 4 MiB MPI_Allreduce over all ranks and (2) a 16 MiB
message between the two ranks of node n1 when a node has two, and prints one line per rank:
``traffic rank=R node_ranks=L allreduce_bytes=B intranode_bytes=I``.
"""
import sys

import numpy as np
from mpi4py import MPI

import distnn.distributed as dist

DEVICE = sys.argv[1]
comm = MPI.COMM_WORLD
node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)


def sent_bytes() -> int:
    for line in open("/proc/self/net/dev"):
        name, _, counters = line.partition(":")
        if name.strip() == DEVICE:
            return int(counters.split()[8])
    raise SystemExit(f"no device {DEVICE} in this process's network namespace")


buffer = np.ones(1 << 20, np.float32)
comm.Barrier()
before = sent_bytes()
comm.Allreduce(MPI.IN_PLACE, buffer)
comm.Barrier()
allreduce_bytes = sent_bytes() - before
assert np.all(buffer == comm.size)

intranode_bytes = 0
if node.size > 1:
    message = np.ones(4 << 20, np.float32)
    comm.Barrier()
    before = sent_bytes()
    if node.rank == 0:
        node.Send(message, dest=1)
    elif node.rank == 1:
        node.Recv(message, source=0)
    comm.Barrier()
    intranode_bytes = sent_bytes() - before
print(f"traffic rank={dist.rank()} node_ranks={node.size} allreduce_bytes={allreduce_bytes} "
      f"intranode_bytes={intranode_bytes}", flush=True)
