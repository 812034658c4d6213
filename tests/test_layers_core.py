"""Core layers: forward values against numpy, shapes, configuration and argument errors.

Backward passes are checked by finite differences in test_gradient_check.py.
"""
import numpy as np
import pytest

from distnn import activations
from distnn.layers import Activation, Dense, Dropout, Flatten, Input, InputLayer, Layer, Reshape
from distnn.utils import clear_session

RNG = np.random.default_rng(0)


def test_dense_forward_matches_numpy():
    layer = Dense(3, activation="tanh")
    x = RNG.normal(size=(4, 5)).astype("float32")
    y = layer(x)
    kernel, bias = layer.get_weights()
    assert kernel.shape == (5, 3) and bias.shape == (3,)
    np.testing.assert_allclose(y, np.tanh(x @ kernel + bias), rtol=1e-6)
    assert y.dtype == np.float32 and layer.count_params() == 18


def test_dense_applies_to_the_last_axis_and_without_bias():
    layer = Dense(2, use_bias=False)
    x = RNG.normal(size=(3, 4, 5)).astype("float32")
    y = layer(x)
    assert y.shape == (3, 4, 2) and layer.compute_output_shape((None, 4, 5)) == (None, 4, 2)
    np.testing.assert_allclose(y, x @ layer.get_weights()[0], rtol=1e-5)
    assert len(layer.weights) == 1 and layer.count_params() == 10


def test_dense_inference_outputs_are_not_overwritten_by_later_calls():
    layer = Dense(3, activation="relu")
    first = layer(np.ones((2, 4), dtype="float32"))
    kept = first.copy()
    layer(np.full((2, 4), -5.0, dtype="float32"))
    np.testing.assert_array_equal(first, kept)


def test_dense_rejects_inputs_of_another_size_after_building():
    layer = Dense(3)
    layer(np.ones((2, 4), dtype="float32"))
    with pytest.raises(ValueError, match=r"expected shape \(None, 4\), received \(None, 5\)"):
        layer(np.ones((2, 5), dtype="float32"))


@pytest.mark.parametrize("units", [0, -3, 2.5, True, "8"])
def test_dense_units_must_be_a_positive_integer(units):
    with pytest.raises(ValueError, match=f"Received: units={units}"):
        Dense(units=units)


def test_dense_config_round_trip():
    layer = Dense(7, activation=activations.LeakyReLU(0.1), use_bias=False, kernel_initializer="he_normal",
                  kernel_regularizer="l2", name="my_dense", input_shape=(3,))
    config = layer.get_config()
    assert config["units"] == 7 and config["name"] == "my_dense" and config["batch_input_shape"] == [None, 3]
    clone = Dense.from_config(config)
    assert clone.get_config() == config


def test_activation_layer():
    x = RNG.normal(size=(3, 4))
    np.testing.assert_allclose(Activation("relu")(x), np.maximum(x, 0))
    np.testing.assert_allclose(Activation("softmax")(x).sum(-1), 1.0, rtol=1e-6)
    assert Activation.from_config(Activation("elu").get_config()).activation.name == "elu"


def test_dropout_is_the_identity_at_inference():
    x = RNG.normal(size=(50, 40)).astype("float32")
    np.testing.assert_array_equal(Dropout(0.5)(x, training=False), x)
    np.testing.assert_array_equal(Dropout(0.0)(x, training=True), x)


def test_dropout_in_training_drops_a_fraction_and_rescales():
    x = np.ones((200, 100), dtype="float32")
    y = Dropout(0.3, seed=1)(x, training=True)
    dropped = (y == 0).mean()
    assert abs(dropped - 0.3) < 0.02
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.03  # inverted dropout keeps the expectation


def test_dropout_seed_and_noise_shape():
    x = np.ones((8, 5, 6), dtype="float32")
    a = Dropout(0.5, seed=3)(x, training=True)
    b = Dropout(0.5, seed=3)(x, training=True)
    np.testing.assert_array_equal(a, b)
    shared = Dropout(0.5, noise_shape=(None, 1, 6), seed=4)(x, training=True)
    # One mask per (sample, feature), broadcast over the middle axis.
    assert (shared == shared[:, :1, :]).all()
    assert 0 < (shared == 0).mean() < 1


@pytest.mark.parametrize("rate", [1.5, 1.0, -0.1])
def test_dropout_rate_is_checked(rate):
    with pytest.raises(ValueError, match=f"Received: rate={rate}"):
        Dropout(rate=rate)


def test_flatten_and_reshape():
    x = RNG.normal(size=(2, 3, 4)).astype("float32")
    np.testing.assert_array_equal(Flatten()(x), x.reshape(2, 12))
    assert Flatten().compute_output_shape((None, 3, 4)) == (None, 12)
    np.testing.assert_array_equal(Reshape((4, 3))(x), x.reshape(2, 4, 3))
    np.testing.assert_array_equal(Reshape((-1, 2))(x), x.reshape(2, 6, 2))
    assert Reshape((2, -1)).compute_output_shape((None, 3, 4)) == (None, 2, 6)
    assert Reshape.from_config(Reshape((6, 2)).get_config()).target_shape == (6, 2)


