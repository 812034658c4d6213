"""``distnn-run``: start a training script on N MPI ranks, like ``horovodrun``.

Usage::

    distnn-run -np 4 python train.py --epochs 5
    distnn-run -np 8 -H node1:4,node2:4 -x WANDB_PROJECT python train.py
    distnn-run -np 8 --hostfile hosts.txt --gpus-per-node 4 python train.py
    distnn-run -np 4 --dry-run python train.py      # print the mpiexec command only
    python -m distnn.run -np 4 python train.py      # same, without the console script

The launcher finds the MPI that mpi4py uses (the ``mpiexec`` beside the Python interpreter,
which the ``mpich`` wheel installs into a virtual environment, else ``mpiexec``/``mpirun`` on
``PATH``), detects its flavour from ``mpiexec --version`` (MPICH/hydra, Open MPI, Intel MPI)
and writes the options in that launcher's spelling. It then runs the job and exits with the
job's exit code, forwarding SIGINT and SIGTERM to it.

Environment given to every rank:

- ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` default to
  ``max(1, cores // ranks_per_node)``: BLAS threads of ranks sharing a node must not
  oversubscribe its cores, or throughput collapses. A value the user has set is kept (an
  ``OMP_NUM_THREADS`` the user set also becomes the default of the two BLAS variables).
  ``cores`` is counted on the launching machine; nodes are assumed alike.
- ``DISTNN_GPUS_PER_NODE=K`` with ``--gpus-per-node K``: the distnn backend then gives the
  rank with node-local index ``local_rank`` the GPU ``local_rank % K``. Nothing else is
  changed (``CUDA_VISIBLE_DEVICES`` is left alone, so NCCL sees every GPU of the node).
- every ``-x VAR`` (current value) or ``-x VAR=value``.

These are passed with the launcher's own option (``-genv`` for hydra, ``-x`` for Open MPI) so
that they also reach ranks on other hosts, and they appear verbatim in ``--dry-run`` output.

Hosts: ``-H host1:2,host2:2`` or ``--hostfile FILE``, where a file may use any of the common
syntaxes, one host a line: ``host slots=2`` (Open MPI; ``max_slots=`` is ignored, LAM's
``cpu=2`` is read as ``slots=2``), ``host:2`` (MPICH/Intel), or ``host``
(one slot; a host listed again gets one more slot, so a PBS ``$PBS_NODEFILE`` works as is).
``#`` starts a comment. Hosts are handed to the launcher on its command line, so the printed
dry-run command is complete.

This module imports nothing from the rest of distnn (nor numpy, nor mpi4py.MPI, which would
initialise MPI inside the launcher), so it works even when the rest of the package does not.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field

PROG = "distnn-run"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
FLAVORS = ("mpich", "openmpi", "intel")
INSTALL_HINT = ('pip install "distnn[mpich]" (an MPI in the virtual environment), or install '
                "your system's MPICH or Open MPI so that `mpiexec` is on PATH")


class LaunchError(Exception):
    """A usage error: reported as ``distnn-run: error: ...`` with exit code 2."""


@dataclass
class Host:
    """One host of the job and the number of ranks (slots) it may run."""

    name: str
    slots: int


@dataclass
class LaunchPlan:
    """Everything needed to build the launcher command, independent of the MPI flavour."""

    np: int
    command: list[str]
    hosts: list[Host] = field(default_factory=list)   # empty: all ranks on this machine
    env: dict[str, str] = field(default_factory=dict)  # forwarded explicitly to every rank
    mpi_args: list[str] = field(default_factory=list)
    cores: int = 1


# --------------------------------------------------------------------------- hosts


_HOST_RE = re.compile(r"^[A-Za-z0-9_.\-\[\]]+$")


def _host(name: str, slots: str | None, where: str) -> Host:
    if not _HOST_RE.match(name):
        raise LaunchError(f"{where}: expected a host name, received {name!r}")
    if slots is None:
        return Host(name, 1)
    if not slots.isdigit() or int(slots) <= 0:
        raise LaunchError(f"{where}: expected a positive slot count for host {name!r}, "
                          f"received {slots!r}")
    return Host(name, int(slots))


def _merge(hosts: list[Host]) -> list[Host]:
    """Add up the slots of a host listed more than once, keeping first-appearance order."""
    merged: dict[str, Host] = {}
    for h in hosts:
        if h.name in merged:
            merged[h.name].slots += h.slots
        else:
            merged[h.name] = Host(h.name, h.slots)
    return list(merged.values())


def parse_host_list(spec: str) -> list[Host]:
    """Parse ``-H`` syntax: ``host1:2,host2:2`` (a host without ``:N`` has one slot).

    Raises:
        LaunchError: naming the bad entry.
    """
    hosts = []
    for item in spec.split(","):
        name, sep, slots = item.strip().partition(":")
        hosts.append(_host(name, slots if sep else None, f"-H {spec!r}"))
    return _merge(hosts)


def parse_hostfile(path: str) -> list[Host]:
    """Parse a host file in Open MPI (``host slots=N``), MPICH (``host:N``) or plain syntax.

    Raises:
        LaunchError: naming the file and line that does not parse, or a missing/empty file.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise LaunchError(f"--hostfile: cannot read {path!r}: {exc.strerror}") from None
    hosts = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"--hostfile {path}, line {lineno} ({raw.strip()!r})"
        words = line.split()
        name, sep, slots = words[0].partition(":")
        if sep:
            if len(words) > 1:
                raise LaunchError(f"{where}: expected `host:N` alone on the line")
            hosts.append(_host(name, slots, where))
            continue
        slots = None
        for word in words[1:]:
            key, eq, value = word.partition("=")
            # Open MPI's max_slots only caps oversubscription; the slots are what we place on.
            if eq and key in ("slots", "cpu"):
                slots = value
            elif not (eq and key == "max_slots"):
                raise LaunchError(f"{where}: expected `host`, `host:N` or `host slots=N`, "
                                  f"received the word {word!r}")
        hosts.append(_host(name, slots, where))
    if not hosts:
        raise LaunchError(f"--hostfile: {path!r} lists no hosts")
    return _merge(hosts)


