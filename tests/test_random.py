"""distnn.random: counter-based draws per global sample, so random layers keep N ranks = 1 process.

Ranks are simulated in-process here: rank r of n enters ``training_step`` with its shard's offset
and size, as ``fit`` does; the concatenation of the shards' draws must equal the single-process
draw. tests/test_distributed_training.py checks the same end to end with real mpiexec ranks.
"""
import numpy as np
import pytest

from distnn import backend, data, random
from distnn.distributed import BackupAndRestore
from distnn.callbacks import Callback
from distnn.layers import Dense, Dropout
from distnn.models import Model, Sequential
from distnn.ops.core import Tape, Tensor
from distnn.utils import set_random_seed, to_categorical

KEY = np.array([12345, 678], dtype=np.uint64)


def sharded(draw, x, n, seed=5, step=(1, 2)):
    """``draw(shard)`` on each of n simulated ranks inside the same training step, concatenated."""
    parts = []
    for rank in range(n):
        start, stop = data.shard_bounds(len(x), rank, n)
        if stop > start:  # fit runs no forward pass on an empty shard
            with random.training_step(seed, step, offset=start, count=stop - start):
                parts.append(backend.to_numpy(draw(backend.to_device(x[start:stop]))))
    return np.concatenate(parts)


# -------------------------------------------------------------------------------- the stream
def test_the_stream_starts_at_any_position():
    full = np.random.Philox(key=KEY).random_raw(64)
    for first in range(13):
        np.testing.assert_array_equal(random.philox_words(KEY, first, 20), full[first:first + 20])
    far = 10**9 + 3  # a jump costs no more than a short one
    np.testing.assert_array_equal(random.philox_words(KEY, far, 5), random.philox_words(KEY, far - 3, 8)[3:])
    halves = full.astype("<u8").view("<u4")
    for first in range(9):
        np.testing.assert_array_equal(random._half_words(KEY, first, 17), halves[first:first + 17])


DRAWS = {
    "dropout": lambda x: random.dropout_mask(x, 0.4, seed=random.SeedGenerator()),
    "dropout shared over axis 1": lambda x: random.dropout_mask(x, 0.5, noise_shape=(None, 1, 4)),
    "dropout shared over the batch": lambda x: random.dropout_mask(x, 0.5, noise_shape=(1, None, 4)) * np.ones_like(x),
    "dropout seeded": lambda x: random.dropout(x, 0.5, seed=random.SeedGenerator(7)),
    "dropout int seed": lambda x: random.dropout(x, 0.5, seed=11),
    "uniform float32": lambda x: random.uniform(x.shape, -1.0, 3.0, dtype="float32"),
    "uniform float64": lambda x: random.uniform(x.shape, dtype="float64"),
    "normal": lambda x: random.normal(x.shape, mean=1.0, stddev=2.0),
    "two draws in a step": lambda x: random.dropout_mask(x, 0.5) + 3 * random.normal(x.shape),
}


@pytest.mark.parametrize("kind", DRAWS)
@pytest.mark.parametrize("n", [2, 3, 4, 11])
def test_shards_concatenate_to_the_single_process_draw(kind, n):
    x = np.ones((11, 3, 4), dtype=np.float32)  # 11 samples: uneven shards; n=11 gives 1-sample shards
    full = sharded(DRAWS[kind], x, 1)
    assert len(full) == len(x) and len(np.unique(full)) > 1
    np.testing.assert_array_equal(sharded(DRAWS[kind], x, n), full)


def test_a_batch_shared_mask_is_one_mask_for_every_sample():
    x = np.ones((11, 3, 4), dtype=np.float32)
    mask = sharded(DRAWS["dropout shared over the batch"], x, 11)
    assert (mask == mask[:1]).all() and 0 < (mask == 0).mean() < 1


class SharedDropoutNet(Model):
    """One Dropout layer called twice and a seeded one: three distinct masks per step."""

    def __init__(self):
        super().__init__()
        self.dense = Dense(64, activation="tanh")
        self.drop = Dropout(0.5)
        self.seeded = Dropout(0.3, seed=9)

    def call(self, x, training=False):
        h = self.drop(self.dense(x), training=training)
        return self.seeded(self.drop(h, training=training), training=training)


