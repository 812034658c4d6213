"""The two data-parallel modes on real MPI ranks (tests/mpi_scripts/data_modes.py), each compared
with one process:

- own shards (each rank loads its half of MNIST-5k, even, uneven, or with whole empty steps; a
  generator per rank; train_on_batch; Horovod's DistributedOptimizer on identical data) equal one
  process trained on the concatenation, batch by batch as the ranks' batches combine;
- same data through arrays, PyDataset (with and without worker threads), generators and
  re-iterables gives the same weights on 1 and 2 ranks;
- gradient accumulation (k = 4) equals the 4x batch, on 1 and 2 ranks.

Tolerance: 1e-6 on the weights after two epochs (float32 gradient sums taken in another order;
measured 3e-8 to 4.5e-8). Pixels are scaled to [0, 1]: on raw 0-255 pixels this SGD run is so
ill-conditioned that the one-process reference alone moves by 0.5 between 1 and 2 BLAS threads.
"""
import numpy as np
import pytest

import distnn.datasets
from conftest import run_mpi
from distnn import backend, data, layers, models, optimizers
from distnn.utils import PyDataset, set_random_seed

SCRIPT = "tests/mpi_scripts/data_modes.py"
(X_ALL, Y_ALL), _ = distnn.datasets.mnist()
X_ALL = (X_ALL.reshape(len(X_ALL), -1) / 255).astype("float32")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("modes") / "two.npz"
    proc = run_mpi(2, [SCRIPT, str(out)], timeout=300)
    return dict(np.load(out)), proc.stdout


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    out = tmp_path_factory.mktemp("modes") / "one.npz"
    run_mpi(1, [SCRIPT, str(out)], timeout=300)
    return dict(np.load(out))


