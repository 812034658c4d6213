"""examples/transformer_classifier.py: a Transformer encoder learns MNIST rows as tokens, and two ranks
(real mpiexec, dropout on) train exactly as one process."""
import re

import numpy as np

from distnn import backend
from distnn.utils import set_random_seed

from conftest import load_example, run_mpi, run_python

EXAMPLE = "examples/transformer_classifier.py"


def test_transformer_example_learns():
    # A process of its own: one BLAS thread, as the examples run (conftest.subprocess_env).
    printed = run_python([EXAMPLE, "--epochs", "3", "--blocks", "1", "--dropout", "0", "--verbose", "1"],
                         timeout=300).stdout
    assert "multi_head_attention" in printed and "layer_normalization" in printed  # the summary
    accuracy = float(re.search(r"test_acc=([0-9.]+)", printed).group(1))
    assert accuracy >= 0.8  # 0.888 measured; the full example (10 epochs, 2 blocks) reaches 0.957


def test_transformer_example_on_two_ranks_equals_one_process(tmp_path):
    args = [EXAMPLE, "--epochs", "1", "--limit", "320", "--verbose", "0", "--dropout", "0.2"]
    run_python([*args, "--save-weights", str(tmp_path / "one.npy")], timeout=240)
    run_mpi(2, [*args, "--save-weights", str(tmp_path / "two.npy")], timeout=240)
    one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    np.testing.assert_allclose(two, one, atol=1e-5, rtol=0)

    set_random_seed(0)  # the example's initial weights, to show that the run trained them
    initial = backend.to_numpy(load_example("transformer_classifier").build_model(dropout=0.2).params)
    assert initial.shape == one.shape and np.abs(one - initial).max() > 1e-3
