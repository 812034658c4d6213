"""benchmarks/bench_resnet.py runs end to end (a tiny configuration, without the PyTorch side) and its
tape measurements are consistent: recording costs more than not recording, and one training step of
the residual model records one node per layer call and per skip."""
import re

import pytest

from conftest import run_mpi, run_python


def test_bench_resnet_reports_throughput_and_tape_costs():
    proc = run_python(["benchmarks/bench_resnet.py", "--samples", "256", "--repeats", "1", "--tape-calls", "2000",
                       "--no-torch"], timeout=120)
    out = proc.stdout
    rate, cpu_rate = map(float, re.search(r"distnn :\s+(\d+) \(\s*(\d+)\)", out).groups())
    assert rate > 0 and cpu_rate > 0, out
    costs = {name.strip(): float(value) for name, value in re.findall(r"^  (numpy add|ops\.add, no tape|ops\.add, "
                                                                       r"recorded|backward per node)\s+([\d.]+) µs",
                                                                       out, flags=re.M)}
    assert len(costs) == 4, out
    assert costs["numpy add"] < costs["ops.add, no tape"] < costs["ops.add, recorded"], costs
    assert costs["backward per node"] > 0, costs
    # Stem (conv, BN, ReLU) + 2 blocks x (conv, BN, ReLU, conv, BN, add, ReLU) + pooling + Dense.
    assert "one training step records 19 nodes" in out, out


@pytest.mark.mpi
def test_bench_scaling_prints_the_global_rate_and_writes_a_timeline(tmp_path):
    args = ["benchmarks/bench_scaling.py", "--model", "cnn", "--batch-size", "16", "--samples", "64", "--repeats", "1"]
    one = run_python(args, timeout=120).stdout
    assert re.fullmatch(r"model=cnn ranks=1 batch=16 overlap=1 samples/s=[1-9]\d*\n", one), one
    two = run_mpi(2, [*args, "--overlap", "off", "--timeline", str(tmp_path / "t.json")], timeout=180).stdout
    assert re.fullmatch(r"model=cnn ranks=2 batch=16 overlap=0 samples/s=[1-9]\d*\n", two), two  # rank 0 only
    anatomy = run_python(["-m", "distnn.bench", "anatomy", str(tmp_path / "t.json")], timeout=60).stdout
    assert re.search(r"^\s+steps \|\s+\d+ \|\s+\d+$", anatomy, flags=re.M), anatomy  # both ranks' steps
