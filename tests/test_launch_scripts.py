"""The launch/ training scripts run unchanged under mpiexec, distnn-run and run_iris.sh."""
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, find_mpiexec, run_mpi, run_python, subprocess_env


def epoch_losses(stdout: str) -> list[float]:
    """The loss of every epoch from the verbose=2 progress lines ("8/8 - 0s - 1ms/step - loss: ...")."""
    return [float(v) for v in re.findall(r"ms/step - loss: ([0-9.]+)", stdout)]


def assert_trained_on_ranks(stdout: str, n: int, epochs: int) -> None:
    for rank in range(n):
        assert f"distnn rank={rank} size={n} " in stdout, stdout
    assert len(re.findall(r"test_loss=[0-9.]+ test_accuracy=[0-9.]+", stdout)) == 1, stdout  # rank 0 only
    losses = epoch_losses(stdout)
    assert len(losses) == epochs, stdout
    assert losses[-1] < losses[0], f"the loss did not go down: {losses}"


@pytest.mark.mpi
def test_train_iris_under_mpiexec():
    proc = run_mpi(2, ["launch/train_iris.py", "--epochs", "5"], timeout=60)
    assert_trained_on_ranks(proc.stdout, n=2, epochs=5)


@pytest.mark.mpi
def test_train_mnist_under_mpiexec():
    proc = run_mpi(2, ["launch/train_mnist.py", "--limit", "256", "--epochs", "2"], timeout=90)
    assert_trained_on_ranks(proc.stdout, n=2, epochs=2)


@pytest.mark.mpi
def test_distnn_run_launches_iris():
    proc = run_python(["-m", "distnn.run", "-np", "2", sys.executable, "launch/train_iris.py", "--epochs", "5"],
                      timeout=60)
    assert_trained_on_ranks(proc.stdout, n=2, epochs=5)


@pytest.mark.mpi
@pytest.mark.parametrize("launcher", ["distnn-run", "mpirun"])
def test_run_iris_sh(tmp_path, launcher):
    bin_dir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", os.defpath).split(os.pathsep)
    if launcher == "distnn-run":  # run_iris.sh prefers distnn-run when it is on PATH
        path = [bin_dir, *path]
    else:  # without it, the script falls back to $MPIRUN
        path = [d for d in path if not os.path.exists(os.path.join(d, "distnn-run"))]
    backups = tmp_path / "backups"
    env = subprocess_env(NP="2", EPOCHS="3", BACKUP_DIR=str(backups), PYTHON=sys.executable,
                         MPIRUN=find_mpiexec(), PATH=os.pathsep.join(path))
    env.pop("OMP_NUM_THREADS")  # the script sets the thread count per rank itself
    env["SHELLOPTS"] = "xtrace"  # like bash -x, inherited by run_example.sh, which run_iris.sh execs
    try:
        proc = subprocess.run(["bash", "launch/run_iris.sh"], cwd=REPO_ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"run_iris.sh did not finish in 60s:\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = "distnn-run -np 2" if launcher == "distnn-run" else f"{find_mpiexec()} -n 2"
    assert f"+ exec {expected} " in proc.stderr  # the trace shows which launcher the script chose
    assert_trained_on_ranks(proc.stdout, n=2, epochs=3)
    # Backups were written (rank 0 created the directory) and deleted once training finished.
    assert backups.is_dir() and not [n for n in os.listdir(backups) if n.startswith("backup-")]
