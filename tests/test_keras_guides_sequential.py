"""keras.io guide "The Sequential model" (Keras 3), run on distnn with only the imports changed."""
import numpy as np
import pytest

import distnn as keras
from distnn import layers, ops


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def test_sequential_equals_the_chained_layers():
    model = keras.Sequential([layers.Dense(2, activation="relu", name="layer1"),
                              layers.Dense(3, activation="relu", name="layer2"),
                              layers.Dense(4, name="layer3")])
    x = np.ones((3, 3), dtype="float32")
    y = model(x)
    layer1, layer2, layer3 = model.layers
    assert [layer.name for layer in model.layers] == ["layer1", "layer2", "layer3"]
    np.testing.assert_allclose(ops.convert_to_numpy(y), ops.convert_to_numpy(layer3(layer2(layer1(x)))), rtol=1e-6)


def test_add_and_pop():
    model = keras.Sequential(name="my_sequential")
    model.add(layers.Dense(2, activation="relu"))
    model.add(layers.Dense(3, activation="relu"))
    model.add(layers.Dense(4))
    model.pop()
    assert len(model.layers) == 2
    assert model.name == "my_sequential"


def test_weights_are_created_on_first_call():
    layer = layers.Dense(3)
    assert layer.weights == []
    layer(np.ones((1, 4), dtype="float32"))
    assert [w.shape for w in layer.weights] == [(4, 3), (3,)]

    model = keras.Sequential([layers.Dense(2, activation="relu"), layers.Dense(3, activation="relu"), layers.Dense(4)])
    assert model.weights == []  # no input shape yet
    model(np.ones((1, 4), dtype="float32"))
    assert len(model.weights) == 6


def test_input_first_then_summary():
    model = keras.Sequential()
    model.add(keras.Input(shape=(4,)))
    model.add(layers.Dense(2, activation="relu"))
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "(None, 2)" in text and "Total params: 10" in text
    assert len(model.layers) == 1  # the Input is not a layer

    model = keras.Sequential()
    model.add(layers.Dense(2, activation="relu", input_shape=(4,)))
    assert model.count_params() == 10


def test_incremental_summaries_track_output_shapes():
    model = keras.Sequential()
    model.add(keras.Input(shape=(40, 40, 3)))
    model.add(layers.Conv2D(32, 5, strides=2, activation="relu"))
    model.add(layers.Conv2D(32, 3, activation="relu"))
    model.add(layers.MaxPooling2D(3))
    assert model.output_shape == (None, 5, 5, 32)
    model.add(layers.GlobalMaxPooling2D())
    model.add(layers.Dense(10))
    assert model.output_shape == (None, 10)
    assert model.count_params() == (5 * 5 * 3 * 32 + 32) + (3 * 3 * 32 * 32 + 32) + (32 * 10 + 10)


def test_feature_extraction_with_a_sequential_model():
    initial_model = keras.Sequential([keras.Input(shape=(40, 40, 3)),
                                      layers.Conv2D(32, 5, strides=2, activation="relu"),
                                      layers.Conv2D(32, 3, activation="relu", name="my_intermediate_layer"),
                                      layers.Conv2D(32, 3, activation="relu")])
    feature_extractor = keras.Model(inputs=initial_model.inputs,
                                    outputs=[layer.output for layer in initial_model.layers])
    x = np.ones((1, 40, 40, 3), dtype="float32")
    features = feature_extractor(x)
    assert [np.shape(f) for f in features] == [(1, 18, 18, 32), (1, 16, 16, 32), (1, 14, 14, 32)]
    np.testing.assert_allclose(ops.convert_to_numpy(features[-1]), ops.convert_to_numpy(initial_model(x)), rtol=1e-6)

    one = keras.Model(inputs=initial_model.inputs,
                      outputs=initial_model.get_layer(name="my_intermediate_layer").output)
    np.testing.assert_allclose(ops.convert_to_numpy(one(x)), ops.convert_to_numpy(features[1]), rtol=1e-6)


def test_transfer_learning_freezes_all_but_the_last_layer():
    model = keras.Sequential([keras.Input(shape=(784,)), layers.Dense(32, activation="relu"),
                              layers.Dense(32, activation="relu"), layers.Dense(32, activation="relu"),
                              layers.Dense(10)])
    for layer in model.layers[:-1]:
        layer.trainable = False
    frozen = [layer.get_weights() for layer in model.layers[:-1]]
    last = model.layers[-1].get_weights()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    model.fit(rng.random((64, 784)).astype("float32"), rng.integers(0, 10, 64), epochs=1, verbose=0)
    for layer, before in zip(model.layers[:-1], frozen):
        for a, b in zip(before, layer.get_weights()):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(last[0], model.layers[-1].get_weights()[0])
    assert len(model.trainable_weights) == 2
