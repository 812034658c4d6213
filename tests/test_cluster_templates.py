"""Static checks of the job templates in cluster/ (no scheduler needed), plus the PBS template run
for real under a simulated PBS environment (its mpiexec line with $PBS_NODEFILE on this machine).
Submission to a real Slurm is in tests/test_cluster_slurm.py."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, find_mpiexec, subprocess_env
from distnn.callbacks import PREEMPTED_EXIT_CODE  # what distnn ranks exit with after a backup

CLUSTER = REPO_ROOT / "cluster"
SLURM = CLUSTER / "slurm"
SHELL_FILES = sorted([*CLUSTER.rglob("*.sh"), *CLUSTER.rglob("*.sbatch"), *CLUSTER.rglob("*.pbs")])
SBATCH_FILES = sorted(SLURM.glob("*.sbatch"))
TEMPLATES = [*SBATCH_FILES, CLUSTER / "pbs" / "train.pbs"]


def directives(path: Path, prefix: str) -> dict[str, str]:
    """``#SBATCH --name=value`` / ``#PBS -x value`` lines as {option: value}."""
    found = {}
    for line in path.read_text().splitlines():
        if line.startswith(prefix + " "):
            option = line[len(prefix):].split("#")[0].strip()
            name, _, value = option.replace("=", " ", 1).partition(" ")
            found[name] = value.strip()
    return found


def test_every_template_is_present():
    names = {p.relative_to(CLUSTER).as_posix() for p in CLUSTER.rglob("*") if p.is_file()}
    assert {"README.md", "slurm/local-cluster.sh", "slurm/train.sbatch", "slurm/train-gpu.sbatch",
            "slurm/train-preemptible.sbatch", "slurm/sweep-array.sbatch", "pbs/train.pbs",
            "k8s/mpijob.yaml"} <= names


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_shell_syntax(path):
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_directives_come_before_the_first_command(path):
    """Slurm and PBS stop reading directives at the first command: later ones are silently ignored."""
    prefix = "#PBS" if path.suffix == ".pbs" else "#SBATCH"
    lines = path.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines)
                         if line.strip() and not line.lstrip().startswith("#"))
    late = [line for line in lines[first_command:] if line.startswith(prefix)]
    assert not late, f"{path.name}: directives after line {first_command + 1}: {late}"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_training_command_and_settings(path):
    text = path.read_text()
    assert text.startswith("#!/bin/bash\n")
    assert 'TRAIN_SCRIPT="${TRAIN_SCRIPT:-launch/train_mnist.py}"' in text
    assert "--backup-dir" in text and '"$@"' in text  # extra sbatch/qsub args reach the script
    assert "OMP_NUM_THREADS" in text or "distnn.run" in text


@pytest.mark.parametrize("path", SBATCH_FILES, ids=lambda p: p.name)
def test_sbatch_requests_and_launch(path):
    found = directives(path, "#SBATCH")
    assert {"--job-name", "--nodes", "--ntasks-per-node", "--cpus-per-task", "--time",
            "--output"} <= found.keys(), found
    text = path.read_text()
    # Without --mpi=pmi2 MPICH ranks start as independent size-1 jobs; without --cpus-per-task
    # srun (22.05+) ignores the sbatch value; without kill-on-bad-exit a dead rank leaves a hang
    # (the preemptible template lets ranks exit 75 one by one and relies on MPI_Abort instead).
    kill = "0" if path.name == "train-preemptible.sbatch" else "1"
    assert re.search(rf"srun --mpi=pmi2 --kill-on-bad-exit={kill} --cpus-per-task=", text)


def test_train_sbatch_offers_mpiexec_inside_the_allocation():
    text = (SLURM / "train.sbatch").read_text()
    assert 'LAUNCHER="${LAUNCHER:-srun}"' in text
    assert re.search(r'"\$mpiexec_bin" -n "\$SLURM_NTASKS"', text)


def test_gpu_template():
    found = directives(SLURM / "train-gpu.sbatch", "#SBATCH")
    assert found["--gpus-per-node"] == found["--ntasks-per-node"]  # one rank per GPU
    text = (SLURM / "train-gpu.sbatch").read_text()
    assert "export DISTNN_DEVICE=gpu" in text and "SLURM_LOCALID" in text


def test_preemptible_template():
    found = directives(SLURM / "train-preemptible.sbatch", "#SBATCH")
    assert re.fullmatch(r"B:USR1@\d+", found["--signal"]) and "--requeue" in found
    assert found["--open-mode"] == "append"
    text = (SLURM / "train-preemptible.sbatch").read_text()
    assert "trap on_usr1 USR1" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert f"\nPREEMPTED_EXIT_CODE={PREEMPTED_EXIT_CODE} " in text