def ranks_per_host(np: int, hosts: list[Host]) -> list[int]:
    """Ranks each host gets when ``np`` ranks fill the hosts' slots in order (MPI's default)."""
    placed = []
    left = np
    for h in hosts:
        placed.append(min(h.slots, left))
        left -= placed[-1]
    return placed


# --------------------------------------------------------------------------- MPI discovery


def find_mpiexec(explicit: str | None = None) -> str:
    """The launcher to use: ``explicit``, else the one beside this interpreter, else PATH's.

    The ``mpich`` wheel puts ``mpiexec`` in the virtual environment's ``bin``; that is the MPI
    mpi4py was loaded with, so it wins over a system MPI on PATH.

    Raises:
        LaunchError: when none is found.
    """
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise LaunchError(f"--mpiexec: expected an executable, received {explicit!r}")
        return found
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(beside, os.X_OK):
        return beside
    for name in ("mpiexec", "mpirun"):
        found = shutil.which(name)
        if found:
            return found
    raise LaunchError(f"no MPI launcher found (looked for mpiexec beside {sys.executable} and "
                      f"mpiexec/mpirun on PATH). Install one: {INSTALL_HINT}")


def detect_flavor(version_text: str) -> str:
    """MPI flavour from the output of ``mpiexec --version``: ``mpich``, ``openmpi`` or ``intel``.

    MVAPICH and other hydra-based launchers count as ``mpich``.

    Raises:
        LaunchError: when the text matches none of them.
    """
    if re.search(r"Intel\(R\) MPI", version_text):
        return "intel"   # checked first: Intel's launcher is a hydra fork
    if re.search(r"Open MPI|OpenRTE|open-mpi\.org", version_text):
        return "openmpi"
    if re.search(r"HYDRA|MPICH|MVAPICH", version_text, re.IGNORECASE):
        return "mpich"
    first = version_text.strip().splitlines()[0] if version_text.strip() else "(no output)"
    raise LaunchError(f"cannot tell the MPI flavour from `mpiexec --version`: expected MPICH/"
                      f"hydra, Open MPI or Intel MPI, received {first!r}. Pass --mpi-flavor.")


