"""Data-parallel training (distnn.training under MPI): N ranks reproduce one process.

Every check starts real ``mpiexec -n N`` jobs of the scripts in tests/mpi_scripts/ and compares
what rank 0 saved with a plain single-process run of the same script (docs/architecture.md, "Data-parallel
semantics"). One launch checks several things at once to keep the file fast.
"""
import re
import time

import numpy as np
import pytest

from conftest import run_mpi, run_python
from distnn import data

SCRIPTS = "tests/mpi_scripts"
PARITY = f"{SCRIPTS}/train_parity.py"
# The relative tolerance between N ranks and one process: only the summation order differs.
TOLERANCE = 1e-5


def relative_difference(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest absolute difference, relative to the largest magnitude of ``expected``."""
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    assert expected.shape == actual.shape
    return float(np.abs(expected - actual).max() / max(np.abs(expected).max(), 1e-12))


def assert_same_training(reference: dict, result: dict, tolerance: float = TOLERANCE) -> None:
    """Epoch snapshots (weights and moving statistics), loss history, evaluate and predict (in order)
    agree with the reference."""
    epochs = sorted(k for k in reference if k.startswith(("epoch", "state")) and reference[k].size)
    assert epochs and all(key in result for key in epochs)
    for key in [*epochs, "loss_history", "evaluation", "predictions"]:
        difference = relative_difference(reference[key], result[key])
        assert difference <= tolerance, f"{key}: relative difference {difference:.2e} > {tolerance:.0e}"


def parity_run(out, *args, n=None, script=PARITY, timeout=60, **kwargs) -> dict:
    """Run a parity script (train_parity.py) alone (``n=None``) or on ``n`` ranks (keyword arguments
    as ``run_mpi``); return what rank 0 saved and stdout."""
    argv = [script, str(out), *args]
    proc = run_python(argv, timeout=timeout) if n is None else run_mpi(n, argv, timeout=timeout, **kwargs)
    with np.load(out) as saved:
        result = dict(saved)
    result["stdout"] = proc.stdout
    return result


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Single-process (no MPI) runs of the parity script, one per model."""
    directory = tmp_path_factory.mktemp("reference")
    return {model: parity_run(directory / f"{model}.npz", "--model", model) for model in ("mlp", "cnn", "cnn-bn")}


@pytest.mark.mpi
@pytest.mark.parametrize("model, n", [("mlp", 1), ("mlp", 2), ("mlp", 3), ("mlp", 4),
                                      ("cnn", 1), ("cnn", 2), ("cnn", 3), ("cnn-bn", 2), ("cnn-bn", 3)])
def test_n_ranks_train_like_one_process(references, tmp_path, model, n):
    # 203 samples, global batch 32: divisible neither by the batch nor by any N > 1, so the
    # last step is ragged and the shards are uneven.
    reference = references[model]
    result = parity_run(tmp_path / "out.npz", "--model", model, "--verbose", "2", n=n)
    assert f"size={n} " in result["stdout"]
    assert_same_training(reference, result)
    # Every rank compared its weights with all others after each of the 2 epochs.
    assert int(result["identical_checks"]) == 2
    # The run really trained: the weights moved and the loss went down.
    assert relative_difference(reference["epoch0"], reference["epoch1"]) > 1e-3
    assert reference["loss_history"][1] < reference["loss_history"][0]
    # Only rank 0 prints progress (verbose=2: one "Epoch e/2" line per epoch in the whole job).
    assert result["stdout"].count("Epoch 1/2") == 1, result["stdout"]
    assert result["stdout"].count("Epoch 2/2") == 1, result["stdout"]


# Two Dropout layers, one seeded, and a mask shared by the whole batch; then train_on_batch steps.
# 195 samples, batch 32: the last global batch has 3 samples, so 3 ranks get 1-sample shards.
DROPOUT_ARGS = ["--model", "mlp-dropout", "--samples", "195", "--train-on-batch", "3"]


@pytest.fixture(scope="module")
def dropout_reference(tmp_path_factory):
    return parity_run(tmp_path_factory.mktemp("dropout") / "one.npz", *DROPOUT_ARGS)


@pytest.mark.mpi
@pytest.mark.parametrize("n", [1, 2, 3])
def test_dropout_masks_per_global_sample_keep_n_ranks_equal_to_one_process(dropout_reference, tmp_path, n):
    # Each rank draws its rows of the global batch's masks (distnn.random): with per-rank
    # generators, 2 ranks differed from one process by 1.8 % after 2 epochs.
    result = parity_run(tmp_path / "out.npz", *DROPOUT_ARGS, n=n)
    assert f"size={n} " in result["stdout"]
    assert_same_training(dropout_reference, result)
    assert relative_difference(dropout_reference["after_batches"], result["after_batches"]) <= TOLERANCE
    assert int(result["identical_checks"]) == 2
    assert relative_difference(dropout_reference["epoch1"], dropout_reference["after_batches"]) > 1e-4


@pytest.mark.mpi
@pytest.mark.parametrize("samples, batch_size, n, model", [(10, 4, 3, "mlp"), (7, 6, 4, "mlp"), (10, 4, 3, "cnn-bn")])
def test_ragged_last_step_with_empty_shards(tmp_path, samples, batch_size, n, model):
    last = samples % batch_size
    shards = [data.shard_bounds(last, rank, n) for rank in range(n)]
    assert any(start == stop for start, stop in shards), "the case must leave some rank without samples"
    args = ["--samples", str(samples), "--batch-size", str(batch_size), "--model", model]
    reference = parity_run(tmp_path / "one.npz", *args)
    result = parity_run(tmp_path / "many.npz", *args, n=n)
    assert_same_training(reference, result)
    assert int(result["identical_checks"]) == 2
    assert result["predictions"].shape == (samples, 3)
    assert relative_difference(reference["epoch0"], reference["epoch1"]) > 1e-4


@pytest.mark.mpi
def test_exception_on_one_rank_ends_the_job():
    start = time.monotonic()
    proc = run_mpi(3, [f"{SCRIPTS}/train_raise.py"], timeout=60, check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 10, f"the job took {elapsed:.1f}s to end after rank 1 raised"
    assert "[rank 1] RuntimeError: deliberate failure on rank 1 during fit" in proc.stderr
    assert "unreachable" not in proc.stdout


@pytest.mark.mpi
def test_exception_before_training_ends_the_job():
    """A rank failing before it ever used MPI (after `import distnn`) still ends the whole job."""
    start = time.monotonic()
    proc = run_mpi(2, [f"{SCRIPTS}/train_raise_early.py"], timeout=60, check=False)
    assert time.monotonic() - start < 10, "the other rank was left waiting"
    assert proc.returncode != 0
    assert "[rank 1]" in proc.stderr and "could not read its data shard" in proc.stderr


@pytest.mark.mpi
def test_different_models_fail_before_training(tmp_path):
    out = tmp_path / "out.npz"
    start = time.monotonic()
    proc = run_mpi(2, [f"{SCRIPTS}/train_mismatch.py", str(out)], timeout=60, check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 10, f"the job took {elapsed:.1f}s to fail"
    assert "ValueError: Ranks built different models: ranks [1] differ from rank 0" in proc.stderr
    assert "unreachable" not in proc.stdout
    assert not out.exists()  # no rank got past fit


@pytest.mark.mpi
def test_custom_loop_with_distributed_optimizer(tmp_path):
    script = f"{SCRIPTS}/train_custom_loop.py"
    run_python([script, str(tmp_path / "one.npz")], timeout=60)
    proc = run_mpi(3, [script, str(tmp_path / "three.npz")], timeout=60)
    # Each rank checked: different weights before broadcast_weights, identical after it and
    # after the loop, and MetricAverage averaging rank-dependent logs.
    assert sorted(re.findall(r"custom_loop OK rank=(\d) size=3", proc.stdout)) == ["0", "1", "2"], proc.stdout
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "three.npz") as three:
        np.testing.assert_array_equal(one["initial"], three["initial"])  # rank 0's initial weights won
        assert relative_difference(one["initial"], one["final"]) > 1e-2
        assert relative_difference(one["final"], three["final"]) <= TOLERANCE


@pytest.mark.mpi
def test_fp16_compression_still_trains(references, tmp_path):
    reference = references["mlp"]
    result = parity_run(tmp_path / "fp16.npz", "--compression", "fp16", n=2)
    assert "compression=fp16" in result["stdout"]
    assert int(result["identical_checks"]) == 2  # rounding happens on the wire, identically on all ranks
    # float16 keeps ~3 decimal digits of the gradients (and of the reduced metric sums).
    assert_same_training(reference, result, tolerance=1e-3)
    assert result["loss_history"][1] < result["loss_history"][0]