def test_sweep_array_template():
    found = directives(SLURM / "sweep-array.sbatch", "#SBATCH")
    ids = re.fullmatch(r"(\d+)-(\d+)(%\d+)?", found["--array"])
    assert ids, found["--array"]
    text = (SLURM / "sweep-array.sbatch").read_text()
    rates = re.search(r"^LEARNING_RATES=\(([^)]*)\)", text, re.M).group(1).split()
    assert int(ids.group(2)) == len(rates) - 1  # the default array covers every learning rate
    assert '"${LEARNING_RATES[$task]}"' in text and "SLURM_ARRAY_TASK_ID" in text
    assert "%A_%a" in found["--output"]


def test_pbs_template_requests():
    text = (CLUSTER / "pbs" / "train.pbs").read_text()
    assert re.search(r"^#PBS -l select=\d+:ncpus=\d+:mpiprocs=\d+$", text, re.M)
    assert re.search(r"^#PBS -l walltime=\d\d:\d\d:\d\d$", text, re.M) and '--hostfile "$PBS_NODEFILE"' in text
    assert 'cd "${PBS_O_WORKDIR:-.}"' in text


def test_pbs_template_runs_under_a_simulated_pbs(tmp_path):
    """Run train.pbs as PBS would, with a 2-slot $PBS_NODEFILE of this machine and a probe script."""
    if find_mpiexec() is None:
        pytest.fail("mpiexec not found: install the test extra (it brings the mpich wheel)")
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("localhost\nlocalhost\n")
    env = subprocess_env(PBS_NODEFILE=str(nodefile), PBS_O_WORKDIR=str(REPO_ROOT), PBS_JOBID="1.test",
                         PYTHON=sys.executable,
                         TRAIN_SCRIPT="tests/mpi_scripts/slurm_probe.py")
    for name in [n for n in env if n.startswith("SLURM_")]:
        del env[name]  # hydra would otherwise take a surrounding Slurm allocation instead
    proc = subprocess.run(["bash", str(CLUSTER / "pbs" / "train.pbs")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(re.findall(r"probe rank=(\d) size=(\d)", proc.stdout)) == [("0", "2"), ("1", "2")]
    assert "probe allreduce=3" in proc.stdout


def test_local_cluster_script_rejects_unknown_command():
    proc = subprocess.run(["bash", str(SLURM / "local-cluster.sh"), "restart"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "usage:" in proc.stderr


@pytest.fixture(scope="module")
def mpijob() -> dict:
    with open(CLUSTER / "k8s" / "mpijob.yaml") as f:
        return yaml.safe_load(f)


def test_mpijob_kind_and_replicas(mpijob):
    assert mpijob["apiVersion"] == "kubeflow.org/v2beta1" and mpijob["kind"] == "MPIJob"
    spec = mpijob["spec"]
    assert isinstance(spec["slotsPerWorker"], int) and spec["slotsPerWorker"] >= 1
    replicas = spec["mpiReplicaSpecs"]
    assert set(replicas) == {"Launcher", "Worker"}
    assert replicas["Launcher"]["replicas"] == 1 and replicas["Worker"]["replicas"] >= 1
    for role in replicas.values():
        (container,) = role["template"]["spec"]["containers"]
        assert container["image"] and container["name"]


def test_mpijob_launcher_command_matches_the_worker_slots(mpijob):
    spec = mpijob["spec"]
    (launcher,) = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
    command = [*launcher["command"], *launcher.get("args", [])]
    assert command[0] in ("distnn-run", "mpirun", "mpiexec")
    ranks = int(command[command.index("-np") + 1])
    assert ranks == spec["mpiReplicaSpecs"]["Worker"]["replicas"] * spec["slotsPerWorker"]
    assert "launch/train_mnist.py" in command and "--backup-dir" in command
    assert command[command.index("--hostfile") + 1] == "/etc/mpi/hostfile"  # written by the operator


def test_mpijob_backups_survive_the_pods(mpijob):
    worker = mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    (launcher,) = mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
    backup_dir = launcher["args"][launcher["args"].index("--backup-dir") + 1]
    mounts = {m["name"]: m["mountPath"] for m in worker["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in worker["volumes"]}
    name = next(n for n, path in mounts.items() if backup_dir.startswith(path + "/"))
    assert "persistentVolumeClaim" in volumes[name]

