"""Tests of the ``distnn-run`` launcher: flavour detection, option translation, host files,
errors, and real ``mpiexec`` jobs started through it."""
from __future__ import annotations

import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, run_python, subprocess_env
from distnn import run

HELLO = str(REPO_ROOT / "tests" / "mpi_scripts" / "run_hello.py")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

VERSION_SAMPLES = {
    "mpich": "HYDRA build details:\n    Version:                                 4.2.0\n"
             "    Process Manager:                         pmi\n",
    "openmpi": "mpirun (Open MPI) 4.1.5\n\nReport bugs to http://www.open-mpi.org/community/help/\n",
    "intel": "Intel(R) MPI Library for Linux* OS, Version 2021.10 Build 20230619 (id: c2e19c2f3e)\n"
             "Copyright 2003-2023, Intel Corporation.\n",
}
# Translation tests name the flavour so they do not depend on which MPI is installed; the real
# runs below exercise detection on the installed launcher.
MPICH = ("--mpi-flavor", "mpich")


@pytest.fixture(autouse=True)
def _no_thread_settings(monkeypatch):
    """Tests start from an environment where the user has set no BLAS thread counts."""
    for name in THREAD_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def script(tmp_path) -> str:
    path = tmp_path / "train.py"
    path.write_text("print('hi')\n")
    return str(path)


def fake_mpiexec(tmp_path: Path, version: str, exit_code: int = 0) -> str:
    """An executable that answers ``--version`` like a given MPI and otherwise records its
    arguments and environment, then exits with ``exit_code``."""
    path = tmp_path / "fake-mpiexec"
    path.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then printf %s {shlex.quote(version)}; exit 0; fi\n'
        f'printf "%s\\n" "$@" > {tmp_path}/argv\n'
        f"env > {tmp_path}/env\n"
        f"exit {exit_code}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def dry_run(capsys, *argv: str) -> list[str]:
    assert run.main(["--dry-run", *argv]) == 0
    return shlex.split(capsys.readouterr().out)


def usage_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        run.main(list(argv))
    assert exc.value.code == 2
    return capsys.readouterr().err


def env_pairs(cmd: list[str], flag: str) -> dict[str, str]:
    """Forwarded variables of a command: ``-genv NAME VALUE`` or ``-x NAME=VALUE``."""
    pairs = {}
    for i, tok in enumerate(cmd):
        if tok == flag == "-genv":
            pairs[cmd[i + 1]] = cmd[i + 2]
        elif tok == flag == "-x":
            name, _, value = cmd[i + 1].partition("=")
            pairs[name] = value
    return pairs


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("flavor,text", [
    *VERSION_SAMPLES.items(),
    ("openmpi", "mpirun (Open MPI) 5.0.3\n\nReport bugs to https://www.open-mpi.org/community/help/"),
    ("openmpi", "mpiexec (OpenRTE) 3.1.3\n\nReport bugs to http://www.open-mpi.org/community/help/"),
    ("mpich", "HYDRA build details:\n    Version: 2.3.7\n    Release Date: MVAPICH2 2.3.7"),
])
def test_detect_flavor(flavor, text):
    assert run.detect_flavor(text) == flavor


def test_detect_flavor_unknown_names_the_output():
    with pytest.raises(run.LaunchError, match="Microsoft MPI Startup Program"):
        run.detect_flavor("Microsoft MPI Startup Program [Version 10.1.12498.18]")


def test_flavor_detected_from_the_launcher(tmp_path, script, capsys):
    cmd = dry_run(capsys, "-np", "2", "--mpiexec", fake_mpiexec(tmp_path, VERSION_SAMPLES["openmpi"]),
                  "python", script)
    assert cmd[1:3] == ["-np", "2"] and "--bind-to" in cmd


# --------------------------------------------------------------------------- hosts


def test_host_list():
    hosts = run.parse_host_list("a:2,b,c:3")
    assert [(h.name, h.slots) for h in hosts] == [("a", 2), ("b", 1), ("c", 3)]


@pytest.mark.parametrize("spec,bad", [("a:0", "'0'"), ("a:x", "'x'"), ("a:2,,b", "''")])
def test_host_list_errors(spec, bad):
    with pytest.raises(run.LaunchError, match=f"received {bad}"):
        run.parse_host_list(spec)


def test_hostfile_syntaxes(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# cluster\n"
                    "n1 slots=4 max_slots=8\n"
                    "n2:2   # MPICH style\n"
                    "\n"
                    "n3\n"
                    "n3\n")   # PBS_NODEFILE style: one line per slot
    assert [(h.name, h.slots) for h in run.parse_hostfile(str(path))] == [
        ("n1", 4), ("n2", 2), ("n3", 2)]


