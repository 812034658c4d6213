"""Stall inspection: every collective has a deadline, and a rank that leaves early ends the job.

How it works (the measurements behind it are in docs/architecture.md, "Reliability: stalls, launch
and exits"):

- **Waiting.** The communicators start every collective non-blocking (``Iallreduce``, ``Ibcast``,
  the ring's ``Isend``/``Irecv``) and complete it with `Monitor.wait`, which polls ``MPI_Test``:
  for the first `SPIN_S` it spins, which covers the peers' normal imbalance, and from
  `YIELD_AFTER_S` on it yields the core every `YIELD_EVERY` tests, for a peer sharing the core;
  then it sleeps for 5 % of the time waited so far, up to `MAX_SLEEP_S`. Measured on an
  oversubscribed machine (docs/architecture.md): a 2 ms spin without yields made training steps
  10-40 % slower than blocking calls, a 50 ms one 40-85 % slower; yields made them match; but
  yielding from the first test gave small collectives millisecond latencies in some runs (a yield
  hands a whole time slice to another process), hence only after 0.3 ms. The main thread thus
  returns to Python between polls, so signal handlers run while a rank is blocked (SIGTERM,
  Ctrl-C), and a stalled rank sleeps instead of spinning a core.
- **Bookkeeping.** Before a collective the main thread notes ``(communicator, sequence number,
  name, start time)`` in `Monitor.current`; after it, in `Monitor.last`. Those two attribute stores
  and the polling are the whole cost of a normal collective: nothing is sent to anybody.
- **Inspector.** A daemon thread per rank wakes every `tick` seconds (a fraction of the smallest
  deadline, at most 1 s). When its main thread has waited in one collective for
  ``DISTNN_STALL_WARNING_S`` (default 60) it tells rank 0 with a tiny message on a duplicated
  communicator; rank 0's inspector then asks every rank's inspector where its main thread is and
  prints which ranks have not joined, where they are (file, line and function), and what the
  others are waiting in. After ``DISTNN_STALL_TIMEOUT_S`` (default 600; 0 disables) it prints the
  same report and aborts the job. Because the inspectors answer for their main thread, a rank
  stuck in ``time.sleep``, a dead filesystem or a deadlocked loader is named with its location;
  one that holds the interpreter lock in C code or is stopped is named as not answering. If rank
  0's own inspector cannot run, the waiting ranks abort by themselves shortly after the timeout.
- **Leaving.** At exit (end of the script, ``sys.exit``) a rank says goodbye with the number of
  collectives of the world communicator it completed: to rank 0, or from rank 0 to every rank. A
  rank waiting in a later collective knows it can never complete and aborts the job naming the
  rank that left. A rank that finished normally completed every collective, so nobody waits in a
  later one: nothing distinguishes it by time, so a slow rank 0 saving files is never mistaken for
  a departure.
"""
from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
from typing import Any

from distnn.distributed import startup
from distnn.distributed.aborts import abort_job

YIELD_AFTER_S = 0.0003
YIELD_EVERY = 100  # tests (about 1-2 us each) between yields of the core
SPIN_S = 0.05
BACKOFF = 0.05
MAX_SLEEP_S = 0.02
BURST_S = 50e-6  # spinning after each sleep, so a transfer that needs several progress calls completes
WORLD = "world"

_TAG_NOTICE, _TAG_QUERY, _TAG_STATUS, _TAG_GOODBYE = 1, 2, 3, 4
_HOST = os.uname().nodename if hasattr(os, "uname") else os.environ.get("COMPUTERNAME", "?")
# Frames of the collective machinery itself, left out of reported locations.
_MACHINERY = tuple(os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
                   for name in ("stall.py", "communicator.py", "ring.py", "world.py"))
_MAX_LISTED = 16

_monitor: Monitor | None = None
_yield_cpu = getattr(os, "sched_yield", lambda: time.sleep(0))


def monitor(MPI: Any) -> Monitor:
    """The process-wide monitor (created on first use: collective over MPI's world)."""
    global _monitor
    if _monitor is None:
        _monitor = Monitor(MPI)
    return _monitor


def describe_this_rank() -> str:
    """Where this rank's main thread is, for messages: the collective it waits in, or its location."""
    current = _monitor.current if _monitor is not None else None
    if current is not None:
        label, seq, op, detail, started = current
        return f"this rank waits in {_name(label, seq, op, detail)} for {time.monotonic() - started:.0f} s"
    where = main_thread_location()
    return "this rank is at " + (" <- ".join(where) if where else "an unknown place")


