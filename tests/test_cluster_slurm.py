"""The Slurm templates in cluster/slurm, submitted to a real Slurm with ``sbatch --wait``.

Needs a running cluster whose clients find their config through ``SLURM_CONF``; locally:
``cluster/slurm/local-cluster.sh start`` and ``. /tmp/distnn-slurm/env.sh``. Without one the tests
skip, except under ``CI=true`` where a missing Slurm fails them (.ci/run starts it).

The training jobs run ``launch/train_mnist.py`` (``DISTNN_SLURM_TRAIN_SCRIPT`` overrides it, e.g.
with tests/mpi_scripts/slurm_train_standin.py to test the Slurm plumbing alone). Assertions marked
``[train_mnist]`` check that script's contract (its output lines, --backup-dir, --save-weights,
--learning-rate, --limit, resuming); the others check Slurm, MPI and the templates.

Ranks of the emulated nodes share one host name, so which node and rank a process is comes from
SLURM_NODEID and the MPI rank (PMI_RANK), recorded by an audit hook (see ``rank_recorder``).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, subprocess_env
from distnn.distributed import pmi_relay

pytestmark = pytest.mark.slurm

SLURM_DIR = REPO_ROOT / "cluster" / "slurm"
SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"
TRAIN_SCRIPT = Path(os.environ.get("DISTNN_SLURM_TRAIN_SCRIPT", REPO_ROOT / "launch" / "train_mnist.py"))
# [train_mnist] small enough for seconds per job, large enough to learn; the threshold is for this
# subset and these epochs (about 0.9 on one process), not the full-data accuracy.
TRAIN_ARGS = ["--epochs", "4", "--batch-size", "64", "--limit", "1000", "--seed", "0"]
MIN_ACCURACY = 0.80
# [train_mnist] several epochs after the first backup, so the signal lands mid-training.
PREEMPT_ARGS = ["--epochs", "6", "--batch-size", "64", "--limit", "512", "--seed", "0"]
JOB_TIMEOUT = 180

# Not anchored at line starts: hydra (mpiexec) forwards rank output in chunks, so one rank's line
# can land in the middle of another's ("...node=0distnn rank=1 size=2 ...").
RANK_LINE = re.compile(r"distnn rank=(\d+) size=(\d+)")
ACCURACY = re.compile(r"test_accuracy=([0-9.]+)")
RESUMED = re.compile(r"distnn: resuming from \S+ \(epoch (\d+), step (\d+)\)")

# Loaded by every Python process of a job (it is first on PYTHONPATH): records this process's MPI
# rank and Slurm node, and every file it creates or writes under RECORD_WATCH. Audit hooks see
# all opens, including numpy's, so "only rank 0 writes checkpoints" is observed, not assumed.
SITECUSTOMIZE = '''
import os, sys
_dir, _watch = os.environ.get("RECORD_DIR"), os.environ.get("RECORD_WATCH")
_rank = os.environ.get("PMI_RANK") or os.environ.get("SLURM_PROCID")
_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT
if _dir and _watch and _rank is not None:
    _fd = os.open(os.path.join(_dir, "rank-%s-%d.log" % (_rank, os.getpid())),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(_fd, ("start rank=%s node=%s\\n" % (_rank, os.environ.get("SLURM_NODEID"))).encode())

    def _record(path):
        path = os.path.abspath(os.fsdecode(path))
        if path.startswith(_watch):
            os.write(_fd, ("write %s\\n" % path).encode())

    def _hook(event, args):
        # open: (path, mode, flags) from open() and os.open(); os.rename also covers os.replace.
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and args[2] & _WRITING:
            _record(args[0])
        elif event == "os.rename":
            _record(args[1])

    sys.addaudithook(_hook)
'''


def _slurm_missing() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "Slurm clients (sbatch, sinfo) are not on PATH"
    if not os.environ.get("SLURM_CONF"):
        return "SLURM_CONF is not set (run cluster/slurm/local-cluster.sh start and source its env.sh)"
    proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=30)
    states = proc.stdout.split()
    if proc.returncode != 0 or "idle" not in states and "mix" not in states:
        return f"Slurm does not answer or has no usable node: {proc.stdout}{proc.stderr}".strip()
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    reason = _slurm_missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but Slurm is not usable: {reason}")
    pytest.skip(reason)


@pytest.fixture
def train_script() -> Path:
    if not TRAIN_SCRIPT.exists():
        pytest.fail(f"{TRAIN_SCRIPT} does not exist (set DISTNN_SLURM_TRAIN_SCRIPT to another script)")
    return TRAIN_SCRIPT


@pytest.fixture
def rank_recorder(tmp_path: Path):
    """Environment that makes every Python rank log its rank/node and its writes under a watched dir."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    records = tmp_path / "records"
    records.mkdir()

    def env_for(watch: Path, **extra: str) -> dict[str, str]:
        env = job_env(**extra)
        env.update(PYTHONPATH=f"{site}{os.pathsep}{env['PYTHONPATH']}", RECORD_DIR=str(records),
                   RECORD_WATCH=str(watch))
        return env

    def read() -> list[dict]:
        procs = []
        for log in sorted(records.glob("rank-*.log")):
            lines = log.read_text().splitlines()
            start = dict(kv.split("=") for kv in lines[0].split()[1:])
            procs.append(dict(rank=int(start["rank"]), node=start["node"],
                              writes=[line.split(" ", 1)[1] for line in lines[1:]]))
        return procs

    return env_for, read


