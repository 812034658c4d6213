"""MPI worker for tests/test_distributed_hierarchical.py: the hierarchical allreduce on whatever
node layout the launch gives (one machine: one node; the emulated cluster: two nodes).

Usage: mpiexec -n N python comm_hierarchical.py EXPECTED_NODES

Checks, on every rank: the node layout (from the shared-memory split); exact sums and averages of
integer-valued data of many lengths (bit-identical to numpy's); random floats equal to the flat
sum to float rounding and bit-identical on every rank; fp16 compression; `auto`'s choice. Any
failed check raises, which distnn turns into an abort. Each rank prints one "OK" line.
"""
import sys

import numpy as np

import distnn.distributed as dist
from distnn.distributed import HierarchicalCommunicator, create_communicator

world = dist.init()
N, RANK = world.size, world.rank
EXPECTED_NODES = int(sys.argv[1])


def check(condition, message):
    if not condition:
        raise AssertionError(f"rank {RANK}: {message}")


def data(rank, length, dtype, salt=0):
    return np.random.default_rng([rank, length, salt]).integers(-1000, 1000, size=length).astype(dtype)


hier = create_communicator("hierarchical")
check(isinstance(hier, HierarchicalCommunicator), f"hierarchical gave {type(hier).__name__}")
check(hier.nodes == EXPECTED_NODES, f"nodes={hier.nodes}, expected {EXPECTED_NODES}")
check((hier.rank, hier.size) == (RANK, N), "rank/size")
layout = hier.allgather_obj((hier.local_rank, hier.local_size))
check(sum(1 for local_rank, _ in layout if local_rank == 0) == EXPECTED_NODES, f"node leaders {layout}")
auto = create_communicator("auto")
want_hier = EXPECTED_NODES > 1 and max(size for _, size in layout) > 1
check(isinstance(auto, HierarchicalCommunicator) == want_hier,
      f"auto is {type(auto).__name__} on {EXPECTED_NODES} node(s), layout {layout}")
small_threshold = HierarchicalCommunicator(ring_threshold=64)
check(small_threshold.select(63) == "mpi" and small_threshold.select(64) == "hierarchical", "select")

for label, comm in (("hierarchical", hier), ("hierarchical-64B", small_threshold), ("auto", auto)):
    for dtype in (np.float32, np.float64):
        # 1_100_001 elements: 2-3 pipelined pieces (hierarchical.PIECE_BYTES) on several nodes.
        extra = {1_100_001} if label == "hierarchical" else set()
        for length in sorted({1, N - 1, N + 1, 13, 1009, 300_001} | extra):
            for op in ("sum", "average"):
                x = data(RANK, length, dtype)
                total = sum(data(r, length, dtype) for r in range(N))
                expected = total if op == "sum" else np.divide(total, N).astype(dtype)
                check(comm.allreduce(x, op=op) is x and np.array_equal(x, expected),
                      f"{label} {np.dtype(dtype).name} length={length} op={op}")

# Random floats: the flat sum to float rounding, and the same bits on every rank.
x = np.random.default_rng(RANK).standard_normal(100_003).astype(np.float32)
exact = sum(np.random.default_rng(r).standard_normal(100_003) for r in range(N))
hier.allreduce(x)
check(np.allclose(x, exact, rtol=1e-5, atol=1e-5), f"float sum off by {np.max(np.abs(x - exact))}")
check(len({a.tobytes() for a in hier.allgather_obj(x)}) == 1, "ranks hold different sums")

fp16 = create_communicator("hierarchical", compression="fp16")
x = np.random.default_rng(RANK).standard_normal(20_001).astype(np.float32)
exact = sum(np.random.default_rng(r).standard_normal(20_001) for r in range(N))
fp16.allreduce(x, op="average")
check(np.allclose(x, exact / N, rtol=2e-3, atol=2e-3), f"fp16 average off by {np.max(np.abs(x - exact / N))}")
check(len({a.tobytes() for a in fp16.allgather_obj(x)}) == 1, "fp16: ranks hold different values")
if EXPECTED_NODES > 1:
    # Node sums of 1 + 2**-13 are not float16 numbers: an exact float32 result would keep the
    # 2**-13 terms, a float16 wire between the nodes drops them (the node steps are exact).
    y = np.full(7, 1 + 2.0 ** -13, np.float32)
    fp16.allreduce(y)
    check(np.all(y == np.float32(N)), f"fp16 sum of 1+2**-13 across nodes gave {y}, expected {N}")

print(f"comm_hierarchical OK rank={RANK} size={N} nodes={hier.nodes} local_size={hier.local_size}", flush=True)
