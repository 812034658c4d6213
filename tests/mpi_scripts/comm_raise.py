"""MPI worker for tests/test_distributed_communicator.py: rank 1 raises while the others
wait in a collective that can never complete; the excepthook must end the whole job."""
import time

import distnn.distributed as dist

dist.init()
if dist.rank() == 1:
    time.sleep(0.2)  # let the other ranks enter the barrier first
    raise ValueError("deliberate failure on rank 1")
dist.barrier()  # rank 1 never arrives: only the abort ends this wait
print("unreachable: the barrier returned", flush=True)
