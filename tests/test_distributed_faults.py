"""A rank that hangs, leaves, fails early or is signalled ends the whole job, naming itself; a launch
whose processes MPI does not connect fails at init, naming the variable (issue 11).

Multi-rank cases run real ``mpiexec`` jobs of tests/mpi_scripts/fault_matrix.py with small
deadlines (DISTNN_STALL_WARNING_S=1, DISTNN_STALL_TIMEOUT_S=3), each with a timeout; the launch
checks run plain ``python`` processes with the variables a misconfigured launcher would leave.
"""
import os
import re
import signal
import time
from pathlib import Path

import pytest

from conftest import finish, run_mpi, run_python, start_mpi, subprocess_env
from distnn.distributed import startup
from distnn.distributed.launch_env import LAUNCHER_VARIABLES
from distnn.distributed.stall import stall_report

SCRIPT = "tests/mpi_scripts/fault_matrix.py"
WARNING_S, TIMEOUT_S = 1, 3
STALL_ENV = {"DISTNN_STALL_WARNING_S": str(WARNING_S), "DISTNN_STALL_TIMEOUT_S": str(TIMEOUT_S)}


def fault_job(action: str, rank: int, directory: Path, n: int = 2, timeout: float = 60, **env: str):
    """Runs the fault script on `n` ranks; returns (seconds it took, the completed process)."""
    start = time.monotonic()
    proc = run_mpi(n, [SCRIPT, action, str(rank), str(directory)], timeout=timeout, check=False,
                   env=subprocess_env(**{**STALL_ENV, **env}))
    return time.monotonic() - start, proc


@pytest.mark.mpi
@pytest.mark.parametrize("rank", [0, 1])
def test_hanging_rank_is_named_then_the_job_ends(tmp_path, rank):
    elapsed, proc = fault_job("hang-fit", rank, tmp_path, n=3)
    assert proc.returncode != 0
    assert elapsed < TIMEOUT_S + 10, f"the job took {elapsed:.0f} s"
    waiting = "ranks 1, 2 have" if rank == 0 else "ranks 0, 2 have"
    warning = re.search(rf"stall: {waiting} waited \d+ s in allreduce #\d+ \(float32\[57\]\) at distnn/\S+\.py:\d+ "
                        rf"in \w+; rank {rank} has not joined it:\n.*stall:   rank {rank} \(.*\) is not in a "
                        rf"collective \(last: allreduce #\d+, \d+ s ago\), at .*fault_matrix.py:\d+ in "
                        r"on_train_batch_begin", proc.stderr)
    assert warning, proc.stderr
    assert "the job ends if this lasts DISTNN_STALL_TIMEOUT_S=3 s" in proc.stderr  # the warning came first
    assert re.search(r"stall: ending the job: no progress for \d+ s \(DISTNN_STALL_TIMEOUT_S=3\)", proc.stderr)
    assert proc.stderr.index("the job ends if this lasts") < proc.stderr.index("ending the job: no progress")
    assert "finished" not in proc.stdout


@pytest.mark.mpi
def test_hang_outside_fit_is_named_too(tmp_path):
    elapsed, proc = fault_job("hang-predict", 1, tmp_path)
    assert proc.returncode != 0
    assert elapsed < TIMEOUT_S + 10, f"the job took {elapsed:.0f} s"
    # predict's first collective is the rank-consistency check (then the replica sync).
    assert re.search(r"stall: rank 0 has waited \d+ s in allgather_obj #\d+ at distnn/distributed/consistency.py:\d+ "
                     r"in check_ranks_agree; rank 1 has not joined it:\n.*rank 1 \(.*\) is not in a collective .*, at "
                     r".*fault_matrix.py:\d+ in <module>", proc.stderr), proc.stderr


@pytest.mark.mpi
def test_rank_holding_the_interpreter_lock_is_named_as_not_answering(tmp_path):
    elapsed, proc = fault_job("hang-gil", 1, tmp_path, n=3)
    assert proc.returncode != 0
    assert elapsed < TIMEOUT_S + 10, f"the job took {elapsed:.0f} s"
    assert re.search(r"stall:   rank 1 did not answer within \d+ s \(stuck in code that holds Python's interpreter "
                     r"lock, stopped, or dead\)", proc.stderr), proc.stderr


