"""Crash-safe training backups written by rank 0: ``BackupAndRestore``.

Rank 0 streams a backup (``backup_format``: model, optimizer state, progress, run identity,
checksums) to a temporary file, fsyncs it and renames it atomically. On start, rank 0 locks the
backup directory for the job (``backup_lock``: a second job on it is refused), picks the newest
backup that passes every check (warning about damaged ones), loads it if the same experiment wrote
it (``run_identity``), and broadcasts weights, optimizer state and progress; training continues at
the exact step — on any number of ranks, since the global batch fixes the maths.

Only backups of this run (its ``run_id``, which a resumed run inherits) are ever deleted: the
oldest when ``keep`` is reached, all of them when training ends normally (``delete_checkpoint``).
A run that ends abnormally — an exception, a preemption, a non-finite loss (``TerminateOnNaN``) —
keeps them, and no backup is written from a non-finite loss on.

SIGTERM and SIGUSR1 (how Slurm and other schedulers announce preemption) ask training to stop at
the next step boundary: a backup is written there and every rank exits with ``PREEMPTED_EXIT_CODE``.
A rank blocked where no step boundary comes (a peer hangs) still ends: without a boundary within
``DISTNN_TERM_GRACE_S`` seconds (default 30), or on a second signal, the job is aborted without a
backup (distnn.distributed.termination). See docs/architecture.md, "Reliability: files and backups".
"""
from __future__ import annotations

import contextlib
import glob
import math
import os
import shutil
import signal
import sys
import uuid
from typing import Any

from distnn import random, saving
from distnn.callbacks.callback import Callback
from distnn.distributed.backup_format import (RUN_FORMAT, backup_path, list_backups, open_backup, read_run_id,
                                              step_of, write_backup)
from distnn.distributed.backup_lock import DirectoryLock
from distnn.distributed.optimizer import broadcast_weights
from distnn.distributed import timeline
from distnn.distributed.run_identity import differences, run_identity
from distnn.distributed.termination import TerminationWatch
from distnn.distributed.world import get_communicator
from distnn.utils import global_rng

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later" — resubmit or requeue, the backup resumes
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))
RESUME_MODES = ("auto", "force")


def _warn(message: str) -> None:
    print(f"distnn: WARNING: {message}", file=sys.stderr, flush=True)


def _first_error(exc: BaseException) -> BaseException:
    """The error that started ``exc``'s chain (closing a half-written zip may fail a second time)."""
    while isinstance(exc.__context__, OSError):
        exc = exc.__context__
    return exc


def _rng_states(model: Any) -> dict:
    """distnn's global numpy generator and every ``SeedGenerator`` (for draws outside training steps:
    a training step's draws depend only on the data seed, epoch and step, saved with the progress)."""
    return {"global": global_rng().bit_generator.state,
            "seed_generators": random.generator_states(model._flatten_layers())}


def _restore_rng_states(model: Any, states: dict) -> None:
    global_rng().bit_generator.state = states["global"]
    random.restore_generator_states(model._flatten_layers(), states.get("seed_generators", {}))



def _apply_progress(model: Any, state: dict) -> None:
    if not callable(model.optimizer._learning_rate):  # a schedule follows the restored step count
        model.optimizer.learning_rate = state["learning_rate"]
    model.progress.epoch, model.progress.step = state["epoch"], state["step"]
    model.progress.totals[...] = state["totals"]
    model.history.history = {k: list(v) for k, v in state["history"].items()}
    model.history.epoch = list(state["history_epochs"])
    model._data_seed = state["data_seed"]
    _restore_rng_states(model, state["rng"])