def test_a_model_with_shared_and_seeded_dropout_sharded_like_one_process():
    set_random_seed(0)
    model = SharedDropoutNet()
    x = np.random.default_rng(0).normal(size=(13, 5)).astype(np.float32)
    model(x)  # build
    full = sharded(lambda shard: model(shard, training=True), x, 1)
    for n in (2, 3, 5):
        np.testing.assert_allclose(sharded(lambda shard: model(shard, training=True), x, n), full, rtol=1e-6)
    # The shared layer's two calls drew independent masks: 0.5 * 0.5 * 0.7 survive, not 0.5 * 0.7.
    assert abs((full != 0).mean() - 0.175) < 0.04


def test_draws_depend_on_the_step_the_seed_and_the_call():
    x = np.ones((50, 20), dtype=np.float32)
    base = sharded(DRAWS["dropout"], x, 1)
    np.testing.assert_array_equal(sharded(DRAWS["dropout"], x, 1), base)  # a function of (seed, step, call)
    for other in (sharded(DRAWS["dropout"], x, 1, seed=6), sharded(DRAWS["dropout"], x, 1, step=(1, 3)),
                  sharded(DRAWS["dropout"], x, 1, step=(2, 1)), sharded(DRAWS["dropout"], x, 1, step=(1,)),
                  sharded(lambda s: (random.uniform((1,)), DRAWS["dropout"](s))[1], x, 1)):
        assert (other != base).mean() > 0.3


def test_a_seeded_generator_ignores_the_run_seed_in_a_step():
    x = np.ones((40, 10), dtype=np.float32)
    seeded = DRAWS["dropout seeded"]
    np.testing.assert_array_equal(sharded(seeded, x, 1, seed=1), sharded(seeded, x, 1, seed=2))
    assert (sharded(seeded, x, 1, step=(0, 0)) != sharded(seeded, x, 1, step=(0, 1))).any()


# ------------------------------------------------------------------------------- statistics
def test_dropout_drops_the_rate_and_rescales():
    x = np.ones((400, 250), dtype=np.float32)
    for mask in (random.dropout(x, 0.3, seed=1), sharded(lambda s: random.dropout(s, 0.3), x, 3)):
        assert mask.dtype == np.float32
        assert abs((mask == 0).mean() - 0.3) < 0.005
        np.testing.assert_allclose(mask[mask != 0], 1 / 0.7, rtol=1e-6)
    assert random.dropout(x, 0.0) is x


def test_uniform_and_normal_have_their_distributions():
    u32 = random.uniform((200_000,), 2.0, 4.0, dtype="float32", seed=3)
    assert u32.dtype == np.float32 and 2.0 <= u32.min() and u32.max() < 4.0
    assert abs(u32.mean() - 3.0) < 0.01 and abs(u32.std() - 2 / np.sqrt(12)) < 0.005
    unit = random.uniform((1000,), dtype="float32", seed=4)
    np.testing.assert_array_equal(unit * 2**24, np.round(unit * 2**24))  # 24 random bits
    u64 = random.uniform((1000,), dtype="float64", seed=4)
    assert u64.dtype == np.float64 and len(np.unique(u64 * 2**24 % 1)) > 900  # more than 24 bits
    z = random.normal((200_000,), mean=1.0, stddev=3.0, seed=5)
    assert np.isfinite(z).all() and abs(z.mean() - 1.0) < 0.03 and abs(z.std() - 3.0) < 0.03
    assert abs((np.abs(z - 1) < 3).mean() - 0.6827) < 0.005  # one sigma, as a normal


# ---------------------------------------------------------------------- outside a training step
def test_outside_a_step_a_seeded_layer_repeats_its_sequence():
    x = np.ones((30, 8), dtype=np.float32)
    first, second = Dropout(0.5, seed=3), Dropout(0.5, seed=3)
    a1, a2 = first(x, training=True), first(x, training=True)
    np.testing.assert_array_equal(second(x, training=True), a1)
    np.testing.assert_array_equal(second(x, training=True), a2)
    assert (a1 != a2).any()
    np.testing.assert_array_equal(random.uniform((5,), seed=8), random.uniform((5,), seed=8))  # int: stateless


