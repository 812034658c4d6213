"""Input pipelines on one process: NpyArray files, per-batch casting, PyDataset and generators,
the prefetcher, and their errors (tests/test_data_parallel_modes.py covers several ranks)."""
import threading
import time
import tracemalloc
import warnings

import numpy as np
import pytest

from distnn import data, layers, models, ops, optimizers
from distnn.callbacks import Callback
from distnn.data import NpyArray, Prefetcher
from distnn.utils import PyDataset, Sequence, set_random_seed, to_categorical

RNG = np.random.default_rng(0)
X = RNG.normal(size=(200, 6)).astype("float32")
LABELS = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
Y = to_categorical(LABELS, 2)


def mlp(input_shape=(6,), optimizer=None):
    set_random_seed(1)
    model = models.Sequential([layers.Dense(8, activation="relu", input_shape=input_shape),
                               layers.Dense(2, activation="softmax")])
    model.compile(optimizer or optimizers.SGD(0.1), "categorical_crossentropy", metrics=["accuracy"])
    return model


class Batches(PyDataset):
    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, batch_size
        self.epochs_ended = 0

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[rows], self.y[rows]

    def on_epoch_end(self):
        self.epochs_ended += 1


def reference(epochs=2, batch_size=32):
    model = mlp()
    model.fit(X, Y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    return model


# ------------------------------------------------------------------------------- NpyArray
def test_npy_array_reads_rows_of_a_file_and_of_a_directory_of_shards(tmp_path):
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "shards").mkdir()
    for name, part in (("a.npy", X[:77]), ("b.npy", X[77:150]), ("c.npy", X[150:])):
        np.save(tmp_path / "shards" / name, part)
    (tmp_path / "shards" / "notes.txt").write_text("not a shard")
    for array in (NpyArray(tmp_path / "x.npy"), NpyArray(tmp_path / "shards")):
        assert array.shape == X.shape and array.dtype == X.dtype and len(array) == 200
        for index in (5, -1, slice(70, 90), slice(None, None, 7), [150, 3, 76, 77, 3], np.array([199, 0]),
                      X[:, 0] > 1):
            np.testing.assert_array_equal(array[index], X[index])
        np.testing.assert_array_equal(array[10:20, 2:4], X[10:20, 2:4])
        view = array.rows(70, 160)
        assert len(view) == 90 and data.is_file_backed(view)
        np.testing.assert_array_equal(view[[0, 89, 7]], X[70:160][[0, 89, 7]])
        with pytest.raises(IndexError, match="out of bounds"):
            array[200]


