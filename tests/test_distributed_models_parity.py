"""N ranks train the functional residual, two-output functional and subclassed example models like one
process: real ``mpiexec`` jobs of tests/mpi_scripts/train_parity_models.py against a plain run.

203 digits with a global batch of 32: the last step is ragged (11 samples) and the 2 ranks' shards of
it uneven. BatchNormalization is synchronized (global-batch statistics), so only the summation order
differs between the runs.

The float32 runs use a learning rate of 1e-3. At the examples' 5e-3 the 2-rank residual model
drifts to a relative 1.4e-5 after 14 Adam steps in float32: training amplifies the summation-order
rounding about a hundredfold, which the float64 test shows (1e-14 there, against rounding of 1e-16),
so the difference is rounding, not the algorithm.
"""
import numpy as np
import pytest

from conftest import run_mpi, run_python
from test_distributed_training import TOLERANCE, relative_difference

SCRIPT = "tests/mpi_scripts/train_parity_models.py"
MODELS = ("resnet", "two-output", "subclassed")
FLOAT32 = ("--learning-rate", "1e-3")
FLOAT64 = ("--learning-rate", "5e-3", "--floatx", "float64")


def parity_run(out, model, settings, n=None) -> dict:
    """Run the script alone (``n=None``) or on ``n`` ranks; return what rank 0 saved and its stdout."""
    argv = [SCRIPT, str(out), "--model", model, *settings]
    proc = run_python(argv, timeout=90) if n is None else run_mpi(n, argv, timeout=90)
    with np.load(out) as saved:
        result = dict(saved)
    result["stdout"] = proc.stdout
    return result


def assert_same_training(reference: dict, result: dict, tolerance: float) -> None:
    """Every saved array (epoch weights and BN statistics, loss history, evaluate, each output's
    predictions) agrees with the reference within ``tolerance``, relative to its largest magnitude."""
    keys = [k for k, v in reference.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.size]
    assert {"epoch0", "epoch1", "state0", "state1", "loss_history", "evaluation"} <= set(keys), keys
    assert any(k.startswith("predictions") for k in keys), keys
    for key in keys:
        difference = relative_difference(reference[key], result[key])
        assert difference <= tolerance, f"{key}: relative difference {difference:.2e} > {tolerance:.0e}"


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models_reference")
    return {model: parity_run(directory / f"{model}.npz", model, FLOAT32) for model in MODELS}


@pytest.mark.mpi
@pytest.mark.parametrize("model, n", [("resnet", 2), ("two-output", 2), ("subclassed", 2)])
def test_n_ranks_train_the_example_models_like_one_process(references, tmp_path, model, n):
    reference = references[model]
    result = parity_run(tmp_path / "out.npz", model, FLOAT32, n=n)
    assert f"size={n} model={model}" in result["stdout"]
    assert_same_training(reference, result, TOLERANCE)
    assert int(result["identical_checks"]) == 2  # all ranks held identical weights after each epoch
    # The run really trained: the weights moved and the loss went down.
    assert relative_difference(reference["epoch0"], reference["epoch1"]) > 5e-4
    assert reference["loss_history"][1] < reference["loss_history"][0]


def test_two_output_run_saves_each_head(references):
    reference = references["two-output"]
    assert reference["predictions_digit"].shape == (203, 10)
    assert reference["predictions_large"].shape == (203, 1)
    assert reference["evaluation"].shape == (6,)  # loss, two output losses, three metrics


@pytest.mark.mpi
def test_float64_difference_is_rounding_only(tmp_path):
    """At the examples' learning rate, in float64, 2 ranks match one process to 1e-12."""
    reference = parity_run(tmp_path / "one.npz", "resnet", FLOAT64)
    result = parity_run(tmp_path / "two.npz", "resnet", FLOAT64, n=2)
    assert reference["epoch1"].dtype == np.float64
    assert_same_training(reference, result, 1e-12)
    assert relative_difference(reference["epoch0"], reference["epoch1"]) > 1e-3
