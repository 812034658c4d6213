"""The training backup file: a model file's members plus progress, run identity and checksums.

``backup-<optimizer step, 9 digits>.zip``::

    config.json / weights.npz / optimizer.npz   as in a model file (``distnn.saving``)
    progress.json   epoch, step in the epoch, the epoch's metric sums, History so far, data-order
                    seed, RNG states, current learning rate
    run.json        {"format": "distnn-run", "run_id": ..., "identity": {...}}: the run that
                    wrote it (``run_identity``); backups of one run share its ``run_id``
    manifest.json   SHA-256 of every other member

Written as a stream (``distnn.archive``). ``open_backup`` checks a candidate completely before any
of it is loaded: archive structure, checksums, JSON schemas and nesting, progress values against
the run's epochs and steps, array headers against the weight table, the optimizer step against the
file name. Whatever fails there makes the backup *damaged*, to be skipped for an older one.
``Backup.check_fits`` then says whether a sound backup fits the model being trained; when it does
not, that is the user's error to hear about, not damage (docs/architecture.md, "Reliability: files and backups").
"""
from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np

from distnn import saving
from distnn.archive import ArchiveReader, ArrayEntry, ZipStreamWriter, atomic_file, match_entries

NAME = re.compile(r"^backup-(\d{9})\.zip$")
MEMBERS = {"config.json", "weights.npz", "optimizer.npz", "progress.json", "run.json", "manifest.json"}
RUN_FORMAT = "distnn-run"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_BIT_GENERATORS = {"PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"}
_MAX_ITEMS = 100_000  # entries of a progress list or dict: far beyond any real run


def backup_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"backup-{step:09d}.zip")


def step_of(path: str) -> int:
    return int(NAME.match(os.path.basename(path)).group(1))


def list_backups(directory: str) -> list[str]:
    """Entries of ``directory`` named like backups, newest (highest step) first — whatever they
    are, so that a directory or foreign file with such a name is reported, and never deleted."""
    if not os.path.isdir(directory):
        return []
    names = [n for n in os.listdir(directory) if NAME.match(n)]
    return [os.path.join(directory, n) for n in sorted(names, reverse=True)]


def write_backup(path: str, model: Any, progress: dict, run: dict) -> None:
    """Stream a backup of ``model`` to ``path`` (temporary file, fsync, atomic rename)."""
    with atomic_file(path) as f, ZipStreamWriter(f) as archive:
        saving.write_model_members(archive, model)
        archive.write_json("progress.json", progress)
        archive.write_json("run.json", run)
        archive.write_json("manifest.json", dict(archive.digests))


def read_run_id(path: str) -> str | None:
    """The ``run_id`` of the backup at ``path``, or ``None`` when it has none readable (not ours)."""
    try:
        with ArchiveReader(path, MEMBERS) as archive:
            run_id = archive.read_json("run.json").get("run_id")
    except Exception:  # any damage or foreign content means: not known to be ours
        return None
    return run_id if isinstance(run_id, str) else None


# ------------------------------------------------------------------------------------- checks
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_in(record: dict, key: str, low: int, high: int, where: str) -> int:
    value = record.get(key)
    if not _is_int(value) or not low <= value <= high:
        raise ValueError(f"{where}: {key}={value!r:.80} is out of range; expected an integer in [{low}, {high}]")
    return value


def _check_run(run: Any, where: str) -> dict:
    where = f"{where}: run.json"
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT:
        raise ValueError(f"{where} does not describe a distnn run")
    if not isinstance(run.get("run_id"), str) or not _RUN_ID.match(run["run_id"]):
        raise ValueError(f"{where}: run_id={run.get('run_id')!r:.80} is not 32 hexadecimal digits")
    identity = run.get("identity")
    if not isinstance(identity, dict):
        raise ValueError(f"{where}: identity must be a JSON object")
    _int_in(identity, "epochs", 0, 2**31, where)
    for key, low in (("steps_per_epoch", 0), ("batch_size", 1)):  # None for a generator's or PyDataset's run
        if identity.get(key) is not None:
            _int_in(identity, key, low, 2**62, where)
    return run


def _check_rng(states: Any, where: str) -> None:
    """The global numpy generator's state and the layers' ``SeedGenerator`` states (``[seed, counter]``)."""
    if not isinstance(states, dict) or "global" not in states or len(states) > _MAX_ITEMS:
        raise ValueError(f"{where}: rng must be an object of generator states, \"global\" among them")
    seed_generators = states.get("seed_generators", {})
    if not isinstance(seed_generators, dict) or len(seed_generators) > _MAX_ITEMS or not all(
            isinstance(v, list) and len(v) == 2 and all(isinstance(i, int) and 0 <= i < 2**64 for i in v)
            for v in seed_generators.values()):
        raise ValueError(f"{where}: rng.seed_generators must map names to [seed, counter] pairs of integers")
    for name, state in states.items():
        if name == "seed_generators":
            continue
        kind = state.get("bit_generator") if isinstance(state, dict) else None
        if kind not in _BIT_GENERATORS:
            raise ValueError(f"{where}: rng state {name!r:.80} has no known bit_generator ({kind!r:.80})")
        try:
            getattr(np.random, kind)().state = state  # numpy checks every field
        except Exception as exc:
            raise ValueError(f"{where}: rng state {name!r:.80} is not valid ({type(exc).__name__}: {exc})") from None