@pytest.mark.mpi
def test_job_ends_even_when_rank_0_cannot_report(tmp_path):
    # Rank 0's inspector cannot run: the waiting rank ends the job itself, shortly after the timeout.
    elapsed, proc = fault_job("hang-gil", 0, tmp_path)
    assert proc.returncode != 0
    assert elapsed < TIMEOUT_S + 10, f"the job took {elapsed:.0f} s"
    assert re.search(r"distnn: stall: rank 1 has waited \d+ s in allreduce #\d+ \(float32\[57\]\) "
                     r"\(DISTNN_STALL_TIMEOUT_S=3\) and rank 0 did not end the job", proc.stderr), proc.stderr


@pytest.mark.mpi
def test_stall_warning_alone_does_not_end_the_job(tmp_path):
    elapsed, proc = fault_job("pause-fit", 1, tmp_path, DISTNN_STALL_TIMEOUT_S="0")
    assert proc.returncode == 0, proc.stderr
    assert "rank 1 has not joined it" in proc.stderr
    assert "DISTNN_STALL_TIMEOUT_S=0: the job is not ended for stalls" in proc.stderr
    assert sorted(re.findall(r"finished rank=(\d)", proc.stdout)) == ["0", "1"]


@pytest.mark.mpi
@pytest.mark.parametrize("rank", [0, 1])
def test_rank_leaving_mid_training_ends_the_job(tmp_path, rank):
    elapsed, proc = fault_job("exit-fit", rank, tmp_path, n=3, DISTNN_STALL_TIMEOUT_S="600")
    assert proc.returncode != 0
    assert elapsed < 10, f"the job took {elapsed:.0f} s"
    assert re.search(rf"distnn: rank {rank} left the job \(its script returned or called sys.exit\) after "
                     r"completing collective #\d+ of the world communicator; rank \d waits in allreduce #\d+", proc.stderr)
    assert "finished" not in proc.stdout


@pytest.mark.mpi
def test_rank_leaving_before_the_final_barrier_ends_the_job(tmp_path):
    elapsed, proc = fault_job("exit-before-barrier", 1, tmp_path, DISTNN_STALL_TIMEOUT_S="600")
    assert proc.returncode != 0
    assert elapsed < 10, f"the job took {elapsed:.0f} s"
    assert re.search(r"rank 1 left the job .*; rank 0 waits in barrier #\d+, which cannot complete", proc.stderr)


