"""MPI worker for tests/test_distributed_training.py: every rank runs train_parity.py but builds a
first layer of a rank-dependent width (16 + rank), so ``fit`` must refuse to start.

    mpiexec -n 2 python train_mismatch.py OUT.npz
"""
import os
import runpy
import sys

import distnn.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))

dist.init()
sys.argv = [os.path.join(HERE, "train_parity.py"), *sys.argv[1:], "--hidden", str(16 + dist.rank())]
runpy.run_path(sys.argv[0], run_name="__main__")
print(f"unreachable: rank {dist.rank()} finished training", flush=True)
