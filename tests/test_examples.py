"""The examples run as a user would run them: the Keras iris script reaches Keras-like accuracy,
and the custom layer + custom loss example trains, passes the gradient checker and reloads."""

import numpy as np
import pytest

import distnn
from distnn import backend
from distnn.layers import Dense
from distnn.saving import get_custom_objects
from distnn.models import Sequential, load_model
from distnn.utils import check_layer_gradients, check_loss_gradients, check_model_gradients

from conftest import load_example


@pytest.fixture(scope="module")
def custom():
    return load_example("custom_layer_and_loss")


@pytest.fixture
def float64():
    backend.set_floatx("float64")
    yield
    backend.set_floatx("float32")


# --------------------------------------------------------------------------------------- iris
@pytest.mark.parametrize("optimizer, mean_at_least, each_at_least", [("sgd", 0.95, 0.90), ("adam", 0.97, 0.90)])
def test_iris_example_accuracy_over_seeds(optimizer, mean_at_least, each_at_least, capsys):
    iris = load_example("iris_mlp")
    accuracies = [iris.main(["--optimizer", optimizer, "--seed", str(seed)]) for seed in range(5)]
    assert min(accuracies) >= each_at_least, accuracies
    assert np.mean(accuracies) >= mean_at_least, accuracies
    printed = capsys.readouterr().out
    assert printed.count("test_accuracy=") == 5


# ------------------------------------------------------------------------ custom layer + loss
def test_custom_example_runs_and_learns(custom, capsys):
    untrained = custom.main(["--epochs", "0"])
    trained = custom.main(["--epochs", "150"])
    assert trained < 0.05 * untrained
    assert "gradient check: layer" in capsys.readouterr().out


def test_custom_layer_forward_against_numpy(custom):
    layer = custom.ParametricReLU(alpha_initial=0.3)
    x = np.array([[-2.0, -0.5, 0.0, 1.5]], dtype="float32")
    np.testing.assert_allclose(layer(x), np.where(x > 0, x, 0.3 * x))
    assert layer.count_params() == 4


def test_custom_loss_against_numpy(custom):
    loss = custom.MeanPowerError(power=3)
    y, p = np.array([[0.0, 1.0], [2.0, -1.0]]), np.array([[0.5, 0.0], [2.0, 1.0]])
    np.testing.assert_allclose(loss.call(y, p), [(0.125 + 1.0) / 2, (0.0 + 8.0) / 2])
    with pytest.raises(ValueError, match="power=1"):
        custom.MeanPowerError(power=1)


def test_custom_layer_and_loss_pass_the_gradient_checker(custom, float64):
    checks = [check_layer_gradients(custom.ParametricReLU(alpha_initial=0.2), input_shape=(6, 5)),
              check_layer_gradients(custom.ParametricReLU(), input_shape=(2, 3, 4))]
    for power in (1.5, 2.0, 3.0):
        checks.append(check_loss_gradients(custom.MeanPowerError(power), np.zeros((6, 3)),
                                           np.random.default_rng(1).normal(size=(6, 3))))
    model = custom.build_model()  # Dense -> ParametricReLU -> Dense with the custom loss, in float64
    assert model.params.dtype == np.float64
    x, y = custom.make_data(12)
    checks.append(check_model_gradients(model, x.astype(np.float64), y.astype(np.float64)))
    for result in checks:
        assert result.errors and result.max_error <= 1e-6, result


def test_custom_classes_are_registered_and_reload_by_name(custom, tmp_path):
    assert get_custom_objects()["ParametricReLU"] is custom.ParametricReLU
    assert get_custom_objects()["MeanPowerError"] is custom.MeanPowerError
    model = custom.build_model()
    x, y = custom.make_data(64)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    path = str(tmp_path / "custom.distnn")
    model.save(path)
    restored = load_model(path)  # no custom_objects: the registry finds both classes
    assert isinstance(restored.layers[1], custom.ParametricReLU)
    assert isinstance(restored.loss, custom.MeanPowerError) and restored.loss.power == 3.0
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))
    # Training continues identically (the Adam state travelled with the file).
    model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    restored.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    np.testing.assert_array_equal(restored.params, model.params)


def test_register_serializable_with_a_custom_name(tmp_path):
    @distnn.layers.register_serializable(name="TimesTwoForTest")
    class TimesTwo(distnn.layers.Layer):
        def call(self, x, training=False):
            return 2 * x

        def backward(self, grad):
            return 2 * grad

    model = Sequential([Dense(3, input_shape=(2,)), TimesTwo()])
    model.save(str(tmp_path / "m.distnn"))
    assert model.get_config()["layers"][1]["class_name"] == "TimesTwoForTest"  # saved under the registered name
    restored = load_model(str(tmp_path / "m.distnn"))
    assert type(restored.layers[1]) is TimesTwo
    ones = np.ones((1, 2))
    np.testing.assert_array_equal(restored.predict(ones, verbose=0), model.predict(ones, verbose=0))

    class Unregistered(TimesTwo):  # a subclass is not registered by inheritance
        pass

    assert Sequential([Dense(3, input_shape=(2,)), Unregistered()]).get_config()["layers"][1]["class_name"] == \
        "Unregistered"
