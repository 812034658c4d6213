"""Crash-safe backups under MPI (distnn.distributed.checkpoint.BackupAndRestore), end to end.

The launch/ scripts run unchanged in real ``mpiexec`` jobs that are killed, preempted with
SIGTERM, restarted, resumed on other rank counts or handed a damaged backup; every resumed run
must end with the weights of an uninterrupted run with the same seed.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import finish, run_mpi, run_python, start_mpi
from distnn import datasets
from distnn.distributed import PREEMPTED_EXIT_CODE

AUDIT = "tests/mpi_scripts/ckpt_audit.py"
IRIS = "launch/train_iris.py"
MNIST = "launch/train_mnist.py"
IRIS_EPOCHS, IRIS_BATCH, IRIS_SAVE_FREQ = 100, 16, 43
IRIS_ARGS = ["--epochs", str(IRIS_EPOCHS), "--batch-size", str(IRIS_BATCH), "--optimizer", "adam",
             "--save-freq", str(IRIS_SAVE_FREQ), "--keep-backups"]
MNIST_ARGS = ["--limit", "600", "--epochs", "2", "--batch-size", "64", "--save-freq", "3", "--keep-backups"]


def backup_name(step: int) -> str:
    return f"backup-{step:09d}.zip"


def backup_steps(directory: Path) -> list[int]:
    """Steps of the complete backups in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for n in os.listdir(directory) if (m := re.fullmatch(r"backup-(\d{9})\.zip", n)))


def relative_difference(expected: np.ndarray, actual: np.ndarray) -> float:
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    assert expected.shape == actual.shape
    return float(np.abs(expected - actual).max() / np.abs(expected).max())


def audit(watch: Path, reports: Path, args: list) -> list:
    """Arguments running ``args`` under ckpt_audit.py, which records the writes inside ``watch``."""
    reports.mkdir()
    return [AUDIT, str(watch), str(reports), *args]


def audit_reports(reports: Path) -> dict[int, tuple[int, list]]:
    """``{rank: (exit code, [[event, path], ...])}`` from the reports ckpt_audit.py wrote."""
    found = {}
    for name in os.listdir(reports):
        report = json.loads((reports / name).read_text())
        found[int(re.fullmatch(r"rank(\d+)\.json", name).group(1))] = (report["exit"], report["writes"])
    return found


def wait_for_backup(proc: subprocess.Popen, directory: Path, timeout: float = 60) -> None:
    """Poll until a backup exists in ``directory``; fail if the job ends or the time runs out first."""
    deadline = time.monotonic() + timeout
    while not backup_steps(directory):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the job ended (exit {proc.returncode}) before writing a backup:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"no backup in {directory} after {timeout}s")
        time.sleep(0.005)