def job_env(**extra: str) -> dict[str, str]:
    """The submitting environment; sbatch passes it to the job (--export=ALL)."""
    env = subprocess_env(PYTHON=sys.executable, **extra)
    for name in [n for n in env if n.startswith(("SLURM_", "SBATCH_")) and n != "SLURM_CONF"]:
        del env[name]  # a test run inside a Slurm job must not leak that job's settings
    return env


def submit(template: str, sbatch_args: list[str], script_args: list[str], env: dict[str, str],
           output: Path, timeout: float = JOB_TIMEOUT) -> tuple[int, int, str]:
    """``sbatch --wait`` a template; returns (exit code, job id, job output). Cancels on timeout."""
    proc = start(template, sbatch_args, script_args, env, output)
    return finish(proc, output, timeout)


def start(template: str, sbatch_args: list[str], script_args: list[str], env: dict[str, str],
          output: Path) -> subprocess.Popen:
    cmd = ["sbatch", "--wait", "--parsable", f"--output={output}", *sbatch_args,
           str(SLURM_DIR / template), *script_args]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline().strip()  # --parsable prints the id as soon as it is queued
    if not first.split(";")[0].isdigit():
        proc.wait(timeout=30)
        pytest.fail(f"{' '.join(cmd)} did not submit: {first}{proc.stderr.read()}")
    proc.job_id = int(first.split(";")[0])
    return proc


def finish(proc: subprocess.Popen, output: Path, timeout: float = JOB_TIMEOUT) -> tuple[int, int, str]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", str(proc.job_id)], timeout=30)
        proc.kill()
        pytest.fail(f"job {proc.job_id} did not finish in {timeout}s; output:\n{read(output)}")
    return proc.returncode, proc.job_id, read(output)


def read(path: Path) -> str:
    return path.read_text() if path.exists() else "<no output file>"


def job_state(job_id: int) -> str:
    """Final state of a job: scontrol while it still has the record, else the jobcomp file."""
    deadline = time.monotonic() + 30
    while True:  # sbatch --wait returns while the job may still be COMPLETING (epilog, cleanup)
        proc = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True,
                              text=True, timeout=30)
        match = re.search(r"JobState=(\S+)", proc.stdout)
        if not match or match.group(1) != "COMPLETING" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if match:
        return match.group(1)
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                            timeout=30).stdout
    loc = re.search(r"^JobCompLoc\s*=\s*(\S+)", config, re.M)
    if loc and "jobcomp/filetxt" in config and Path(loc.group(1)).exists():
        states = re.findall(rf"^JobId={job_id} .*?JobState=(\S+)", Path(loc.group(1)).read_text(), re.M)
        if states:
            return states[-1]
    pytest.fail(f"no state for job {job_id}: {proc.stdout}{proc.stderr}")


def assert_ok(rc: int, job_id: int, out: str) -> None:
    assert rc == 0, f"job {job_id} exited {rc} (state {job_state(job_id)}):\n{out}"


