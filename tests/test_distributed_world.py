"""distnn.distributed's queries never start a collective: asked on one rank only, before `init`,
they answer at once and the job goes on (before, `rank()` created the communicator collectively on
the asking rank alone, and the job hung)."""
import re

import pytest

from conftest import run_mpi, subprocess_env

pytestmark = pytest.mark.mpi


def test_queries_on_one_rank_only_do_not_hang():
    # A hang would end in the stall timeout (an abort) or the test's timeout, both failures.
    proc = run_mpi(3, ["tests/mpi_scripts/query_one_rank.py"], timeout=90,
                   env=subprocess_env(DISTNN_STALL_TIMEOUT_S="30"))
    reports = sorted(re.findall(r"query_one_rank OK rank=(\d+) local_rank=(\d+)", proc.stdout))
    assert reports == [(str(r), str(r)) for r in range(3)], proc.stdout + proc.stderr
