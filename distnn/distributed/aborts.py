"""Ending the whole job from any rank: uncaught exceptions and explicit aborts.

- `install_abort_hooks`: with several ranks, an uncaught exception (main thread or any other) prints
  its traceback prefixed with the rank and aborts the MPI job, instead of leaving the other ranks
  blocked in their next collective.
- `abort_job`: prints a message and ends every rank now (MPI_Abort; `os._exit` without MPI), from
  any thread.

See docs/architecture.md, "Reliability: stalls, launch and exits".
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from typing import NoReturn

_hooks_installed_for: int | None = None  # the pid whose hooks are installed (a fork must not abort MPI)


def world_rank() -> int | None:
    """This process's rank in MPI's world, or `None` when MPI is not running."""
    MPI = sys.modules.get("mpi4py.MPI")
    if MPI is None or not MPI.Is_initialized() or MPI.Is_finalized():
        return None
    return MPI.COMM_WORLD.Get_rank()


_ABORT_DRAIN_S = 0.5  # seconds for the launcher to forward the message before MPI_Abort


def abort_job(message: str, code: int = 1) -> NoReturn:
    """Writes `message` to stderr and ends every rank of the job with exit status `code`.

    Safe from any thread. Under MPI with several ranks it calls MPI_Abort, which the launcher turns
    into the end of every rank; otherwise this process exits at once (no cleanup, no atexit).
    """
    sys.stderr.write(message if message.endswith("\n") else message + "\n")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    MPI = sys.modules.get("mpi4py.MPI")
    if MPI is not None and MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
        # The launcher forwards a rank's output asynchronously and MPI_Abort ends the step at once: under
        # srun the traceback written just above was sometimes lost. A moment's pause lets it through.
        time.sleep(_ABORT_DRAIN_S)
        MPI.COMM_WORLD.Abort(code)
    os._exit(code)


def install_abort_hooks(rank: int, size: int) -> None:
    """With several ranks, makes an uncaught exception (main or any thread) abort the job (once per process)."""
    global _hooks_installed_for
    if size == 1 or _hooks_installed_for == os.getpid():
        return
    owner = _hooks_installed_for = os.getpid()
    previous_hook, previous_thread_hook = sys.excepthook, threading.excepthook

    def report_and_abort(exc_type, exc, tb) -> None:
        if os.getpid() != owner:  # a forked child (a data-loading worker) is not an MPI rank
            previous_hook(exc_type, exc, tb)
            return
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        prefix = f"[rank {rank}] "
        abort_job("".join(prefix + line for line in text.splitlines(keepends=True))
                  + f"{prefix}aborting the MPI job ({size} ranks) after an uncaught {exc_type.__name__}", 1)

    def thread_hook(args) -> None:
        if args.exc_type is SystemExit:  # ends only that thread, as by default
            return
        if os.getpid() != owner:
            previous_thread_hook(args)
            return
        report_and_abort(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook, threading.excepthook = report_and_abort, thread_hook