def test_reshape_errors():
    with pytest.raises(ValueError, match="target_shape"):
        Reshape((-1, -1))
    with pytest.raises(ValueError, match="total size"):
        Reshape((5,)).compute_output_shape((None, 3, 4))
    with pytest.raises(ValueError, match="cannot reshape"):
        Reshape((5, -1)).compute_output_shape((None, 3, 4))


def test_input_shape_spellings():
    assert Dense(2, input_dim=7).input_shape == (None, 7)
    assert Dense(2, input_shape=(7,)).input_shape == (None, 7)
    assert Dense(2, input_shape=7).input_shape == (None, 7)
    assert Dense(2, batch_input_shape=(32, 7)).input_shape == (None, 7)
    assert Input(shape=(3, 4)).shape == (None, 3, 4)  # a symbolic tensor, as keras.Input
    assert InputLayer(shape=(3, 4)).input_shape == (None, 3, 4)
    with pytest.raises(ValueError, match="input_shape"):
        Dense(2, input_shape=(0,))
    with pytest.raises(ValueError, match="shape"):
        Input()


def test_unbuilt_layer_has_no_parameter_count():
    layer = Dense(4, name="late")
    with pytest.raises(ValueError, match="'late' is not built"):
        layer.count_params()
    with pytest.raises(AttributeError, match="no defined input shape"):
        layer.input_shape  # noqa: B018
    layer.build((None, 3))
    assert layer.count_params() == 16


def test_unexpected_keyword_arguments_are_rejected():
    with pytest.raises(TypeError, match="unitz"):
        Dense(3, unitz=4)
    with pytest.raises(TypeError, match="name"):
        Dense(3, name=5)


def test_automatic_names_follow_keras():
    clear_session()
    names = [Dense(1).name, Dense(1).name, Dropout(0.1).name, Dense(1).name, Flatten().name]
    assert names == ["dense", "dense_1", "dropout", "dense_2", "flatten"]

    class MyFancyLayer(Layer):
        pass

    assert MyFancyLayer().name == "my_fancy_layer"
    assert Dense(1, name="custom").name == "custom"


def test_set_weights_checks_count_and_shapes():
    layer = Dense(2)
    layer.build((None, 3))
    new = [np.arange(6, dtype="float32").reshape(3, 2), np.array([1, 2], dtype="float32")]
    layer.set_weights(new)
    for got, want in zip(layer.get_weights(), new):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="expects 2 weight arrays"):
        layer.set_weights(new[:1])
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        layer.set_weights([new[0].T, new[1]])


def test_flatten_channels_first_moves_channels_last_as_keras():
    x = RNG.normal(size=(2, 3, 4, 5))
    channels_first = Flatten(data_format="channels_first")
    np.testing.assert_array_equal(channels_first(x), np.moveaxis(x, 1, -1).reshape(2, -1))
    np.testing.assert_array_equal(Flatten()(x), x.reshape(2, -1))
    np.testing.assert_array_equal(channels_first(x[:, :, 0, 0]), x[:, :, 0, 0])  # 2-D inputs: nothing to move
    assert Flatten().data_format == "channels_last"
    assert Flatten.from_config(channels_first.get_config()).data_format == "channels_first"
    with pytest.raises(ValueError, match="data_format"):
        Flatten(data_format="channels_middle")


def test_flatten_channels_first_model_equals_its_channels_last_twin():
    from distnn.models import Sequential
    from distnn.utils import check_layer_gradients

    x = RNG.normal(size=(6, 3, 4, 5)).astype("float32")  # channels first: 3 channels of 4x5
    first = Sequential([Input((3, 4, 5)), Flatten(data_format="channels_first"), Dense(2)])
    last = Sequential([Input((4, 5, 3)), Flatten(), Dense(2)])
    last.set_weights(first.get_weights())
    np.testing.assert_allclose(first.predict(x, verbose=0), last.predict(np.moveaxis(x, 1, -1), verbose=0), rtol=1e-6)
    result = check_layer_gradients(Flatten(data_format="channels_first", dtype="float64"), input_shape=(2, 3, 2, 2))
    assert result.errors and result.max_error <= 1e-6, result


def test_add_weight_refuses_aggregations_it_would_ignore():
    layer = Layer()
    assert layer.add_weight(shape=(2,), aggregation="mean").trainable  # trainable: the gradient decides
    assert not layer.add_weight(shape=(2,), trainable=False).trainable  # Keras 3's default "none"
    with pytest.raises(ValueError, match="non-trainable weight.*aggregation='sum'"):
        layer.add_weight(shape=(2,), trainable=False, aggregation="sum")
    with pytest.raises(ValueError, match="aggregation='average'"):
        layer.add_weight(shape=(2,), aggregation="average")
