"""One serialization registry for every kind of object (distnn.serialization, exposed as distnn.saving's
Keras 3 names): lookups, scopes, round trips of every built-in kind, and custom layers, losses, metrics,
activations, initializers, regularizers, constraints, optimizers and schedules saved and loaded through
custom_objects or the registration decorator."""
import ast
import json
import pathlib

import numpy as np
import pytest

import distnn
from distnn import (activations, constraints, initializers, layers, losses, metrics, ops, optimizers, regularizers,
                    saving, serialization)
from distnn.layers import Dense, Layer
from distnn.models import Sequential, load_model, model_from_json
from distnn.optimizers import schedules

RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 3)).astype("float32")
Y = RNG.normal(size=(24, 2)).astype("float32")
PACKAGE = pathlib.Path(distnn.__file__).parent


# ------------------------------------------------------------------------------ the reported bug
@saving.register_keras_serializable(package="SerializationTest")
class HalfL2(regularizers.Regularizer):
    def __init__(self, factor=0.5):
        self.factor = factor

    def penalty(self, w):
        return self.factor * float((w * w).sum())

    def gradient(self, w):
        return 2 * self.factor * w

    def get_config(self):
        return {"factor": self.factor}


@saving.register_keras_serializable(package="SerializationTest")
class Twos(initializers.Initializer):
    def generate(self, shape, rng):
        return np.full(shape, 2.0)


def test_a_registered_regularizer_and_initializer_load_again(tmp_path):
    # distnn before the registry: the file saved, then load_model failed (KeyError for the
    # regularizer, "Unknown initializer config" for the initializer).
    model = Sequential([Dense(2, kernel_regularizer=HalfL2(0.25), kernel_initializer=Twos(), input_shape=(3,))])
    config = model.get_config()["layers"][0]["config"]
    assert config["kernel_regularizer"] == {"class_name": "SerializationTest>HalfL2", "config": {"factor": 0.25}}
    model.save(str(tmp_path / "m.distnn"))
    restored = load_model(str(tmp_path / "m.distnn"))
    layer = restored.layers[0]
    assert isinstance(layer.kernel_regularizer, HalfL2) and layer.kernel_regularizer.factor == 0.25
    assert isinstance(layer.kernel_initializer, Twos)
    assert layer.kernel.trainable and restored._regularized == [layer.kernel]  # the penalty still trains


# ------------------------------------------------------------------------------------ the registry
def test_registration_names_lookup_and_the_live_dict():
    @saving.register_keras_serializable(package="Pkg", name="Renamed")
    def scaled(y_true, y_pred):
        return y_pred - y_true

    assert saving.get_registered_name(scaled) == "Pkg>Renamed"
    assert saving.get_registered_object("Pkg>Renamed") is scaled
    assert saving.get_custom_objects()["Pkg>Renamed"] is scaled
    assert saving.get_registered_name(HalfL2) == "SerializationTest>HalfL2"

    class Unregistered(HalfL2):  # a subclass is not registered by inheritance
        pass

    assert saving.get_registered_name(Unregistered) == "Unregistered"
    assert saving.get_registered_object("Unregistered") is None
    assert saving.get_registered_object("Unregistered", custom_objects={"Unregistered": Unregistered}) is Unregistered
    saving.get_custom_objects()["AddedByHand"] = Unregistered  # Keras: the dict is live
    try:
        assert saving.get_registered_object("AddedByHand") is Unregistered
    finally:
        del saving.get_custom_objects()["AddedByHand"]
    with pytest.raises(ValueError, match="get_config"):
        saving.register_keras_serializable()(type("NoConfig", (), {}))
    with pytest.raises(ValueError, match="package"):
        saving.register_keras_serializable(package="a>b")


def test_custom_object_scope_nests_and_ends():
    class Local(HalfL2):
        pass

    config = {"class_name": "Local", "config": {"factor": 3.0}}
    with pytest.raises(ValueError, match="Unknown regularizer class 'Local'"):
        regularizers.get(config)
    with saving.custom_object_scope({"Local": Local}):
        with saving.CustomObjectScope({"Other": HalfL2}):
            assert regularizers.get(config).factor == 3.0
        assert isinstance(regularizers.get(config), Local)
    with pytest.raises(ValueError, match="Unknown regularizer class 'Local'"):
        regularizers.get(config)


BUILT_INS = [
    ("layer", Dense(3, activation="relu", kernel_constraint=constraints.MaxNorm(2.0))),
    ("loss", losses.Huber(delta=2.0)),
    ("metric", metrics.Precision(thresholds=0.3)),
    ("metric", metrics.CategoricalAccuracy()),
    ("activation", activations.LeakyReLU(0.1)),
    ("initializer", initializers.RandomNormal(stddev=0.3, seed=2)),
    ("regularizer", regularizers.L1L2(l1=0.1, l2=0.2)),
    ("constraint", constraints.MinMaxNorm(0.5, 1.5, rate=0.5, axis=(0, 1))),
    ("optimizer", optimizers.Adam(schedules.ExponentialDecay(0.1, 10, 0.5), beta_1=0.8)),
    ("schedule", schedules.CosineDecay(0.1, 100, alpha=0.2)),
]


