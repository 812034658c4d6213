"""Crash-safe training backups written by rank 0: ``BackupAndRestore``.

A backup is one zip file, ``backup-<optimizer step>.zip``, holding

    config.json / weights.npz / optimizer.npz   the model file members (``distnn.saving``)
    progress.json                               epoch, step in the epoch, the epoch's metric sums,
                                                History so far, data-order seed, RNG states,
                                                current learning rate
    manifest.json                               SHA-256 of every other member

Rank 0 writes it to a temporary file, fsyncs it and renames it atomically; the last ``keep`` are
kept. On start, rank 0 picks the newest backup whose checksums verify (warning about damaged ones)
and broadcasts its bytes; every rank restores weights, optimizer state and progress, and training
continues at the exact step — on any number of ranks, since the global batch fixes the maths.

SIGTERM and SIGUSR1 (how Slurm and other schedulers announce preemption) ask training to stop at
the next step boundary: a backup is written there and every rank exits with ``PREEMPTED_EXIT_CODE``.
A rank blocked where no step boundary comes (a peer hangs) still ends: without a boundary within
``DISTNN_TERM_GRACE_S`` seconds (default 30), or on a second signal, the job is aborted without a
backup (distnn.distributed.termination).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import signal
import sys
from typing import Any

import numpy as np

from distnn import saving
from distnn.callbacks import Callback
from distnn.distributed.termination import TerminationWatch
from distnn.distributed.world import get_communicator
from distnn.utils import global_rng

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later" — resubmit or requeue, the backup resumes
_NAME = re.compile(r"^backup-(\d{9})\.zip$")
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def list_backups(backup_dir: str) -> list[str]:
    """Backup files in ``backup_dir``, newest (highest step) first."""
    if not os.path.isdir(backup_dir):
        return []
    names = [n for n in os.listdir(backup_dir) if _NAME.match(n)]
    return [os.path.join(backup_dir, n) for n in sorted(names, reverse=True)]


def read_verified(path: str) -> dict[str, bytes]:
    """The members of a backup whose checksums all match; ``ValueError`` saying what is wrong otherwise."""
    members = saving.read_zip(path)
    if "manifest.json" not in members:
        raise ValueError(f"{path} has no manifest.json")
    manifest = json.loads(members.pop("manifest.json"))
    if set(manifest) != set(members):
        raise ValueError(f"{path}: members {sorted(members)} do not match the manifest {sorted(manifest)}")
    for name, expected in manifest.items():
        if _digest(members[name]) != expected:
            raise ValueError(f"{path}: checksum mismatch in {name}")
    return members


def _rng_states(model: Any) -> dict:
    states = {"global": global_rng().bit_generator.state}
    for layer in model.layers:
        rng = getattr(layer, "_rng", None)
        if isinstance(rng, np.random.Generator):
            states[layer.name] = rng.bit_generator.state
    return states


def _restore_rng_states(model: Any, states: dict) -> None:
    global_rng().bit_generator.state = states["global"]
    for layer in model.layers:
        rng = getattr(layer, "_rng", None)
        if isinstance(rng, np.random.Generator) and layer.name in states:
            rng.bit_generator.state = states[layer.name]


class BackupAndRestore(Callback):
    """Back up training regularly and resume from the newest valid backup (Keras' callback, made
    crash-safe and distributed).

    Args:
        backup_dir: directory for the backups (on a filesystem every rank's job restart can read;
            only rank 0 writes to it).
        save_freq: ``"epoch"``, or a number of optimizer steps between backups.
        keep: how many recent backups to keep (older ones are deleted after a new one is written).
        delete_checkpoint: delete the backups once training finishes normally (Keras' default), so a
            new run starts afresh; a preempted or crashed run always keeps them.
        handle_signals: on SIGTERM/SIGUSR1, back up at the next step and exit with
            ``PREEMPTED_EXIT_CODE`` (75) on every rank; abort without a backup when no step
            boundary comes within ``DISTNN_TERM_GRACE_S`` seconds or on a second signal.
    """

    def __init__(self, backup_dir: str, save_freq: Any = "epoch", keep: int = 2, delete_checkpoint: bool = True,
                 handle_signals: bool = True):
        super().__init__()
        if not backup_dir:
            raise ValueError(f"backup_dir must be a directory path. Received: backup_dir={backup_dir!r}")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq <= 0):
            raise ValueError(f"save_freq must be 'epoch' or a positive integer. Received: save_freq={save_freq!r}")
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive integer. Received: keep={keep!r}")
        self.backup_dir, self.save_freq, self.keep = os.fspath(backup_dir), save_freq, keep
        self.delete_checkpoint, self.handle_signals = delete_checkpoint, handle_signals
        self._previous_handlers: dict = {}
        self._termination: TerminationWatch | None = None
        self.restored_from: str | None = None

    # ------------------------------------------------------------------------------ hooks
    def on_train_begin(self, logs=None):
        if self.handle_signals:
            self._termination = TerminationWatch()
            for sig in _SIGNALS:
                self._previous_handlers[sig] = signal.signal(sig, self._request_stop)
        self._restore()

    def on_train_batch_end(self, batch, logs=None):
        if self.model.preempted:
            if self._termination is not None:
                self._termination.boundary_reached()
            self._write()
        elif self.save_freq != "epoch" and self.model.optimizer.iterations % self.save_freq == 0:
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            # History runs after user callbacks (Keras' order): the finished epoch goes in explicitly.
            self._write(finished_epoch=(epoch, logs or {}))

    def on_train_end(self, logs=None):
        for sig, handler in self._previous_handlers.items():
            # After a preemption, a late copy of the signal (the scheduler signals every rank, and
            # they stop as soon as one has it) must not kill this rank during the clean exit.
            signal.signal(sig, signal.SIG_IGN if self.model.preempted else handler)
        self._previous_handlers.clear()
        if self._termination is not None:
            self._termination.close()
            self._termination = None
        comm = get_communicator()
        if self.model.preempted:
            comm.barrier()  # rank 0 has finished writing before anyone leaves
            if self.is_root:
                print(f"distnn: preempted; backup saved in {self.backup_dir}, exiting with code "
                      f"{PREEMPTED_EXIT_CODE}", file=sys.stderr, flush=True)
            sys.exit(PREEMPTED_EXIT_CODE)
        if self.delete_checkpoint and self.is_root:
            for path in list_backups(self.backup_dir):
                os.unlink(path)

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.model.stop_requested = True
        self._termination.requested(signum)

    # ------------------------------------------------------------------------------ write
    def _write(self, finished_epoch: tuple[int, dict] | None = None) -> None:
        if not self.is_root:
            return
        model = self.model
        progress = model.progress
        history = {key: list(values) for key, values in model.history.history.items()}
        epochs = list(model.history.epoch)
        if finished_epoch is not None:
            epochs.append(finished_epoch[0])
            for key, value in finished_epoch[1].items():
                history.setdefault(key, []).append(value)
        members = saving.model_archive(model)
        state = {"epoch": progress.epoch, "step": progress.step, "totals": progress.totals.tolist(),
                 "history": history, "history_epochs": epochs,
                 "data_seed": model._data_seed, "rng": _rng_states(model),
                 "learning_rate": model.optimizer.learning_rate}
        members["progress.json"] = json.dumps(state).encode()
        members["manifest.json"] = json.dumps({name: _digest(p) for name, p in members.items()}).encode()
        path = os.path.join(self.backup_dir, f"backup-{model.optimizer.iterations:09d}.zip")
        saving.atomic_write(path, saving.zip_bytes(members))
        for old in list_backups(self.backup_dir)[self.keep:]:
            os.unlink(old)

    # ---------------------------------------------------------------------------- restore
    def _find_valid(self) -> tuple[str | None, dict[str, bytes] | None]:
        """Rank 0: the newest backup that verifies; damaged ones are reported and skipped."""
        for stale in glob.glob(os.path.join(self.backup_dir, ".tmp-*")):
            os.unlink(stale)  # a write interrupted by a crash: never complete, never renamed
        for path in list_backups(self.backup_dir):
            try:
                return path, read_verified(path)
            except (ValueError, OSError) as exc:
                print(f"distnn: WARNING: skipping damaged backup {path}: {exc}", file=sys.stderr, flush=True)
        return None, None

    def _restore(self) -> None:
        comm = get_communicator()
        path, members = self._find_valid() if comm.rank == 0 else (None, None)
        path, members = comm.bcast_obj((path, members), root=0)
        if members is None:
            return
        model = self.model
        restored = saving.model_from_archive(members, compile=False, source=path)
        if restored.structure_hash() != model.structure_hash():
            raise ValueError(f"The backup {path} holds a different model than the one being trained; "
                             f"remove {self.backup_dir} to start afresh or build the saved architecture")
        model.params[...] = restored.params
        model.state[...] = restored.state
        model.optimizer.set_state(saving.read_npz(members["optimizer.npz"]))
        state = json.loads(members["progress.json"])
        if not callable(model.optimizer._learning_rate):  # a schedule follows the restored step count
            model.optimizer.learning_rate = state["learning_rate"]
        model.progress.epoch, model.progress.step = state["epoch"], state["step"]
        model.progress.totals[...] = state["totals"]
        model.history.history = {k: list(v) for k, v in state["history"].items()}
        model.history.epoch = list(state["history_epochs"])
        model._data_seed = state["data_seed"]
        _restore_rng_states(model, state["rng"])
        self.restored_from = path
        if self.is_root:
            print(f"distnn: resuming from {path} (epoch {state['epoch'] + 1}, step {state['step']})",
                  file=sys.stderr, flush=True)