def main_thread_location(limit: int = 3) -> list[str]:
    """The innermost frames of the main thread outside the collectives, as ``file:line in function``."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    found = []
    while frame is not None and len(found) < limit:
        path = frame.f_code.co_filename
        if os.path.abspath(path) not in _MACHINERY:
            found.append(f"{_short_path(path)}:{frame.f_lineno} in {frame.f_code.co_name}")
        frame = frame.f_back
    return found


def _short_path(path: str) -> str:
    marker = path.rfind(os.sep + "distnn" + os.sep)
    if marker >= 0:
        return path[marker + 1:]
    cwd = os.getcwd() + os.sep
    return path[len(cwd):] if path.startswith(cwd) else path


def _name(label: str, seq: int, op: str, detail: Any = None) -> str:
    text = f"{op} #{seq}" + ("" if label == WORLD else f" on the {label}")
    if isinstance(detail, tuple):  # (dtype, shape) of an array collective
        dtype, shape = detail
        text += f" ({dtype}[{'x'.join(map(str, shape))}])"
    return text


def _ranks(ranks: list[int]) -> str:
    """`[0, 2, 3, 4, 6, 7]` -> `"0, 2-4, 6, 7"` (ranges of three or more)."""
    parts, start = [], None
    for i, rank in enumerate(ranks):
        if start is None:
            start = rank
        if i + 1 == len(ranks) or ranks[i + 1] != rank + 1:
            parts += [f"{start}-{rank}"] if rank - start >= 2 else [str(r) for r in range(start, rank + 1)]
            start = None
    return ", ".join(parts)


def stall_report(statuses: dict[int, dict | None], size: int, departed: dict[int, dict],
                 warning_s: float, timeout_s: float, final: bool, answer_s: float) -> str | None:
    """The text rank 0 prints about a stall, from every rank's status (`None`: no answer).

    Returns `None` when no rank waits in a collective any more (the stall resolved itself).
    """
    waiting = {rank: status["waiting"] for rank, status in statuses.items() if status and status.get("waiting")}
    if not waiting:
        return None
    groups: dict[tuple, list[int]] = {}
    for rank, (label, seq, op, _, _) in sorted(waiting.items()):
        groups.setdefault((label, seq, op), []).append(rank)
    # The stalled collective is the one waited in longest.
    key = max(groups, key=lambda k: max(waiting[r][4] for r in groups[k]))
    joined = groups[key]
    first = waiting[joined[0]]
    waited = max(waiting[r][4] for r in joined)
    missing = [r for r in range(size) if r not in joined]
    site = statuses[joined[0]].get("where") or []
    lines = [f"distnn: stall: rank{'s' if len(joined) > 1 else ''} {_ranks(joined)} "
             f"{'have' if len(joined) > 1 else 'has'} waited {waited:.0f} s in {first[3]}"
             + (f" at {site[0]}" if site else "")
             + (f"; rank{'s' if len(missing) > 1 else ''} {_ranks(missing)} "
                f"{'have' if len(missing) > 1 else 'has'} not joined it:" if missing
                else "; every rank is in it (the transfer itself does not progress)")]
    for rank in missing[:_MAX_LISTED]:
        status = statuses.get(rank)
        if rank in departed:
            gone = departed[rank]
            state = (f"left the job (its script returned or called sys.exit) after collective "
                     f"#{gone.get('seq', 0)} of the world communicator")
        elif status is None:
            state = (f"did not answer within {answer_s:g} s (stuck in code that holds Python's "
                     "interpreter lock, stopped, or dead)")
        elif status.get("waiting"):
            label, seq, op, description, for_s = status["waiting"]
            state = f"waits in a different collective, {description}, for {for_s:.0f} s"
        else:
            last = status.get("last")
            state = "is not in a collective" + (
                f" (last: {_name(last[0], last[1], last[2])}, {last[3]:.0f} s ago)" if last else " (none yet)")
            if status.get("where"):
                state += ", at " + " <- ".join(status["where"])
        host = f" ({status['host']}, pid {status['pid']})" if status else ""
        lines.append(f"distnn: stall:   rank {rank}{host} {state}")
    if len(missing) > _MAX_LISTED:
        lines.append(f"distnn: stall:   ... and {len(missing) - _MAX_LISTED} more ranks")
    if final:
        lines.append(f"distnn: stall: ending the job: no progress for {waited:.0f} s "
                     f"(DISTNN_STALL_TIMEOUT_S={timeout_s:g})")
    elif timeout_s:
        lines.append(f"distnn: stall: the job ends if this lasts DISTNN_STALL_TIMEOUT_S={timeout_s:g} s "
                     f"(reported after DISTNN_STALL_WARNING_S={warning_s:g})")
    else:
        lines.append("distnn: stall: DISTNN_STALL_TIMEOUT_S=0: the job is not ended for stalls")
    return "\n".join(lines)


class Monitor:
    """This process's collective bookkeeping, its wait loop and its inspector thread (see the module
    docstring). With one rank there is no inspector and `wait` simply polls.

    Args:
        MPI: the initialised ``mpi4py.MPI`` module.
    """

    def __init__(self, MPI: Any) -> None:
        self.MPI = MPI
        self.pid = os.getpid()
        self.warning_s = startup.seconds_from_env(startup.WARNING_ENV, startup.DEFAULT_WARNING_S)
        self.timeout_s = startup.seconds_from_env(startup.TIMEOUT_ENV, startup.DEFAULT_TIMEOUT_S)
        world = MPI.COMM_WORLD
        self.rank, self.size = world.Get_rank(), world.Get_size()
        # (label, seq, op, detail, started) while the main thread is in a collective, else None.
        self.current: tuple | None = None
        self.last: tuple | None = None  # (label, seq, op, finished) of the last one completed
        self._seqs: dict[str, int] = {}
        deadlines = [s for s in (self.warning_s, self.timeout_s) if s]
        self.tick = min(1.0, max(0.05, min(deadlines) / 8)) if deadlines else 1.0
        self.answer_s = max(1.0, 4 * self.tick)  # how long rank 0 waits for the inspectors' answers
        self._departed: dict[int, dict] = {}
        self._outgoing: list[tuple[Any, bytearray]] = []
        self._acted: dict[str, tuple] = {}  # "warning"/"final" -> (label, seq) of the collective acted on
        self._last_report = -float("inf")
        self._fallback_at: float | None = None
        self._query = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctl = None
        if self.size > 1:
            self._ctl = world.Dup()  # inspection messages never match the job's own
            if MPI.Query_thread() >= MPI.THREAD_MULTIPLE:
                self._thread = threading.Thread(target=self._run, name="distnn-stall-inspector", daemon=True)
                self._thread.start()
            else:
                print(f"distnn: WARNING: rank {self.rank}: MPI runs at thread level {MPI.Query_thread()}, "
                      "below MPI_THREAD_MULTIPLE: stalls are not reported or ended", file=sys.stderr, flush=True)
            atexit.register(self.close)

    # ------------------------------------------------------------------ main thread, per collective
    def begin(self, label: str, op: str, detail: Any = None) -> None:
        """Notes that the main thread enters collective `op` of communicator `label`.

        `detail`: `(dtype, shape)` of an array collective, shown in reports. No `end` after an
        exception on purpose: a rank that leaves from inside a collective has not completed it.
        """
        seq = self._seqs[label] = self._seqs.get(label, 0) + 1
        self.current = (label, seq, op, detail, time.monotonic())

    def end(self) -> None:
        current = self.current
        self.current = None
        self.last = (current[0], current[1], current[2], time.monotonic())

    def wait(self, request: Any) -> None:
        """Completes one MPI request (see the module docstring)."""
        if not request.Test():
            self._poll(request.Test)

    def wait_all(self, requests: list) -> None:
        """Completes every request of `requests`."""
        testall = self.MPI.Request.Testall
        if not testall(requests):
            self._poll(lambda: testall(requests))

    @staticmethod
    def _poll(test) -> None:
        start = now = time.perf_counter()
        yield_from, spin_until, tests = start + YIELD_AFTER_S, start + SPIN_S, 0
        while now < spin_until:
            if test():
                return
            tests += 1
            if tests % YIELD_EVERY == 0 and now >= yield_from:  # a peer sharing this core may need it
                _yield_cpu()
            now = time.perf_counter()
        while True:
            time.sleep(min(MAX_SLEEP_S, (now - start) * BACKOFF))
            burst_until = time.perf_counter() + BURST_S
            while True:
                if test():
                    return
                now = time.perf_counter()
                if now >= burst_until:
                    break

    # ------------------------------------------------------------------------------ inspector
    def _run(self) -> None:
        """The inspector thread (see the module docstring)."""
        while not self._stopping.wait(self.tick):
            try:
                self._inspect_once()
            except Exception as exc:  # the inspector must never die silently: say so and stop
                print(f"distnn: WARNING: rank {self.rank}: stall inspection stopped: {exc!r}",
                      file=sys.stderr, flush=True)
                return

    def _inspect_once(self) -> None:
        notices = self._drain()
        current = self.current
        self._check_departures(current)
        now = time.monotonic()
        waited = now - current[4] if current is not None else 0.0
        due = []  # deadlines this collective has just passed: each acted on once
        for kind, deadline in (("warning", self.warning_s), ("final", self.timeout_s)):
            if current is not None and deadline and waited >= deadline and self._acted.get(kind) != current[:2]:
                self._acted[kind] = current[:2]
                due.append(kind)
        if self.rank == 0:
            if "final" in due or any(notice["final"] for notice in notices):
                self._inspect_and_report(final=True)
            elif "warning" in due or (notices and now - self._last_report >= self.warning_s):
                self._last_report = now
                self._inspect_and_report(final=False)
        else:
            for kind in due:
                self._send(0, _TAG_NOTICE, {"final": kind == "final"})
            if "final" in due:  # rank 0 normally ends the job now; if it cannot, this rank will
                self._fallback_at = now + self.answer_s + 2 * self.tick + 2.0
            if self._fallback_at is not None and current is not None and current[:2] == self._acted.get("final") \
                    and now >= self._fallback_at:
                abort_job(f"distnn: stall: rank {self.rank} has waited {waited:.0f} s in {_name(*current[:4])} "
                          f"(DISTNN_STALL_TIMEOUT_S={self.timeout_s:g}) and rank 0 did not end the job (it does not "
                          "answer: stuck holding the interpreter lock, stopped, or dead): ending it from here", 1)
        self._complete_sends()

    def _status(self) -> dict:
        now = time.monotonic()
        current, last = self.current, self.last
        status: dict[str, Any] = {"host": _HOST, "pid": self.pid, "where": main_thread_location()}
        if current is not None:
            label, seq, op, detail, started = current
            status["waiting"] = [label, seq, op, _name(label, seq, op, detail), now - started]
        if last is not None:
            status["last"] = [last[0], last[1], last[2], now - last[3]]
        return status

    def _send(self, dest: int, tag: int, payload: dict) -> None:
        data = bytearray(json.dumps(payload).encode())
        self._outgoing.append((self._ctl.Isend([data, self.MPI.BYTE], dest, tag), data))

    def _complete_sends(self) -> None:
        self._outgoing = [(req, data) for req, data in self._outgoing if not req.Test()]

    def _drain(self, replies: dict | None = None, query: int | None = None) -> list[dict]:
        """Receives every pending inspection message; answers queries; returns the notices."""
        MPI, notices = self.MPI, []
        status = MPI.Status()
        while self._ctl.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG, status):
            source, tag = status.Get_source(), status.Get_tag()
            data = bytearray(status.Get_count(MPI.BYTE))
            self._ctl.Recv([data, MPI.BYTE], source, tag)
            payload = json.loads(data)
            if tag == _TAG_QUERY:
                self._send(source, _TAG_STATUS, {"query": payload["query"], "status": self._status()})
            elif tag == _TAG_STATUS:
                if replies is not None and payload["query"] == query:
                    replies[source] = payload["status"]
            elif tag == _TAG_NOTICE:
                notices.append(payload)
            elif tag == _TAG_GOODBYE:
                self._departed[source] = payload
        return notices

    def _check_departures(self, current: tuple | None) -> None:
        if current is None or current[0] != WORLD:
            return
        for rank, gone in sorted(self._departed.items()):
            if current[1] > gone["seq"]:
                abort_job(f"distnn: rank {rank} left the job (its script returned or called sys.exit) after "
                          f"completing collective #{gone['seq']} of the world communicator; rank {self.rank} "
                          f"waits in {_name(*current[:4])}, which cannot complete without it: ending the job", 1)

    def _inspect_and_report(self, final: bool) -> None:
        """Rank 0: asks every rank where it is, prints the report and, if `final`, ends the job."""
        self._query = query = self._query + 1
        for rank in range(1, self.size):
            if rank not in self._departed:
                self._send(rank, _TAG_QUERY, {"query": query})
        replies: dict[int, dict] = {0: self._status()}
        deadline = time.monotonic() + self.answer_s
        while len(replies) + len(self._departed) < self.size and time.monotonic() < deadline:
            if self._stopping.wait(0.01):
                return
            self._drain(replies, query)
            self._check_departures(self.current)
        statuses = {rank: replies.get(rank) for rank in range(self.size)}
        report = stall_report(statuses, self.size, self._departed, self.warning_s, self.timeout_s,
                              final, self.answer_s)
        if report is None:
            return
        if final:
            abort_job(report, 1)
        print(report, file=sys.stderr, flush=True)

    # ---------------------------------------------------------------------------------- exit
    def close(self) -> None:
        """At exit: stop the inspector and say goodbye (see the module docstring)."""
        if os.getpid() != self.pid or self._stopping.is_set() or self.MPI.Is_finalized():
            return
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        current = self.current
        completed = self._seqs.get(WORLD, 0) - (1 if current is not None and current[0] == WORLD else 0)
        for rank in ([r for r in range(1, self.size)] if self.rank == 0 else [0]):
            self._send(rank, _TAG_GOODBYE, {"seq": completed})
        deadline = time.monotonic() + 1.0  # tiny messages: sent eagerly, complete at once
        while self._outgoing and time.monotonic() < deadline:
            self._complete_sends()
            time.sleep(0.001)
