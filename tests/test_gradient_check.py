"""Float64 finite-difference checks of every backward pass: layers, activations, losses,
regularizers and whole models with the fused softmax/CCE and sigmoid/BCE output gradients."""
import numpy as np
import pytest

from distnn import activations, backend, losses, regularizers
from distnn.layers import Activation, Dense, Dropout, Flatten, Layer, Reshape
from distnn.models import Sequential
from distnn.utils import check_gradients, check_layer_gradients, check_loss_gradients, check_model_gradients

TOLERANCE = 1e-6
ACTIVATIONS = sorted(activations._CLASSES)
RNG = np.random.default_rng(0)


@pytest.fixture
def float64():
    backend.set_floatx("float64")
    yield
    backend.set_floatx("float32")


def _assert_ok(result):
    assert result.errors, "nothing was checked"
    assert result.max_error <= TOLERANCE, str(result)


# ------------------------------------------------------------------------------------ layers
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_with_every_activation(activation):
    result = check_layer_gradients(Dense(5, activation=activation, dtype="float64"), input_shape=(6, 4))
    _assert_ok(result)
    assert len(result.errors) == 3  # input, kernel and bias


def test_dense_on_3d_input_and_without_bias():
    _assert_ok(check_layer_gradients(Dense(3, activation="tanh", dtype="float64"), input_shape=(2, 5, 4)))
    result = check_layer_gradients(Dense(3, use_bias=False, dtype="float64"), input_shape=(4, 6))
    _assert_ok(result)
    assert len(result.errors) == 2  # input and kernel


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_layer(activation):
    _assert_ok(check_layer_gradients(Activation(activation, dtype="float64"), input_shape=(5, 7)))


def test_parametrised_activations():
    for fn in (activations.LeakyReLU(0.05), activations.ELU(alpha=0.7), activations.GELU(approximate=True)):
        _assert_ok(check_layer_gradients(Activation(fn, dtype="float64"), input_shape=(5, 7)))


def test_dropout_at_inference_and_with_a_fixed_mask():
    _assert_ok(check_layer_gradients(Dropout(0.4, dtype="float64"), input_shape=(6, 8), training=False))
    layer = Dropout(0.4, seed=5, dtype="float64")
    result = check_layer_gradients(layer, input_shape=(6, 8), training=True)
    _assert_ok(result)
    # The check really ran with a mask: a fraction of the inputs was dropped.
    assert 0 < (layer._mask == 0).mean() < 1


def test_flatten_and_reshape():
    _assert_ok(check_layer_gradients(Flatten(dtype="float64"), input_shape=(3, 2, 4)))
    _assert_ok(check_layer_gradients(Reshape((4, -1), dtype="float64"), input_shape=(3, 2, 4)))


def test_the_checker_catches_a_wrong_backward():
    class WrongSquare(Layer):
        def call(self, x, training=False):
            self.x = x
            return x * x

        def backward(self, grad):
            return grad * self.x  # should be 2 * x

    result = check_layer_gradients(WrongSquare(dtype="float64"), input_shape=(4, 3))
    assert result.max_error > 0.1


def test_the_checker_needs_float64():
    with pytest.raises(ValueError, match="dtype='float64'"):
        check_layer_gradients(Dense(2), input_shape=(2, 3))


# ------------------------------------------------------------------------------------ losses
def _probabilities(shape):
    p = RNG.random(shape) + 0.05
    return p / p.sum(-1, keepdims=True)


