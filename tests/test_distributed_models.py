"""The guides' model kinds (functional with a residual Add and two outputs, subclassed with a custom
layer) train on 2 ranks exactly as on 1 (real mpiexec)."""
from pathlib import Path

import numpy as np

from conftest import run_mpi, run_python

SCRIPT = str(Path(__file__).parent / "mpi_scripts" / "train_guide_models.py")


def test_functional_and_subclassed_models_train_alike_on_1_and_2_ranks(tmp_path):
    run_python([SCRIPT, str(tmp_path / "one.npz")], timeout=120)
    run_mpi(2, [SCRIPT, str(tmp_path / "two.npz")], timeout=120)
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for key in ("functional", "subclassed"):
        assert one[key].size > 0
        np.testing.assert_allclose(two[key], one[key], atol=1e-5, rtol=0)
        np.testing.assert_allclose(two[key + "_loss"], one[key + "_loss"], rtol=1e-5)
