"""Shared command line and callbacks of the launch/ training scripts (iris MLP, MNIST CNN).

Each script runs unchanged as ``python launch/train_X.py``, under ``mpiexec -n N`` / ``distnn-run``,
and inside a Slurm/PBS/Kubernetes job: ``--batch-size`` is the global batch, ``--backup-dir`` turns
on crash-safe backups that a restarted job resumes from.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from distnn import backend, distributed


def parser(description: str, epochs: int, batch_size: int, optimizer: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size, help="global batch size across all ranks")
    p.add_argument("--optimizer", default=optimizer, help="sgd, adam, rmsprop, ...")
    p.add_argument("--learning-rate", type=float, default=None, help="default: the optimizer's Keras default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backup-dir", default=None, help="write backups here (rank 0) and resume from the newest")
    p.add_argument("--save-freq", default="epoch", help="'epoch' or a number of steps between backups")
    p.add_argument("--keep-backups", action="store_true", help="keep the backups after training finishes")
    p.add_argument("--resume", choices=("auto", "force"), default="auto",
                   help="auto: resume only backups of this same experiment; force: resume the newest anyway")
    p.add_argument("--limit", type=int, default=None, help="train on the first N samples only")
    p.add_argument("--save-weights", default=None, help="rank 0 writes the final flat weights to this .npy file")
    p.add_argument("--save-model", default=None, help="rank 0 saves the trained model to this file")
    p.add_argument("--csv-log", default=None,
                   help="rank 0 writes each epoch's logs to this CSV file and the training curves beside it "
                        "(same name, .png; needs matplotlib: pip install 'distnn[interop]')")
    p.add_argument("--verbose", type=int, default=2)
    return p


def report_rank() -> None:
    """One line per rank, so a job log shows where every replica ran."""
    print(f"distnn rank={distributed.rank()} size={distributed.size()} local_rank={distributed.local_rank()} "
          f"node={os.environ.get('SLURM_NODEID', '-')}", flush=True)


def optimizer_from(args: argparse.Namespace) -> Any:
    from distnn import optimizers  # noqa: PLC0415

    optimizer = optimizers.get(args.optimizer)
    if args.learning_rate is not None:
        optimizer.learning_rate = args.learning_rate
    return optimizer


def callbacks_from(args: argparse.Namespace) -> list:
    from distnn.callbacks import BackupAndRestore, CSVLogger  # noqa: PLC0415

    callbacks = []
    if args.csv_log:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv_log)), exist_ok=True)
        callbacks.append(CSVLogger(args.csv_log))
    if args.backup_dir:
        save_freq = args.save_freq if args.save_freq == "epoch" else int(args.save_freq)
        callbacks.append(BackupAndRestore(args.backup_dir, save_freq=save_freq,
                                          delete_checkpoint=not args.keep_backups, resume=args.resume))
    return callbacks


def plot_curves(history: Any, args: argparse.Namespace) -> None:
    """Rank 0 draws the training curves beside the CSV log (``--csv-log``)."""
    if not args.csv_log or not distributed.is_root():
        return
    from distnn.utils import plot_history  # noqa: PLC0415

    path = plot_history(history, os.path.splitext(args.csv_log)[0] + ".png", title=os.path.basename(args.csv_log))
    print(f"training curves: {path}", flush=True)


def finish(model: Any, args: argparse.Namespace, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Evaluate on the test set (sharded across ranks) and write the requested files on rank 0."""
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    if distributed.is_root():
        print(f"test_loss={loss:.4f} test_accuracy={accuracy:.4f}", flush=True)
        if args.save_weights:
            np.save(args.save_weights, backend.to_numpy(model.params))
        if args.save_model:
            model.save(args.save_model)
    return accuracy