def query_flavor(mpiexec: str) -> str:
    """Run ``mpiexec --version`` and detect the flavour (no MPI initialisation involved)."""
    try:
        proc = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"cannot run `{mpiexec} --version`: {exc}") from None
    return detect_flavor(proc.stdout + proc.stderr)


# --------------------------------------------------------------------------- command


def build_command(mpiexec: str, flavor: str, plan: LaunchPlan) -> list[str]:
    """The launcher command line for ``plan`` in the spelling of ``flavor``."""
    if flavor not in FLAVORS:
        raise LaunchError(f"--mpi-flavor: expected one of {FLAVORS}, received {flavor!r}")
    cmd = [mpiexec]
    if flavor == "openmpi":
        cmd += ["-np", str(plan.np)]
        if plan.hosts:
            cmd += ["--host", ",".join(f"{h.name}:{h.slots}" for h in plan.hosts)]
        elif plan.np > plan.cores:
            # Open MPI refuses more ranks than cores on an implicit localhost; the user asked.
            cmd += ["--oversubscribe"]
        # Open MPI binds each rank to one core by default, which would pin all of a rank's
        # OMP/BLAS threads onto that core.
        cmd += ["--bind-to", "none"]
        for name, value in plan.env.items():
            cmd += ["-x", f"{name}={value}"]
    else:
        cmd += ["-n", str(plan.np)]
        if plan.hosts and flavor == "mpich":
            cmd += ["-hosts", ",".join(f"{h.name}:{h.slots}" for h in plan.hosts)]
        elif plan.hosts:
            # Intel's -hosts takes bare names; ranks per node come from -ppn.
            slots = {h.slots for h in plan.hosts}
            if len(slots) != 1:
                raise LaunchError("Intel MPI needs the same slot count on every host, received "
                                  + ",".join(f"{h.name}:{h.slots}" for h in plan.hosts))
            cmd += ["-hosts", ",".join(h.name for h in plan.hosts), "-ppn", str(slots.pop())]
        for name, value in plan.env.items():
            cmd += ["-genv", name, value]
    return cmd + plan.mpi_args + plan.command