@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_train_two_nodes_one_rank_each(launcher, train_script, rank_recorder, tmp_path):
    env_for, recorded = rank_recorder
    backups, weights = tmp_path / "backups", tmp_path / "weights.npy"
    env = env_for(tmp_path, LAUNCHER=launcher, TRAIN_SCRIPT=str(train_script), BACKUP_DIR=str(backups))
    rc, job_id, out = submit("train.sbatch", ["--nodes=2", "--ntasks-per-node=1"],
                             [*TRAIN_ARGS, "--save-weights", str(weights)], env, tmp_path / "job.out")
    assert_ok(rc, job_id, out)

    # Slurm + MPI: one process per node, MPI ranks 0 and 1, on different Slurm nodes.
    procs = recorded()
    assert sorted(p["rank"] for p in procs) == [0, 1], out
    assert len({p["node"] for p in procs}) == 2, f"both ranks on one node: {procs}"
    # [train_mnist] both ranks joined one job of size 2 and it learned.
    assert sorted(RANK_LINE.findall(out)) == [("0", "2"), ("1", "2")], out
    accuracy = ACCURACY.findall(out)
    assert len(accuracy) == 1 and float(accuracy[0]) >= MIN_ACCURACY, out
    # [train_mnist] rank 0 wrote backups (deleted again after a finished run) and the weights;
    # no other rank wrote any file.
    (root,) = [p for p in procs if p["rank"] == 0]
    assert any(path.startswith(f"{backups}{os.sep}") for path in root["writes"]), root
    assert weights.exists(), out
    writers = {p["rank"] for p in procs if p["writes"]}
    assert writers == {0}, f"ranks that wrote files: {writers}; {procs}"