def _check_progress(progress: Any, identity: dict, where: str) -> dict:
    where = f"{where}: progress.json"
    if not isinstance(progress, dict):
        raise ValueError(f"{where} must hold a JSON object")
    epochs = identity["epochs"]
    _int_in(progress, "epoch", 0, epochs, where)
    steps = identity["steps_per_epoch"]  # None: a generator without steps_per_epoch
    _int_in(progress, "step", 0, 2**62 if steps is None else steps, where)
    _int_in(progress, "data_seed", 0, 2**31 - 1, where)
    totals, rate = progress.get("totals"), progress.get("learning_rate")
    if not (isinstance(totals, list) and len(totals) <= _MAX_ITEMS
            and all(_is_number(v) and math.isfinite(v) for v in totals)):
        raise ValueError(f"{where}: totals must be a list of finite numbers")
    if not (_is_number(rate) and math.isfinite(rate) and rate >= 0):
        raise ValueError(f"{where}: learning_rate={rate!r:.80} must be a finite number >= 0")
    history, history_epochs = progress.get("history"), progress.get("history_epochs")
    if not (isinstance(history, dict) and len(history) <= _MAX_ITEMS and all(
            isinstance(v, list) and len(v) <= epochs and all(_is_number(x) for x in v) for v in history.values())):
        raise ValueError(f"{where}: history must map names to at most {epochs} numbers each")
    if not (isinstance(history_epochs, list) and len(history_epochs) <= epochs
            and all(_is_int(e) and 0 <= e < epochs for e in history_epochs)):
        raise ValueError(f"{where}: history_epochs must list at most {epochs} epochs in [0, {epochs})")
    _check_rng(progress.get("rng"), where)
    return progress


# ------------------------------------------------------------------------------------- backup
class Backup:
    """A backup that passed every check of ``open_backup``; holds its file open until ``close``."""

    def __init__(self, archive: ArchiveReader, run: dict, progress: dict, table: list,
                 weights: list[ArrayEntry], optimizer: dict[str, ArrayEntry]):
        self.path, self._archive = archive.path, archive
        self.run, self.progress, self._table = run, progress, table
        self._weights, self._optimizer = weights, optimizer

    def __enter__(self) -> "Backup":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._archive.close()

    @property
    def identity(self) -> dict:
        return self.run["identity"]

    @property
    def run_id(self) -> str:
        return self.run["run_id"]

    def check_fits(self, model: Any) -> list[ArrayEntry]:
        """``ValueError`` when this backup's weights, optimizer state or metrics do not fit ``model``;
        else the optimizer entries in the optimizer's order."""
        saving.check_variables(model.variables, self._table, self.path)
        expected = [(name, tuple(value.shape)) for name, value in model.optimizer.state_items()]
        entries = match_entries(self._optimizer, expected, f"{self.path}: optimizer.npz (for "
                                                           f"{type(model.optimizer).__name__})")
        if len(self.progress["totals"]) != model.progress.totals.size:
            raise ValueError(f"{self.path} tracks {len(self.progress['totals'])} metric sums, but the model being "
                             f"trained tracks {model.progress.totals.size}: it was compiled with other metrics")
        return entries

    def load_into(self, model: Any) -> dict[str, Any]:
        """Read weights and optimizer state into ``model``; returns the optimizer's non-slot values."""
        entries = self.check_fits(model)
        saving.read_weights(self._archive, self._weights, model.variables)
        return saving.read_optimizer_state(self._archive, entries, model.optimizer)


def open_backup(path: str) -> Backup:
    """Open and check the backup at ``path`` (see the module docstring); ``ValueError`` or
    ``OSError`` saying what is wrong otherwise."""
    archive = ArchiveReader(path, MEMBERS)
    try:
        manifest = archive.read_json("manifest.json", limit=1 << 16)
        listed = MEMBERS - {"manifest.json"}
        if not isinstance(manifest, dict) or set(manifest) != listed or not all(
                isinstance(v, str) for v in manifest.values()):
            raise archive.error(f"manifest.json must give the SHA-256 of exactly {sorted(listed)}")
        for name in sorted(listed):
            if archive.digest(name) != manifest[name]:
                raise archive.error(f"checksum mismatch in {name}")
        table = saving.check_config(archive.read_json("config.json"), path)
        run = _check_run(archive.read_json("run.json"), path)
        progress = _check_progress(archive.read_json("progress.json"), run["identity"], path)
        weights = saving.weight_entries(archive, table)
        optimizer = archive.npz_arrays("optimizer.npz")
        iterations = optimizer.get("iterations")
        if iterations is None or iterations.shape != () or iterations.dtype.kind not in "iu":
            raise archive.error("optimizer.npz has no integer iterations")
        if int(archive.read_array(iterations)) != step_of(path):
            raise archive.error(f"optimizer.npz says step {int(archive.read_array(iterations))}, the file name "
                                f"step {step_of(path)}")
        return Backup(archive, run, progress, table, weights, optimizer)
    except BaseException:
        archive.close()
        raise