@pytest.mark.parametrize("kind, obj", BUILT_INS, ids=[f"{k}-{type(o).__name__}" for k, o in BUILT_INS])
def test_every_kind_round_trips_through_one_generic_function(kind, obj):
    saved = json.loads(json.dumps(saving.serialize_keras_object(obj)))
    assert saved["module"].startswith("distnn.")  # Keras 3's format: the public module of a built-in
    restored = saving.deserialize_keras_object(saved)
    assert type(restored) is type(obj)
    assert restored.get_config() == obj.get_config()


def test_models_round_trip_and_old_configs_without_module_still_load():
    model = Sequential([Dense(4, activation="tanh", input_shape=(3,)), Dense(2)])
    saved = saving.serialize_keras_object(model)
    assert saved["module"] == "distnn.models" and saved["config"]["layers"][1]["module"] == "distnn.layers"

    def strip(value):  # a configuration saved before "module" existed
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "module"}
        return [strip(v) for v in value] if isinstance(value, list) else value

    for config in (saved, strip(saved)):
        restored = model_from_json(json.dumps(config))
        assert type(restored) is Sequential and [type(lay) for lay in restored.layers] == [Dense, Dense]
        assert restored.layers[0].activation.name == "tanh"


def test_unknown_ambiguous_and_hostile_names_fail_clearly():
    serialization.register_builtins("tests.first", {"Thing": HalfL2})
    serialization.register_builtins("tests.second", {"Thing": Twos})
    with pytest.raises(ValueError, match=r"'Thing' names different objects in \['tests.first', 'tests.second'\]"):
        saving.deserialize_keras_object({"class_name": "Thing", "config": {}})
    assert isinstance(saving.deserialize_keras_object({"module": "tests.second", "class_name": "Thing",
                                                       "config": {}}), Twos)
    for name in ("os.system", "builtins.eval", "__import__"):
        with pytest.raises(ValueError, match=f"Unknown layer class '{name}'"):
            layers.deserialize({"class_name": name, "config": {}})
    with pytest.raises(ValueError, match="Unknown loss function 'nowhere'"):
        losses.get({"class_name": "LossFunctionWrapper", "config": {"fn": {"class_name": "function",
                                                                           "config": "nowhere"}}})
    with pytest.raises(ValueError, match="is not a layer class"):
        layers.deserialize({"module": "distnn.losses", "class_name": "Huber", "config": {}})
    with pytest.raises(ValueError, match="does not name an Initializer"):
        initializers.get({"module": "distnn.regularizers", "class_name": "L2", "config": {}})
    with pytest.raises(ValueError, match="lambda"):
        saving.serialize_keras_object(lambda x: x)


def test_plain_values_lists_and_arrays_serialize_as_json():
    value = {"a": (1, 2.5, "x", None), "b": np.float32(0.5), "c": np.arange(3)}
    assert saving.serialize_keras_object(value) == {"a": [1, 2.5, "x", None], "b": 0.5, "c": [0, 1, 2]}
    assert saving.deserialize_keras_object({"a": [1, {"b": 2}]}) == {"a": [1, {"b": 2}]}


# ------------------------------------------------------------------ custom objects of every kind
def scaled_error(y_true, y_pred):
    """A custom loss as a plain function written with ops (Keras guide style)."""
    return ops.mean(ops.square(y_pred - y_true), axis=-1) * 0.5


class OnlyCall(losses.Loss):
    """A Loss subclass with only call: the tape differentiates it."""

    def __init__(self, power=2.0, **kwargs):
        super().__init__(**kwargs)
        self.power = power

    def call(self, y_true, y_pred):
        return ops.mean(ops.abs(y_pred - y_true) ** self.power, axis=-1)

    def get_config(self):
        return {**super().get_config(), "power": self.power}