def mlp(optimizer=None, dropout=0.2):
    set_random_seed(0)
    model = models.Sequential([layers.Dense(32, activation="relu", input_shape=(784,)), layers.Dropout(dropout),
                               layers.Dense(10, activation="softmax")])
    model.compile(optimizer=optimizer or optimizers.SGD(0.05), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


class Combined(PyDataset):
    """One process's view of an own-shard run: step k's batch is every rank's batch k, in rank order."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def own_shard_batches(shards, batch_size, seed, epoch, shuffle=True):
    """The global batches of an own-shard epoch: rank r visits its shard in ``epoch_order(..., rank=r)``."""
    orders = [data.epoch_order(len(x), shuffle, seed, epoch, rank=r) for r, (x, _) in enumerate(shards)]
    steps = max(data.steps_per_epoch(len(x), batch_size) for x, _ in shards)
    batches = []
    for k in range(steps):
        rows = [(x[o[k * batch_size:(k + 1) * batch_size]], y[o[k * batch_size:(k + 1) * batch_size]])
                for (x, y), o in zip(shards, orders)]
        batches.append((np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])))
    return batches


def reference_fit(batches_per_epoch, seed, optimizer=None):
    """One process trained on the given global batches of each epoch, with the run's data seed
    (which set_random_seed(0) makes it draw, as rank 0 did: the Dropout masks are the same)."""
    class PerEpoch(Combined):  # a PyDataset whose batches change at on_epoch_end, as Keras allows
        epoch = 0

        def __len__(self):
            return len(batches_per_epoch[self.epoch])

        def __getitem__(self, index):
            return batches_per_epoch[self.epoch][index]

        def on_epoch_end(self):
            self.epoch += 1

    model = mlp(optimizer)
    model.fit(PerEpoch([]), epochs=len(batches_per_epoch), shuffle=False, verbose=0)
    assert model._data_seed == seed
    return model


def halves(split):
    return [(X_ALL[:split], Y_ALL[:split]), (X_ALL[split:], Y_ALL[split:])]


@pytest.mark.mpi
@pytest.mark.parametrize("name, split, batch_size, steps", [
    ("even", 2000, 64, 32), ("uneven", 2001, 64, 32),
    ("ragged", 2001, 1000, 3),  # 1,000 + 1,000 + 1 rows on rank 0, 1,000 + 999 on rank 1: an empty step
])
def test_own_shards_match_one_process_on_the_concatenation(two_ranks, name, split, batch_size, steps):
    results, stdout = two_ranks
    shards = halves(split)
    seed = int(results[f"own_{name}_seed"])
    epochs = [own_shard_batches(shards, batch_size, seed, epoch) for epoch in range(2)]
    # Every sample exactly once per epoch, and every rank ran the same steps.
    assert int(results[f"own_{name}_steps"]) == steps == len(epochs[0])
    for batches in epochs:
        seen = np.concatenate([b[0] for b in batches])
        assert len(seen) == 4000
        assert len({r.tobytes() for r in seen}) == len({r.tobytes() for r in X_ALL[:4000]})
    reference = reference_fit(epochs, seed)
    assert np.abs(results[f"own_{name}_params"] - backend.to_numpy(reference.params)).max() <= 1e-6
    # evaluate reduces over both shards: the metrics of the whole training set.
    np.testing.assert_allclose(results[f"own_{name}_evaluate"], reference.evaluate(X_ALL[:4000], Y_ALL[:4000],
                                                                                   verbose=0), rtol=1e-5)
    # predict returns each rank's predictions of its own x (here gathered in rank order).
    np.testing.assert_allclose(results[f"own_{name}_predictions"], reference.predict(X_ALL[:4000], verbose=0),
                               atol=1e-5)
    assert f"own-shard mode on 2 ranks: the ranks passed different data ({split}, {4000 - split} samples)" in stdout


@pytest.mark.mpi
def test_own_generators_of_different_lengths_pad_with_empty_steps(two_ranks):
    results, _ = two_ranks
    x, y = X_ALL[:2000], Y_ALL[:2000]
    rank1_x, rank1_y = X_ALL[2000:], Y_ALL[2000:]
    batches = []
    for k in range(5):  # rank 0 yields 5 batches of 100, rank 1 only 3: steps 4 and 5 are rank 0's alone
        parts = [(x[k * 100:(k + 1) * 100], y[k * 100:(k + 1) * 100])]
        if k < 3:
            parts.append((rank1_x[k * 100:(k + 1) * 100], rank1_y[k * 100:(k + 1) * 100]))
        batches.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
    reference = reference_fit([batches], int(results["own_generator_seed"]))
    assert np.abs(results["own_generator_params"] - backend.to_numpy(reference.params)).max() <= 1e-6


@pytest.mark.mpi
def test_own_batches_in_train_on_batch_train_on_their_concatenation(two_ranks):
    results, _ = two_ranks
    model = mlp()
    model.train_on_batch(X_ALL[np.r_[0:48, 100:120]], Y_ALL[np.r_[0:48, 100:120]])  # rank 0's 48, rank 1's 20
    assert model._batch_seed == int(results["own_train_on_batch_seed"])
    assert np.abs(results["own_train_on_batch_params"] - backend.to_numpy(model.params)).max() <= 1e-6


@pytest.mark.mpi
def test_horovod_optimizer_trains_with_horovods_per_rank_batch(two_ranks):
    """Identical data and DistributedOptimizer: each rank passes over all 1,000 samples in its own
    order with batch_size=50, so a step's global batch is 100 samples, 20 steps an epoch — what
    the script gets under Horovod."""
    results, stdout = two_ranks
    seed = int(results["horovod_seed"])
    shards = [(X_ALL[:1000], Y_ALL[:1000])] * 2
    epochs = [own_shard_batches(shards, 50, seed, epoch) for epoch in range(2)]
    assert int(results["horovod_steps"]) == 20
    reference = reference_fit(epochs, seed, optimizers.SGD(0.05))
    assert np.abs(results["horovod_params"] - backend.to_numpy(reference.params)).max() <= 1e-6
    assert "compiled with Horovod's DistributedOptimizer" in stdout


@pytest.mark.mpi
def test_a_generator_that_stops_being_identical_is_refused_on_every_rank(two_ranks):
    results, _ = two_ranks
    assert str(results["diverged"]).startswith("Ranks' data diverged at step 1: rank 1 hold a different batch "
                                               "than rank 0"), results["diverged"]


@pytest.mark.mpi
@pytest.mark.parametrize("kind", ["py_dataset", "py_dataset_threads", "generator", "iterable"])
def test_every_input_kind_trains_like_arrays_on_one_and_two_ranks(one_rank, two_ranks, kind):
    two, _ = two_ranks
    arrays = one_rank["same_arrays_params"]
    for results in (one_rank, two):
        assert np.abs(results[f"same_{kind}_params"] - arrays).max() <= 1e-6
        assert np.abs(results[f"same_{kind}_evaluate"] - one_rank["same_arrays_evaluate"]).max() <= 1e-6
        assert np.abs(results[f"same_{kind}_predict"] - one_rank["same_arrays_predict"]).max() <= 1e-6
    assert np.abs(two["same_arrays_params"] - arrays).max() <= 1e-6


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_accumulating_four_micro_batches_equals_the_four_times_larger_batch(one_rank, two_ranks, name):
    two, _ = two_ranks
    big = one_rank[f"accumulate_{name}_big"]
    for results in (one_rank, two):
        assert np.abs(results[f"accumulate_{name}_keras"] - big).max() <= 1e-6
        assert np.abs(results[f"accumulate_{name}_horovod"] - big).max() <= 1e-6
        assert int(results[f"accumulate_{name}_iterations"]) == 30  # updates, not micro-batches