def test_npy_array_refuses_files_it_cannot_read_safely(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="dtype object.*numeric arrays only"):
        NpyArray(tmp_path / "objects.npy")
    np.save(tmp_path / "fortran.npy", np.asfortranarray(X))
    with pytest.raises(ValueError, match="Fortran order"):
        NpyArray(tmp_path / "fortran.npy")
    np.save(tmp_path / "whole.npy", X)
    raw = (tmp_path / "whole.npy").read_bytes()
    (tmp_path / "truncated.npy").write_bytes(raw[:-100])
    with pytest.raises(ValueError, match="truncated: its header declares shape \\(200, 6\\)"):
        NpyArray(tmp_path / "truncated.npy")
    (tmp_path / "text.npy").write_bytes(b"hello, not numpy")
    with pytest.raises(ValueError, match="not a readable .npy file"):
        NpyArray(tmp_path / "text.npy")
    (tmp_path / "mixed").mkdir()
    np.save(tmp_path / "mixed" / "a.npy", X)
    np.save(tmp_path / "mixed" / "b.npy", X[:, :5])
    with pytest.raises(ValueError, match="shards of .* differ"):
        NpyArray(tmp_path / "mixed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .npy files"):
        NpyArray(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such file"):
        NpyArray(tmp_path / "missing.npy")


def test_training_from_files_equals_training_from_arrays(tmp_path):
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", Y)
    model = mlp()
    model.fit(NpyArray(tmp_path / "x.npy"), NpyArray(tmp_path / "y.npy"), batch_size=32, epochs=2, shuffle=False,
              verbose=0)
    expected = reference()
    np.testing.assert_array_equal(model.params, expected.params)
    assert model.evaluate(NpyArray(tmp_path / "x.npy"), Y, verbose=0) == expected.evaluate(X, Y, verbose=0)
    np.testing.assert_array_equal(model.predict(NpyArray(tmp_path / "x.npy"), verbose=0),
                                  expected.predict(X, verbose=0))
    history = mlp().fit(NpyArray(tmp_path / "x.npy"), Y, batch_size=32, epochs=1, validation_split=0.25, verbose=0)
    assert "val_loss" in history.history  # validation_split cuts a view of the file, reading nothing


def test_a_nan_in_a_file_is_found_when_its_batch_is_read(tmp_path):
    bad = X.copy()
    bad[150, 2] = np.nan
    np.save(tmp_path / "x.npy", bad)
    model = mlp()
    with pytest.raises(ValueError, match="x contains 1 NaN or infinite"):
        model.fit(NpyArray(tmp_path / "x.npy"), Y, batch_size=32, shuffle=False, verbose=0)
    assert model.optimizer.iterations == 4  # the four batches before row 150 trained


def test_arrays_are_cast_batch_by_batch_never_whole():
    x = np.random.default_rng(1).integers(0, 256, size=(20000, 784), dtype=np.uint8)  # 15.7 MB
    y = np.zeros(20000, dtype=np.int64)
    set_random_seed(0)
    model = models.Sequential([layers.Dense(4, input_shape=(784,)), layers.Dense(10, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    tracemalloc.start()
    model.fit(x, y, batch_size=100, epochs=1, steps_per_epoch=3, verbose=0)
    model.predict(x[:1000], verbose=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # A float32 copy of x would be 62.7 MB (casting it whole peaked at 63.9 MB); per batch: 1.2 MB measured.
    assert peak < 10e6, f"peak traced memory {peak / 1e6:.1f} MB"


def test_integer_inputs_stay_integers_where_the_input_declares_them():
    class Lookup(layers.Layer):  # a token-id layer: indexes a table with its input
        def build(self, input_shape):
            self.table = self.add_weight(shape=(50, 3), initializer="glorot_uniform")

        def call(self, ids):
            seen.add(np.dtype(ids.dtype).kind)
            return ops.sum(ops.take(self.table, ids, axis=0), axis=1)

    seen = set()
    ids = np.random.default_rng(0).integers(0, 50, size=(64, 5)).astype(np.int32)
    inputs = layers.Input(shape=(5,), dtype="int32")
    model = models.Model(inputs, layers.Dense(2, activation="softmax")(Lookup()(inputs)))
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(ids, ids[:, 0] % 2, batch_size=16, verbose=0)
    model.predict(ids, verbose=0)
    assert seen == {"i"}


# ------------------------------------------------------------------- PyDataset, generators
@pytest.mark.parametrize("options", [{}, {"workers": 3, "max_queue_size": 2},
                                     {"workers": 2, "use_multiprocessing": True}])
def test_a_py_dataset_trains_evaluates_and_predicts_like_arrays(options):
    dataset = Batches(X, Y, 32, **options)
    model = mlp()
    model.fit(dataset, epochs=2, shuffle=False, verbose=0)
    expected = reference()
    np.testing.assert_array_equal(model.params, expected.params)
    assert dataset.epochs_ended == 2
    assert model.evaluate(Batches(X, Y, 50, **options), verbose=0) == pytest.approx(
        expected.evaluate(X, Y, verbose=0), abs=1e-7)
    np.testing.assert_allclose(model.predict(Batches(X, Y, 64, **options), verbose=0), expected.predict(X, verbose=0),
                               atol=1e-7)


def test_a_py_dataset_shuffles_its_batch_order_each_epoch():
    order = []

    class Recording(Batches):
        def __getitem__(self, index):
            order.append(index)
            return super().__getitem__(index)

    mlp().fit(Recording(X, Y, 20), epochs=2, shuffle=True, verbose=0)
    epochs = [order[1:11], order[11:21]]  # order[0]: the first batch, read once to describe the input
    assert all(sorted(e) == list(range(10)) for e in epochs) and epochs[0] != epochs[1] != list(range(10))


def test_sequence_is_keras_2s_name_and_settings_are_checked():
    assert Sequence is PyDataset
    with pytest.raises(ValueError, match="workers must be a positive integer. Received: workers=0"):
        Batches(X, Y, 32, workers=0)
    with pytest.raises(ValueError, match="use_multiprocessing must be a bool"):
        Batches(X, Y, 32, use_multiprocessing="yes")

    class Forgetful(PyDataset):  # no super().__init__(): the defaults still hold, as in Keras
        def __init__(self):
            pass

        def __len__(self):
            return 2

        def __getitem__(self, index):
            return X[index * 100:(index + 1) * 100], Y[index * 100:(index + 1) * 100]

    assert Forgetful().workers == 1
    mlp().fit(Forgetful(), verbose=0)


def test_generators_and_iterables_train_like_arrays():
    expected = reference()

    def endless():
        while True:
            for start in range(0, 200, 32):
                yield X[start:start + 32], Y[start:start + 32], np.ones(len(X[start:start + 32]))

    class Passes:  # re-iterable: a fresh pass each epoch
        def __iter__(self):
            return ((X[s:s + 32], Y[s:s + 32]) for s in range(0, 200, 32))

    for source, steps in ((endless(), 7), (Passes(), None)):
        model = mlp()
        model.fit(source, steps_per_epoch=steps, epochs=2, verbose=0)
        np.testing.assert_allclose(model.params, expected.params, atol=1e-7)
        assert model.history.params["steps"] == steps


def test_a_generator_that_runs_out_stops_training_with_keras_warning():
    model = mlp()
    batches = ((X[s:s + 50], Y[s:s + 50]) for s in range(0, 200, 50))  # 4 batches for 3 x 2 steps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(batches, steps_per_epoch=3, epochs=3, verbose=0)
    assert any("ran out of data" in str(w.message) for w in caught)
    assert len(history.history["loss"]) == 2 and model.optimizer.iterations == 4


def test_class_weight_applies_to_each_yielded_batch():
    weights = {0: 1.0, 1: 3.0}
    model = mlp()
    model.fit(Batches(X, Y, 32), class_weight=weights, epochs=1, shuffle=False, verbose=0)
    expected = mlp()
    expected.fit(X, Y, batch_size=32, class_weight=weights, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(model.params, expected.params, atol=1e-7)


def test_validation_data_may_be_a_py_dataset_or_a_generator_with_validation_steps():
    model = mlp()
    history = model.fit(X, Y, batch_size=32, epochs=1, validation_data=Batches(X[:100], Y[:100], 25), verbose=0)
    assert history.history["val_loss"][0] == pytest.approx(model.evaluate(X[:100], Y[:100], verbose=0)[0], abs=1e-7)
    batches = ((X[s:s + 25], Y[s:s + 25]) for s in range(0, 200, 25))
    history = model.fit(X, Y, batch_size=32, epochs=1, validation_data=batches, validation_steps=2, verbose=0)
    assert history.history["val_loss"][0] == pytest.approx(model.evaluate(X[:50], Y[:50], verbose=0)[0], abs=1e-7)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.fit(Batches(X, Y, 32), batch_size=32), "batch_size must not be given when x is a PyDataset"),
    (lambda m: m.fit(Batches(X, Y, 32), Y), "y must not be given when x is a PyDataset or a generator"),
    (lambda m: m.fit(Batches(X, Y, 32), validation_split=0.2), "validation_split needs array inputs"),
    (lambda m: m.fit(X, Y, validation_steps=2), "validation_steps applies to PyDataset and generator"),
    (lambda m: m.evaluate(X, Y, steps=2), "steps applies to PyDataset and generator inputs, not arrays"),
    (lambda m: m.fit(iter([(X, Y, None, None)])),
     "A batch must be x, \\(x,\\), \\(x, y\\) or \\(x, y, sample_weight\\)"),
    (lambda m: m.fit(iter([X])), "must be \\(x, y\\) or \\(x, y, sample_weight\\). Received a batch without targets"),
    (lambda m: m.fit(iter([])), "x yielded no batch"),
    (lambda m: m.fit(iter([(X[:, :5], Y)])), "expected shape \\(None, 6\\)"),
])
def test_batch_inputs_reject_what_they_cannot_honour(call, message):
    with pytest.raises(ValueError, match=message):
        call(mlp())


# -------------------------------------------------------------------------------- prefetch
def test_the_prefetcher_runs_ahead_passes_errors_and_stops_when_closed():
    produced = []

    def items():
        for i in range(100):
            produced.append(i)
            yield i

    prefetched = Prefetcher(items, depth=3)
    assert next(prefetched) == 0
    time.sleep(0.2)
    assert len(produced) <= 5  # bounded: at most depth items wait in the queue
    prefetched.close()
    assert not any(t.name == "distnn-prefetch" and t.is_alive() for t in threading.enumerate())
    assert list(Prefetcher(lambda: iter(range(5)))) == [0, 1, 2, 3, 4]

    def failing():
        yield 1
        raise OSError("disk gone")

    failed = Prefetcher(failing)
    assert next(failed) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(failed)
    with pytest.raises(StopIteration):
        next(failed)


def test_fit_reads_files_on_the_loader_thread_ahead_of_the_steps(tmp_path):
    """Batches of a file are read by the prefetch thread, so reading overlaps the steps
    (benchmarks/bench_input_pipeline.py measures the effect)."""
    np.save(tmp_path / "x.npy", X)
    readers = []

    class Recording(NpyArray):
        def _read(self, rows):
            readers.append(threading.current_thread().name)
            return super()._read(rows)

    model = mlp()
    model.fit(Recording(tmp_path / "x.npy"), Y, batch_size=10, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(model.params, reference(1, 10).params, atol=1e-7)
    assert readers.count("distnn-prefetch") == 20  # every training batch; the rest: checks and build


def test_progress_lines_count_the_steps_of_a_generator_without_steps_per_epoch(capsys):
    model = mlp()
    model.fit(((X[s:s + 50], Y[s:s + 50]) for s in range(0, 200, 50)), epochs=1, verbose=2)
    model.evaluate(iter([(X, Y)]), verbose=1)
    model.predict(iter([X[:10], X[10:20]]), verbose=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("4/4 - ") and lines[2].startswith("1/1 - ") and lines[3].startswith("2/2 - "), lines


@pytest.mark.parametrize("kind", ["py_dataset", "generator"])
def test_backups_resume_py_dataset_and_generator_runs_exactly(tmp_path, kind):
    """A preempted run resumes mid-epoch: a PyDataset at its batch index, an iterable of unknown
    length (recreated by the restarted script) by skipping the batches already trained."""
    from distnn.callbacks import BackupAndRestore

    class Preempted(Exception):
        pass

    class StopAfter(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.iterations == 10:
                raise Preempted

    class Passes:  # re-iterable batches without a length: steps_per_epoch stays unknown
        def __iter__(self):
            return ((X[s:s + 32], Y[s:s + 32]) for s in range(0, 200, 32))

    def train(callbacks):
        model = mlp()  # a new model and a new input each time: a restarted script
        model.fit(Batches(X, Y, 32) if kind == "py_dataset" else Passes(), epochs=3, verbose=0, callbacks=callbacks)
        return model

    uninterrupted = train([])
    with pytest.raises(Preempted):
        train([BackupAndRestore(tmp_path / "b", save_freq=1), StopAfter()])
    resumed = train([BackupAndRestore(tmp_path / "b", save_freq=1)])
    np.testing.assert_array_equal(resumed.params, uninterrupted.params)
