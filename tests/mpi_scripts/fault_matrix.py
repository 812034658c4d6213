"""MPI worker for tests/test_distributed_faults.py: one rank misbehaves, the job must end (or not).

    mpiexec -n 2 python fault_matrix.py ACTION RANK DIR

ACTION, done by rank RANK (the other ranks behave):
    hang-fit       sleeps for good in a callback at step 3 of fit (the others wait in the allreduce)
    hang-gil       loops for good there in C code that keeps Python's interpreter lock
    hang-predict   sleeps for good after fit while the others predict
    pause-fit      sleeps 3 s there, then training goes on and finishes
    exit-fit       calls sys.exit(0) at step 3 of fit
    exit-before-barrier
                   returns after fit while the others call a final barrier
    import-error   fails to import a module right after `import distnn` (the others are loading data)
    fail-before-import
                   fails before `import distnn` (the others are in MPI's start-up)
    hang-backup    like hang-fit, with BackupAndRestore (for SIGTERM); every rank writes DIR/pid-R
    slow-root      none: rank 0 spends 2 s writing files after fit while the others have finished
Every rank writes DIR/pid-R at step 3. A line "finished rank=R" marks a rank that got to the end.
"""
import os
import sys
import time

ACTION, RANK, DIR = sys.argv[1], int(sys.argv[2]), sys.argv[3]
LAUNCHER_RANK = int(os.environ.get("PMI_RANK", "0"))

if ACTION == "fail-before-import" and LAUNCHER_RANK == RANK:
    raise ImportError("deliberate: a module missing on this node, before import distnn")

import distnn  # noqa: E402 - first of the job's own imports: it starts MPI

if ACTION == "import-error" and LAUNCHER_RANK == RANK:
    import no_such_module_on_this_node  # noqa: F401
elif ACTION in ("import-error", "fail-before-import"):
    time.sleep(30)  # "loading data": only an abort ends this early

import numpy as np  # noqa: E402

import distnn.distributed as dist  # noqa: E402
from distnn.callbacks import BackupAndRestore, Callback  # noqa: E402
from distnn.layers import Dense  # noqa: E402
from distnn.models import Sequential  # noqa: E402


class Misbehave(Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if batch != 3 or self.model.progress.epoch != 0:
            return
        with open(os.path.join(DIR, f"pid-{dist.rank()}"), "w") as f:
            f.write(str(os.getpid()))
        if dist.rank() != RANK:
            return
        if ACTION in ("hang-fit", "hang-backup"):
            time.sleep(1000)
        elif ACTION == "hang-gil":
            sum(range(10**15))  # one C call: no other thread of this process runs meanwhile
        elif ACTION == "pause-fit":
            time.sleep(3)
        elif ACTION == "exit-fit":
            sys.exit(0)


rng = np.random.default_rng(0)
x, y = rng.normal(size=(200, 5)).astype("float32"), rng.normal(size=(200, 1)).astype("float32")
model = Sequential([Dense(8, activation="relu", input_shape=(5,)), Dense(1)])
model.compile(optimizer="sgd", loss="mse")
callbacks = [Misbehave()]
if ACTION == "hang-backup":
    callbacks.append(BackupAndRestore(os.path.join(DIR, "backups")))
model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=callbacks)
if ACTION == "hang-predict" and dist.rank() == RANK:
    time.sleep(1000)
if ACTION == "hang-predict":
    model.predict(x)
if ACTION == "exit-before-barrier" and dist.rank() == RANK:
    sys.exit(0)
if ACTION == "exit-before-barrier":
    dist.barrier()
if ACTION == "slow-root" and dist.rank() == 0:
    time.sleep(2)  # e.g. saving the model: nobody waits for rank 0 in a collective
print(f"finished rank={dist.rank()}", flush=True)
