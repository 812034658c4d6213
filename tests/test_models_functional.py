"""The model kinds on the tape: functional graphs (shared layers, ops, several inputs and outputs,
nested models), subclassed models, eager calls, configs, and their gradients in float64."""
import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest

import distnn as keras
from distnn import backend, layers, ops
from distnn.utils import check_layer_gradients, check_model_gradients, clear_session

RNG = np.random.default_rng(0)


@pytest.fixture
def float64():
    backend.set_floatx("float64")
    yield
    backend.set_floatx("float32")


def _shared_graph():
    inputs = keras.Input(shape=(6,), name="features")
    shared = layers.Dense(6, activation="tanh", name="shared")
    a = shared(inputs)
    b = shared(ops.concatenate([a[:, :2], inputs[:, 2:]], axis=-1))
    merged = ops.add(a, b) * 0.5
    classes = layers.Dense(3, activation="softmax", name="classes")(merged)
    value = layers.Dense(1, name="value")(merged)
    return keras.Model(inputs, {"classes": classes, "value": value}, name="two_heads")


def test_shared_layer_and_ops_gradients_match_finite_differences(float64):
    model = _shared_graph()
    model.compile("sgd", loss={"classes": "categorical_crossentropy", "value": "mse"},
                  loss_weights={"classes": 1.0, "value": 0.3})
    x = RNG.normal(size=(7, 6))
    y = {"classes": np.eye(3)[RNG.integers(3, size=7)], "value": RNG.normal(size=(7, 1))}
    result = check_model_gradients(model, x, y)
    assert result.max_error < 1e-6, result


def test_functional_config_json_and_file_round_trips(tmp_path):
    model = _shared_graph()
    x = RNG.normal(size=(5, 6)).astype("float32")
    expected = model.predict(x, verbose=0)
    rebuilt = keras.models.model_from_json(model.to_json())
    rebuilt.set_weights(model.get_weights())
    for key in ("classes", "value"):
        np.testing.assert_array_equal(rebuilt.predict(x, verbose=0)[key], expected[key])
    model.compile("adam", loss={"classes": "categorical_crossentropy", "value": "mse"}, metrics={"classes": ["accuracy"]})
    model.save(tmp_path / "m.distnn")
    loaded = keras.models.load_model(tmp_path / "m.distnn")
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0)["value"], expected["value"])
    assert json.loads(model.to_json())["config"]["output_layers"] == {"classes": ["classes", 0, 0],
                                                                      "value": ["value", 0, 0]}


def test_multi_output_fit_reports_keras3_log_names():
    model = _shared_graph()
    model.compile("adam", loss={"classes": "categorical_crossentropy", "value": "mse"},
                  loss_weights={"classes": 1.0, "value": 0.5}, metrics={"classes": ["accuracy"]})
    x = RNG.normal(size=(64, 6)).astype("float32")
    y = {"classes": np.eye(3)[RNG.integers(3, size=64)], "value": RNG.normal(size=(64, 1))}
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0).history
    assert set(history) == {"loss", "classes_loss", "value_loss", "classes_accuracy"}
    total = np.array(history["classes_loss"]) + 0.5 * np.array(history["value_loss"])
    np.testing.assert_allclose(history["loss"], total, rtol=1e-6)
    assert history["loss"][-1] < history["loss"][0]


def test_summary_has_connected_to_for_functional_models():
    out = io.StringIO()
    with redirect_stdout(out):
        _shared_graph().summary()
    text = out.getvalue()
    assert "Connected to" in text and "shared[0][0], shared[1][0]" in text
    assert "features (InputLayer)" in text and "Total params: 70" in text


def test_several_inputs_by_list_and_by_name():
    a, b = keras.Input(shape=(3,), name="a"), keras.Input(shape=(2,), name="b")
    out = layers.Dense(1)(ops.concatenate([a, b], axis=-1))
    model = keras.Model([a, b], out)
    xa, xb = RNG.normal(size=(4, 3)).astype("float32"), RNG.normal(size=(4, 2)).astype("float32")
    np.testing.assert_array_equal(model([xa, xb]), model({"a": xa, "b": xb}))
    with pytest.raises(ValueError, match="expects 2 input"):
        model([xa])