@pytest.mark.mpi
def test_ranks_finishing_while_rank_0_still_works_is_normal(tmp_path):
    # Rank 1 exits 2 s before rank 0, which writes files: no collective waits for rank 1.
    elapsed, proc = fault_job("slow-root", 0, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "left the job" not in proc.stderr and "stall" not in proc.stderr
    assert sorted(re.findall(r"finished rank=(\d)", proc.stdout)) == ["0", "1"]


@pytest.mark.mpi
def test_import_error_ends_the_job_while_a_peer_loads_data(tmp_path):
    elapsed, proc = fault_job("import-error", 1, tmp_path)
    assert proc.returncode != 0
    assert elapsed < 5, f"the job took {elapsed:.1f} s: the other rank was left loading data"
    assert "[rank 1] ModuleNotFoundError: No module named 'no_such_module_on_this_node'" in proc.stderr


@pytest.mark.mpi
def test_failure_before_import_distnn_ends_the_job_at_the_start_up_deadline(tmp_path):
    elapsed, proc = fault_job("fail-before-import", 1, tmp_path)
    assert proc.returncode != 0
    assert elapsed < TIMEOUT_S + 10, f"the job took {elapsed:.0f} s"
    assert "ImportError: deliberate: a module missing on this node, before import distnn" in proc.stderr
    waiting = re.escape("distnn: rank 0 (") + r".*\): has waited {} s in MPI's start-up \(MPI_Init, inside `import distnn`\)"
    assert re.search(waiting.format(WARNING_S), proc.stderr), proc.stderr
    assert re.search(waiting.format(TIMEOUT_S) + r".*Ending this rank \(DISTNN_STALL_TIMEOUT_S=3\)", proc.stderr)


def _wait_for_pids(proc, directory: Path, n: int, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while not all((directory / f"pid-{r}").exists() for r in range(n)):
        assert proc.poll() is None and time.monotonic() < deadline, "the ranks never reached step 3"
        time.sleep(0.02)
    time.sleep(0.5)  # rank 0 is now in the step's allreduce, the hanging rank asleep
    return [int((directory / f"pid-{r}").read_text()) for r in range(n)]


@pytest.mark.mpi
def test_sigterm_ends_a_blocked_job_after_the_grace_period(tmp_path):
    proc = start_mpi(2, [SCRIPT, "hang-backup", "1", str(tmp_path)],
                     env=subprocess_env(DISTNN_STALL_TIMEOUT_S="0", DISTNN_TERM_GRACE_S="2"))
    try:
        pids = _wait_for_pids(proc, tmp_path, 2)
        for pid in pids:  # as Slurm signals every task of the step
            os.kill(pid, signal.SIGTERM)
        elapsed, out, err = finish(proc, timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert elapsed < 2 + 5, f"the job took {elapsed:.1f} s after SIGTERM"
    assert re.search(r"distnn: rank \d: SIGTERM 2 s ago and training has not reached a step boundary since "
                     r"\(DISTNN_TERM_GRACE_S=2; this rank (waits in allreduce|is at .*on_train_batch_begin)", err), err


@pytest.mark.mpi
def test_second_sigterm_ends_a_blocked_job_at_once(tmp_path):
    proc = start_mpi(2, [SCRIPT, "hang-backup", "1", str(tmp_path)],
                     env=subprocess_env(DISTNN_STALL_TIMEOUT_S="0", DISTNN_TERM_GRACE_S="60"))
    try:
        pids = _wait_for_pids(proc, tmp_path, 2)
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        time.sleep(1.5)  # a repeat within a second counts as the same request
        assert proc.poll() is None, "the first SIGTERM alone ended the blocked job"
        os.kill(pids[1], signal.SIGTERM)  # the rank asleep in a callback
        elapsed, out, err = finish(proc, timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert elapsed < 3, f"the job took {elapsed:.1f} s after the second SIGTERM"
    assert ("distnn: rank 1: second termination signal (SIGTERM then SIGTERM) before training reached a step "
            "boundary: ending the job now, without a backup") in err


# ---------------------------------------------------------------------------------- launch checks
def _plain_env(**variables: str) -> dict[str, str]:
    env = subprocess_env(**variables)
    for name in (*LAUNCHER_VARIABLES, "DISTNN_USE_MPI", "SLURM_STEP_ID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS",
                 "WORLD_SIZE", "HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        if name not in variables:
            env.pop(name, None)
    return env


INIT = ("import distnn, distnn.distributed as dist\n"
        "try:\n    comm = dist.init()\n    print('OK', type(comm).__name__, comm.size)\n"
        "except dist.LaunchMismatchError as exc:\n    print('ERR', exc)\n")


@pytest.mark.parametrize("variables, named, fix", [
    # srun without --mpi=pmi2: Slurm started the tasks, MPI knows nothing of them
    ({"SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"},
     "SLURM_STEP_NUM_TASKS=2", "srun --mpi=pmi2"),
    ({"SLURM_STEP_ID": "0", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"}, "SLURM_NTASKS=4", "srun --mpi=pmi2"),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "WORLD_SIZE=2", "distnn-run"),  # torchrun
    ({"HOROVOD_RANK": "0", "HOROVOD_SIZE": "2"}, "HOROVOD_SIZE=2", "horovodrun --mpi"),  # horovodrun, Gloo mode
    # Open MPI's mpirun starting an mpi4py built on MPICH (MPICH's MPI_Init would abort on PMIx)
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0", "PMIX_RANK": "0", "PMIX_NAMESPACE": "job"},
     "OMPI_COMM_WORLD_SIZE=2", "the mpiexec of the MPI that mpi4py uses"),
    ({"PMI_SIZE": "4"}, "PMI_SIZE=4", "left over from another job or shell, unset it"),  # a stale PMI_SIZE
])
def test_launch_without_mpi_wiring_fails_at_init(variables, named, fix):
    proc = run_python(["-c", INIT], env=_plain_env(**variables), timeout=60)
    assert proc.stdout.startswith(f"ERR {named}: "), proc.stdout + proc.stderr
    assert fix in proc.stdout and "every process would train alone" in proc.stdout


@pytest.mark.parametrize("variables", [
    {"SLURM_NTASKS": "4"},  # a batch script's variables outside any srun step
    {"SLURM_STEP_ID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"},
    {"DISTNN_USE_MPI": "0", "WORLD_SIZE": "2"},  # independent processes on purpose
    {},
])
def test_consistent_single_process_launches_pass(variables):
    proc = run_python(["-c", INIT], env=_plain_env(**variables), timeout=60)
    assert proc.stdout.split() == ["OK", "SingleProcessCommunicator", "1"], proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ in-process pieces
def test_deadline_variables_are_validated(monkeypatch):
    monkeypatch.setenv("DISTNN_STALL_TIMEOUT_S", "ten")
    with pytest.raises(ValueError, match=r"DISTNN_STALL_TIMEOUT_S must be a number of seconds >= 0 \(0 disables\). "
                                         r"Received: DISTNN_STALL_TIMEOUT_S='ten'"):
        startup.seconds_from_env("DISTNN_STALL_TIMEOUT_S", 600)
    for bad in ("-1", "nan", "inf"):
        monkeypatch.setenv("DISTNN_STALL_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match="DISTNN_STALL_TIMEOUT_S"):
            startup.seconds_from_env("DISTNN_STALL_TIMEOUT_S", 600)
    monkeypatch.setenv("DISTNN_STALL_TIMEOUT_S", " 2.5 ")
    assert startup.seconds_from_env("DISTNN_STALL_TIMEOUT_S", 600) == 2.5
    monkeypatch.delenv("DISTNN_STALL_TIMEOUT_S")
    assert startup.seconds_from_env("DISTNN_STALL_TIMEOUT_S", 600) == 600


def _waiting(seq, waited, op="allreduce"):
    return {"host": "h", "pid": 1, "where": ["distnn/training.py:196 in _train_step"],
            "waiting": ["world", seq, op, f"{op} #{seq} (float32[10])", waited]}


def test_stall_report_names_each_missing_rank_and_why():
    statuses = {
        0: _waiting(57, 61.0), 2: _waiting(57, 60.5), 5: _waiting(57, 59.0), 7: _waiting(57, 60.0),
        8: _waiting(57, 60.0), 9: _waiting(57, 60.0),
        1: {"host": "h", "pid": 2, "where": ["train.py:12 in load"], "last": ["world", 56, "bcast_obj", 61.2]},
        3: None,  # did not answer
        4: _waiting(57, 3.0, op="bcast"),  # a different collective with the same number: a program bug
        6: None,  # left the job
    }
    report = stall_report(statuses, 10, {6: {"seq": 56}}, warning_s=60, timeout_s=600, final=False, answer_s=4)
    lines = report.splitlines()
    assert lines[0] == ("distnn: stall: ranks 0, 2, 5, 7-9 have waited 61 s in allreduce #57 (float32[10]) at "
                        "distnn/training.py:196 in _train_step; ranks 1, 3, 4, 6 have not joined it:")
    assert lines[1] == ("distnn: stall:   rank 1 (h, pid 2) is not in a collective (last: bcast_obj #56, 61 s ago), "
                        "at train.py:12 in load")
    assert lines[2].startswith("distnn: stall:   rank 3 did not answer within 4 s")
    assert lines[3] == "distnn: stall:   rank 4 (h, pid 1) waits in a different collective, bcast #57 (float32[10]), for 3 s"
    assert lines[4] == ("distnn: stall:   rank 6 left the job (its script returned or called sys.exit) after "
                        "collective #56 of the world communicator")
    assert lines[5] == ("distnn: stall: the job ends if this lasts DISTNN_STALL_TIMEOUT_S=600 s "
                        "(reported after DISTNN_STALL_WARNING_S=60)")
    final = stall_report(statuses, 10, {6: {"seq": 56}}, 60, 600, final=True, answer_s=4)
    assert final.splitlines()[-1] == "distnn: stall: ending the job: no progress for 61 s (DISTNN_STALL_TIMEOUT_S=600)"
    # Nobody waits any more: the stall resolved itself while rank 0 was asking.
    assert stall_report({0: {"host": "h", "pid": 1, "where": []}, 1: None}, 2, {}, 60, 600, False, 4) is None
