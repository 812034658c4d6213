"""What the launcher says about the job, and whether MPI agrees (no MPI import here).

An MPI launcher (MPICH's hydra, Open MPI's mpirun, ``srun --mpi=pmi2``) leaves variables in every
process it starts; other launchers (plain ``srun``, torchrun, horovodrun in Gloo mode) start N
processes without wiring MPI between them. A process started that way initialises MPI alone and
would train as "rank 0 of 1", every copy writing the same backups. `check_world_size` turns that
into an error at `init` naming the variable that gave the job away and the fix; `check_library`
catches Open MPI's mpirun starting an mpi4py built on another MPI before MPI_Init (whose own error
is an abort deep inside the MPI library). See docs/architecture.md, "Reliability: stalls, launch
and exits".
"""
from __future__ import annotations

import os

# Variables set by MPI launchers in every process they start: MPICH/Intel MPI hydra and
# Slurm's pmi2 (PMI_*), Open MPI (OMPI_*), PMIx-based launchers (PMIX_RANK), MPICH's
# gforker/hydra local info (MPI_LOCALNRANKS).
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")

_RIGHT_MPIEXEC = "the mpiexec of the MPI that mpi4py uses (`distnn-run -np N python train.py` finds it)"
_SRUN_FIX = ("use `srun --mpi=pmi2 ...` (or the PMI your MPI was built with, see `srun --mpi=list`), or run "
             "`distnn-run -np N python train.py` inside the allocation")

# (variable, who sets it, how to start the job instead). MPI process managers first: when one of
# them agrees with MPI, the job-level variables below describe the same processes.
_MPI_SIZE_VARIABLES = (
    ("PMI_SIZE", "an MPICH-style launcher (hydra's mpiexec, Intel MPI, srun --mpi=pmi2)",
     f"if it is left over from another job or shell, unset it; otherwise start the job with {_RIGHT_MPIEXEC}"),
    ("OMPI_COMM_WORLD_SIZE", "Open MPI's mpirun",
     f"start the job with {_RIGHT_MPIEXEC}, or install an mpi4py built against Open MPI"),
    ("PMIX_SIZE", "a PMIx launcher", f"start the job with {_RIGHT_MPIEXEC}"),
    ("MV2_COMM_WORLD_SIZE", "MVAPICH's mpirun_rsh", f"start the job with {_RIGHT_MPIEXEC}"),
)
_JOB_SIZE_VARIABLES = (
    ("SLURM_STEP_NUM_TASKS", "srun without MPI wiring", _SRUN_FIX),
    ("SLURM_NTASKS", "srun without MPI wiring", _SRUN_FIX),
    ("WORLD_SIZE", "a torchrun-style launcher (torchrun, torch.distributed.launch, accelerate), which does not "
     "start MPI,", f"start the script with {_RIGHT_MPIEXEC}"),
    ("HOROVOD_SIZE", "horovodrun in Gloo mode, which does not start MPI,",
     f"use `horovodrun --mpi ...`, or start the script with {_RIGHT_MPIEXEC}"),
)


class LaunchMismatchError(RuntimeError):
    """The launcher started several processes that MPI does not connect."""


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher.

    `DISTNN_USE_MPI=1` forces MPI (e.g. a launcher that sets none of the usual variables),
    `DISTNN_USE_MPI=0` forces a single process.
    """
    forced = os.environ.get("DISTNN_USE_MPI", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return any(variable in os.environ for variable in LAUNCHER_VARIABLES)


def launcher_world_size() -> int:
    """The number of processes the MPI launcher's variables announce (1 when none does)."""
    for variable, _, _ in _MPI_SIZE_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return 1


def launcher_rank() -> str:
    """This process's rank as the launcher announces it (before MPI starts), or `"?"`."""
    for variable in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        value = os.environ.get(variable, "")
        if value.isdigit():
            return value
    return "?"


def _announced_sizes() -> list[tuple[str, int, str, str]]:
    """`(variable, size, who sets it, fix)` for each variable that says the job has N > 1 processes."""
    found = []
    in_slurm_step = "SLURM_STEP_ID" in os.environ
    for variable, setter, fix in _MPI_SIZE_VARIABLES + _JOB_SIZE_VARIABLES:
        if variable.startswith("SLURM_") and not in_slurm_step:
            continue  # a batch script's own variables: srun inside it starts the real step
        if variable == "SLURM_NTASKS" and "SLURM_STEP_NUM_TASKS" in os.environ:
            continue  # the step's own count is the precise one
        value = os.environ.get(variable, "").strip()
        if value.isdigit() and int(value) > 1:
            found.append((variable, int(value), setter, fix))
    return found


def check_world_size(mpi_size: int | None) -> None:
    """Raises `LaunchMismatchError` when the environment says N > 1 processes but MPI has one.

    Args:
        mpi_size: the size of MPI's world, or `None` when no MPI launcher was detected (the job
            would run as a single process).

    `DISTNN_USE_MPI=0` means independent single processes on purpose and skips the check.
    """
    if os.environ.get("DISTNN_USE_MPI", "").strip() == "0" or (mpi_size is not None and mpi_size > 1):
        return
    announced = _announced_sizes()
    if not announced:
        return
    # An MPI process manager whose own count is 1 (hydra in a Slurm step placing one rank, with
    # one proxy per node) speaks for MPI: the step's task count then counts proxies, not ranks.
    if mpi_size == 1 and os.environ.get("PMI_SIZE") == "1" and "PMI_RANK" in os.environ:
        announced = [entry for entry in announced if not entry[0].startswith("SLURM_")]
        if not announced:
            return
    variable, size, setter, fix = announced[0]
    mpi_says = ("no MPI launcher was detected, so it would run as a single process" if mpi_size is None
                else "MPI started it as a single process (rank 0 of 1)")
    raise LaunchMismatchError(
        f"{variable}={size}: {setter} started this job with {size} processes, but {mpi_says}: "
        f"every process would train alone on all the data and write the same files. Fix: {fix}. "
        "(To run independent single-process trainings on purpose, set DISTNN_USE_MPI=0.)")


def check_library(library_version: str) -> None:
    """Before MPI_Init: Open MPI's mpirun cannot wire the processes of another MPI library.

    Args:
        library_version: `MPI.Get_library_version()` of the MPI that mpi4py loaded.
    """
    if "OMPI_COMM_WORLD_SIZE" not in os.environ or "Open MPI" in library_version:
        return
    if os.environ.get("DISTNN_USE_MPI", "").strip() == "0":
        return
    first_line = " ".join(library_version.split("\n", 1)[0].split()) or "unknown"
    size = os.environ["OMPI_COMM_WORLD_SIZE"]
    raise LaunchMismatchError(
        f"OMPI_COMM_WORLD_SIZE={size}: Open MPI's mpirun started this job, but mpi4py uses another "
        f"MPI library ({first_line}), which cannot join Open MPI's processes (MPI_Init would abort "
        f"or every process would train alone). Fix: start the job with {_RIGHT_MPIEXEC}, or install "
        "an mpi4py built against Open MPI.")