def test_set_random_seed_makes_unseeded_draws_reproducible():
    def draws():
        set_random_seed(21)
        layer = Dropout(0.5)
        return [layer(np.ones((10, 10)), training=True), random.normal((4,)), random.uniform((4,))]

    first, again = draws(), draws()
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    set_random_seed(22)
    assert (random.normal((4,)) != first[1]).all()


def test_generator_state_replays_a_draw():
    generator = random.SeedGenerator()
    state = generator.state
    a = random.uniform((6,), seed=generator)
    generator.state = state
    np.testing.assert_array_equal(random.uniform((6,), seed=generator), a)
    layer = Dropout(0.2, seed=1)
    layer(np.ones((3, 3)), training=True)
    assert random.generator_states([layer])[f"{layer.name}/seed_generator"] == [1, 1]


def test_dropout_on_a_tape_tensor_has_the_mask_as_gradient():
    x = np.random.default_rng(1).normal(size=(6, 5))
    with Tape() as tape:
        leaf = Tensor(x, tape)
        y = random.dropout(leaf, 0.5, seed=2)
    tape.backward([(y, np.ones_like(x))])
    mask = random.dropout_mask(x, 0.5, seed=2)
    np.testing.assert_array_equal(leaf.grad, mask)
    np.testing.assert_allclose(y.value, x * mask)


@pytest.mark.parametrize("call, message", [
    (lambda: random.SeedGenerator(-1), "Received: seed=-1"),
    (lambda: random.SeedGenerator(True), "Received: seed=True"),
    (lambda: random.uniform((2,), seed="x"), "Received: seed='x'"),
    (lambda: random.dropout(np.ones((2, 3)), 1.0), "Received: rate=1.0"),
    (lambda: random.dropout(np.ones((2, 3)), 0.5, noise_shape=(None, 2)), r"noise_shape=\(None, 2\)"),
    (lambda: random.dropout(np.ones((2, 3)), 0.5, noise_shape=(None,)), r"noise_shape=\(None,\)"),
    (lambda: random.uniform((2, -1)), r"Received: shape=\(2, -1\)"),
    (lambda: random.normal((2,), dtype="int32"), "Received: dtype=int32"),
    (lambda: random.training_step(1, (0, 1, 2, 3, 4), 0, 1).__enter__(), r"Received: step=\(0, 1, 2, 3, 4\)"),
    (lambda: random.training_step(1, (0, 1), -1, 1).__enter__(), "Received: offset=-1, count=1"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# ----------------------------------------------------------------------------- fit and resume
X = np.random.default_rng(3).normal(size=(70, 6)).astype(np.float32)
Y = to_categorical((X[:, 0] > 0).astype(int), 2)


def dropout_model(seed=4):
    set_random_seed(seed)
    # Fixed names: the restored backup must describe the same model as this process builds.
    model = Sequential([Dense(12, activation="relu", input_shape=(6,), name="hidden"), Dropout(0.5, name="drop"),
                        Dense(2, activation="softmax", name="out")], name="net")
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


class PreemptAt(Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)

    def on_train_batch_begin(self, batch, logs=None):
        if (self.model.progress.epoch, batch) == self.at:
            self.model.stop_requested = True


def test_a_run_resumed_mid_epoch_draws_the_same_masks(tmp_path):
    straight = dropout_model()
    straight.fit(X, Y, batch_size=16, epochs=3, verbose=0)

    interrupted = dropout_model()
    backup = BackupAndRestore(tmp_path, save_freq=100, handle_signals=False)
    with pytest.raises(SystemExit):  # preempted after step 2 of epoch 1: a backup, then exit 75
        interrupted.fit(X, Y, batch_size=16, epochs=3, verbose=0, callbacks=[backup, PreemptAt(1, 2)])
    assert interrupted.progress.epoch == 1 and interrupted.progress.step == 3
    resumed = dropout_model(seed=99)  # other initial weights and generator states: the backup sets them
    resumed.fit(X, Y, batch_size=16, epochs=3, verbose=0, callbacks=[BackupAndRestore(tmp_path, handle_signals=False)])
    np.testing.assert_array_equal(resumed.params, straight.params)
