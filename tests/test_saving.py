"""Saving and loading: identical predictions, resumed training that matches uninterrupted training
(optimizer state included), custom objects, and no unpickling ever."""
import io
import json
import zipfile

import numpy as np
import pytest

from distnn import losses, optimizers, saving
from distnn.layers import Dense, Dropout, Layer
from distnn.models import Sequential, load_model
from distnn.utils import set_random_seed

RNG = np.random.default_rng(0)
X = RNG.normal(size=(48, 5)).astype("float32")
Y = np.eye(3, dtype="float32")[RNG.integers(3, size=48)]


def make_model(optimizer, seed=1, dropout=0.2):
    set_random_seed(seed)
    model = Sequential([Dense(8, activation="relu", input_shape=(5,), kernel_regularizer="l2"),
                        Dropout(dropout), Dense(3, activation="softmax")])
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def test_save_and_load_give_bit_identical_predictions(tmp_path):
    model = make_model(optimizers.Adam(0.01))
    model.fit(X, Y, epochs=2, batch_size=16, verbose=0)
    path = str(tmp_path / "model.distnn")
    model.save(path)
    restored = load_model(path)
    np.testing.assert_array_equal(restored.predict(X, verbose=0), model.predict(X, verbose=0))
    assert restored.get_config() == model.get_config()
    assert restored.evaluate(X, Y, verbose=0) == model.evaluate(X, Y, verbose=0)
    assert restored.metrics_names == ["loss", "accuracy"]
    assert restored.optimizer.get_config() == model.optimizer.get_config()


OPTIMIZERS = [
    ("sgd_momentum", lambda: optimizers.SGD(0.05, momentum=0.9)),
    ("sgd_nesterov", lambda: optimizers.SGD(0.05, momentum=0.9, nesterov=True)),
    ("adam", lambda: optimizers.Adam(0.01)),
    ("adam_amsgrad", lambda: optimizers.Adam(0.01, amsgrad=True)),
    ("adamw", lambda: optimizers.AdamW(0.01)),
    ("nadam", lambda: optimizers.Nadam(0.01)),
    ("rmsprop", lambda: optimizers.RMSprop(0.01, momentum=0.5, centered=True)),
    ("adagrad", lambda: optimizers.Adagrad(0.1)),
    ("schedule", lambda: optimizers.SGD(optimizers.schedules.ExponentialDecay(0.1, 3, 0.5), momentum=0.5)),
]


