"""cluster/emulate/two-node.sh: two network namespaces joined by a shaped veth, MPI across them.

Checks that MPI's traffic between the emulated nodes really crosses the link (and, with two ranks
per node, that traffic within a node does not), that the link is shaped, and that
`distnn-bench allreduce --link` measures the link's own limit beside the allreduce table.
"""
import re

import pytest

from emulated_cluster import DEVICE, RATE_BITS, two_nodes  # noqa: F401 - the fixture

pytestmark = pytest.mark.mpi

TRAFFIC = re.compile(r"traffic rank=(\d+) node_ranks=(\d+) allreduce_bytes=(\d+) intranode_bytes=(\d+)")
ALLREDUCE_BYTES = 4 << 20


def _traffic(proc) -> dict[int, tuple[int, int, int]]:
    return {int(rank): (int(local), int(crossing), int(local_bytes))
            for rank, local, crossing, local_bytes in TRAFFIC.findall(proc.stdout)}


def test_one_rank_per_node_sends_everything_over_the_link(two_nodes):
    proc = two_nodes.run_mpi(1, ["tests/mpi_scripts/emulated_traffic.py", DEVICE], timeout=60)
    traffic = _traffic(proc)
    assert sorted(traffic) == [0, 1], proc.stdout + proc.stderr
    for rank, (local, crossing, _) in traffic.items():
        # A 2-rank allreduce sends at least half the buffer each way; bypassing the link (UCX's
        # shared memory) would leave the counter near zero.
        assert local == 1 and crossing >= ALLREDUCE_BYTES // 2, (rank, traffic)


def test_two_ranks_per_node_share_memory_within_a_node_and_cross_the_link_between(two_nodes):
    proc = two_nodes.run_mpi(2, ["tests/mpi_scripts/emulated_traffic.py", DEVICE], timeout=60)
    traffic = _traffic(proc)
    assert sorted(traffic) == [0, 1, 2, 3], proc.stdout + proc.stderr
    for rank, (local, crossing, within) in traffic.items():
        assert local == 2 and crossing >= ALLREDUCE_BYTES // 2, (rank, traffic)
        assert within < 256 << 10, f"a 16 MiB message within a node sent {within} bytes over the link"


def test_bench_link_measures_the_shaped_limit(two_nodes):
    proc = two_nodes.run_mpi(1, ["-m", "distnn.bench", "allreduce", "--link", "--link-bytes", "16M",
                                 "--sizes", "64K,1M", "--iters", "3", "--warmup", "1"], timeout=90)
    limits = [float(value) for value in re.findall(r"# link limit \w+ the table: ([0-9.]+) GB/s", proc.stdout)]
    assert len(limits) == 2, proc.stdout + proc.stderr
    # Shaping bounds the rate from above whatever the load (tbf's 1 MiB burst adds a little).
    assert all(0 < limit <= 1.2 * RATE_BITS / 8 / 1e9 for limit in limits), proc.stdout
    rows = [line for line in proc.stdout.splitlines() if re.match(r"\s+(64K|1M)\s", line)]
    assert len(rows) == 2 and all(row.endswith("| OK") for row in rows), proc.stdout
    assert "x link" in proc.stdout