def test_preempted_job_requeues_and_resumes_to_same_weights(train_script, tmp_path):
    """SIGUSR1 (as --signal=B:USR1@120 sends before the time limit): back up, requeue, resume."""
    runs = {}
    for name in ("reference", "preempted"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        env = job_env(TRAIN_SCRIPT=str(train_script), BACKUP_DIR=str(run_dir / "backups"))
        runs[name] = (run_dir, start("train-preemptible.sbatch", ["--nodes=2", "--ntasks-per-node=1"],
                                     [*PREEMPT_ARGS, "--save-weights", str(run_dir / "weights.npy")],
                                     env, run_dir / "job.out"))
    run_dir, proc = runs["preempted"]
    deadline = time.monotonic() + JOB_TIMEOUT
    while not (run_dir / "backups").exists() or not any((run_dir / "backups").iterdir()):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no backup appeared before the job ended:\n{read(run_dir / 'job.out')}")
        time.sleep(0.05)
    subprocess.run(["scancel", "--batch", "--signal=USR1", str(proc.job_id)],
                   check=True, timeout=30)

    results = {name: finish(p, d / "job.out") for name, (d, p) in runs.items()}
    for rc, job_id, out in results.values():
        assert_ok(rc, job_id, out)
    out = results["preempted"][2]
    assert "SIGUSR1" in out and "requeueing" in out, f"the job was not preempted:\n{out}"
    assert "restart=1" in out, f"the job did not run a second time:\n{out}"
    assert "restart=1" not in results["reference"][2]
    # [train_mnist] the second run restored a backup instead of starting over ...
    resumed = RESUMED.findall(out)
    assert len(resumed) == 1 and resumed[0] != ("1", "0"), f"no resume from a backup:\n{out}"
    # ... and ends where the uninterrupted run does.
    np.testing.assert_allclose(np.load(tmp_path / "preempted" / "weights.npy"),
                               np.load(tmp_path / "reference" / "weights.npy"), rtol=1e-6, atol=1e-7)


def test_failing_rank_fails_the_job_fast(tmp_path):
    """An exception on one rank (distnn turns it into MPI_Abort) ends the job FAILED in seconds."""
    env = job_env(TRAIN_SCRIPT=str(SCRIPTS / "slurm_fail.py"), BACKUP_DIR=str(tmp_path / "backups"))
    began = time.monotonic()
    rc, job_id, out = submit("train.sbatch", ["--nodes=2", "--ntasks-per-node=1"], [], env,
                             tmp_path / "job.out", timeout=60)
    elapsed = time.monotonic() - began
    assert rc != 0, out
    assert job_state(job_id) == "FAILED"
    assert "deliberate failure on the last rank" in out
    # sbatch --wait polls every 2 s: a hang would show as the full timeout instead.
    assert elapsed < 30, f"the failed job took {elapsed:.0f}s to end:\n{out}"


@pytest.mark.parametrize("relay", ["1", "0"])
def test_mpi_start_up_lines_fit_slurms_pmi_reads(relay, tmp_path):
    """Slurm's pmi2 plugin reads at most 1024 bytes per PMI-1 request; MPICH sizes its start-up lines
    from the vallen_max it is told. Through distnn's relay (on by default under srun --mpi=pmi2) it is
    told 896 and every line it sends fits. Without the relay it is told 1024, and its lines reach
    ~1080 bytes when a business-card segment has few zero runs: then the job dies in MPI_Init, as
    it did once in CI here (distnn.distributed.pmi_relay), so only what MPICH was told is checked."""
    env = job_env(TRAIN_SCRIPT=str(SCRIPTS / "slurm_probe.py"), BACKUP_DIR=str(tmp_path / "backups"),
                  PMI_DEBUG="1", DISTNN_PMI_RELAY=relay)
    rc, job_id, out = submit("train.sbatch", ["--nodes=2", "--ntasks-per-node=1"], [], env,
                             tmp_path / "job.out")
    told = set(re.findall(r"cmd=maxes .*vallen_max=(\d+)", out))
    if relay == "0":
        assert told == {"1024"}, out
        return
    assert_ok(rc, job_id, out)
    assert "probe allreduce=3" in out, out
    assert told == {str(pmi_relay.RELAY_VALLEN_MAX)}, out
    sent = re.findall(r"send to fd=\d+ pmi: (cmd=[^\n]*)", out)
    assert any(line.startswith("cmd=put ") for line in sent), out
    longest = max(sent, key=len)
    assert len(longest) + 1 <= pmi_relay.SLURM_READ_BYTES, longest


def test_sweep_array_runs_one_learning_rate_per_task(train_script, tmp_path):
    env = job_env(TRAIN_SCRIPT=str(train_script), SWEEP_DIR=str(tmp_path / "sweep"))
    rc, job_id, _ = submit("sweep-array.sbatch", ["--array=0-1", "--ntasks-per-node=2"], TRAIN_ARGS,
                           env, tmp_path / "task-%a.out")
    outs = [read(tmp_path / f"task-{task}.out") for task in (0, 1)]
    assert rc == 0, f"array job {job_id} failed:\n" + "\n".join(outs)
    assert "lr=0.01 " in outs[0] and "lr=0.003 " in outs[1], outs  # from the template
    for out in outs:  # [train_mnist] each task trained on 2 ranks
        assert sorted(RANK_LINE.findall(out)) == [("0", "2"), ("1", "2")], out
        assert len(ACCURACY.findall(out)) == 1, out
    # [train_mnist] --learning-rate reached the script: same seed and data, different weights.
    first, second = (np.load(tmp_path / "sweep" / f"task-{t}" / "weights.npy") for t in (0, 1))
    assert not np.allclose(first, second)


def _gpus_per_node() -> int:
    gres = subprocess.run(["sinfo", "-h", "-N", "-o", "%G"], capture_output=True, text=True,
                          timeout=30).stdout
    counts = [int(m) for m in re.findall(r"gpu(?::[^:\s,]+)?:(\d+)", gres)]
    return min(counts) if counts else 0


def test_gpu_template_binds_one_gpu_per_rank_by_local_id(tmp_path):
    """Checks the binding only (the probe uses no GPU); local-cluster.sh gives each node 2 fake GPUs."""
    if _gpus_per_node() < 2:
        pytest.skip("this Slurm has no node with 2 GPUs (local-cluster.sh configures 2 fake ones)")
    env = job_env(TRAIN_SCRIPT=str(SCRIPTS / "slurm_probe.py"), BACKUP_DIR=str(tmp_path / "backups"))
    rc, job_id, out = submit("train-gpu.sbatch", ["--nodes=2", "--gpus-per-node=2", "--ntasks-per-node=2",
                                                  "--cpus-per-task=1"], [], env, tmp_path / "job.out")
    assert_ok(rc, job_id, out)
    seen = re.findall(r"probe rank=(\d) size=4 SLURM_NODEID=(\d) SLURM_LOCALID=(\d) "
                      r"CUDA_VISIBLE_DEVICES=(\S+) DISTNN_DEVICE=gpu", out)
    assert len(seen) == 4, out
    for node in ("0", "1"):
        devices = [dev for _, n, _, dev in seen if n == node]
        assert len(devices) == 2 and len(set(devices)) == 2, f"node {node}: {devices}\n{out}"
        assert all("," not in dev for dev in devices), f"a rank sees more than one GPU:\n{out}"


@pytest.mark.parametrize("template, fit", [
    ("train.sbatch", []),
    ("train-preemptible.sbatch", []),
    ("sweep-array.sbatch", ["--ntasks-per-node=2"]),
    ("train-gpu.sbatch", ["--gpus-per-node=2", "--ntasks-per-node=2", "--cpus-per-task=1"]),
])
def test_template_directives_accepted_by_slurm(template, fit):
    """sbatch --test-only parses every #SBATCH line and checks the request could be scheduled."""
    if template == "train-gpu.sbatch" and _gpus_per_node() < 2:
        pytest.skip("this Slurm has no node with 2 GPUs")
    proc = subprocess.run(["sbatch", "--test-only", *fit, str(SLURM_DIR / template)], cwd=REPO_ROOT,
                          env=job_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "to start at" in proc.stderr, proc.stderr
