"""Allreduce of a 64 MiB float32 device array over each device path (docs/architecture.md, "Devices").

    mpiexec -n 2 python benchmarks/gpu_allreduce.py      (benchmarks/gpu.sh runs it; DISTNN_DEVICE=gpu)

For each path (host staging, CUDA-aware MPI, NCCL) rank 0 prints the best of ``--repeats`` timed
allreduces, or why the path does not apply here (NCCL refuses two ranks on one GPU; CUDA-aware
MPI needs an MPI library built with it). The host path's exactness is checked on every call.
"""
from __future__ import annotations

import argparse
import os
import time



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    from distnn import backend, distributed
    from distnn.distributed import device_collectives

    comm = distributed.get_communicator()
    cupy = backend.xp()
    count = args.mib * 2**20 // 4
    devices = cupy.cuda.runtime.getDeviceCount()
    for path in ("host", "cuda_aware", "nccl"):
        if path == "nccl" and comm.local_size > devices:
            reason = f"NCCL needs one GPU per rank ({comm.local_size} ranks, {devices} GPU(s) on this node)"
        elif path == "cuda_aware" and not device_collectives.mpi_is_cuda_aware(comm._MPI):
            reason = "this MPI library is not CUDA-aware (MPIX_Query_cuda_support() = 0)"
        else:
            reason = None
        if reason is not None:
            if comm.rank == 0:
                print(f"allreduce {args.mib} MiB {path:<10}: n/a ({reason})", flush=True)
            continue
        os.environ["DISTNN_DEVICE_COLLECTIVES"] = path
        array = cupy.full(count, comm.rank + 1, dtype=cupy.float32)
        best = float("inf")
        for _ in range(args.repeats):
            array.fill(comm.rank + 1)
            cupy.cuda.Device().synchronize()
            comm.barrier()
            start = time.perf_counter()
            comm.allreduce(array, op="sum")
            cupy.cuda.Device().synchronize()
            best = min(best, time.perf_counter() - start)
        expected = comm.size * (comm.size + 1) / 2
        assert float(array[-1]) == expected and float(array[0]) == expected, path
        if comm.rank == 0:
            print(f"allreduce {args.mib} MiB {path:<10}: {best * 1e3:8.1f} ms "
                  f"({args.mib / 1024 / best:.2f} GiB/s), {comm.size} ranks", flush=True)


if __name__ == "__main__":
    main()
