"""Worker for the backup ownership tests in tests/test_distributed_checkpoint.py: a small training
job with ``BackupAndRestore`` that can pause, fail, or lose disk space at a chosen epoch.

    [mpiexec -n N] python backup_job.py --backup-dir DIR [--epochs 6] [--lr 0.05] [--keep 2]
        [--keep-backups] [--resume auto|force] [--hold-at-epoch E --ready-file F --release-file G]
        [--file-size-limit-at-epoch E] [--save-weights PATH]

--hold-at-epoch: at the end of epoch E rank 0 writes its pid to F and waits (at most 60 s) for G.
--file-size-limit-at-epoch: at the end of epoch E rank 0 limits the size of files it writes
(RLIMIT_FSIZE) to half a backup, as a full disk would: the next backup cannot be written.
"""
import argparse
import os
import resource
import signal
import sys
import time

import numpy as np

import distnn.distributed as dist
from distnn import backend
from distnn.callbacks import BackupAndRestore, Callback
from distnn.layers import Dense
from distnn.models import Sequential
from distnn.optimizers import Adam
from distnn.utils import set_random_seed

parser = argparse.ArgumentParser()
parser.add_argument("--backup-dir", required=True)
parser.add_argument("--epochs", type=int, default=6)
parser.add_argument("--lr", type=float, default=0.05)
parser.add_argument("--keep", type=int, default=2)
parser.add_argument("--keep-backups", action="store_true")
parser.add_argument("--resume", default="auto")
parser.add_argument("--hold-at-epoch", type=int, default=None)
parser.add_argument("--ready-file")
parser.add_argument("--release-file")
parser.add_argument("--file-size-limit-at-epoch", type=int, default=None)
parser.add_argument("--save-weights")
args = parser.parse_args()


class Sabotage(Callback):
    """Runs after BackupAndRestore in the callback list: the epoch's backup is already written."""

    def on_epoch_end(self, epoch, logs=None):
        if not dist.is_root():
            return
        if epoch == args.hold_at_epoch:
            with open(args.ready_file + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(args.ready_file + ".tmp", args.ready_file)
            deadline = time.monotonic() + 60
            while not os.path.exists(args.release_file) and time.monotonic() < deadline:
                time.sleep(0.02)
        if epoch == args.file_size_limit_at_epoch:
            newest = max(n for n in os.listdir(args.backup_dir) if n.startswith("backup-"))
            limit = os.path.getsize(os.path.join(args.backup_dir, newest)) // 2
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


dist.init()
set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(96, 6)).astype("float32")
y = np.eye(3, dtype="float32")[rng.integers(3, size=96)]
model = Sequential([Dense(16, activation="relu", input_shape=(6,)), Dense(3, activation="softmax")])
model.compile(optimizer=Adam(args.lr), loss="categorical_crossentropy", metrics=["accuracy"])
backup = BackupAndRestore(args.backup_dir, keep=args.keep, delete_checkpoint=not args.keep_backups,
                          resume=args.resume)
model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0, callbacks=[backup, Sabotage()])
if dist.is_root():
    print(f"finished restored_from={backup.restored_from}", flush=True)
    if args.save_weights:
        np.save(args.save_weights, backend.to_numpy(model.params))
sys.exit(0)
