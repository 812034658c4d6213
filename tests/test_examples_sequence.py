"""The sequence example reaches its accuracy, and sequence models train alike on 1 and 2 ranks."""
from pathlib import Path

import numpy as np

from conftest import load_example, run_mpi, run_python

SCRIPT = str(Path(__file__).parent / "mpi_scripts" / "train_sequence_parity.py")


def test_lstm_reading_mnist_rows_reaches_95_percent(capsys):
    accuracy = load_example("lstm_mnist_rows").main(["--verbose", "1"])
    assert accuracy >= 0.95, accuracy
    assert "test_acc=" in capsys.readouterr().out


def test_sequence_models_train_alike_on_1_and_2_ranks(tmp_path):
    run_python([SCRIPT, str(tmp_path / "one.npz")], timeout=240)
    run_mpi(2, [SCRIPT, str(tmp_path / "two.npz")], timeout=240)
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for key in ("mnist_rows", "padded_text"):
        assert one[key].size > 0
        np.testing.assert_allclose(two[key], one[key], atol=1e-5, rtol=0)
        np.testing.assert_allclose(two[key + "_loss"], one[key + "_loss"], rtol=1e-5)