def _check_script(command: list[str]) -> None:
    """For ``python [opts] X.py ...``, fail early when X.py does not exist."""
    if not re.fullmatch(r"python[0-9.]*", os.path.basename(command[0])):
        return
    args = iter(command[1:])
    for arg in args:
        if arg in ("-m", "-c", "-"):
            return   # a module, inline code or stdin: nothing on disk to check
        if arg in ("-W", "-X", "--check-hash-based-pycs"):
            next(args, None)
        elif not arg.startswith("-"):
            if not os.path.isfile(arg):
                raise LaunchError(f"command: expected an existing Python script, received "
                                  f"{arg!r} (not a file relative to {os.getcwd()})")
            return


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup CPU sets where the OS says)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def make_plan(args: argparse.Namespace, environ: dict[str, str]) -> LaunchPlan:
    """Validate the parsed arguments and work out hosts, environment and command."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise LaunchError("command: expected the program to run, e.g. `python train.py`, "
                          "received nothing")
    if args.np <= 0:
        raise LaunchError(f"-np: expected a positive number of ranks, received {args.np}")
    hosts = (parse_host_list(args.host) if args.host
             else parse_hostfile(args.hostfile) if args.hostfile else [])
    if hosts and args.np > sum(h.slots for h in hosts):
        given = ",".join(f"{h.name}:{h.slots}" for h in hosts)
        raise LaunchError(f"-np: expected at most the {sum(h.slots for h in hosts)} slots "
                          f"given by the hosts ({given}), received -np {args.np}")
    _check_script(command)

    cores = usable_cores()
    local_ranks = max(ranks_per_host(args.np, hosts)) if hosts else args.np
    env: dict[str, str] = {}
    threads = environ.get("OMP_NUM_THREADS") or str(max(1, cores // local_ranks))
    for name in THREAD_VARS:
        env[name] = environ.get(name) or threads
    if args.gpus_per_node is not None:
        if args.gpus_per_node <= 0:
            raise LaunchError(f"--gpus-per-node: expected a positive number, "
                              f"received {args.gpus_per_node}")
        env["DISTNN_GPUS_PER_NODE"] = str(args.gpus_per_node)
    for item in args.env:
        name, eq, value = item.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise LaunchError(f"-x: expected VAR or VAR=value, received {item!r}")
        if not eq:
            if name not in environ:
                raise LaunchError(f"-x {name}: expected {name} to be set in the environment, "
                                  f"it is not (use -x {name}=value)")
            value = environ[name]
        env[name] = value
    return LaunchPlan(np=args.np, command=command, hosts=hosts, env=env,
                      mpi_args=shlex.split(args.mpi_args or ""), cores=cores)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a distnn training script on N MPI ranks (data-parallel).",
        epilog="Example: distnn-run -np 4 python train.py --epochs 5. Each rank gets "
               "OMP_NUM_THREADS=max(1, cores // ranks per node) unless already set.",
        allow_abbrev=False)
    parser.add_argument("-np", "-n", "--num-proc", dest="np", type=int, required=True,
                        help="number of ranks (processes)")
    hosts = parser.add_mutually_exclusive_group()
    hosts.add_argument("-H", "--host", "--hosts", dest="host", metavar="HOST:N,...",
                       help="hosts and their slots, e.g. node1:4,node2:4 (default: this machine)")
    hosts.add_argument("--hostfile", metavar="FILE",
                       help="file of hosts: `host slots=N`, `host:N` or `host` lines")
    parser.add_argument("-x", dest="env", action="append", default=[], metavar="VAR[=value]",
                        help="environment variable to forward to every rank (repeatable)")
    parser.add_argument("--gpus-per-node", type=int, metavar="K",
                        help="GPUs per node; each rank uses GPU local_rank %% K "
                             "(exported as DISTNN_GPUS_PER_NODE)")
    parser.add_argument("--mpi-args", metavar="'ARGS'",
                        help="extra arguments for mpiexec, as one shell-quoted string")
    parser.add_argument("--mpiexec", metavar="PATH",
                        help="MPI launcher to use (default: beside python, else on PATH)")
    parser.add_argument("--mpi-flavor", choices=FLAVORS,
                        help="MPI flavour (default: detected from `mpiexec --version`)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the launcher command and exit")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the program and its arguments, e.g. python train.py --epochs 5")
    return parser


def _run(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd``, forwarding SIGINT/SIGTERM to it; return its exit status as a shell would."""
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum: int, _frame: object) -> None:
        # mpiexec passes the signal on to every rank (SIGTERM checkpoints and exits).
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code   # killed by signal N: report 128+N


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``distnn-run`` and ``python -m distnn.run``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    try:
        plan = make_plan(args, environ)
        mpiexec = find_mpiexec(args.mpiexec)
        flavor = args.mpi_flavor or query_flavor(mpiexec)
        cmd = build_command(mpiexec, flavor, plan)
    except LaunchError as exc:
        parser.error(str(exc))   # prints usage and the message to stderr, exits 2
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    try:
        return _run(cmd, {**environ, **plan.env})
    except OSError as exc:
        parser.error(f"cannot start {mpiexec}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
