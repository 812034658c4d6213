"""MPI worker for tests/test_distributed_communicator.py: checks every collective of every
communicator in one launch (a launch costs more than all the checks at these sizes).

Usage: mpiexec -n N python comm_collectives.py [--big]

Inputs are integers stored as floats, so sums are exact whatever the summation order and
results can be compared bit for bit with numpy's. Any failed check raises, which the
`distnn.distributed` excepthook turns into an abort with a non-zero exit status. Each rank
prints one "OK" line at the end.
"""
import sys

import numpy as np

import distnn.distributed as dist
from distnn.distributed import Compression, create_communicator
from distnn.distributed.ring import AutoCommunicator, RingCommunicator

world = dist.init()  # installs the abort-on-exception hook
N, RANK = world.size, world.rank
checks = 0


def check(condition, message):
    global checks
    checks += 1
    if not condition:
        raise AssertionError(f"rank {RANK}: {message}")


def data(rank, shape, dtype, salt=0):
    rng = np.random.default_rng([rank, int(np.prod(shape)), salt])
    return rng.integers(-1000, 1000, size=shape).astype(dtype)


def check_allreduce(comm, length, dtype, label):
    for op in ("sum", "average"):
        x = data(RANK, (length,), dtype)
        result = comm.allreduce(x, op=op)
        total = sum(data(r, (length,), dtype) for r in range(N)) if N > 1 else data(0, (length,), dtype)
        expected = total if op == "sum" else np.divide(total, N).astype(dtype)
        check(result is x, f"{label}: allreduce must return its argument")
        check(x.dtype == dtype and np.array_equal(x, expected),
              f"{label}: allreduce op={op} length={length} {np.dtype(dtype).name}: "
              f"max error {np.max(np.abs(x - expected), initial=0)}")


def check_bcast_allgather(comm, length, dtype, label):
    for root in sorted({0, N - 1}):
        x = data(RANK, (length, 2), dtype, salt=1)
        check(comm.bcast(x, root=root) is x and np.array_equal(x, data(root, (length, 2), dtype, salt=1)),
              f"{label}: bcast root={root} length={length}")
    # Axis-0 lengths differ per rank (rank 0 may contribute nothing).
    rows = [(length + r) % (length + 2) for r in range(N)]
    gathered = comm.allgather(data(RANK, (rows[RANK], 3), dtype, salt=2))
    expected = np.concatenate([data(r, (rows[r], 3), dtype, salt=2) for r in range(N)])
    check(gathered.dtype == dtype and np.array_equal(gathered, expected),
          f"{label}: allgather rows={rows}")


def check_fp16(comm, label):
    x = np.random.default_rng(RANK).standard_normal(1001).astype(np.float32)
    exact = sum(np.random.default_rng(r).standard_normal(1001) for r in range(N))
    comm.allreduce(x, op="average")
    check(x.dtype == np.float32 and np.allclose(x, exact / N, rtol=2e-3, atol=2e-3),
          f"{label}: fp16 allreduce off by {np.max(np.abs(x - exact / N))}")
    check(len({a.tobytes() for a in comm.allgather_obj(x)}) == 1, f"{label}: fp16 ranks differ")
    # 1 + 2**-13 is not a float16: an exact float32 sum would keep the 2**-13, the
    # float16 wire drops it, which shows that the data really travelled as float16.
    y = np.full(7, 1 + 2.0 ** -13, np.float32)
    comm.allreduce(y)
    check(np.all(y == np.float32(N)), f"{label}: fp16 sum of 1+2**-13 gave {y}, expected {N}")


communicators = {
    "mpi": create_communicator("mpi"),
    "ring": create_communicator("ring"),
    "auto": create_communicator("auto"),
    # Segments of 3 float32: every chunk of a few elements is cut into several messages.
    "ring-12B": RingCommunicator(segment_bytes=12),
    # Threshold 64 B: the short buffers go to MPI_Allreduce, the longer ones to the ring.
    "auto-64B": AutoCommunicator(ring_threshold=64),
}
check(communicators["auto-64B"].select(63) == "mpi" and communicators["auto-64B"].select(64) == "ring",
      "auto select")
for label, comm in communicators.items():
    check((comm.rank, comm.size, comm.local_rank, comm.local_size) == (RANK, N, RANK, N),
          f"{label}: rank/size/local_rank/local_size")
    for dtype in (np.float32, np.float64):
        for length in sorted({0, 1, max(N - 1, 0), N + 1, 13, 1009}):
            check_allreduce(comm, length, dtype, label)
            check_bcast_allgather(comm, length, dtype, label)
    matrix = data(RANK, (4, 5), np.float32)
    comm.allreduce(matrix)
    check(np.array_equal(matrix, sum(data(r, (4, 5), np.float32) for r in range(N))), f"{label}: 2-D")
    check(comm.bcast_obj({"rank": RANK}, root=N - 1) == {"rank": N - 1}, f"{label}: bcast_obj")
    check(comm.allgather_obj(RANK * 10) == [r * 10 for r in range(N)], f"{label}: allgather_obj")
    gathered = comm.gather_obj(f"r{RANK}", root=0)
    check(gathered == ([f"r{r}" for r in range(N)] if RANK == 0 else None), f"{label}: gather_obj")
    try:
        comm.allgather(np.zeros((2, 3 + (RANK > 0)), np.float32))
        check(N == 1, f"{label}: allgather accepted different trailing dimensions")
    except ValueError as exc:
        check("trailing dimensions" in str(exc), f"{label}: allgather error message: {exc}")
    comm.barrier()

if N > 1:
    for name in ("mpi", "ring", "auto"):
        check_fp16(create_communicator(name, compression=Compression.fp16), f"{name}+fp16")
    check_fp16(RingCommunicator(compression="fp16", segment_bytes=6), "ring-6B+fp16")

# The Horovod-style module functions: new arrays, inputs untouched.
local = data(RANK, (6,), np.float32)
kept = local.copy()
mean = dist.allreduce(local)
check(mean is not local and np.array_equal(local, kept), "dist.allreduce modified its input")
check(np.array_equal(mean, np.divide(sum(data(r, (6,), np.float32) for r in range(N)), N)), "dist.allreduce")
check(np.array_equal(dist.allreduce([1, 2], op="sum"), [N, 2 * N]), "dist.allreduce of ints")
check(np.array_equal(dist.broadcast(local, root=N - 1), data(N - 1, (6,), np.float32)), "dist.broadcast")
check(np.array_equal(dist.allgather([RANK]), np.arange(N)), "dist.allgather")
check((dist.rank(), dist.size(), dist.is_root()) == (RANK, N, RANK == 0), "dist.rank/size/is_root")

if "--big" in sys.argv:
    for name in ("ring", "mpi"):
        check_allreduce(communicators[name], 10**7, np.float32, f"{name} 10**7")

print(f"comm_collectives OK rank={RANK} size={N} checks={checks}", flush=True)
