"""Stand-in for ``launch/train_mnist.py`` with the same command line and output contract.

The Slurm acceptance tests (tests/test_cluster_slurm.py) run ``launch/train_mnist.py``; pointing
``DISTNN_SLURM_TRAIN_SCRIPT`` at this file exercises the Slurm plumbing alone (job layout, MPI wiring,
signal forwarding, requeue, resume) before or apart from the real script. It is plain mpi4py + numpy:
data-parallel softmax regression with Adam on scikit-learn's digits, exact across rank counts.

Contract shared with launch/train_mnist.py (launch/common.py, distnn BackupAndRestore):
  flags   --epochs --batch-size --optimizer adam --learning-rate --seed --limit --backup-dir
          --keep-backups --save-weights
  output  every rank: ``distnn rank=R size=S``; rank 0: ``distnn: resuming from PATH (epoch E,
          step S)`` (stderr) when it restores a backup, ``test_accuracy=0.xxxx`` at the end
  files   only rank 0 writes into --backup-dir (deleted after a finished run unless
          --keep-backups) and --save-weights
  signals SIGUSR1/SIGTERM: back up at the next step boundary, every rank exits with 75
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

import numpy as np
from mpi4py import MPI
from sklearn.datasets import load_digits

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
stop_requested = False
PREEMPTED_EXIT_CODE = 75  # as distnn's BackupAndRestore: backed up, run again to resume


def request_stop(signum, frame):
    global stop_requested
    stop_requested = True


def save_backup(path: str, state: dict) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, **state)
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", default="adam", choices=["adam"])
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--backup-dir", default=None)
    parser.add_argument("--keep-backups", action="store_true")
    parser.add_argument("--save-weights", default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGUSR1, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print(f"distnn rank={rank} size={size}", flush=True)

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(1234).permutation(len(x))
    x, y = x[order], y[order]
    x_test, y_test, x, y = x[:400], y[:400], x[400:], y[400:]
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    onehot = np.eye(10, dtype=np.float32)[y]

    weights = np.random.default_rng(args.seed).normal(0, 0.01, (65, 10)).astype(np.float32)
    m, v = np.zeros_like(weights), np.zeros_like(weights)
    epoch = step = t = 0
    backup = os.path.join(args.backup_dir, "backup.npz") if args.backup_dir else None
    if rank == 0 and backup:
        os.makedirs(args.backup_dir, exist_ok=True)
    if rank == 0 and backup and os.path.exists(backup):
        with np.load(backup, allow_pickle=False) as saved:
            weights, m, v = saved["weights"], saved["m"], saved["v"]
            epoch, step, t = (int(k) for k in saved["position"])
        print(f"distnn: resuming from {backup} (epoch {epoch + 1}, step {step})", file=sys.stderr, flush=True)
    for array in (weights, m, v):
        comm.Bcast(array, root=0)
    epoch, step, t = comm.bcast((epoch, step, t), root=0)

    steps = -(-len(x) // args.batch_size)
    while epoch < args.epochs:
        perm = np.random.default_rng([args.seed, epoch]).permutation(len(x))
        while step < steps:
            batch = perm[step * args.batch_size:(step + 1) * args.batch_size]
            mine = batch[rank::size]
            xb = np.hstack([x[mine], np.ones((len(mine), 1), np.float32)])
            logits = xb @ weights
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            grad = xb.T @ (p - onehot[mine])
            comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
            grad /= len(batch)
            t += 1
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad * grad
            weights -= args.learning_rate * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-7)
            step += 1
            # Every rank must agree to stop at the same step, or one would wait in Allreduce forever.
            if comm.allreduce(stop_requested, op=MPI.LOR):
                if rank == 0 and backup:
                    save_backup(backup, dict(weights=weights, m=m, v=v,
                                             position=np.array([epoch, step, t])))
                    print(f"distnn: preempted; backup saved in {args.backup_dir}", file=sys.stderr, flush=True)
                comm.Barrier()  # rank 0 has finished writing before anyone leaves
                return PREEMPTED_EXIT_CODE
        epoch, step = epoch + 1, 0
        if rank == 0 and backup:
            save_backup(backup, dict(weights=weights, m=m, v=v, position=np.array([epoch, step, t])))
            print(f"epoch {epoch}/{args.epochs}", flush=True)

    if rank == 0:
        xt = np.hstack([x_test, np.ones((len(x_test), 1), np.float32)])
        accuracy = float(np.mean(np.argmax(xt @ weights, axis=1) == y_test))
        print(f"test_accuracy={accuracy:.4f}", flush=True)
        if args.save_weights:
            np.save(args.save_weights, weights)
        if backup and not args.keep_backups:
            os.unlink(backup)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    finally:
        # Ranks agree to stop as soon as one of them has the signal, so another rank's copy can
        # arrive after it stopped; Python's shutdown resets handlers to the default, which for
        # SIGUSR1 is death and a failed job. Ignore late copies instead.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