class BackupAndRestore(Callback):
    """Back up training regularly and resume from the newest valid backup (Keras' callback, made
    crash-safe, distributed and safe to share a filesystem with other jobs).

    Args:
        backup_dir: directory for the backups (on a filesystem every rank's job restart can read;
            only rank 0 writes to it). One job at a time: rank 0 locks it while training, and a
            second job on it is refused with a message naming the first.
        save_freq: ``"epoch"``, or a number of optimizer steps between backups.
        keep: how many recent backups of this run to keep. Before writing a new one, the oldest are
            deleted so that the directory never holds more than ``keep`` of them, the one being
            written included — except that the newest is never deleted before its successor is
            complete, so ``keep=1`` needs room for two.
        delete_checkpoint: delete this run's backups once training finishes normally (Keras'
            default), so a new run starts afresh; a run ending otherwise always keeps them.
        handle_signals: on SIGTERM/SIGUSR1, back up at the next step and exit with
            ``PREEMPTED_EXIT_CODE`` (75) on every rank; abort without a backup when no step
            boundary comes within ``DISTNN_TERM_GRACE_S`` seconds or on a second signal.
        resume: ``"auto"`` resumes the newest valid backup only if the same experiment wrote it
            (same model and compile settings, epochs, batch size, steps and training data), and
            refuses to train when it comes from a different one, leaving it untouched. ``"force"``
            resumes it anyway, when its weights fit the model (to continue with more epochs or a new
            learning rate, say); its backups then belong to this run.
    """

    def __init__(self, backup_dir: str, save_freq: Any = "epoch", keep: int = 2, delete_checkpoint: bool = True,
                 handle_signals: bool = True, resume: str = "auto"):
        super().__init__()
        if not backup_dir:
            raise ValueError(f"backup_dir must be a directory path. Received: backup_dir={backup_dir!r}")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq <= 0):
            raise ValueError(f"save_freq must be 'epoch' or a positive integer. Received: save_freq={save_freq!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive integer. Received: keep={keep!r}")
        if resume not in RESUME_MODES:
            raise ValueError(f"resume must be one of {RESUME_MODES}. Received: resume={resume!r}")
        self.backup_dir, self.save_freq, self.keep = os.fspath(backup_dir), save_freq, keep
        self.delete_checkpoint, self.handle_signals, self.resume = delete_checkpoint, handle_signals, resume
        self._previous_handlers: dict = {}
        self._termination: TerminationWatch | None = None
        self.restored_from: str | None = None
        self._lock: DirectoryLock | None = None
        self._run: dict | None = None  # run.json of this run (rank 0)
        self._owned: list[str] = []  # this run's backups, oldest first (rank 0)
        self._abnormal: str | None = None  # why this run will keep its backups, once it is known

    # ------------------------------------------------------------------------------ hooks
    def on_train_begin(self, logs=None):
        if self.handle_signals:
            self._termination = TerminationWatch()
            for sig in _SIGNALS:
                self._previous_handlers[sig] = signal.signal(sig, self._request_stop)
        self._abnormal = None
        self._restore()

    def on_train_batch_end(self, batch, logs=None):
        if not self._healthy(logs):
            return
        if self.model.preempted:
            if self._termination is not None:
                self._termination.boundary_reached()
            self._write()
        elif self.save_freq != "epoch" and self.model.optimizer.iterations % self.save_freq == 0:
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch" and self._healthy(logs):
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
        if self.model.preempted:
            get_communicator().barrier()  # rank 0 has finished writing before anyone leaves
            if self.is_root:
                self._release()
                print(f"distnn: preempted; backup saved in {self.backup_dir}, exiting with code "
                      f"{PREEMPTED_EXIT_CODE}", file=sys.stderr, flush=True)
            sys.exit(PREEMPTED_EXIT_CODE)
        if not self.is_root:
            return
        if self._abnormal:
            print(f"distnn: training ended abnormally ({self._abnormal}); the backups in {self.backup_dir} are "
                  "kept", file=sys.stderr, flush=True)
        elif self.delete_checkpoint:
            for path in self._owned:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self._owned = []
        self._release()

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.model.stop_requested = True
        self._termination.requested(signum)

    def _healthy(self, logs: dict | None) -> bool:
        """False from the first non-finite loss on: weights that produced it are not worth a backup."""
        loss = (logs or {}).get("loss")
        if self._abnormal is None and loss is not None and not math.isfinite(loss):
            self._abnormal = f"the loss became {loss}"
        return self._abnormal is None

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------------------ write
    def _write(self, finished_epoch: tuple[int, dict] | None = None) -> None:
        if not self.is_root:
            return
        with timeline.phase("checkpoint"):
            self._write_backup(finished_epoch)

    def _write_backup(self, finished_epoch: tuple[int, dict] | None) -> None:
        model = self.model
        progress = model.progress
        history = {key: list(values) for key, values in model.history.history.items()}
        epochs = list(model.history.epoch)
        if finished_epoch is not None:
            epochs.append(finished_epoch[0])
            for key, value in finished_epoch[1].items():
                history.setdefault(key, []).append(value)
        state = {"epoch": progress.epoch, "step": progress.step, "totals": progress.totals.tolist(),
                 "history": history, "history_epochs": epochs,
                 "data_seed": model._data_seed, "rng": _rng_states(model),
                 "learning_rate": model.optimizer.learning_rate}
        path = backup_path(self.backup_dir, model.optimizer.iterations)
        if os.path.lexists(path) and path not in self._owned and read_run_id(path) != self._run["run_id"]:
            _warn(f"not writing the backup {path}: a file of that name exists that this run did not write")
            return
        # Make room first, so the directory never holds more than `keep` backups of this run, the one
        # being written included; but the newest stays until its successor is complete.
        older = [p for p in self._owned if p != path]
        while len(older) >= self.keep and len(older) > 1:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(older.pop(0))
        self._owned = older
        try:
            write_backup(path, model, state, self._run)
        except OSError as exc:
            first = _first_error(exc)
            kept = (f"the newest valid backup, {older[-1]}, is intact: free space in {self.backup_dir} and restart "
                    "to resume from it" if older else "there is no earlier backup of this run")
            raise OSError(getattr(first, "errno", None),
                          f"distnn: could not write the backup {path}: {getattr(first, 'strerror', None) or first} "
                          f"({shutil.disk_usage(self.backup_dir).free:,} bytes free); {kept}") from exc
        self._owned = older + [path]
        while len(self._owned) > self.keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._owned.pop(0))

    # ---------------------------------------------------------------------------- restore
    def _restore(self) -> None:
        comm = get_communicator()
        model = self.model
        outcome, error = None, None
        if comm.rank == 0:
            try:
                outcome = self._restore_on_root()
            except Exception as exc:  # every rank must hear of it, or the others would wait forever
                self._release()
                outcome, error = {"error": f"{type(exc).__name__}: {exc}"}, exc
        outcome = comm.bcast_obj(outcome, root=0)
        if error is not None:
            raise error
        if "error" in outcome:
            raise RuntimeError(f"Rank 0 could not restore from {self.backup_dir}: {outcome['error']}")
        if outcome["path"] is None:
            return
        if comm.size > 1:
            broadcast_weights(model)
            if comm.rank != 0:
                saving.set_optimizer_scalars(model.optimizer, outcome["optimizer"])
        _apply_progress(model, outcome["progress"])
        self.restored_from = outcome["path"]
        if self.is_root:
            print(f"distnn: resuming from {outcome['path']} (epoch {outcome['progress']['epoch'] + 1}, "
                  f"step {outcome['progress']['step']})", file=sys.stderr, flush=True)

    def _restore_on_root(self) -> dict:
        """Rank 0: lock the directory, load the newest valid backup of this experiment into the model."""
        model = self.model
        identity = run_identity(model, self.params, getattr(model, "_fit_arrays", (None, None, None)))
        self._lock = DirectoryLock.acquire(self.backup_dir)
        for stale in glob.glob(os.path.join(glob.escape(self.backup_dir), ".tmp-*backup-?????????.zip")):
            os.unlink(stale)  # a write cut short by a crash (the lock rules out a live writer)
        for path in list_backups(self.backup_dir):
            try:
                backup = open_backup(path)
            except Exception as exc:  # whatever is wrong with a candidate, an older one may be fine
                _warn(f"skipping damaged backup {path}: {exc}")
                continue
            with backup:
                if self.resume == "auto" and backup.identity != identity:
                    raise ValueError(
                        f"The newest valid backup in {self.backup_dir}, {path}, was written by a different "
                        f"experiment ({'; '.join(differences(backup.identity, identity))}). It is not resumed and "
                        "none of its files is touched. Give this run its own backup_dir, remove those backups to "
                        "start afresh, or pass resume='force' to BackupAndRestore to continue from it anyway")
                small = backup.load_into(model)
            self._run = {"format": RUN_FORMAT, "run_id": backup.run_id, "identity": identity}
            self._owned = [p for p in reversed(list_backups(self.backup_dir))
                           if step_of(p) <= step_of(path) and read_run_id(p) == backup.run_id]
            return {"path": path, "progress": backup.progress, "optimizer": small}
        self._run = {"format": RUN_FORMAT, "run_id": uuid.uuid4().hex, "identity": identity}
        self._owned = []
        return {"path": None}
