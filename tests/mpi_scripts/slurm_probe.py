"""Print what each rank sees of MPI, Slurm and its GPU binding; used to check the job templates."""
import os

from distnn.distributed import startup

MPI = startup.start_mpi()  # as distnn starts MPI (under srun, through the PMI relay)
comm = MPI.COMM_WORLD
names = ("SLURM_NODEID", "SLURM_LOCALID", "CUDA_VISIBLE_DEVICES", "DISTNN_DEVICE")
seen = " ".join(f"{name}={os.environ.get(name, '-')}" for name in names)
print(f"probe rank={comm.Get_rank()} size={comm.Get_size()} {seen}", flush=True)
total = comm.allreduce(comm.Get_rank() + 1)
if comm.Get_rank() == 0:
    print(f"probe allreduce={total}", flush=True)
