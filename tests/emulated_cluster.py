"""The emulated two-node cluster (cluster/emulate/two-node.sh) as a pytest fixture.

`two_nodes` brings up a pair of network namespaces under a name of its own (so it never touches a
cluster someone brought up by hand), shaped to `RATE`, for one test module, and takes it down after.
It needs root and network namespaces: without them the tests skip with the reason, except under
``CI=true``, where they fail (as the Slurm tests do).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, find_mpiexec, run_command, subprocess_env

SCRIPT = REPO_ROOT / "cluster" / "emulate" / "two-node.sh"
DEVICE = "dnlink"
RATE_BITS = 1_000_000_000  # 1 Gbit/s: the slowest rate the issue measures, fast enough for tests


class EmulatedCluster:
    """Runs MPI jobs across the two emulated nodes n1 and n2."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state_dir = Path(f"/tmp/distnn-emu-{name}")

    def env(self, **extra: str) -> dict[str, str]:
        return subprocess_env(DISTNN_EMU_NAME=self.name, DISTNN_EMU_DIR=str(self.state_dir),
                              DISTNN_EMU_MPIEXEC=find_mpiexec() or "", **extra)

    def script(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return run_command([str(SCRIPT), *args], timeout=timeout, env=self.env())

    def run_mpi(self, ranks_per_node: int, args: list[str], timeout: float = 120, check: bool = True,
                **env: str) -> subprocess.CompletedProcess:
        """`mpiexec` inside n1 with `ranks_per_node` ranks on each node running `python args...`.

        One rank per node uses the `flat` setting (every byte over the link), more use `nodes`
        (shared memory within a node, TCP across), see cluster/emulate/two-node.sh.
        """
        mode = "flat" if ranks_per_node == 1 else "nodes"
        hosts = f"n1:{ranks_per_node},n2:{ranks_per_node}"
        return run_command([str(SCRIPT), "mpiexec", mode, "--", "-hosts", hosts, "-n", str(2 * ranks_per_node),
                            sys.executable, *args], timeout=timeout, env=self.env(**env), check=check)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the emulated two-node cluster needs root (ip netns, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the emulated two-node cluster needs `{tool}` (iproute2)"
    if find_mpiexec() is None:
        return "mpiexec not found"
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but the emulated two-node cluster is not usable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def two_nodes():
    """An `EmulatedCluster` at 1 Gbit/s for the module; taken down afterwards."""
    reason = _missing()
    if reason:
        _unavailable(reason)
    cluster = EmulatedCluster(f"dnt{os.getpid()}")
    up = subprocess.run([str(SCRIPT), "up", f"{RATE_BITS // 1_000_000}mbit"], capture_output=True, text=True,
                        timeout=60, env=cluster.env())
    if up.returncode != 0:
        subprocess.run([str(SCRIPT), "down"], capture_output=True, timeout=60, env=cluster.env())
        _unavailable(f"cluster/emulate/two-node.sh up failed (network namespaces unavailable?): {up.stderr.strip()}")
    try:
        yield cluster
    finally:
        subprocess.run([str(SCRIPT), "down"], capture_output=True, timeout=60, env=cluster.env())
