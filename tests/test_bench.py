"""Tests for distnn.bench (`distnn-bench`): the allreduce table and argument handling."""
import re

import pytest

from conftest import run_python
from distnn import bench


@pytest.mark.mpi
def test_allreduce_table_relaunches_under_mpiexec():
    proc = run_python(["-m", "distnn.bench", "allreduce", "-np", "2", "--sizes", "4K..16K",
                       "--iters", "3", "--backends", "ring,auto"], timeout=120)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# distnn-bench allreduce: 2 ranks"), proc.stdout
    header = next(line for line in lines if "time(us)" in line)
    assert [name for name in ("mpi", "ring", "auto") if f"{name} time(us)" in header] == \
        ["mpi", "ring", "auto"]
    rows = [line for line in lines if not line.startswith("#")]
    assert [row.split()[0] for row in rows] == ["4K", "8K", "16K"]
    for row, nbytes in zip(rows, (4096, 8192, 16384)):
        assert row.endswith("| OK"), row
        size, count, iters, *cells = re.split(r"[\s|]+", row.strip())
        assert int(count) == nbytes // 4 and int(iters) == 3
        mpi_us, _, mpi_busbw, ring_us, _, _, ring_x, auto_us, *_ = map(float, cells[:8])
        assert min(mpi_us, ring_us, auto_us) > 0
        # busbw = bytes / time * 2(N-1)/N in GB/s, printed with 3 decimals, from the time before it was
        # rounded to 0.1 us for printing: at a few microseconds that rounding alone moves it by up to
        # 0.05/time. The tolerances add the two roundings (pytest.approx takes the larger of rel and abs).
        busbw = nbytes / (mpi_us * 1e3)
        assert abs(mpi_busbw - busbw) <= busbw * 0.05 / mpi_us + 0.0005 + 1e-9, row
        # "x mpi" (2 decimals) is the ratio of the two unrounded times
        ratio = mpi_us / ring_us
        assert abs(ring_x - ratio) <= ratio * (0.05 / mpi_us + 0.05 / ring_us) * 1.01 + 0.005 + 1e-9, row


def test_parse_sizes():
    assert bench.parse_sizes("4K..64K") == [4096, 8192, 16384, 32768, 65536]
    assert bench.parse_sizes("4K..1M", factor=4) == [4096, 16384, 65536, 262144, 1048576]
    assert bench.parse_sizes("1K,3M") == [1024, 3 << 20]
    with pytest.raises(ValueError, match="LOW..HIGH"):
        bench.parse_sizes("1M..4K")


@pytest.mark.parametrize("argv, message", [
    (["allreduce", "--backends", "ring,nccl"], "'ring,nccl'"),
    (["allreduce", "--sizes", "4X"], "'4X'"),
    (["allreduce", "-np", "0"], "-np 0"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_fail_before_launching(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
