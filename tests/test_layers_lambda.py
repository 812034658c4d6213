"""Lambda and Identity: calls, shapes, masks, and saving functions by name only (never as code).
(Gradients, training and the saving round trip of both: tests/test_layer_test_all.py.)"""
import json

import numpy as np
import pytest

import distnn
from distnn import backend, layers, ops
from distnn.gradient_check import check_layer_gradients

x = np.arange(6, dtype="float32").reshape(2, 3) - 2


@layers.register_serializable(name="test_layers_lambda>cube")
def cube(t):
    return t * t * t


def shift(t, amount=1.0):
    return t + amount


def test_eager_and_symbolic_calls():
    layer = layers.Lambda(lambda t: ops.square(t) + 1)
    np.testing.assert_allclose(layer(x), x ** 2 + 1)
    assert layer(distnn.Input((3,))).shape == (None, 3)  # shape found by running the function
    split = layers.Lambda(lambda t: [t[:, :1], t[:, 1:]])(distnn.Input((3,)))
    assert [s.shape for s in split] == [(None, 1), (None, 2)]


def test_output_shape_given_as_a_shape_or_a_function():
    inputs = distnn.Input((3,))
    assert layers.Lambda(ops.relu, output_shape=(3,))(inputs).shape == (None, 3)
    assert layers.Lambda(lambda t: ops.sum(t, axis=1, keepdims=True),
                         output_shape=lambda s: (s[0], 1))(inputs).shape == (None, 1)


def test_arguments_mask_and_training_reach_the_function():
    seen = {}

    def fn(t, amount, mask=None, training=None):
        seen.update(mask=mask, training=training)
        return t + amount

    layer = layers.Lambda(fn, arguments={"amount": 2.0})
    mask = backend.to_device(np.array([True, False]))  # on the device: passed as is
    np.testing.assert_allclose(layer(x, mask=mask, training=True), x + 2)
    assert seen["mask"] is mask and seen["training"] is True
    layers.Lambda(shift)(x)  # a function without mask/training is not given them


def test_differentiated_through_its_ops():
    layer = layers.Lambda(lambda t: ops.tanh(t) * t + ops.sum(t, axis=1, keepdims=True) / 4, dtype="float64")
    assert check_layer_gradients(layer, input_shape=(3, 4)).max_error < 1e-7


def test_masks():
    assert not layers.Lambda(shift).supports_masking  # Keras: a Lambda without mask= ends masks
    fixed = layers.Lambda(shift, mask=[True, False])
    assert fixed.supports_masking and fixed.compute_mask(x, None).tolist() == [True, False]
    computed = layers.Lambda(shift, mask=lambda inputs, mask: ops.core.value_of(inputs)[:, 0] > 0)
    assert computed.compute_mask(x).tolist() == [False, True]


def test_config_stores_functions_by_name():
    assert layers.Lambda(ops.tanh).get_config()["function"] == {"class_name": "function", "module": "distnn.ops",
                                                                "config": "tanh"}
    config = layers.Lambda(cube, output_shape=[3], arguments={}, mask=[True, False]).get_config()
    assert config["function"] == {"class_name": "function", "config": "test_layers_lambda>cube"}
    rebuilt = layers.Lambda.from_config(json.loads(json.dumps(config)))
    assert rebuilt.function is cube and rebuilt.compute_mask(x).tolist() == [True, False]
    assert layers.Lambda(shift).get_config()["function"]["config"] == "shift"
    assert layers.Lambda.from_config(layers.Lambda(shift).get_config(), custom_objects={"shift": shift}).function \
        is shift


def test_anonymous_functions_cannot_be_saved(tmp_path):
    def nested(t):
        return t

    for function in (lambda t: t, nested, np.negative):
        with pytest.raises(ValueError, match="Cannot save Lambda layer 'anonymous'.*distnn never saves code"):
            layers.Lambda(function, name="anonymous").get_config()
    model = distnn.Sequential([distnn.Input((3,)), layers.Lambda(lambda t: t * 2, name="doubler")])
    with pytest.raises(ValueError, match="Cannot save Lambda layer 'doubler'"):
        model.save(tmp_path / "m.distnn")
    assert not (tmp_path / "m.distnn").exists()
    with pytest.raises(ValueError, match="its output_shape"):
        layers.Lambda(cube, output_shape=lambda s: s, name="anonymous").get_config()


def test_save_and_load_a_model_with_lambdas(tmp_path):
    model = distnn.Sequential([distnn.Input((3,)), layers.Lambda(cube), layers.Dense(2),
                               layers.Lambda(shift, arguments={"amount": 0.5}), layers.Lambda(ops.relu)])
    path = tmp_path / "m.distnn"
    model.save(path)
    with pytest.raises(ValueError, match="needs the function 'shift': pass it in custom_objects"):
        distnn.load_model(path)
    loaded = distnn.load_model(path, custom_objects={"shift": shift})
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)


@pytest.mark.parametrize("entry, message", [
    ({"class_name": "function", "module": "os", "config": "system"}, "needs the function 'system'"),
    ({"class_name": "function", "module": "distnn.ops", "config": "_xp"}, "distnn.ops has no function '_xp'"),
    ({"class_name": "function", "module": "distnn.ops", "config": "nonexistent"}, "has no function"),
    ("print", "a saved function must be"),
    ({"class_name": "Code", "config": "cHJpbnQ="}, "a saved function must be"),
])
def test_loading_only_looks_functions_up(entry, message):
    config = {**layers.Lambda(ops.tanh, name="hostile").get_config(), "function": entry}
    with pytest.raises(ValueError, match=f"Lambda layer 'hostile'.*{message}"):
        layers.Lambda.from_config(config)


def test_bad_arguments():
    with pytest.raises(TypeError, match="function must be callable. Received: function=3"):
        layers.Lambda(3)
    with pytest.raises(TypeError, match="arguments must be a dict"):
        layers.Lambda(shift, arguments=[1])
    with pytest.raises(TypeError, match="output_shape must be"):
        layers.Lambda(shift, output_shape="3")
    with pytest.raises(ValueError, match="arguments must be JSON values"):
        layers.Lambda(shift, arguments={"amount": np.ones(2)}, name="bad").get_config()


def test_identity():
    layer = layers.Identity()
    device_x = backend.to_device(x)  # a host x is uploaded first (on a GPU), so identity holds on the device
    assert layer(device_x) is device_x and layer.supports_masking and layer.built
    pair = [distnn.Input((3,)), distnn.Input((2, 2))]
    out = layer(pair)
    assert [t.shape for t in out] == [(None, 3), (None, 2, 2)]
    assert layers.Identity.from_config(layers.Identity(name="same").get_config()).name == "same"
