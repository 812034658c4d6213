"""Data-parallel training over MPI: the process-wide communicator and its collectives.

```python
import distnn.distributed as dist

dist.init()                          # single process, or MPI when started by mpiexec/srun
if dist.is_root():
    print(f"{dist.size()} ranks")
mean = dist.allreduce(local_values)  # average over ranks (a new array)
```

Importing this package never imports mpi4py; `init` does, and only under an MPI launcher.
"""
from distnn.distributed.communicator import (Communicator, MpiCommunicator,
                                             SingleProcessCommunicator, create_communicator)
from distnn.distributed.compression import Compression, Compressor
from distnn.distributed.launch_env import LaunchMismatchError
from distnn.distributed.ring import AutoCommunicator, RingCommunicator
from distnn.distributed.world import (allgather, allgather_object, allreduce, barrier,
                                      broadcast, broadcast_object, get_communicator, init,
                                      is_initialized, is_root, launched_by_mpi, local_rank,
                                      local_size, rank, size)
# Model-level helpers for custom loops and Horovod scripts, and crash-safe backups.
from distnn.distributed.callbacks import BroadcastWeights, LearningRateWarmup, MetricAverage  # noqa: E402
from distnn.distributed.checkpoint import PREEMPTED_EXIT_CODE, BackupAndRestore  # noqa: E402
from distnn.distributed.consistency import RankMismatchError  # noqa: E402
from distnn.distributed.optimizer import DistributedOptimizer, broadcast_weights  # noqa: E402

__all__ = [
    "init", "is_initialized", "launched_by_mpi", "get_communicator", "rank", "size", "local_rank", "local_size",
    "is_root", "barrier", "allreduce", "broadcast", "allgather", "broadcast_object", "allgather_object",
    "Communicator", "SingleProcessCommunicator", "MpiCommunicator", "RingCommunicator", "AutoCommunicator",
    "create_communicator", "Compression", "Compressor", "LaunchMismatchError", "broadcast_weights", "DistributedOptimizer",
    "BroadcastWeights", "MetricAverage", "LearningRateWarmup", "BackupAndRestore", "PREEMPTED_EXIT_CODE",
    "RankMismatchError",
]
