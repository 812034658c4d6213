"""One rank raises while the other waits in a collective: the job must fail fast, not hang.

An uncaught exception alone does not end an MPI job (the raising rank blocks in MPI_Finalize,
the others wait in the collective until the time limit); distnn's communicator turns it into
MPI_Abort after printing the traceback, and Slurm must then end the step and fail the job.
"""
import distnn.distributed as dist

dist.init()
dist.barrier()
print(f"fail-probe rank={dist.rank()} size={dist.size()}", flush=True)
if dist.rank() == dist.size() - 1:
    raise RuntimeError("deliberate failure on the last rank")
dist.barrier()  # never completes: the last rank is gone
