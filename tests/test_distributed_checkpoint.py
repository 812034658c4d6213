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
