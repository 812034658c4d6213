"""Rank consistency check (distnn.distributed.consistency): ranks that call fit/evaluate/predict/
train_on_batch with different arguments, settings or data get one clear error on every rank,
naming the field and the ranks, instead of a hang, a silent divergence or "Message truncated".

The multi-rank checks run real ``mpiexec`` jobs of tests/mpi_scripts/rank_mismatch.py: one
3-rank job runs every case (each rank catches the error and reports it), and a few 2-rank jobs
let the error end the job as it would in a user's script.
"""
import re
import resource
import time

import numpy as np
import pytest

from conftest import run_mpi
from distnn import data, optimizers
from distnn.distributed import consistency
from distnn.distributed.communicator import SingleProcessCommunicator
from distnn.losses import CategoricalCrossentropy

SCRIPT = "tests/mpi_scripts/rank_mismatch.py"

# What the ranks say when rank 2 of 3 differs, by case: the first line of the error.
EXPECTED = {
    "len_x": "their x/y/sample_weight data: ranks 0-1 pass identical data, the other ranks different data (in fit())",
    "batch_size": "batch_size: ranks 0-1 have 32, rank 2 has 64 (in fit())",
    "epochs": "epochs: ranks 0-1 have 2, rank 2 has 3 (in fit())",
    "steps_per_epoch": "steps_per_epoch: ranks 0-1 have 2, rank 2 has 3 (in fit())",
    "learning_rate": "optimizer.learning_rate: ranks 0-1 have 0.1, rank 2 has 0.2 (in fit())",
    "data_content": "their x/y/sample_weight data: ranks 0-1 pass identical data, the other ranks different data (in fit())",
    "shuffle": "shuffle: ranks 0-1 have True, rank 2 has False (in fit())",
    "class_weight": "class_weight: ranks 0-1 have None, rank 2 has {0: 1.0, 1: 2.0, 2: 1.0} (in fit())",
    "validation_split": "validation_split: ranks 0-1 have 0.2, rank 2 has 0.25 (in fit())",
    "optimizer_class": "optimizer: ranks 0-1 have 'Adam', rank 2 has 'SGD' (in fit())",
    "predict_length": "their x/y/sample_weight data: ranks 0-1 pass identical data, the other ranks different data (in predict())",
    "evaluate_length": "their x/y/sample_weight data: ranks 0-1 pass identical data, the other ranks different data (in evaluate())",
    "train_on_batch": "their x/y/sample_weight data: ranks 0-1 pass identical data, the other ranks different data (in train_on_batch())",
    "validation_dtype": "validation_data[0].dtype: ranks 0-1 have 'float32', rank 2 has 'float64' (in fit())",
}


def _pattern(case: str) -> str:
    return re.escape(EXPECTED[case])


@pytest.mark.mpi
def test_every_mismatch_raises_the_same_error_on_every_rank():
    start = time.monotonic()
    # Ranks mix their output lines under mpiexec: parse the records, not the lines.
    proc = run_mpi(3, [SCRIPT, *EXPECTED, "none", "own_shards"], timeout=60)
    elapsed = time.monotonic() - start
    reports = re.findall(r"case (\w+) rank (\d): (.*?) \[([\d.]+)s\]", proc.stdout)
    outcomes: dict[str, dict[int, str]] = {}
    for case, rank, outcome, _ in reports:
        outcomes.setdefault(case, {})[int(rank)] = outcome
    assert set(outcomes) == {*EXPECTED, "none", "own_shards"}, proc.stdout
    for case in EXPECTED:
        assert sorted(outcomes[case]) == [0, 1, 2], (case, proc.stdout)
        for rank, outcome in outcomes[case].items():
            assert re.fullmatch("Ranks disagree on " + _pattern(case), outcome), (case, rank, outcome)
        assert len(set(outcomes[case].values())) == 1  # the very same message everywhere
    # Nothing differs: it trains (the loss falls over two fit calls), every rank holds the same
    # weights, predict returns every row, and the three ranks agree.
    matching = outcomes["none"]
    assert len(set(matching.values())) == 1, matching
    match = re.fullmatch(r"no error: loss ([\d.]+) -> ([\d.]+), same weights True, predictions \(96, 3\), "
                         r"evaluate [\d.]+, gathers per fit 2 and 2", matching[0])
    assert match and float(match[2]) < 0.8 * float(match[1]), matching[0]
    # (The 2 gathers of a fit: this check's digest and the model structure hash, whatever the
    # number of epochs and steps: the check costs one small collective per call, not per step.)
    # Data that differs on every rank is no mistake: each rank brings its own shard. Every rank
    # then trains on its 96, 95 and 94 samples with batch_size 16 per rank: 6 steps.
    assert set(outcomes["own_shards"].values()) == {"no error: own-shard mode, 6 steps, same weights True"}, \
        outcomes["own_shards"]
    assert "distnn: own-shard mode on 3 ranks: the ranks passed different data (96, 95, 94 samples)" in proc.stdout
    # No case waited on a hang: the whole job (14 cases, 3 ranks) ends within seconds.
    assert elapsed < 30, f"{elapsed:.1f}s"


