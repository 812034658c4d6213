"""Started by tests/test_run.py under ``distnn-run``: report what each rank sees.

Rank 0 gathers and prints one line per rank (one writer, so hydra cannot interleave them):
``rank=R size=N omp=... openblas=... mkl=... gpus=...``.

Args:
    --exit-code C: every rank exits with status C after printing (default 0).
    --wait-for-sigterm DIR: write DIR/ready-R, then wait for SIGTERM; on it write
        DIR/sigterm-R and exit 0 (checks that the launcher forwards SIGTERM to ranks).
"""
import argparse
import os
import signal
import sys
import time

from mpi4py import MPI

parser = argparse.ArgumentParser()
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--wait-for-sigterm", metavar="DIR")
args = parser.parse_args()

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
env = os.environ
report = (f"rank={rank} size={size} omp={env.get('OMP_NUM_THREADS')} "
          f"openblas={env.get('OPENBLAS_NUM_THREADS')} mkl={env.get('MKL_NUM_THREADS')} "
          f"gpus={env.get('DISTNN_GPUS_PER_NODE')}")
reports = comm.gather(report, root=0)
if rank == 0:
    print("\n".join(reports), flush=True)

if args.wait_for_sigterm:
    def on_sigterm(signum, frame):
        open(os.path.join(args.wait_for_sigterm, f"sigterm-{rank}"), "w").close()
        os._exit(0)   # no MPI_Finalize: the other rank may already be gone

    signal.signal(signal.SIGTERM, on_sigterm)
    open(os.path.join(args.wait_for_sigterm, f"ready-{rank}"), "w").close()
    time.sleep(60)    # the test fails on timeout if SIGTERM never arrives
    sys.exit(5)
sys.exit(args.exit_code)
