"""A line-by-line relay between MPICH and Slurm's ``--mpi=pmi2`` server, started before MPI_Init.

Why (measured on Slurm 22.05 with the PyPI MPICH 5.0.2): Slurm's pmi2 plugin reads each PMI-1
request with a single ``read`` of at most 1024 bytes, while MPICH's PMI-1 client may send longer
lines. At start-up MPICH exchanges a 4096-byte business card per rank (the UCX address padded with
whatever that heap memory held) in segments of ``(vallen_max - 2) / 2`` bytes, hex-encoded with
zero runs shortened; Slurm announces ``vallen_max=1024``, so a segment with few zero runs makes a
line of up to about 1080 bytes. Slurm then parses the first 1024 bytes ("mpi/pmi2: value not
properly terminated in client request"), takes the rest for a second request ("request not begin
with 'cmd='"), and the job dies in MPI_Init or hangs there: 4 jobs in about 450 in our test runs.

The relay sits between the two: it hands MPICH a socket in place of ``PMI_FD``, forwards what the
rank writes one whole line per ``write`` (Slurm reads one request per read), forwards Slurm's
answers unchanged except ``vallen_max``, which it lowers to `RELAY_VALLEN_MAX`. MPICH then cuts its
segments so that every line stays under 1024 bytes (value at most 894 characters plus at most ~110
of command, job name and key). Anything that is not PMI-1 (a PMI-2 wire client sends a length
prefix first) is passed through byte for byte. The relay is a ``python -I -S`` process (MPI_Init
holds the interpreter lock, so a thread could not serve it) that ends when either side closes.

Used only where the server is Slurm's plugin: ``SLURM_MPI_TYPE=pmi2`` with a ``PMI_FD`` that hydra
did not set (hydra's ranks also get ``PMI_HOSTNAME``; hydra reads whole lines itself).
``DISTNN_PMI_RELAY=0`` turns it off, ``1`` forces it on. See docs/architecture.md, "Reliability:
stalls, launch and exits".
"""
from __future__ import annotations

import os
import sys
from typing import Any

RELAY_ENV = "DISTNN_PMI_RELAY"
RELAY_VALLEN_MAX = 896
SLURM_READ_BYTES = 1024  # what Slurm's pmi2 plugin reads per PMI-1 request

# Runs in `python -I -S`: argv = client fd (the rank's end), server fd (Slurm's PMI_FD), vallen_max.
_RELAY = r"""
import os, re, select, signal, sys
client, server, vallen = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
# Signals for the rank (Slurm's preemption notice, scancel) must leave the relay up: the rank still
# needs it to finalize or abort. It ends when the rank's end closes, i.e. when the rank is gone.
for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)
maxes = re.compile(rb"^(cmd=maxes .*vallen_max=)(\d+)", re.M)
def send(fd, data):
    while data:
        data = data[os.write(fd, data):]
def lower(match):
    return match.group(1) + str(min(int(match.group(2)), vallen)).encode()
mode = None  # b"lines" for a PMI-1 client, b"raw" for anything else (PMI-2 switches after its init)
from_client = from_server = b""
while True:
    for fd in select.select([client, server], [], [])[0]:
        data = os.read(fd, 65536)
        if not data:
            sys.exit(0)
        if mode is None and fd == client:
            pmi1 = data.startswith(b"cmd=init ") and b" pmi_version=1 " in data.split(b"\n")[0] + b" "
            mode = b"lines" if pmi1 else b"raw"
        if mode != b"lines":
            send(server if fd == client else client, data)
        elif fd == client:
            *lines, from_client = (from_client + data).split(b"\n")
            for line in lines:
                send(server, line + b"\n")
        else:
            *lines, from_server = (from_server + data).split(b"\n")
            if lines:
                send(client, maxes.sub(lower, b"\n".join(lines) + b"\n"))
"""


def wanted(environ: Any = os.environ) -> bool:
    """Whether this process's PMI server is Slurm's pmi2 plugin (or `DISTNN_PMI_RELAY` forces it).

    Raises:
        ValueError: `DISTNN_PMI_RELAY` is set to something other than 0 or 1, or to 1 in a process
            that has no PMI socket (``PMI_FD``) to relay.
    """
    forced = environ.get(RELAY_ENV, "").strip()
    if forced not in ("", "0", "1"):
        raise ValueError(f"{RELAY_ENV} must be 0 (off) or 1 (on); unset means on under `srun --mpi=pmi2`. "
                         f"Received: {RELAY_ENV}={forced!r}")
    if forced == "1" and "PMI_FD" not in environ:
        raise ValueError(f"{RELAY_ENV}=1 asks for the PMI relay, but this process has no PMI_FD to relay (its "
                         f"launcher does not speak PMI over an inherited socket). Unset {RELAY_ENV}. "
                         f"Received: {RELAY_ENV}=1 without PMI_FD")
    if "PMI_FD" not in environ or forced == "0":
        return False
    return forced == "1" or (environ.get("SLURM_MPI_TYPE") == "pmi2" and "PMI_HOSTNAME" not in environ)


def start(vallen_max: int = RELAY_VALLEN_MAX) -> Any:
    """Starts the relay on ``PMI_FD`` and points ``PMI_FD`` at it; returns the ``subprocess.Popen``.

    Call before MPI_Init. The relay holds Slurm's end from then on; this process keeps only its own.
    """
    import socket  # noqa: PLC0415 - only under srun: keeps `import distnn` light
    import subprocess  # noqa: PLC0415

    server = int(os.environ["PMI_FD"])
    ours, theirs = socket.socketpair()
    relay = subprocess.Popen([sys.executable, "-I", "-S", "-c", _RELAY, str(theirs.fileno()), str(server),
                              str(vallen_max)], pass_fds=(theirs.fileno(), server), stdin=subprocess.DEVNULL)
    theirs.close()
    os.close(server)
    # MPICH reads PMI_FD in MPI_Init and uses the descriptor as it is: keep it open for the process's life.
    os.environ["PMI_FD"] = str(ours.detach())
    return relay
