"""Starting MPI: once per process, after the launch checks, with a deadline on MPI's own start-up.

MPI_Init waits until every rank of the job has called it, holding the interpreter lock (no Python
thread runs meanwhile). A rank that fails or exits before it ever starts MPI (an exception before
`import distnn`) therefore leaves the others in MPI_Init for good: the launcher does not notice
either. A small watchdog process, started just before MPI_Init and killed when it returns (it also
ends when its stdin closes, i.e. when the rank dies), gives the same deadlines as the stall
inspection: a warning after
``DISTNN_STALL_WARNING_S``, and after ``DISTNN_STALL_TIMEOUT_S`` it prints why and kills the waiting
rank, so the launcher ends the job. Under ``srun --mpi=pmi2`` a relay (distnn.distributed.pmi_relay)
first takes over the PMI connection, so that MPI_Init's messages fit what Slurm reads. See
docs/architecture.md, "Reliability: stalls, launch and exits".
"""
from __future__ import annotations

import os
import sys
from typing import Any

from distnn.distributed import launch_env, pmi_relay

WARNING_ENV, TIMEOUT_ENV = "DISTNN_STALL_WARNING_S", "DISTNN_STALL_TIMEOUT_S"
DEFAULT_WARNING_S, DEFAULT_TIMEOUT_S = 60.0, 600.0

# Runs in `python -I -S` (no site, no distnn) until MPI_Init returns (then the rank kills it) or the
# rank dies (EOF on stdin); meanwhile it prints and, at the deadline, kills the rank.
_WATCHDOG = r"""
import os, select, signal, sys, time
pid, who, warning, timeout = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
start = time.monotonic()
def started(at):
    return bool(select.select([sys.stdin], [], [], max(0.0, at - (time.monotonic() - start)))[0])
def say(text):
    os.write(2, ("distnn: %s: %s\n" % (who, text)).encode())
why = ("in MPI's start-up (MPI_Init, inside `import distnn`) for the other ranks of the job. A rank that "
       "failed or exited before it imported distnn cannot tell the others: look for its error above, and "
       "put `import distnn` first in the script so that such failures end the job at once")
if warning and (not timeout or warning < timeout) and not started(warning):
    say("has waited %g s %s (DISTNN_STALL_WARNING_S=%g%s)" % (warning, why, warning,
        "; this rank gives up after DISTNN_STALL_TIMEOUT_S=%g" % timeout if timeout else ""))
if timeout and not started(timeout):
    say("has waited %g s %s. Ending this rank (DISTNN_STALL_TIMEOUT_S=%g)" % (timeout, why, timeout))
    os.kill(pid, signal.SIGKILL)
"""


def seconds_from_env(name: str, default: float) -> float:
    """A non-negative number of seconds from environment variable `name` (0 disables).

    Raises:
        ValueError: naming the variable and the value when it is not such a number.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a number of seconds >= 0 (0 disables). Received: {name}={text!r}")
    return value


def _watch_start_up() -> Any:
    """The watchdog process (a ``subprocess.Popen``), or `None` when both deadlines are off."""
    import subprocess  # noqa: PLC0415 - only under an MPI launcher: keeps `import distnn` light

    warning = seconds_from_env(WARNING_ENV, DEFAULT_WARNING_S)
    timeout = seconds_from_env(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    if not warning and not timeout:
        return None
    host = os.uname().nodename if hasattr(os, "uname") else "?"
    who = f"rank {launch_env.launcher_rank()} ({host}, pid {os.getpid()})"
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHDOG, str(os.getpid()), who,
                             str(warning), str(timeout)], stdin=subprocess.PIPE)


def start_mpi() -> Any:
    """Imports ``mpi4py.MPI`` and initialises MPI (thread level multiple) if nobody has yet.

    Returns:
        The ``mpi4py.MPI`` module.

    Raises:
        ImportError: mpi4py is missing.
        LaunchMismatchError: Open MPI's mpirun started a process whose mpi4py uses another MPI.
    """
    try:
        import mpi4py
    except ImportError as exc:
        raise ImportError("The MPI communicators need mpi4py: `pip install mpi4py mpich` "
                          "(or mpi4py built against your cluster's MPI).") from exc
    if "mpi4py.MPI" not in sys.modules:
        # Imported without initialising, so that the library can be checked before MPI_Init.
        mpi4py.rc.initialize = False
        mpi4py.rc.finalize = True
    from mpi4py import MPI

    if MPI.Is_initialized():
        return MPI
    launch_env.check_library(MPI.Get_library_version())
    if pmi_relay.wanted():
        pmi_relay.start()
    watchdog = _watch_start_up()
    try:
        MPI.Init_thread(MPI.THREAD_MULTIPLE)
    finally:
        if watchdog is not None:  # no longer needed (killing it does not wait for its start-up)
            watchdog.kill()
            watchdog.wait()
            watchdog.stdin.close()
    return MPI