def rank_pid(proc: subprocess.Popen, argument: str, rank: int, timeout: float = 60) -> int:
    """The pid of MPI rank ``rank``: the python process with ``argument`` on its command line whose
    environment holds the launcher's rank variable (Linux /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:  # ended meanwhile, or not ours
                continue
            if argument.encode() not in argv or os.path.basename(argv[0]).startswith(b"mpiexec"):
                continue
            variables = dict(item.split(b"=", 1) for item in environ if b"=" in item)
            if any(variables.get(v) == str(rank).encode() for v in (b"PMI_RANK", b"OMPI_COMM_WORLD_RANK")):
                return int(pid)
        time.sleep(0.01)
    pytest.fail(f"no process of rank {rank} with {argument} on its command line")


def iris_command(backups: Path, weights: Path) -> list:
    return [IRIS, *IRIS_ARGS, "--backup-dir", str(backups), "--save-weights", str(weights)]


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory):
    """An uninterrupted 2-rank iris run, every rank's writes audited: the reference of the iris tests."""
    root, reports = tmp_path_factory.mktemp("iris"), tmp_path_factory.mktemp("reports") / "audit"
    backups, weights = root / "backups", root / "weights.npy"
    run_mpi(2, audit(root, reports, iris_command(backups, weights)), timeout=120)
    steps_per_epoch = -(-len(datasets.iris()[0][0]) // IRIS_BATCH)
    total = IRIS_EPOCHS * steps_per_epoch
    newest = total // IRIS_SAVE_FREQ * IRIS_SAVE_FREQ
    return {"root": root, "backups": backups, "weights": np.load(weights), "reports": reports,
            "newest": newest, "previous": newest - IRIS_SAVE_FREQ, "total": total,
            "steps_per_epoch": steps_per_epoch}


@pytest.mark.mpi
def test_only_rank_0_writes_files(iris_run):
    newest, previous = iris_run["newest"], iris_run["previous"]
    assert previous % iris_run["steps_per_epoch"], "pick a save_freq that backs up mid-epoch"
    # Exactly the files rank 0 writes: the last two backups (keep=2), the weights; no temporaries.
    assert sorted(os.listdir(iris_run["root"])) == ["backups", "weights.npy"]
    assert sorted(os.listdir(iris_run["backups"])) == [backup_name(previous), backup_name(newest)]
    audits = audit_reports(iris_run["reports"])
    assert sorted(audits) == [0, 1]
    assert audits[1] == (0, [])  # rank 1 created, wrote, renamed and deleted nothing
    code, writes = audits[0]
    assert code == 0
    assert ["os.rename", str(iris_run["backups"] / backup_name(newest))] in writes  # the atomic rename
    assert ["open", str(iris_run["root"] / "weights.npy")] in writes


@pytest.mark.mpi
def test_damaged_backup_is_skipped(iris_run, tmp_path):
    backups = tmp_path / "backups"
    shutil.copytree(iris_run["backups"], backups)
    damaged, previous = backups / backup_name(iris_run["newest"]), backups / backup_name(iris_run["previous"])
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # as if the disk filled up
    proc = run_mpi(2, iris_command(backups, tmp_path / "weights.npy"), timeout=120)
    assert f"WARNING: skipping damaged backup {damaged}" in proc.stderr
    assert f"resuming from {previous}" in proc.stderr
    assert relative_difference(iris_run["weights"], np.load(tmp_path / "weights.npy")) <= 1e-6


@pytest.mark.mpi
def test_sigterm_backs_up_exits_75_and_resumes(iris_run, tmp_path):
    backups, weights = tmp_path / "backups", tmp_path / "weights.npy"
    reports = tmp_path / "reports"
    proc = start_mpi(2, audit(backups, reports, iris_command(backups, weights)))
    try:
        wait_for_backup(proc, backups)
        seen = backup_steps(backups)[-1]
        proc.send_signal(signal.SIGTERM)  # to mpiexec, as a scheduler does; hydra forwards it to the ranks
        elapsed, out, err = finish(proc, timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert elapsed < 10, f"the job took {elapsed:.1f}s to stop after SIGTERM"
    assert proc.returncode == PREEMPTED_EXIT_CODE == 75, f"exit {proc.returncode}\n{out}\n{err}"
    assert f"preempted; backup saved in {backups}" in err
    audits = audit_reports(reports)
    assert {rank: code for rank, (code, _) in audits.items()} == {0: 75, 1: 75}  # every rank exited cleanly
    assert audits[1][1] == []
    saved = backup_steps(backups)[-1]  # written at the step boundary after the signal
    assert seen < saved < iris_run["total"], (seen, saved)
    assert not weights.exists()

    resumed = run_mpi(2, iris_command(backups, weights), timeout=120)
    assert f"resuming from {backups / backup_name(saved)}" in resumed.stderr
    assert relative_difference(iris_run["weights"], np.load(weights)) <= 1e-6


@pytest.mark.mpi
@pytest.mark.parametrize("n", [1, 3])
def test_two_rank_backup_resumes_on_other_rank_counts(iris_run, tmp_path, n):
    backups, weights = tmp_path / "backups", tmp_path / "weights.npy"
    backups.mkdir()
    shutil.copy(iris_run["backups"] / backup_name(iris_run["previous"]), backups)  # mid-epoch, 69 steps to go
    command = iris_command(backups, weights)
    proc = run_python(command, timeout=120) if n == 1 else run_mpi(n, command, timeout=120)
    assert f"resuming from {backups / backup_name(iris_run['previous'])}" in proc.stderr
    assert f"distnn rank={n - 1} size={n} " in proc.stdout
    assert relative_difference(iris_run["weights"], np.load(weights)) <= 1e-5


@pytest.mark.mpi
def test_mnist_rank_killed_then_restarted(tmp_path):
    reference = tmp_path / "reference"
    run_mpi(2, [MNIST, *MNIST_ARGS, "--backup-dir", str(reference / "backups"),
                "--save-weights", str(reference / "weights.npy")], timeout=120)

    backups, weights = tmp_path / "backups", tmp_path / "weights.npy"
    command = [MNIST, *MNIST_ARGS, "--backup-dir", str(backups), "--save-weights", str(weights)]
    proc = start_mpi(2, command)
    try:
        victim = rank_pid(proc, str(backups), rank=1)  # found first, so the kill follows the backup at once
        wait_for_backup(proc, backups)
        os.kill(victim, signal.SIGKILL)
        elapsed, out, err = finish(proc, timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, f"the job survived the loss of rank 1:\n{out}\n{err}"
    assert elapsed < 10, f"the job took {elapsed:.1f}s to end after rank 1 was killed"
    assert not weights.exists(), "training finished before the kill: the test proved nothing"
    saved = backup_steps(backups)[-1]  # complete backups only: a write cut short stays a .tmp-* file
    # Also as if rank 0 had died while writing a later backup (what an unlucky kill leaves behind).
    (backups / f".tmp-crashed{backup_name(saved + 3)}").write_bytes(b"PK\x03\x04 cut short")

    resumed = run_mpi(2, command, timeout=120)
    assert f"resuming from {backups / backup_name(saved)}" in resumed.stderr
    assert [n for n in os.listdir(backups) if n.startswith(".tmp-")] == []  # stale temporaries were removed
    assert "test_accuracy=" in resumed.stdout
    assert relative_difference(np.load(reference / "weights.npy"), np.load(weights)) <= 1e-6


# ------------------------------------------------------------------------------------------------
# Backup ownership, damaged and hostile backups, disk space and memory (docs/architecture.md,
# "Reliability: files and backups"). Most run fit() in this process (one rank); the lock and the
# disk-space cases run real processes.
import hashlib  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import tracemalloc  # noqa: E402
import zipfile  # noqa: E402

from distnn import saving  # noqa: E402
from distnn.callbacks import BackupAndRestore, Callback, LambdaCallback, TerminateOnNaN  # noqa: E402
from distnn.distributed.backup_format import open_backup, write_backup  # noqa: E402
from distnn.distributed.backup_lock import LOCK_NAME  # noqa: E402
from distnn.layers import Dense  # noqa: E402
from distnn.models import Sequential  # noqa: E402
from distnn.optimizers import Adam  # noqa: E402
from distnn.utils import set_random_seed  # noqa: E402

JOB = "tests/mpi_scripts/backup_job.py"
_DATA = np.random.default_rng(1)
TX = _DATA.normal(size=(40, 4)).astype("float32")
TY = np.eye(2, dtype="float32")[_DATA.integers(2, size=40)]  # 4 steps per epoch at batch_size=10


def train(directory, epochs=3, lr=0.05, x=TX, callbacks=(), **backup_args):
    """fit() a small model with BackupAndRestore(directory, **backup_args); returns (model, callback)."""
    set_random_seed(0)
    model = Sequential([Dense(8, activation="relu", input_shape=(4,)), Dense(2, activation="softmax")])
    model.compile(optimizer=Adam(lr), loss="categorical_crossentropy")
    backup = BackupAndRestore(str(directory), **backup_args)
    model.fit(x, TY, batch_size=10, epochs=epochs, verbose=0, callbacks=[backup, *callbacks])
    return model, backup


def snapshot(directory: Path) -> dict:
    """Every entry of ``directory`` with its bytes (None for a directory)."""
    return {n: None if (directory / n).is_dir() else (directory / n).read_bytes() for n in os.listdir(directory)}


def resign(path: Path, change) -> None:
    """Rewrite the backup at ``path`` with ``change(members)`` applied and a matching manifest: damage
    that only the content checks can find."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist() if n != "manifest.json"}
    change(members)
    members["manifest.json"] = json.dumps({n: hashlib.sha256(p).hexdigest() for n, p in members.items()}).encode()
    path.write_bytes(saving.zip_bytes(members))


def edit_json(member, change):
    def apply(members):
        value = json.loads(members[member])
        change(value)
        members[member] = json.dumps(value).encode()
    return apply


def patch_central(path: Path, name: str, field: int, value: int) -> None:
    """Overwrite a 2-byte field of ``name``'s central directory entry (8: flags, 10: method)."""
    data = bytearray(path.read_bytes())
    size, offset = struct.unpack("<2L", data[-10:-2])
    position = offset
    while position < offset + size:
        name_length, extra_length, comment_length = struct.unpack("<3H", data[position + 28:position + 34])
        if data[position + 46:position + 46 + name_length] == name.encode():
            if field < 0:  # the same field of the local header instead (30-byte header, flags at 6)
                position = struct.unpack("<L", data[position + 42:position + 46])[0]
                field = -field - 2
            data[position + field:position + field + 2] = struct.pack("<H", value)
            path.write_bytes(bytes(data))
            return
        position += 46 + name_length + extra_length + comment_length
    raise KeyError(name)


def _replace_with_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)  # opening it for reading would wait for a writer forever


def _older_copy(path: Path) -> None:
    path.write_bytes((path.parent / backup_name(8)).read_bytes())  # its optimizer says step 8, its name 12


def _deep_manifest(path: Path) -> None:
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["manifest.json"] = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(saving.zip_bytes(members))


def _flip_weight_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[data.index(b"w0.npy") + 200] ^= 0xFF  # inside w0's data: only the checksum can tell
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "compression_method_flipped": lambda p: patch_central(p, "weights.npz", 10, 8),
    "flag_byte_flipped": lambda p: patch_central(p, "progress.json", 8, 1),
    "local_header_method_flipped": lambda p: patch_central(p, "weights.npz", -10, 8),
    "checksum_mismatch": _flip_weight_byte,
    "deeply_nested_manifest": _deep_manifest,
    "directory_named_like_a_backup": _replace_with_directory,
    "fifo_named_like_a_backup": _replace_with_fifo,
    "epoch_10_to_the_9": lambda p: resign(p, edit_json("progress.json", lambda s: s.update(epoch=10**9))),
    "negative_step": lambda p: resign(p, edit_json("progress.json", lambda s: s.update(step=-1))),
    "learning_rate_nan": lambda p: resign(p, edit_json("progress.json", lambda s: s.update(learning_rate=float("nan")))),
    "rng_state_garbage": lambda p: resign(p, edit_json("progress.json", lambda s: s["rng"].update(
        {"global": {"bit_generator": "PCG64", "state": "x"}}))),
    "history_too_long": lambda p: resign(p, edit_json("progress.json", lambda s: s["history"].update(
        loss=[0.5] * 10**4))),
    "run_id_not_hex": lambda p: resign(p, edit_json("run.json", lambda r: r.update(run_id="../../etc"))),
    "unexpected_member": lambda p: resign(p, lambda m: m.update({"payload.pkl": b"\x80\x04K\x01."})),
    "weight_table_differs_from_arrays": lambda p: resign(p, edit_json(
        "config.json", lambda c: c["weights"][0].__setitem__(1, [4, 9]))),
    "step_differs_from_file_name": _older_copy,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_backup_is_skipped_for_the_older_valid_one(tmp_path, capsys, damage):
    reference, _ = train(tmp_path / "backups", keep=2, delete_checkpoint=False)  # backups at steps 8 and 12
    newest, older = tmp_path / "backups" / backup_name(12), tmp_path / "backups" / backup_name(8)
    assert backup_steps(tmp_path / "backups") == [8, 12]
    capsys.readouterr()
    DAMAGE[damage](newest)
    model, backup = train(tmp_path / "backups", keep=2, delete_checkpoint=False)
    err = capsys.readouterr().err
    assert f"WARNING: skipping damaged backup {newest}: " in err, err
    assert backup.restored_from == str(older)
    np.testing.assert_allclose(model.params, reference.params, rtol=1e-6)  # the last epoch, trained again


@pytest.mark.parametrize("change", ["learning_rate", "data", "epochs"])
def test_a_different_experiment_does_not_resume_a_foreign_backup(tmp_path, change):
    backups = tmp_path / "backups"
    train(backups, epochs=2, delete_checkpoint=False)  # as a crashed job leaves them: steps 4 and 8
    before = snapshot(backups)
    other = {"learning_rate": {"lr": 0.1}, "data": {"x": TX[::-1].copy()}, "epochs": {"epochs": 3}}[change]
    expected = {"learning_rate": "compile.optimizer.config.learning_rate: 0.05 in the backup, 0.1 now",
                "data": "data.x.rows_sha256", "epochs": "epochs: 2 in the backup, 3 now"}[change]
    with pytest.raises(ValueError, match="different experiment") as info:
        train(backups, **other)
    assert expected in str(info.value) and "resume='force'" in str(info.value)
    assert snapshot(backups) == before  # nothing deleted, written or left behind (not even the lock file)

    model, backup = train(backups, resume="force", **{**other, "epochs": 3})
    assert backup.restored_from == str(backups / backup_name(8))
    assert model.optimizer.iterations == 12
    assert snapshot(backups) == {}  # resumed by force, the backups became this run's, deleted at its end


def test_terminate_on_nan_keeps_the_backups(tmp_path, capsys):
    backups = tmp_path / "backups"

    class Poison(Callback):  # after epoch 2's backup: the next step's loss is NaN
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.params.fill(np.nan)

    poisoned, _ = train(backups, epochs=4, callbacks=[Poison(), TerminateOnNaN()])
    assert np.isnan(poisoned.history.history["loss"][-1])  # stopped on the NaN loss
    assert backup_steps(backups) == [4, 8]  # kept; nothing written from the NaN weights
    assert "training ended abnormally (the loss became nan)" in capsys.readouterr().err
    with open_backup(str(backups / backup_name(8))) as newest:
        assert newest.progress["epoch"] == 2
    resumed, backup = train(backups, epochs=4)
    assert backup.restored_from == str(backups / backup_name(8))
    assert np.isfinite(resumed.params).all() and backup_steps(backups) == []  # finished normally: deleted


def test_an_exception_keeps_the_backups_and_the_restart_resumes(tmp_path):
    reference, _ = train(tmp_path / "reference", epochs=4)

    def fail(epoch, logs):
        if epoch == 2:
            raise RuntimeError("deliberate failure at the end of epoch 3")

    with pytest.raises(RuntimeError, match="deliberate"):
        train(tmp_path / "backups", epochs=4, handle_signals=False, callbacks=[LambdaCallback(on_epoch_end=fail)])
    assert backup_steps(tmp_path / "backups") == [8, 12]
    resumed, backup = train(tmp_path / "backups", epochs=4)  # the same process still holds the lock: reused
    assert backup.restored_from == str(tmp_path / "backups" / backup_name(12))
    np.testing.assert_allclose(resumed.params, reference.params, rtol=1e-6)
    assert os.listdir(tmp_path / "backups") == []


def test_only_files_this_run_wrote_are_deleted(tmp_path, capsys):
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / backup_name(999)).write_bytes(b"someone else's file")
    (backups / backup_name(998)).mkdir()
    (backups / backup_name(8)).write_bytes(b"a name this run will want")
    foreign = snapshot(backups)
    train(backups, epochs=4, keep=1)  # writes 4, (not 8), 12, 16, deleting its own as it goes and at the end
    err = capsys.readouterr().err
    assert f"skipping damaged backup {backups / backup_name(999)}" in err
    assert f"skipping damaged backup {backups / backup_name(998)}" in err
    assert f"not writing the backup {backups / backup_name(8)}: a file of that name exists" in err
    assert snapshot(backups) == foreign


def _peak_backup_files(writes: list, directory: Path) -> int:
    """The most backup files (complete or being written) that ``directory`` held at once, replayed
    from ckpt_audit.py's record of creations, renames and deletions."""
    present, peak = set(), 0
    for event, path in writes:
        name = os.path.basename(path)
        if os.path.dirname(path) != str(directory) or name == LOCK_NAME:
            continue
        if event == "open":
            present.add(name)
        elif event == "os.rename":
            present.discard(name) if name.startswith(".tmp-") else present.add(name)
        elif event == "os.remove":
            present.discard(name)
        peak = max(peak, len(present))
    return peak


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keep_k_never_needs_room_for_more_than_k_backups(tmp_path, keep):
    backups = tmp_path / "backups"
    run_python(audit(tmp_path, tmp_path / "reports", [JOB, "--backup-dir", str(backups), "--epochs", "6",
                                                        "--keep", str(keep), "--keep-backups"]), timeout=60)
    code, writes = audit_reports(tmp_path / "reports")[0]
    assert code == 0
    assert backup_steps(backups) == [18 - 3 * i for i in range(keep)][::-1]  # 3 steps an epoch, 6 backups
    # keep=1 must keep the only backup until its successor is complete: room for two.
    assert _peak_backup_files(writes, backups) == max(keep, 2)


def test_full_disk_fails_clearly_and_keeps_the_newest_backup(tmp_path):
    backups = tmp_path / "backups"
    job = [JOB, "--backup-dir", str(backups), "--epochs", "6", "--keep", "2"]
    failed = run_python([*job, "--file-size-limit-at-epoch", "2"], timeout=60, check=False)
    assert failed.returncode != 0
    newest = backups / backup_name(9)  # epoch 3's backup (3 steps an epoch) could not be written
    assert (f"could not write the backup {backups / backup_name(12)}: File too large" in failed.stderr
            and f"the newest valid backup, {newest}, is intact" in failed.stderr), failed.stderr
    assert sorted(os.listdir(backups)) == sorted([backup_name(9), LOCK_NAME])  # keep=2 made room: 6 deleted
    resumed = run_python(job, timeout=60)
    assert f"resuming from {newest}" in resumed.stderr
    assert "finished" in resumed.stdout and os.listdir(backups) == []


@pytest.mark.mpi
def test_a_second_job_on_the_same_directory_is_refused(tmp_path):
    backups, ready, release = tmp_path / "backups", tmp_path / "ready", tmp_path / "release"
    first = start_mpi(2, [JOB, "--backup-dir", str(backups), "--hold-at-epoch", "1", "--ready-file", str(ready),
                          "--release-file", str(release), "--save-weights", str(tmp_path / "first.npy")])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first job never reached epoch 2"
            time.sleep(0.02)
        holder = int(ready.read_text())
        second = run_mpi(2, [JOB, "--backup-dir", str(backups)], timeout=60, check=False)
        assert second.returncode != 0
        assert (f"The backup directory {backups} is in use by another job (host {socket.gethostname()}, "
                f"pid {holder}, started ") in second.stderr, second.stderr
        assert "finished" not in second.stdout
        release.touch()
        _, out, err = finish(first, timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0 and "finished restored_from=None" in out, err
    assert os.listdir(backups) == []  # the first job finished normally: its backups and lock are gone
    alone = run_python([JOB, "--backup-dir", str(backups), "--save-weights", str(tmp_path / "alone.npy")], timeout=60)
    assert "finished restored_from=None" in alone.stdout
    # The second job changed nothing: the first trained as it does alone (here on one rank: float rounding).
    assert relative_difference(np.load(tmp_path / "first.npy"), np.load(tmp_path / "alone.npy")) <= 1e-5


@pytest.mark.host_only("measures the CPU path's zero-copy views; on a device each array is downloaded once to be written")
def test_backup_is_streamed_with_memory_independent_of_model_size(tmp_path):
    """Writing a backup allocates nothing proportional to the model (traced allocations, numpy's
    included); building the archive in memory, as a check that the measurement sees it, does."""
    set_random_seed(0)
    model = Sequential([Dense(1024, input_shape=(1024,)), Dense(1024), Dense(1024)])
    model.compile(optimizer="adam", loss="mse")
    model.train_on_batch(np.ones((2, 1024), "float32"), np.ones((2, 1024), "float32"))
    written = model.params.nbytes * 3  # weights and Adam's two moments: 38 MB
    progress = {"epoch": 0, "step": 0}

    def peak_of(action) -> int:
        tracemalloc.start()
        try:
            action()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    streamed = peak_of(lambda: write_backup(str(tmp_path / backup_name(1)), model, progress, {"run_id": "x"}))
    in_memory = peak_of(lambda: saving.zip_bytes(saving.model_archive(model)))
    print(f"extra memory writing {written / 2**20:.0f} MiB: streamed {streamed / 2**20:.2f} MiB, "
          f"in memory {in_memory / 2**20:.0f} MiB")
    assert in_memory > written  # the measurement sees whole-archive buffers
    assert streamed < 2 << 20  # O(1): no array is copied on the CPU
    assert os.path.getsize(tmp_path / backup_name(1)) > written