@pytest.mark.parametrize("line", ["n2 slots=two", "n2:0", "n2 4", "n2:2 slots=2", "n2 slots=-1"])
def test_hostfile_error_names_file_and_line(tmp_path, line):
    path = tmp_path / "hosts"
    path.write_text(f"n1 slots=2\n{line}\n")
    with pytest.raises(run.LaunchError) as exc:
        run.parse_hostfile(str(path))
    assert f"{path}, line 2" in str(exc.value) and line in str(exc.value)


def test_ranks_fill_slots_in_order():
    hosts = run.parse_host_list("a:2,b:3,c:1")
    assert run.ranks_per_host(4, hosts) == [2, 2, 0]
    assert run.ranks_per_host(6, hosts) == [2, 3, 1]


# --------------------------------------------------------------------------- translation


def test_mpich_translation(capsys, script):
    cmd = dry_run(capsys, *MPICH, "-np", "4", "-H", "a:2,b:2", "-x", "FOO=bar baz",
                  "--gpus-per-node", "2", "--mpi-args", "-verbose -prepend-rank", "python", script, "--epochs", "3", "-x")
    assert Path(cmd[0]).name in ("mpiexec", "mpirun")
    assert cmd[1:5] == ["-n", "4", "-hosts", "a:2,b:2"]
    threads = str(max(1, CORES // 2))   # two ranks on each host
    assert env_pairs(cmd, "-genv") == {
        "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
        "DISTNN_GPUS_PER_NODE": "2", "FOO": "bar baz"}
    # launcher extras come before the user's command, which is passed on untouched
    assert cmd[-7:] == ["-verbose", "-prepend-rank", "python", script, "--epochs", "3", "-x"]


def test_openmpi_translation(tmp_path, capsys, script, monkeypatch):
    fake = fake_mpiexec(tmp_path, VERSION_SAMPLES["openmpi"])
    monkeypatch.setenv("WANDB_PROJECT", "demo")
    cmd = dry_run(capsys, "-np", "3", "--hostfile", str(_hostfile(tmp_path, "a slots=2\nb:2\n")),
                  "-x", "WANDB_PROJECT", "--mpiexec", fake, "--", "python", script)
    assert cmd[:5] == [fake, "-np", "3", "--host", "a:2,b:2"]
    assert "--oversubscribe" not in cmd and cmd[cmd.index("--bind-to") + 1] == "none"
    threads = str(max(1, CORES // 2))
    assert env_pairs(cmd, "-x") == {
        "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
        "WANDB_PROJECT": "demo"}
    assert cmd[-2:] == ["python", script]


def test_openmpi_oversubscribes_only_beyond_local_cores(tmp_path, capsys, script):
    fake = fake_mpiexec(tmp_path, VERSION_SAMPLES["openmpi"])
    assert "--oversubscribe" in dry_run(capsys, "-np", str(CORES + 1), "--mpiexec", fake,
                                        "python", script)
    assert "--oversubscribe" not in dry_run(capsys, "-np", str(CORES), "--mpiexec", fake,
                                            "python", script)


def test_intel_translation(tmp_path, capsys, script):
    fake = fake_mpiexec(tmp_path, VERSION_SAMPLES["intel"])
    cmd = dry_run(capsys, "-np", "4", "-H", "a:2,b:2", "--mpiexec", fake, "python", script)
    assert cmd[1:7] == ["-n", "4", "-hosts", "a,b", "-ppn", "2"]
    assert "-genv" in cmd
    err = usage_error(capsys, "-np", "3", "-H", "a:2,b:1", "--mpiexec", fake, "python", script)
    assert "same slot count" in err and "a:2,b:1" in err


def test_thread_count_follows_local_ranks(capsys, script):
    cmd = dry_run(capsys, *MPICH, "-np", "1", "python", script)
    assert env_pairs(cmd, "-genv")["OMP_NUM_THREADS"] == str(CORES)
    cmd = dry_run(capsys, *MPICH, "-np", str(2 * CORES), "python", script)
    assert env_pairs(cmd, "-genv")["OMP_NUM_THREADS"] == "1"


def test_user_thread_settings_are_kept(capsys, script, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("MKL_NUM_THREADS", "5")
    pairs = env_pairs(dry_run(capsys, *MPICH, "-np", "2", "python", script), "-genv")
    assert (pairs["OMP_NUM_THREADS"], pairs["OPENBLAS_NUM_THREADS"], pairs["MKL_NUM_THREADS"]) == (
        "3", "3", "5")


def test_module_and_non_python_commands_are_not_checked(capsys):
    assert dry_run(capsys, "-np", "2", "python", "-u", "-m", "no_such_module")[-4:] == [
        "python", "-u", "-m", "no_such_module"]
    assert dry_run(capsys, "-np", "2", "./a.out")[-1] == "./a.out"


# --------------------------------------------------------------------------- errors


def _hostfile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hostfile"
    path.write_text(text)
    return path


@pytest.mark.parametrize("np_", ["0", "-1"])
def test_error_np_not_positive(capsys, script, np_):
    err = usage_error(capsys, "-np", np_, "python", script)
    assert "-np" in err and f"received {np_}" in err


def test_error_np_beyond_slots(capsys, script):
    err = usage_error(capsys, "-np", "5", "-H", "a:2,b:2", "python", script)
    assert "at most the 4 slots" in err and "received -np 5" in err


def test_error_hostfile_missing(tmp_path, capsys, script):
    err = usage_error(capsys, "-np", "2", "--hostfile", str(tmp_path / "nope"), "python", script)
    assert "--hostfile" in err and str(tmp_path / "nope") in err


def test_error_hostfile_does_not_parse(tmp_path, capsys, script):
    path = _hostfile(tmp_path, "a slots=2\nb slots=lots\n")
    err = usage_error(capsys, "-np", "2", "--hostfile", str(path), "python", script)
    assert f"{path}, line 2" in err and "'lots'" in err


def test_error_script_missing(tmp_path, capsys):
    missing = str(tmp_path / "no_train.py")
    err = usage_error(capsys, "-np", "2", "python", "-u", missing, "--epochs", "1")
    assert "command" in err and missing in err


def test_error_no_command(capsys):
    assert "received nothing" in usage_error(capsys, "-np", "2")


def test_error_forwarding_unset_variable(capsys, script, monkeypatch):
    monkeypatch.delenv("DISTNN_TEST_UNSET", raising=False)
    err = usage_error(capsys, "-np", "2", "-x", "DISTNN_TEST_UNSET", "python", script)
    assert "-x DISTNN_TEST_UNSET" in err


def test_error_gpus_per_node(capsys, script):
    assert "received 0" in usage_error(capsys, "-np", "2", "--gpus-per-node", "0", "python", script)


def test_error_no_mpi(tmp_path, capsys, script, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))   # no mpiexec beside it
    monkeypatch.setenv("PATH", str(tmp_path))                           # nor on PATH
    err = usage_error(capsys, "-np", "2", "python", script)
    assert "no MPI launcher found" in err and 'pip install "distnn[mpich]"' in err


def test_error_unknown_flavor(tmp_path, capsys, script):
    fake = fake_mpiexec(tmp_path, "SomeMPI 1.0")
    err = usage_error(capsys, "-np", "2", "--mpiexec", fake, "python", script)
    assert "'SomeMPI 1.0'" in err and "--mpi-flavor" in err


# --------------------------------------------------------------------------- running


def launcher_env() -> dict[str, str]:
    """The test environment without BLAS thread settings, so the launcher's defaults apply."""
    env = subprocess_env()
    for name in THREAD_VARS:
        del env[name]
    return env


def test_runs_fake_launcher_with_env_and_its_exit_code(tmp_path, script):
    fake = fake_mpiexec(tmp_path, VERSION_SAMPLES["openmpi"], exit_code=7)
    proc = run_python(["-m", "distnn.run", "-np", "2", "--mpiexec", fake, "python", script],
                      env=launcher_env(), check=False)
    assert proc.returncode == 7, proc.stderr
    assert (tmp_path / "argv").read_text().splitlines()[-2:] == ["python", script]
    child_env = (tmp_path / "env").read_text().splitlines()
    assert f"OMP_NUM_THREADS={max(1, CORES // 2)}" in child_env


@pytest.mark.mpi
def test_real_run_two_ranks():
    proc = run_python(["-m", "distnn.run", "-np", "2", sys.executable, HELLO],
                      env=launcher_env(), timeout=60)
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank="))
    threads = max(1, CORES // 2)
    assert lines == [f"rank={r} size=2 omp={threads} openblas={threads} mkl={threads} gpus=None"
                     for r in range(2)]


@pytest.mark.mpi
def test_real_run_exit_code_propagates():
    proc = run_python(["-m", "distnn.run", "-np", "2", sys.executable, HELLO, "--exit-code", "3"],
                      env=launcher_env(), timeout=60, check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr


@pytest.mark.mpi
def test_sigterm_reaches_every_rank(tmp_path):
    cmd = [sys.executable, "-m", "distnn.run", "-np", "2", sys.executable, HELLO,
           "--wait-for-sigterm", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=launcher_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready-{r}").exists() for r in range(2)):
            assert time.monotonic() < deadline and proc.poll() is None, "ranks never got ready"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert all((tmp_path / f"sigterm-{r}").exists() for r in range(2)), out