class Doubling(Layer):
    """A custom layer with only build and call."""

    def __init__(self, scale=2.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")

    def call(self, x):
        return x * self.w * self.scale

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


class SumOfErrors(metrics.Metric):
    """A Keras 3 custom metric: add_variable / update_state / result."""

    def __init__(self, name="sum_of_errors", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.total.assign_add(ops.sum(ops.abs(y_pred - y_true)))

    def result(self):
        return self.total


def absolute_error(y_true, y_pred):
    return ops.mean(ops.abs(y_pred - y_true), axis=-1)


def soft_sign(x):
    return x / (1 + abs(x))


class Clip(constraints.Constraint):
    def __init__(self, limit=0.5):
        self.limit = limit

    def __call__(self, w):
        return np.clip(w, -self.limit, self.limit)

    def get_config(self):
        return {"limit": self.limit}


class HalvingSchedule(schedules.LearningRateSchedule):
    def __init__(self, rate=0.05):
        self.rate = rate

    def __call__(self, step):
        return self.rate / (1 + step)


CUSTOM = {"scaled_error": scaled_error, "OnlyCall": OnlyCall, "Doubling": Doubling, "SumOfErrors": SumOfErrors,
          "absolute_error": absolute_error, "soft_sign": soft_sign, "Clip": Clip, "HalvingSchedule": HalvingSchedule}


def custom_model(loss):
    model = Sequential([Dense(4, activation=soft_sign, kernel_constraint=Clip(0.4), kernel_initializer="glorot_uniform",
                              input_shape=(3,)),
                        Doubling(scale=1.5), Dense(2)])
    model.compile(optimizer=optimizers.SGD(HalvingSchedule(0.02)), loss=loss,
                  metrics=[SumOfErrors(), absolute_error, "mae"])
    model.fit(X, Y, epochs=2, batch_size=8, verbose=0)
    return model


@pytest.mark.parametrize("loss", [scaled_error, OnlyCall(power=3.0)], ids=["loss_function", "loss_subclass"])
def test_custom_objects_of_every_kind_load_through_custom_objects(tmp_path, loss):
    model = custom_model(loss)
    path = str(tmp_path / "custom.distnn")
    model.save(path)
    with pytest.raises(ValueError, match="custom_objects"):
        load_model(path)
    restored = load_model(path, custom_objects=CUSTOM)
    _check_restored(model, restored, loss)


def test_custom_objects_of_every_kind_load_through_the_decorator(tmp_path):
    # The same definitions, registered under a package: no custom_objects needed.
    registered = {name: saving.register_keras_serializable(package="Decorated")(obj) for name, obj in CUSTOM.items()}
    try:
        model = custom_model(OnlyCall(power=3.0))
        saved = json.loads(model.to_json())
        assert saved["config"]["layers"][1]["class_name"] == "Decorated>Doubling"
        assert saved["config"]["layers"][0]["config"]["activation"] == {"class_name": "function",
                                                                       "config": "Decorated>soft_sign"}
        path = str(tmp_path / "registered.distnn")
        model.save(path)
        _check_restored(model, load_model(path), model.loss)
    finally:
        for obj in registered.values():
            name = serialization._custom_names.pop(obj)
            del serialization._custom_objects[name]


def _check_restored(model, restored, loss):
    assert type(restored.layers[1]) is Doubling and restored.layers[1].scale == 1.5
    assert restored.layers[0].activation.fn is soft_sign
    assert isinstance(restored.layers[0].kernel_constraint, Clip) and restored.layers[0].kernel_constraint.limit == 0.4
    assert isinstance(restored.optimizer._learning_rate, HalvingSchedule)
    if isinstance(loss, losses.Loss):
        assert type(restored.loss) is OnlyCall and restored.loss.power == 3.0
    else:
        assert restored.loss.fn is scaled_error
    logs = restored.evaluate(X, Y, verbose=0, return_dict=True)
    # rel=1e-6: a custom metric's float32 variables round its batch totals a little differently once
    # they hold an earlier result (the original's do, the restored one's do not)
    assert logs == pytest.approx(model.evaluate(X, Y, verbose=0, return_dict=True), rel=1e-6)
    assert set(logs) == {"loss", "sum_of_errors", "absolute_error", "mae"}
    np.testing.assert_array_equal(restored.predict(X, verbose=0), model.predict(X, verbose=0))
    # Training goes on identically: optimizer state, schedule step and constraint travelled with the file.
    model.fit(X, Y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    restored.fit(X, Y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    np.testing.assert_array_equal(restored.params, model.params)


def test_a_lambda_metric_or_loss_cannot_be_saved_silently(tmp_path):
    model = Sequential([Dense(2, input_shape=(3,))])
    model.compile(optimizer="sgd", loss=lambda y, p: ops.mean(ops.square(p - y), axis=-1))
    with pytest.raises(ValueError, match="custom loss"):
        model.save(str(tmp_path / "m.distnn"))


def test_a_registered_metric_is_found_by_its_name_in_compile():
    saving.register_keras_serializable(package="ByName")(absolute_error)
    try:
        model = Sequential([Dense(2, input_shape=(3,))])
        model.compile(optimizer="sgd", loss="mse", metrics=["ByName>absolute_error"])
        logs = model.evaluate(X, Y, verbose=0, return_dict=True)
        expected = float(np.abs(model.predict(X, verbose=0) - Y).mean())
        assert logs["absolute_error"] == pytest.approx(expected, rel=1e-5)
    finally:
        del serialization._custom_objects[serialization._custom_names.pop(absolute_error)]


def test_distnn_activation_functions_are_the_built_in_activations():
    layer = Dense(2, activation=activations.relu)  # Keras code passes the function
    assert type(layer.activation) is activations.ReLU
    assert activations.serialize(layer.activation) == "relu"


# --------------------------------------------------------------------------- module dependencies
def _distnn_imports(path: pathlib.Path) -> set[str]:
    """Every distnn module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distnn"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("distnn")}
    return found


def test_the_registry_is_a_leaf_and_saving_reaches_models_only_through_it():
    assert _distnn_imports(PACKAGE / "serialization.py") == set()
    assert _distnn_imports(PACKAGE / "global_state.py") == set()
    for module in ("saving.py", "gradient_check.py", "models/summary.py", "layers/__init__.py"):
        assert not any(name.startswith("distnn.models") and name != "distnn.models.functional_config"
                       for name in _distnn_imports(PACKAGE / module)), module
