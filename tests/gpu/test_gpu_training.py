"""Training on the device: the same weights as on the CPU, N ranks sharing one GPU like one rank,
and the NCCL communicator on one rank."""
from __future__ import annotations

import pytest

from conftest import run_mpi, subprocess_env
from gpu_support import DEVICE, MARKS
from test_distributed_training import assert_same_training
from test_strict_device import parity_run

pytestmark = MARKS
# float32 on two devices: the summation orders of the BLAS and of cuBLAS differ
CPU_TOLERANCE = 1e-4


@pytest.mark.parametrize("model", ["mlp", "cnn-bn"])
def test_training_gives_the_cpu_weights(tmp_path, model):
    cpu = parity_run(tmp_path / "cpu.npz", "--model", model, device="cpu")
    device = parity_run(tmp_path / "device.npz", "--model", model, device=DEVICE)
    assert_same_training(cpu, device, tolerance=CPU_TOLERANCE)


@pytest.mark.mpi
@pytest.mark.parametrize("collectives", ["host", "auto"])
def test_two_ranks_sharing_one_gpu_train_like_one(tmp_path, collectives):
    """Both ranks on GPU 0 (NCCL refuses that, so ``auto`` picks CUDA-aware MPI or host staging)."""
    one = parity_run(tmp_path / "one.npz", "--model", "cnn-bn", device=DEVICE, collectives=collectives)
    two = parity_run(tmp_path / "two.npz", "--model", "cnn-bn", n=2, device=DEVICE, collectives=collectives)
    assert_same_training(one, two)


NCCL_SCRIPT = """
import numpy as np
from distnn import backend, distributed
from distnn.distributed import device_collectives

comm = distributed.get_communicator()
assert device_collectives.choose_path(comm) == "nccl", device_collectives.choose_path(comm)
nccl = device_collectives.nccl_communicator(comm)
assert device_collectives.nccl_communicator(comm) is nccl  # one per communicator
values = backend.to_device(np.arange(7, dtype=np.float32))
nccl.run("allreduce", values, 0)
nccl.run("bcast", values, 0)
backend.xp().cuda.get_current_stream().synchronize()
assert np.array_equal(backend.to_numpy(values), np.arange(7, dtype=np.float32))
print("nccl ok")
"""


@pytest.mark.mpi
def test_nccl_communicator_on_one_rank(tmp_path):
    if DEVICE != "gpu":
        pytest.skip("NCCL needs a real GPU")
    script = tmp_path / "nccl.py"
    script.write_text(NCCL_SCRIPT)
    proc = run_mpi(1, [str(script)], timeout=120, env=subprocess_env(DISTNN_DEVICE="gpu"))
    assert "nccl ok" in proc.stdout
