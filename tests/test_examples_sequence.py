"""The sequence example reaches its accuracy, and sequence models train alike on 1 and 2 ranks."""
import re
from pathlib import Path

import numpy as np

from conftest import REPO_ROOT, run_mpi, run_python
from distnn.models import load_model

SCRIPT = str(Path(__file__).parent / "mpi_scripts" / "train_sequence_parity.py")
EXAMPLE = str(REPO_ROOT / "examples" / "lstm_mnist_rows.py")


def test_lstm_reading_mnist_rows_reaches_95_percent():
    """Run as a user would, with one BLAS thread as the launchers set: in-process, a multi-threaded BLAS
    on its small GEMMs took 564 s instead of 23 s on a loaded 2-core machine."""
    printed = run_python([EXAMPLE, "--verbose", "1"], timeout=600).stdout
    accuracy = float(re.search(r"test_acc=([0-9.]+)", printed).group(1))
    assert accuracy >= 0.95, printed[-500:]


def test_lstm_example_on_2_ranks_equals_one_process(tmp_path):
    """The example itself (one epoch, 32 units) under mpiexec -n 2 and as one process."""
    args = ["--epochs", "1", "--units", "32", "--verbose", "0", "--save"]
    run_python([EXAMPLE, *args, str(tmp_path / "one.keras")], timeout=240)
    run_mpi(2, [EXAMPLE, *args, str(tmp_path / "two.keras")], timeout=240)
    one, two = load_model(tmp_path / "one.keras"), load_model(tmp_path / "two.keras")
    assert one.count_params() == 32 * 4 * (28 + 32 + 1) + 33 * 10
    for a, b in zip(one.get_weights(), two.get_weights()):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)


def test_masked_text_model_trains_alike_on_1_and_2_ranks(tmp_path):
    run_python([SCRIPT, str(tmp_path / "one.npz")], timeout=240)
    run_mpi(2, [SCRIPT, str(tmp_path / "two.npz")], timeout=240)
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert one["params"].size > 0
    np.testing.assert_allclose(two["params"], one["params"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