@pytest.mark.parametrize("name, make_optimizer", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_resumed_training_matches_uninterrupted_training(tmp_path, name, make_optimizer):
    # The data order of an epoch depends only on the seed fit() draws first and the epoch number, so
    # the same seed before both runs gives the resumed epochs 3-4 the uninterrupted run's order.
    straight = make_model(make_optimizer(), dropout=0.0)
    set_random_seed(7)
    straight.fit(X, Y, epochs=4, batch_size=16, verbose=0)

    first = make_model(make_optimizer(), dropout=0.0)
    set_random_seed(7)
    first.fit(X, Y, epochs=2, batch_size=16, verbose=0)
    path = str(tmp_path / "half.distnn")
    first.save(path)
    resumed = load_model(path)
    assert resumed.optimizer.iterations == 6
    set_random_seed(7)
    history = resumed.fit(X, Y, epochs=4, initial_epoch=2, batch_size=16, verbose=0)
    np.testing.assert_array_equal(resumed.params, straight.params)
    assert history.history["loss"] == straight.history.history["loss"][2:]


def test_resume_without_randomness_with_shuffle_false(tmp_path):
    def model():
        set_random_seed(3)
        m = Sequential([Dense(8, activation="tanh", input_shape=(5,)), Dense(3, activation="softmax")])
        m.compile(optimizer=optimizers.Nadam(0.01), loss="categorical_crossentropy")
        return m

    straight = model()
    straight.fit(X, Y, epochs=4, batch_size=10, shuffle=False, verbose=0)
    first = model()
    first.fit(X, Y, epochs=2, batch_size=10, shuffle=False, verbose=0)
    first.save(str(tmp_path / "m.distnn"))
    resumed = load_model(str(tmp_path / "m.distnn"))
    resumed.fit(X, Y, epochs=2, batch_size=10, shuffle=False, verbose=0)
    np.testing.assert_array_equal(resumed.params, straight.params)
    # Without the optimizer state the continuation differs: the test above would notice a lost state.
    fresh_optimizer = load_model(str(tmp_path / "m.distnn"), compile=False)
    fresh_optimizer.compile(optimizer=optimizers.Nadam(0.01), loss="categorical_crossentropy")
    fresh_optimizer.fit(X, Y, epochs=2, batch_size=10, shuffle=False, verbose=0)
    assert not np.allclose(fresh_optimizer.params, straight.params)


def test_load_without_compile_and_save_of_an_uncompiled_model(tmp_path):
    model = Sequential([Dense(4, input_shape=(3,)), Dense(2)])
    model.save(str(tmp_path / "plain.distnn"))
    restored = load_model(str(tmp_path / "plain.distnn"))
    assert not restored.compiled
    ones = np.ones((2, 3))
    np.testing.assert_array_equal(restored.predict(ones, verbose=0), model.predict(ones, verbose=0))
    compiled = make_model("adam")
    compiled.save(str(tmp_path / "compiled.distnn"))
    assert not load_model(str(tmp_path / "compiled.distnn"), compile=False).compiled


def test_save_and_load_weights(tmp_path):
    model = make_model("adam")
    model.fit(X, Y, epochs=1, verbose=0)
    model.save_weights(str(tmp_path / "w.distnn"))
    other = make_model("adam", seed=5)
    assert not np.array_equal(other.params, model.params)
    other.load_weights(str(tmp_path / "w.distnn"))
    np.testing.assert_array_equal(other.params, model.params)
    wrong = Sequential([Dense(9, input_shape=(5,)), Dense(3)])
    with pytest.raises(ValueError, match="shape"):
        wrong.load_weights(str(tmp_path / "w.distnn"))


def test_file_format_is_json_and_npy_only(tmp_path):
    model = make_model(optimizers.Adam(0.01))
    model.fit(X, Y, epochs=1, verbose=0)
    path = tmp_path / "model.distnn"
    model.save(str(path))
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["config.json", "optimizer.npz", "weights.npz"]
        config = json.loads(archive.read("config.json"))
        assert config["format"] == "distnn" and config["compile"]["loss"]["class_name"] == "CategoricalCrossentropy"
        for member in ("weights.npz", "optimizer.npz"):
            with np.load(io.BytesIO(archive.read(member)), allow_pickle=False) as npz:
                assert all(npz[key].dtype != object for key in npz.files)
    assert not list(tmp_path.glob(".tmp-*"))  # the temporary file was renamed into place


UNPICKLED = []


def _record_unpickling():
    UNPICKLED.append(True)
    return "executed"


class Payload:
    def __reduce__(self):
        return _record_unpickling, ()


@pytest.mark.parametrize("member", ["weights.npz", "optimizer.npz"])
def test_object_arrays_are_rejected_without_unpickling(tmp_path, member):
    model = make_model(optimizers.Adam(0.01))
    model.fit(X, Y, epochs=1, verbose=0)
    members = saving.model_archive(model)
    with np.load(io.BytesIO(members[member])) as npz:
        arrays = {key: npz[key] for key in npz.files}
    first = sorted(arrays)[0]
    arrays[first] = np.array([Payload()], dtype=object)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # numpy pickles object arrays when saving
    members[member] = buffer.getvalue()
    path = tmp_path / "evil.distnn"
    path.write_bytes(saving.zip_bytes(members))
    UNPICKLED.clear()
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_model(str(path))
    assert UNPICKLED == []


def test_damaged_and_foreign_files_are_rejected(tmp_path):
    (tmp_path / "not_a_zip.distnn").write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a zip archive"):
        load_model(str(tmp_path / "not_a_zip.distnn"))
    foreign = tmp_path / "foreign.distnn"
    foreign.write_bytes(saving.zip_bytes({"config.json": b'{"format": "other"}', "weights.npz": b""}))
    with pytest.raises(ValueError, match="format='other'"):
        load_model(str(foreign))


class Doubler(Layer):
    """A custom layer that is *not* registered: loading needs custom_objects."""

    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x, training=False):
        return x * self.factor

    def backward(self, grad):
        return grad * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


class ScaledMSE(losses.Loss):
    def __init__(self, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, y_true, y_pred):
        return self.scale * ((y_pred - y_true) ** 2).mean(axis=-1)

    def gradient(self, y_true, y_pred):
        return self.scale * 2 * (y_pred - y_true) / y_pred.shape[-1]

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def test_unregistered_custom_objects_load_through_custom_objects(tmp_path):
    model = Sequential([Dense(4, input_shape=(3,)), Doubler(factor=3.0), Dense(1)])
    model.compile(optimizer="adam", loss=ScaledMSE(scale=0.5))
    x = RNG.normal(size=(20, 3)).astype("float32")
    y = RNG.normal(size=(20, 1)).astype("float32")
    model.fit(x, y, epochs=2, verbose=0)
    path = str(tmp_path / "custom.distnn")
    model.save(path)
    with pytest.raises(ValueError, match="Doubler.*custom_objects"):
        load_model(path)
    with pytest.raises(ValueError, match="ScaledMSE.*custom_objects"):
        load_model(path, custom_objects={"Doubler": Doubler})
    restored = load_model(path, custom_objects={"Doubler": Doubler, "ScaledMSE": ScaledMSE})
    assert restored.layers[1].factor == 3.0 and restored.loss.scale == 0.5
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))
    assert restored.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)


def test_custom_function_metric_cannot_be_saved_silently(tmp_path):
    model = make_model("sgd")
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=[lambda y, p: (p - y).mean(-1)])
    with pytest.raises(ValueError, match="custom metric"):
        model.save(str(tmp_path / "m.distnn"))


def test_overwrite_false_refuses_an_existing_file_and_safe_mode_false_warns(tmp_path):
    model = make_model("sgd")
    path = tmp_path / "m.distnn"
    model.save(str(path), overwrite=False)  # a new file: written
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=False"):
        model.save(str(path), overwrite=False)
    with pytest.raises(FileExistsError, match="overwrite=False"):
        model.save_weights(str(path), overwrite=False)
    assert path.read_bytes() == before
    model.save(str(path))  # overwrite=True, the default: replaced
    with pytest.warns(UserWarning, match=r"safe_mode=False\) changes nothing"):
        load_model(str(path), safe_mode=False)
