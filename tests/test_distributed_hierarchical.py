"""The hierarchical allreduce (distnn.distributed.hierarchical) on real MPI jobs: on one machine
(one node: the node-local path alone) and across the emulated two-node cluster (2 nodes x 2 ranks,
and 1 rank per node), checked by tests/mpi_scripts/comm_hierarchical.py."""
import re

import pytest

from conftest import run_mpi
from emulated_cluster import two_nodes  # noqa: F401 - the fixture

pytestmark = pytest.mark.mpi
SCRIPT = "tests/mpi_scripts/comm_hierarchical.py"


def _reports(proc) -> list[tuple[int, int, int, int]]:
    found = re.findall(r"comm_hierarchical OK rank=(\d+) size=(\d+) nodes=(\d+) local_size=(\d+)", proc.stdout)
    return sorted(tuple(int(value) for value in report) for report in found)


def test_one_node_degrades_to_the_node_local_allreduce():
    proc = run_mpi(3, [SCRIPT, "1"], timeout=120)
    assert _reports(proc) == [(rank, 3, 1, 3) for rank in range(3)], proc.stdout + proc.stderr


@pytest.mark.parametrize("ranks_per_node", [2, 1])
def test_two_emulated_nodes(two_nodes, ranks_per_node):
    proc = two_nodes.run_mpi(ranks_per_node, [SCRIPT, "2"], timeout=120)
    size = 2 * ranks_per_node
    assert _reports(proc) == [(rank, size, 2, ranks_per_node) for rank in range(size)], proc.stdout + proc.stderr
