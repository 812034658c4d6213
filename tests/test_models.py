"""Sequential structure: building, flat buffers, weights, pop, configuration and summary()."""
import json

import numpy as np
import pytest

from distnn.layers import Dense, Dropout, Flatten, Input
from distnn.models import Sequential
from distnn.utils import clear_session

RNG = np.random.default_rng(0)


def tutorial_model():
    model = Sequential()
    model.add(Dense(units=64, activation="relu", input_dim=100))
    model.add(Dense(units=10, activation="softmax"))
    return model


def test_summary_matches_keras():
    clear_session()
    lines = []
    model = tutorial_model()
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert lines[0] == 'Model: "sequential"'
    dense_row = next(line for line in lines if "dense (Dense)" in line)
    assert "(None, 64)" in dense_row and "6,464" in dense_row  # 100 * 64 + 64
    dense_1_row = next(line for line in lines if "dense_1 (Dense)" in line)
    assert "(None, 10)" in dense_1_row and "650" in dense_1_row  # 64 * 10 + 10
    assert "Total params: 7,114" in text
    assert "Trainable params: 7,114" in text
    assert "Non-trainable params: 0" in text
    assert model.count_params() == 100 * 64 + 64 + 64 * 10 + 10


def test_summary_counts_frozen_layers_as_non_trainable():
    lines = []
    model = tutorial_model()
    model.layers[0].trainable = False
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "Total params: 7,114" in text and "Trainable params: 650" in text and "Non-trainable params: 6,464" in text


def test_summary_of_an_unbuilt_model_prints_without_failing():
    lines = []
    Sequential([Dense(3)]).summary(print_fn=lines.append)
    assert any("?" in line for line in lines)
    assert not any("Total params" in line for line in lines)


def test_flat_parameter_buffer_in_reverse_layer_order():
    model = Sequential([Dense(4, input_shape=(3,)), Dense(2)])
    k1, b1, k2, b2 = model.get_weights()
    expected = np.concatenate([k2.ravel(), b2, k1.ravel(), b1])  # last layer first (docs/architecture.md)
    np.testing.assert_array_equal(model.params, expected)
    assert model.params.ndim == 1 and model.grads.shape == model.params.shape
    # Weights are views: writing the flat buffer changes the layers, and the reverse.
    model.params[:] = np.arange(model.params.size)
    np.testing.assert_array_equal(model.layers[1].kernel.numpy().ravel(), np.arange(8))
    model.layers[0].bias.assign(np.array([7, 7, 7, 7], dtype="float32"))
    np.testing.assert_array_equal(model.params[-4:], [7, 7, 7, 7])
    for v in model.trainable_weights:
        assert np.shares_memory(v.grad, model.grads)


def test_build_from_input_layer_explicit_build_or_data():
    with_input = Sequential([Input(shape=(2, 3)), Flatten(), Dense(5)])
    assert with_input.built and with_input.output_shape == (None, 5) and len(with_input.layers) == 2
    explicit = Sequential([Dense(5), Dense(1)])
    assert not explicit.built
    explicit.build((None, 4))
    assert explicit.built and explicit.count_params() == 4 * 5 + 5 + 5 + 1
    lazy = Sequential([Dense(5), Dense(1)])
    assert lazy.predict(np.ones((3, 6)), verbose=0).shape == (3, 1)
    assert lazy.input_shape == (None, 6)
    with pytest.raises(ValueError, match="input shape is unknown"):
        Sequential([Dense(2)]).build()


def test_get_and_set_weights_round_trip():
    model = tutorial_model()
    x = RNG.normal(size=(5, 100)).astype("float32")
    other = tutorial_model()
    assert not np.array_equal(model.predict(x, verbose=0), other.predict(x, verbose=0))
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(100, 64), (64,), (64, 10), (10,)]
    other.set_weights(weights)
    np.testing.assert_array_equal(model.predict(x, verbose=0), other.predict(x, verbose=0))
    weights[0][...] = 0  # get_weights returns copies
    assert np.abs(model.get_weights()[0]).sum() > 0
    with pytest.raises(ValueError, match="expects 4 weight arrays. Received: 3"):
        other.set_weights(weights[:3])
    with pytest.raises(ValueError, match="shape"):
        other.set_weights([weights[0].T, *weights[1:]])


def test_pop_removes_the_last_layer_and_rebuilds():
    model = Sequential([Dense(8, input_shape=(3,)), Dense(4), Dense(2)])
    popped = model.pop()
    assert popped.units == 2 and len(model.layers) == 2 and model.output_shape == (None, 4)
    assert model.params.size == 3 * 8 + 8 + 8 * 4 + 4
    assert model.predict(np.ones((2, 3)), verbose=0).shape == (2, 4)
    model.pop()
    model.pop()
    with pytest.raises(TypeError, match="no layers"):
        model.pop()


def test_pop_and_add_after_compile_keep_training_correct():
    x = RNG.normal(size=(32, 3)).astype("float32")
    y = np.eye(2, dtype="float32")[RNG.integers(2, size=32)]
    model = Sequential([Dense(8, input_shape=(3,), activation="tanh"), Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    model.pop()
    model.add(Dense(6, activation="relu"))
    model.add(Dense(2, activation="softmax"))
    history = model.fit(x, y, epochs=3, verbose=0)  # the optimizer state follows the new layout
    assert np.isfinite(history.history["loss"]).all()
    # The old softmax layer was removed; only the new last layer uses the fused loss gradient.
    assert [layer.fused_output_activation for layer in model.layers] == [False, False, True]


def test_layer_names_must_be_unique_and_layers_must_be_layers():
    model = Sequential([Dense(2, name="a", input_shape=(3,))])
    with pytest.raises(ValueError, match="unique names"):
        model.add(Dense(2, name="a"))
    with pytest.raises(TypeError, match="Layer instances"):
        model.add("dense")
    with pytest.raises(ValueError, match="Input must come first"):
        model.add(Input(shape=(2,)))


def test_get_layer_and_automatic_names():
    clear_session()
    model = Sequential([Dense(4, input_shape=(3,)), Dropout(0.5), Dense(2)])
    assert [layer.name for layer in model.layers] == ["dense", "dropout", "dense_1"]
    assert model.get_layer("dense_1") is model.layers[2]
    assert model.get_layer(index=1) is model.layers[1]
    with pytest.raises(ValueError, match="No such layer: nope"):
        model.get_layer("nope")


def test_config_round_trip_rebuilds_an_equivalent_model():
    model = Sequential([Dense(6, activation="elu", input_shape=(4,), kernel_regularizer="l2"),
                        Dropout(0.25, seed=2), Dense(3, activation="softmax")], name="net")
    config = model.get_config()
    assert json.loads(json.dumps(config)) == config  # JSON-serialisable
    clone = Sequential.from_config(config)
    assert clone.get_config() == config and clone.name == "net"
    clone.set_weights(model.get_weights())
    x = RNG.normal(size=(7, 4)).astype("float32")
    np.testing.assert_array_equal(clone.predict(x, verbose=0), model.predict(x, verbose=0))
    with pytest.raises(ValueError, match="Unknown layer class 'Mystery'"):
        Sequential.from_config({"name": "m", "layers": [{"class_name": "Mystery", "config": {}}]})


def test_input_and_output_shapes_require_a_build():
    model = Sequential([Dense(2)])
    with pytest.raises(ValueError, match="not been built"):
        model.output_shape  # noqa: B018
    with pytest.raises(ValueError, match="not been built"):
        model.count_params()
