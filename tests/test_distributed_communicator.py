"""Tests for distnn.distributed: communicators, ring-allreduce, compression, init/abort.

Multi-rank checks run in real `mpiexec` jobs (tests/mpi_scripts/comm_*.py), one launch per
rank count; the single-process semantics are tested in this process, without MPI.
"""
import json
import os
import re
import time

import numpy as np
import pytest

from conftest import run_mpi, run_python, subprocess_env
from distnn.distributed import (Compression, SingleProcessCommunicator, compression,
                                create_communicator, ring)
from distnn.distributed.world import LAUNCHER_VARIABLES

SCRIPTS = "tests/mpi_scripts"


@pytest.mark.mpi
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_collectives_under_mpiexec(n):
    # --big adds the 10**7-element allreduce once, on 3 ranks (not a power of two).
    args = [f"{SCRIPTS}/comm_collectives.py"] + (["--big"] if n == 3 else [])
    proc = run_mpi(n, args, timeout=180)
    # Ranks share stdout, so their lines may interleave: match anywhere.
    reports = re.findall(r"comm_collectives OK rank=(\d+) size=(\d+)", proc.stdout)
    assert sorted(reports) == [(str(r), str(n)) for r in range(n)], proc.stdout + proc.stderr


@pytest.mark.mpi
def test_rank_raising_aborts_whole_job_with_traceback():
    start = time.monotonic()
    proc = run_mpi(3, [f"{SCRIPTS}/comm_raise.py"], timeout=60, check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 10, f"job took {elapsed:.1f}s to end after the exception"
    assert "[rank 1] ValueError: deliberate failure on rank 1" in proc.stderr
    assert "[rank 1] Traceback (most recent call last):" in proc.stderr
    assert "unreachable" not in proc.stdout


def _env_without_launcher(**extra):
    env = subprocess_env(**extra)
    for variable in LAUNCHER_VARIABLES + ("DISTNN_USE_MPI",):
        if variable not in extra:
            env.pop(variable, None)
    return env


INIT_AND_REPORT = ("import sys, numpy as np; import distnn.distributed as dist; comm = dist.init(); "
                   "x = dist.allreduce(np.arange(3.0)); "
                   "print(type(comm).__name__, dist.size(), dist.rank(), x.tolist(), "
                   "'mpi4py' in sys.modules)")


def test_plain_python_never_imports_mpi4py():
    proc = run_python(["-c", INIT_AND_REPORT], env=_env_without_launcher(), timeout=60)
    assert proc.stdout.split() == ["SingleProcessCommunicator", "1", "0", "[0.0,", "1.0,", "2.0]",
                                   "False"]


def test_distnn_use_mpi_forces_mpi_in_plain_python():
    proc = run_python(["-c", INIT_AND_REPORT], env=_env_without_launcher(DISTNN_USE_MPI="1"),
                      timeout=60)
    assert proc.stdout.split() == ["AutoCommunicator", "1", "0", "[0.0,", "1.0,", "2.0]", "True"]


@pytest.mark.parametrize("world_size, expected", [("4", "ERR"), ("1", "SingleProcessCommunicator")])
def test_launcher_without_mpi4py(world_size, expected):
    # sys.modules["mpi4py"] = None makes mpi4py unfindable and unimportable, as when missing.
    code = ("import sys; sys.modules['mpi4py'] = None; import distnn.distributed as dist\n"
            "try:\n    print(type(dist.init()).__name__)\n"
            "except RuntimeError as exc:\n    print('ERR', exc)\n")
    env = _env_without_launcher(PMI_SIZE=world_size, PMI_RANK="0")
    proc = run_python(["-c", code], env=env, timeout=60)
    assert proc.stdout.split()[0] == expected
    if expected == "ERR":  # several ranks must not silently train alone
        assert "4 processes" in proc.stdout and "mpi4py is not installed" in proc.stdout


def test_single_process_communicator_semantics():
    comm = SingleProcessCommunicator(compression="fp16")
    assert (comm.rank, comm.size, comm.local_rank, comm.local_size) == (0, 1, 0, 1)
    for dtype in (np.float32, np.float64):
        x = np.arange(12, dtype=dtype).reshape(3, 4)
        before = x.copy()
        assert comm.allreduce(x, op="sum") is x and np.array_equal(x, before)
        assert comm.allreduce(x, op="average") is x and np.array_equal(x, before)
        assert comm.bcast(x, root=0) is x and np.array_equal(x, before)
        gathered = comm.allgather(x)
        assert gathered is not x and np.array_equal(gathered, before)
    assert comm.allreduce(np.empty(0, np.float32)).shape == (0,)
    assert comm.bcast_obj({"a": 1}) == {"a": 1}
    assert comm.allgather_obj(5) == [5]
    assert comm.gather_obj("x") == ["x"]
    comm.barrier()
    with pytest.raises(SystemExit) as exc:
        comm.abort(3)
    assert exc.value.code == 3


@pytest.mark.parametrize("bad, error, message", [
    (dict(array=[1.0, 2.0]), TypeError, "numpy.ndarray"),
    (dict(array=np.zeros(3, np.int64)), TypeError, "dtype=int64"),
    (dict(array=np.zeros((4, 4), np.float32)[:, ::2]), ValueError, "C-contiguous"),
    (dict(array=np.zeros(3, np.float32), op="max"), ValueError, "op='max'"),
])
def test_allreduce_argument_errors_name_argument_and_value(bad, error, message):
    with pytest.raises(error, match=message):
        SingleProcessCommunicator().allreduce(**bad)


def test_other_argument_errors():
    comm = SingleProcessCommunicator()
    with pytest.raises(ValueError, match="root=1"):
        comm.bcast(np.zeros(2), root=1)
    with pytest.raises(ValueError, match=r"shape=\(\)"):
        comm.allgather(np.ones(()))
    with pytest.raises(ValueError, match="compression='int8'"):
        SingleProcessCommunicator(compression="int8")
    with pytest.raises(ValueError, match="name='nccl2'"):
        create_communicator("nccl2")
    with pytest.raises(ValueError, match="segment_bytes=0"):
        ring.RingCommunicator(segment_bytes=0)


def test_compressors():
    x = np.array([1.0, 1 + 2.0 ** -13, 70000.0], np.float32)
    with np.errstate(over="ignore"):  # 70000 overflows float16 on purpose
        wire, ctx = Compression.fp16.compress(x)
    # float64 buffers (metric sums, counts) stay exact; only float32 gradients are compressed
    assert wire.dtype == np.float16 and Compression.fp16.wire_dtype(np.float64) == np.float64
    back = Compression.fp16.decompress(wire, ctx)
    assert back.dtype == np.float32 and back[0] == back[1] == 1.0 and np.isinf(back[2])
    same, ctx = Compression.none.compress(x)
    assert same is x and Compression.none.decompress(same, ctx) is x
    assert compression.get(None) is Compression.none and compression.get("FP16") is Compression.fp16
    assert compression.get(compression.FP16Compressor).wire_dtype(np.float32) == np.float16


def test_chunking_and_size_parsing():
    for length in (0, 1, 3, 7, 1009):
        for parts in (1, 2, 3, 4, 5):
            bounds = ring.chunk_bounds(length, parts)
            sizes = np.diff(bounds)
            assert bounds[0] == 0 and bounds[-1] == length and len(sizes) == parts
            assert sizes.min() >= 0 and sizes.max() - sizes.min() <= 1
    assert [ring.parse_bytes(t) for t in ("4096", "4K", "64MiB", "1G", 5)] == [4096, 4096, 64 << 20,
                                                                              1 << 30, 5]
    with pytest.raises(ValueError, match="'4Q'"):
        ring.parse_bytes("4Q")


def test_ring_threshold_environment_override(monkeypatch):
    assert ring.default_ring_threshold(2) == 1 << 20
    assert ring.default_ring_threshold(64, oversubscribed=True) > ring.default_ring_threshold(64)
    monkeypatch.setenv("DISTNN_RING_THRESHOLD", "4M")
    assert ring.default_ring_threshold(2) == 4 << 20


def test_importing_package_does_not_import_mpi4py():
    proc = run_python(["-c", "import sys, distnn.distributed, distnn.bench; "
                             "print('mpi4py' in sys.modules)"], timeout=60)
    assert proc.stdout.strip() == "False"


@pytest.mark.mpi
def test_plain_mpiexec_shares_the_cores_between_ranks():
    """Without distnn-run and with no thread variable set, each rank's BLAS gets cores // ranks
    threads; a count the user set is left alone."""
    env = subprocess_env()
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name)
    cores = len(os.sched_getaffinity(0))
    reports = json.loads(run_mpi(2, [f"{SCRIPTS}/comm_threads.py"], env=env).stdout)
    assert sorted(r["rank"] for r in reports) == [0, 1]
    for report in reports:
        assert report["threads"] and set(report["threads"]) == {max(1, cores // report["local_size"])}, report
    user_choice = min(2, cores)  # OpenBLAS never starts more threads than cores
    env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = str(user_choice)
    reports = json.loads(run_mpi(2, [f"{SCRIPTS}/comm_threads.py"], env=env).stdout)
    assert all(set(r["threads"]) == {user_choice} for r in reports), reports