LOSS_CASES = [
    ("cce", losses.CategoricalCrossentropy(), lambda: np.eye(4)[RNG.integers(4, size=6)],
     lambda: _probabilities((6, 4))),
    ("cce_unnormalised", losses.CategoricalCrossentropy(), lambda: np.eye(4)[RNG.integers(4, size=6)],
     lambda: RNG.random((6, 4)) + 0.1),
    ("cce_logits", losses.CategoricalCrossentropy(from_logits=True), lambda: np.eye(4)[RNG.integers(4, size=6)],
     lambda: RNG.normal(size=(6, 4)) * 3),
    ("cce_smoothing", losses.CategoricalCrossentropy(label_smoothing=0.2), lambda: np.eye(4)[RNG.integers(4, size=6)],
     lambda: _probabilities((6, 4))),
    ("cce_logits_smoothing", losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
     lambda: np.eye(4)[RNG.integers(4, size=6)], lambda: RNG.normal(size=(6, 4))),
    ("cce_sequence", losses.CategoricalCrossentropy(), lambda: np.eye(3)[RNG.integers(3, size=(4, 5))],
     lambda: _probabilities((4, 5, 3))),
    ("sparse", losses.SparseCategoricalCrossentropy(), lambda: RNG.integers(4, size=6), lambda: _probabilities((6, 4))),
    ("sparse_logits", losses.SparseCategoricalCrossentropy(from_logits=True), lambda: RNG.integers(4, size=(6, 1)),
     lambda: RNG.normal(size=(6, 4))),
    ("bce", losses.BinaryCrossentropy(), lambda: (RNG.random((6, 3)) > 0.5) * 1.0,
     lambda: RNG.uniform(0.05, 0.95, (6, 3))),
    ("bce_logits", losses.BinaryCrossentropy(from_logits=True), lambda: (RNG.random((6, 3)) > 0.5) * 1.0,
     lambda: RNG.normal(size=(6, 3)) * 2),
    ("bce_smoothing", losses.BinaryCrossentropy(label_smoothing=0.3), lambda: (RNG.random((6, 3)) > 0.5) * 1.0,
     lambda: RNG.uniform(0.05, 0.95, (6, 3))),
    ("mse", losses.MeanSquaredError(), lambda: RNG.normal(size=(6, 3)), lambda: RNG.normal(size=(6, 3))),
    ("mae", losses.MeanAbsoluteError(), lambda: RNG.normal(size=(6, 3)), lambda: RNG.normal(size=(6, 3))),
    ("huber", losses.Huber(delta=0.5), lambda: RNG.normal(size=(6, 3)), lambda: RNG.normal(size=(6, 3))),
    ("kld", losses.KLDivergence(), lambda: _probabilities((6, 4)), lambda: _probabilities((6, 4))),
    # Keras 3's further losses (their values are checked in tests/test_losses_extra.py)
    *[(type(loss).__name__, loss, y_true, y_pred) for loss, y_true, y_pred in [
        (losses.MeanAbsolutePercentageError(), lambda: RNG.normal(size=(6, 3)), lambda: RNG.normal(size=(6, 3))),
        (losses.MeanSquaredLogarithmicError(), lambda: RNG.random((6, 3)), lambda: RNG.random((6, 3)) + 0.01),
        (losses.LogCosh(), lambda: RNG.normal(size=(6, 3)), lambda: RNG.normal(size=(6, 3))),
        (losses.Poisson(), lambda: RNG.poisson(2, (6, 3)), lambda: RNG.random((6, 3)) + 0.1),
        (losses.Hinge(), lambda: (RNG.random((6, 3)) > 0.5) * 1.0, lambda: RNG.normal(size=(6, 3))),
        (losses.SquaredHinge(), lambda: (RNG.random((6, 3)) > 0.5) * 1.0, lambda: RNG.normal(size=(6, 3))),
        (losses.CategoricalHinge(), lambda: np.eye(4)[RNG.integers(4, size=6)], lambda: RNG.normal(size=(6, 4))),
        (losses.CosineSimilarity(), lambda: RNG.normal(size=(6, 3)), lambda: RNG.normal(size=(6, 3))),
        (losses.CategoricalFocalCrossentropy(), lambda: np.eye(4)[RNG.integers(4, size=6)],
         lambda: _probabilities((6, 4))),
        (losses.BinaryFocalCrossentropy(), lambda: (RNG.random((6, 3)) > 0.5) * 1.0,
         lambda: RNG.uniform(0.05, 0.95, (6, 3))),
        (losses.Dice(), lambda: (RNG.random((6, 3)) > 0.5) * 1.0, lambda: RNG.random((6, 3))),
        (losses.Tversky(), lambda: (RNG.random((6, 3)) > 0.5) * 1.0, lambda: RNG.random((6, 3))),
    ]],
]


