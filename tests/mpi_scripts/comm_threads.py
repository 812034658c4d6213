"""Rank 0 prints every rank's BLAS/OpenMP pool sizes after distnn.distributed.init(), as JSON."""
import json

from threadpoolctl import threadpool_info

from distnn import distributed

distributed.init()
mine = {"rank": distributed.rank(), "local_size": distributed.local_size(),
        "threads": [pool["num_threads"] for pool in threadpool_info()]}
everyone = distributed.allgather_object(mine)  # one line from rank 0: hydra may merge lines of ranks
if distributed.is_root():
    print(json.dumps(everyone), flush=True)
