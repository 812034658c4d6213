"""SIGTERM while training is blocked: a grace period, and a second signal ends the job at once.

``BackupAndRestore`` turns SIGTERM/SIGUSR1 into "stop at the next step boundary". A rank that never
reaches one (blocked in a collective whose peer hangs, or itself hanging) would ignore the signal,
and the scheduler's graceful stop would do nothing. `TerminationWatch` ends the job when no step
boundary comes within ``DISTNN_TERM_GRACE_S`` seconds (default 30; 0: wait for the boundary however
long) of the first signal, and at once on a second one. Its timer is a thread, so it fires even when
the main thread is stuck outside Python; the second signal is seen because collectives wait in
Python (distnn.distributed.stall). See docs/architecture.md, "Reliability: stalls, launch and exits".
"""
from __future__ import annotations

import signal
import threading
import time

from distnn.distributed import stall
from distnn.distributed.aborts import abort_job, world_rank
from distnn.distributed.startup import seconds_from_env

GRACE_ENV = "DISTNN_TERM_GRACE_S"
DEFAULT_GRACE_S = 30.0
# A signal repeated within this window is the same request: srun forwards its own SIGTERM to the
# tasks that slurmstepd signals too, so one preemption can arrive twice within milliseconds.
SAME_REQUEST_S = 1.0


class TerminationWatch:
    """Counts termination signals during `fit` and enforces the grace period (module docstring).

    `requested` is called from the signal handler (main thread), `boundary_reached` at each step
    boundary where training acts on the request, `close` when training ends.
    """

    def __init__(self) -> None:
        self.grace_s = seconds_from_env(GRACE_ENV, DEFAULT_GRACE_S)  # read now: a bad value fails here, not in a handler
        self._signals: list[str] = []
        self._timer: threading.Timer | None = None
        self._first_at = 0.0

    def requested(self, signum: int) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self._signals and now - self._first_at < SAME_REQUEST_S:
            return
        self._signals.append(name)
        rank = world_rank()
        who = "distnn" if rank is None else f"distnn: rank {rank}"
        if len(self._signals) > 1:
            abort_job(f"{who}: second termination signal ({' then '.join(self._signals)}) before training "
                      "reached a step boundary: ending the job now, without a backup", 128 + signum)
        self._first_at = now
        if self.grace_s > 0:
            self._timer = threading.Timer(self.grace_s, self._expired, args=(who, name, self.grace_s))
            self._timer.daemon = True
            self._timer.start()

    def _expired(self, who: str, name: str, grace: float) -> None:
        where = stall.describe_this_rank()
        abort_job(f"{who}: {name} {grace:g} s ago and training has not reached a step boundary since "
                  f"({GRACE_ENV}={grace:g}; {where}): ending the job without a backup", 128 + signal.Signals[name])

    def boundary_reached(self) -> None:
        """Training reached the step boundary where it stops: the grace period has done its job."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.boundary_reached()
        self._signals.clear()
