"""Data-parallel training over MPI: the process-wide communicator and its collectives.

```python
import distnn.distributed as dist

dist.init()                          # single process, or MPI when started by mpiexec/srun
if dist.is_root():
    print(f"{dist.size()} ranks")
mean = dist.allreduce(local_values)  # average over ranks (a new array)
```

It is also Horovod's API: a Horovod Keras script runs with ``import distnn.distributed as hvd``
(``hvd.callbacks.*``, ``DistributedOptimizer``, ``hvd.Average``/``hvd.Sum``, ``root_rank=``,
``allreduce_``, ``cross_rank``, ``join``... see ``horovod_compat``).

Importing this package never imports mpi4py; `init` does, and only under an MPI launcher.
"""
from distnn.distributed.backends import create_communicator
from distnn.distributed.communicator import Communicator, MpiCommunicator, SingleProcessCommunicator
from distnn.distributed.compression import Compression, Compressor
from distnn.distributed.launch_env import LaunchMismatchError
from distnn.distributed.hierarchical import HierarchicalCommunicator
from distnn.distributed.ring import AutoCommunicator, RingCommunicator
from distnn.distributed.world import (barrier, get_communicator, is_initialized, is_root, launched_by_mpi,
                                      local_rank, local_size, rank, size)
# Model-level helpers for custom loops and Horovod scripts, and crash-safe backups.
from distnn.distributed import callbacks  # noqa: E402 - hvd.callbacks.BroadcastGlobalVariablesCallback ...
from distnn.distributed.callbacks import BroadcastWeights, LearningRateWarmup, MetricAverage, Timeline  # noqa: E402
from distnn.distributed.checkpoint import PREEMPTED_EXIT_CODE, BackupAndRestore  # noqa: E402
from distnn.distributed.consistency import RankMismatchError  # noqa: E402
from distnn.distributed.optimizer import Adasum, Average, DistributedOptimizer, Sum, broadcast_weights  # noqa: E402
# Horovod's signatures (root_rank=, op=, name=, in-place variants) over the world functions.
from distnn.distributed.horovod_compat import (allgather, allgather_object, allreduce, allreduce_,  # noqa: E402
                                               broadcast, broadcast_, broadcast_object, broadcast_variables,
                                               cross_rank, cross_size, gloo_built, gloo_enabled, init,
                                               is_homogeneous, join, load_model, mpi_built, mpi_enabled,
                                               mpi_threads_supported, shutdown)

__all__ = [
    "init", "is_initialized", "launched_by_mpi", "get_communicator", "rank", "size", "local_rank", "local_size",
    "is_root", "barrier", "allreduce", "broadcast", "allgather", "broadcast_object", "allgather_object",
    "Communicator", "SingleProcessCommunicator", "MpiCommunicator", "RingCommunicator", "AutoCommunicator",
    "HierarchicalCommunicator",
    "create_communicator", "Compression", "Compressor", "LaunchMismatchError", "broadcast_weights", "DistributedOptimizer",
    "BroadcastWeights", "MetricAverage", "LearningRateWarmup", "BackupAndRestore", "PREEMPTED_EXIT_CODE",
    "RankMismatchError", "Timeline", "callbacks", "Average", "Sum", "Adasum", "allreduce_", "broadcast_",
    "broadcast_variables", "cross_rank", "cross_size", "is_homogeneous", "mpi_threads_supported", "mpi_enabled",
    "mpi_built", "gloo_enabled", "gloo_built", "join", "shutdown", "load_model",
]