@pytest.mark.parametrize("name, loss, y_true, y_pred", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_every_loss(name, loss, y_true, y_pred):
    _assert_ok(check_loss_gradients(loss, y_true(), y_pred()))


def test_every_builtin_loss_class_is_covered():
    assert {type(case[1]) for case in LOSS_CASES} == set(losses._CLASSES.values())


# ------------------------------------------------------------------------------- regularizers
@pytest.mark.parametrize("regularizer", [regularizers.L1(0.05), regularizers.L2(0.1), regularizers.L1L2(0.03, 0.07),
                                         "l1", "l2"])
def test_every_regularizer_in_a_model(float64, regularizer):
    model = Sequential([Dense(6, activation="tanh", input_shape=(4,), kernel_regularizer=regularizer,
                              bias_regularizer=regularizer, bias_initializer="ones"),
                        Dense(2, kernel_regularizer=regularizer)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = RNG.normal(size=(8, 4)), RNG.normal(size=(8, 2))
    _assert_ok(check_model_gradients(model, x, y))
    # The penalty is a real part of the checked objective.
    assert model._penalty() > 1e-3


# ------------------------------------------------------------------------------------ models
def test_model_with_softmax_cross_entropy_fusion(float64):
    model = Sequential([Dense(8, activation="tanh", input_shape=(5,)), Dropout(0.3), Dense(6, activation="elu"),
                        Dense(4, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    assert model.params.dtype == np.float64
    x, y = RNG.normal(size=(10, 5)), np.eye(4)[RNG.integers(4, size=10)]
    _assert_ok(check_model_gradients(model, x, y))
    _assert_ok(check_model_gradients(model, x, y, sample_weight=RNG.uniform(0, 2, 10)))
    assert model.layers[-1].fused_output_activation  # decided at the step: the loss gives dL/dlogits


def test_model_with_sparse_labels_and_a_separate_softmax_layer(float64):
    model = Sequential([Dense(8, activation="relu", input_shape=(5,)), Dense(3), Activation("softmax")])
    model.compile(optimizer="adam", loss=losses.SparseCategoricalCrossentropy())
    _assert_ok(check_model_gradients(model, RNG.normal(size=(10, 5)), RNG.integers(3, size=10)))
    assert model.layers[-1].fused_output_activation  # decided at the step: the loss gives dL/dlogits


def test_model_with_sigmoid_binary_cross_entropy_fusion(float64):
    model = Sequential([Dense(8, activation="swish", input_shape=(5,)), Dense(3, activation="sigmoid")])
    model.compile(optimizer="adam", loss=losses.BinaryCrossentropy(label_smoothing=0.1))
    x, y = RNG.normal(size=(10, 5)), (RNG.random((10, 3)) > 0.5).astype(float)
    _assert_ok(check_model_gradients(model, x, y))
    assert model.layers[-1].fused_output_activation  # decided at the step: the loss gives dL/dlogits


def test_model_with_logits_and_reshapes(float64):
    model = Sequential([Flatten(input_shape=(2, 3)), Dense(8, activation="gelu"), Reshape((2, 4)),
                        Dense(5, activation="softsign"), Flatten(), Dense(3)])
    model.compile(optimizer="sgd", loss=losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.05))
    x, y = RNG.normal(size=(7, 2, 3)), np.eye(3)[RNG.integers(3, size=7)]
    _assert_ok(check_model_gradients(model, x, y))
    assert not model.layers[-1].fused_output_activation  # decided at the step: the loss gives dL/dlogits


def test_unfused_softmax_with_mse(float64):
    model = Sequential([Dense(6, activation="tanh", input_shape=(4,)), Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="mse")
    _assert_ok(check_model_gradients(model, RNG.normal(size=(8, 4)), _probabilities((8, 3))))
    assert not model.layers[-1].fused_output_activation  # decided at the step: the loss gives dL/dlogits


def test_check_gradients_dispatches(float64):
    _assert_ok(check_gradients(Dense(3, dtype="float64"), input_shape=(2, 4)))
    _assert_ok(check_gradients(losses.MeanSquaredError(), np.zeros((3, 2)), RNG.normal(size=(3, 2))))
    model = Sequential([Dense(2, input_shape=(3,))])
    model.compile(optimizer="sgd", loss="mse")
    _assert_ok(check_gradients(model, RNG.normal(size=(4, 3)), RNG.normal(size=(4, 2))))


def test_model_check_needs_float64():
    model = Sequential([Dense(2, input_shape=(3,))])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="set_floatx\\('float64'\\)"):
        check_model_gradients(model, np.zeros((2, 3)), np.zeros((2, 2)))