def test_nested_model_is_a_layer_and_shares_weights():
    inner = keras.Sequential([layers.Dense(4, activation="relu"), layers.Dense(2)], name="inner")
    inputs = keras.Input(shape=(3,))
    outer = keras.Model(inputs, layers.Dense(1)(inner(inputs)))
    assert len(outer.weights) == 6 and inner.layers[0].kernel in outer.trainable_weights
    x = RNG.normal(size=(5, 3)).astype("float32")
    np.testing.assert_allclose(outer(x), outer.layers[-1](inner(x)), rtol=1e-6)


def test_graph_errors_name_what_is_wrong():
    a, b = keras.Input(shape=(3,)), keras.Input(shape=(3,))
    out = layers.Dense(1)(ops.add(a, b))
    with pytest.raises(ValueError, match="Graph disconnected"):
        keras.Model(a, out)
    with pytest.raises(TypeError, match="symbolic tensors"):
        keras.Model(a, np.ones(3))
    dense = layers.Dense(2)
    dense(a)
    dense(b)
    with pytest.raises(AttributeError, match="called 2 times"):
        dense.output  # noqa: B018 - the property raises


def test_layer_input_output_after_graph_building():
    inputs = keras.Input(shape=(4,))
    dense = layers.Dense(3)
    outputs = dense(inputs)
    assert dense.input is inputs and dense.output is outputs and dense.output_shape == (None, 3)


class Residual(keras.Model):
    """A subclassed model: layers as attributes, a list of blocks, call with a training flag."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [layers.Dense(5, activation="tanh") for _ in range(2)]
        self.dropout = layers.Dropout(0.5)
        self.head = layers.Dense(2, activation="softmax")

    def call(self, inputs, training=False):
        x = inputs
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.dropout(x, training=training))


def test_subclassed_model_tracks_layers_and_trains(float64):
    model = Residual()
    x = RNG.normal(size=(6, 5))
    y = np.eye(2)[RNG.integers(2, size=6)]
    model.compile("sgd", "categorical_crossentropy")
    assert check_model_gradients(model, x, y).max_error < 1e-6
    assert len(model.layers) == 4 and len(model.trainable_weights) == 6
    assert model.get_layer(index=-1) is model.head
    # The flat buffer is in backward-completion order: the head first, the first block last.
    assert np.shares_memory(model.head.kernel.value, model.params[:10])


def test_training_flag_reaches_nested_layers_only_when_not_given():
    model = Residual()
    x = np.ones((2000, 5), dtype="float32")
    np.testing.assert_array_equal(model(x), model(x))  # inference: dropout off
    assert not np.array_equal(model(x, training=True), model(x))


def test_custom_layer_with_only_call_and_a_loss_function(float64):
    class Scale(layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def call(self, x):  # no training argument: Keras 3 passes it only when named
            return x * self.w + ops.square(x)

    def cubic_error(y_true, y_pred):
        return ops.mean(ops.abs(y_pred - y_true) ** 3, axis=-1)

    assert check_layer_gradients(Scale(), input_shape=(3, 4)).max_error < 1e-6
    model = keras.Sequential([layers.Input(shape=(4,)), Scale(), layers.Dense(2)])
    model.compile("sgd", loss=cubic_error)
    x, y = RNG.normal(size=(8, 4)), RNG.normal(size=(8, 2))
    assert check_model_gradients(model, x, y).max_error < 1e-6


def test_activity_regularization_with_add_loss(float64):
    class ActivityRegularization(layers.Layer):
        def __init__(self, rate=1e-2):
            super().__init__()
            self.rate = rate

        def call(self, inputs):
            self.add_loss(self.rate * ops.mean(ops.square(inputs)))
            return inputs

    model = keras.Sequential([layers.Input(shape=(3,)), layers.Dense(4), ActivityRegularization(0.5), layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = RNG.normal(size=(6, 3)), RNG.normal(size=(6, 1))
    assert check_model_gradients(model, x, y).max_error < 1e-6
    model(x)
    assert len(model.losses) == 1
    hidden = backend.to_numpy(model.layers[0](x))
    assert float(model.losses[0]) == pytest.approx(0.5 * np.mean(hidden ** 2))


def test_eager_calls_return_arrays_and_record_nothing():
    clear_session()
    dense = layers.Dense(3)
    out = dense(np.ones((2, 4)))
    assert isinstance(out, backend.xp().ndarray) and out.shape == (2, 3)  # a raw array of the device
    assert dense.kernel.shape == (4, 3)