@pytest.mark.mpi
@pytest.mark.parametrize("case, message", [
    ("batch_size", "Ranks disagree on batch_size: rank 0 has 32, rank 1 has 64 (in fit())"),
    ("predict_dtype", "Ranks disagree on x.dtype: rank 0 has 'float32', rank 1 has 'float64' (in predict())"),
    ("validation_split", "Ranks disagree on validation_split: rank 0 has 0.2, rank 1 has 0.25 (in fit())"),
])
def test_an_uncaught_mismatch_ends_the_job_with_the_message(case, message):
    start = time.monotonic()
    proc = run_mpi(2, [SCRIPT, "--uncaught", case], timeout=60, check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 15, f"the job took {elapsed:.1f}s to fail"
    assert f"RankMismatchError: {message}" in proc.stderr, proc.stderr
    assert "unreachable" not in proc.stdout


# ------------------------------------------------------------------- records and messages
def records_for(*calls):
    return [consistency.describe_call("fit", data, settings) for data, settings in calls]


def test_a_single_process_checks_nothing():
    class Counting(SingleProcessCommunicator):
        gathered = 0

        def allgather_obj(self, obj):
            Counting.gathered += 1
            return super().allgather_obj(obj)

    consistency.check_ranks_agree(Counting(), "fit", {"x": np.zeros((4, 2))}, {"batch_size": 2})
    assert Counting.gathered == 0


def test_record_holds_shapes_dtypes_lengths_and_fingerprints():
    x = np.arange(12, dtype="float32").reshape(6, 2)
    record = consistency.describe_call("fit", {"x": x, "validation_data": (x[:2], [0, 1]), "sample_weight": None},
                                       {"batch_size": np.int64(4), "validation_freq": frozenset({3, 1})})
    assert record["settings"] == {
        "method": "fit", "x.shape[1:]": (2,), "x.dtype": "float32", "validation_data[0].shape[1:]": (2,),
        "validation_data[0].dtype": "float32", "validation_data[1].shape[1:]": (), "validation_data[1].dtype": "int64",
        "sample_weight": None, "batch_size": 4, "validation_freq": (1, 3)}
    assert record["data"] == {"len(x)": 6, "x content": f"sampled-rows hash {data.fingerprint(x)}",
                              "len(validation_data[0])": 2,
                              "validation_data[0] content": f"sampled-rows hash {data.fingerprint(x[:2])}",
                              "len(validation_data[1])": 2,
                              "validation_data[1] content": f"sampled-rows hash {data.fingerprint(np.array([0, 1]))}"}


def test_optimizer_and_loss_are_compared_by_configuration():
    def call(optimizer, loss=None):
        return {}, {"optimizer": optimizer, "loss": loss or CategoricalCrossentropy()}

    records = records_for(call(optimizers.SGD(0.1, momentum=0.9)), call(optimizers.SGD(0.1, momentum=0.5)),
                          call(optimizers.SGD(0.1, momentum=0.9), CategoricalCrossentropy(label_smoothing=0.1)))
    assert consistency.settings_disagreements(records) == [
        "optimizer.momentum: ranks 0, 2 have 0.9, rank 1 has 0.5",
        "loss.label_smoothing: ranks 0-1 have 0.0, rank 2 has 0.1"]
    # A plain callable learning rate has no configuration: its current value is compared.
    records = records_for(call(optimizers.Adam(lambda: 0.01)), call(optimizers.Adam(lambda: 0.02)))
    assert consistency.settings_disagreements(records) == [
        "optimizer.learning_rate: rank 0 has 0.01, rank 1 has 0.02"]
    # Different classes: the class, and the hyperparameters only one of them has.
    records = records_for(call(optimizers.SGD()), call(optimizers.Adam()))
    problems = consistency.settings_disagreements(records)
    assert problems[0] == "optimizer: rank 0 has 'SGD', rank 1 has 'Adam'"
    assert "optimizer.beta_1: rank 0 has (not given), rank 1 has 0.9" in problems


def test_identical_calls_agree_even_with_nan_and_differing_names():
    settings = {"optimizer": optimizers.SGD(0.1, name="a"), "weights": {2: float("nan"), 1: 1.0}}
    other = {"optimizer": optimizers.SGD(0.1, name="b"), "weights": {1: 1.0, 2: float("nan")}}
    records = records_for(({"x": np.ones((3, 2))}, settings), ({"x": np.ones((3, 2))}, other))
    assert consistency.settings_disagreements(records) == consistency.data_disagreements(records) == []


def test_message_names_fields_ranks_and_the_fix():
    records = records_for(({"x": np.zeros((8, 2))}, {"batch_size": 4}), ({"x": np.ones((8, 2))}, {"batch_size": 4}),
                          *[({"x": np.zeros((8, 2))}, {"batch_size": 4})] * 3,
                          ({"x": np.zeros((8, 2))}, {"batch_size": 2}))
    settings, data_problems = consistency.settings_disagreements(records), consistency.data_disagreements(records)
    assert settings == ["batch_size: ranks 0-4 have 4, rank 5 has 2"]
    assert data_problems[0].startswith("x content: ranks 0, 2-5 have 'sampled-rows hash ")
    message = consistency.mismatch_message("fit", settings, data_problems)
    lines = message.splitlines()
    assert lines[0] == "Ranks disagree on batch_size: ranks 0-4 have 4, rank 5 has 2 (in fit())"
    assert lines[1].startswith("Ranks also disagree on x content: ranks 0, 2-5 have")
    assert "same arguments" in message and "Ranks must pass identical data to fit()" in message


def test_long_values_and_many_rank_groups_are_shortened():
    records = records_for(*[({}, {"class_weight": {i: float(i % 2) for i in range(40)} if r % 2 else None})
                            for r in range(40)])
    (problem,) = consistency.settings_disagreements(records)
    assert problem.startswith("class_weight: ranks 0, 2, 4, 6, 8, 10, 12, 14, ... (20 ranks) have None, "
                              "ranks 1, 3, 5, 7, 9, 11, 13, 15, ... (20 ranks) have {0: 0.0, 1: 1.0")
    assert problem.endswith("...") and len(problem) < 400


# ------------------------------------------------------------------------------ fingerprint
def test_fingerprint_sees_the_sampled_rows_shape_and_dtype():
    x = np.random.default_rng(0).normal(size=(1000, 5)).astype("float32")
    base = data.fingerprint(x)
    assert data.fingerprint(x.copy()) == base  # deterministic: the same rows are sampled everywhere
    for changed in (x[:-1], x.astype("float64"), x.reshape(1000, 5, 1)):
        assert data.fingerprint(changed) != base
    for row in (0, 999):  # the first and last rows are always hashed
        other = x.copy()
        other[row, 3] += 1
        assert data.fingerprint(other) != base
    assert data.fingerprint(np.asfortranarray(x)) == base  # the layout does not matter, the values do
    assert data.fingerprint(np.random.default_rng(1).normal(size=(1000, 5)).astype("float32")) != base


def test_fingerprint_reads_a_few_rows_of_a_huge_memory_mapped_file(tmp_path):
    # 1 GiB on disk (sparse), 256 KiB rows: hashing the whole file would map all of it.
    path = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype="float32", shape=(4096, 65536))
    big[-1, -1] = 1.0
    del big
    mapped = np.load(path, mmap_mode="r")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    first = data.fingerprint(mapped)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64, f"peak RSS grew by {grown_mib:.0f} MiB"
    assert first == data.fingerprint(np.load(path, mmap_mode="r"))
    assert first != data.fingerprint(mapped[:-1])
