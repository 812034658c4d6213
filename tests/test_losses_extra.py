"""Keras 3's extra losses: values against numpy transcriptions of Keras 3's formulas, gradients
against finite differences, names, saving and training."""
import numpy as np
import pytest

from distnn import backend, losses, optimizers
from distnn.layers import Dense
from distnn.models import Sequential
from distnn.utils import check_loss_gradients

EPS = 1e-7
RNG = np.random.default_rng(1)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


# ---------------------------------------------------------------- numpy references (Keras 3 formulas)
def ref_mape(y, p):
    return 100 * np.mean(np.abs((y - p) / np.maximum(np.abs(y), EPS)), axis=-1)


def ref_msle(y, p):
    return np.mean((np.log(np.maximum(p, EPS) + 1) - np.log(np.maximum(y, EPS) + 1)) ** 2, axis=-1)


def ref_log_cosh(y, p):
    return np.mean(np.log(np.cosh(p - y)), axis=-1)


def ref_poisson(y, p):
    return np.mean(p - y * np.log(p + EPS), axis=-1)


def _hinge_y(y):
    return 2 * y - 1 if np.all((y == 0) | (y == 1)) else y


def ref_hinge(y, p):
    return np.mean(np.maximum(1 - _hinge_y(y) * p, 0), axis=-1)


def ref_squared_hinge(y, p):
    return np.mean(np.maximum(1 - _hinge_y(y) * p, 0) ** 2, axis=-1)


def ref_categorical_hinge(y, p):
    return np.maximum(np.max((1 - y) * p, axis=-1) - np.sum(y * p, axis=-1) + 1, 0)


def _l2n(x, axis):
    return x / np.sqrt(np.maximum(np.sum(x * x, axis=axis, keepdims=True), 1e-12))


def ref_cosine(y, p, axis=-1):
    return -np.sum(_l2n(y, axis) * _l2n(p, axis), axis=axis)


def ref_cat_focal(y, p, alpha=0.25, gamma=2.0, from_logits=False, label_smoothing=0.0):
    if label_smoothing:
        y = y * (1 - label_smoothing) + label_smoothing / y.shape[-1]
    if from_logits:
        p = _softmax(p)
    out = np.clip(p / p.sum(-1, keepdims=True), EPS, 1 - EPS)
    return np.sum(alpha * (1 - out) ** gamma * -y * np.log(out), axis=-1)


def ref_bin_focal(y, p, apply_class_balancing=False, alpha=0.25, gamma=2.0, from_logits=False,
                  label_smoothing=0.0):
    if label_smoothing:
        y = y * (1 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        bce = np.maximum(p, 0) - p * y + np.log1p(np.exp(-np.abs(p)))
        p = _sigmoid(p)
    else:
        c = np.clip(p, EPS, 1 - EPS)
        bce = -(y * np.log(c) + (1 - y) * np.log(1 - c))
    p_t = y * p + (1 - y) * (1 - p)
    focal = (1 - p_t) ** gamma * bce
    if apply_class_balancing:
        focal = (y * alpha + (1 - y) * (1 - alpha)) * focal
    return np.mean(focal, axis=-1)


def ref_dice(y, p):  # Keras 3, axis=None, on one sample
    y, p = y.reshape(-1), p.reshape(-1)
    return 1 - 2 * np.sum(y * p) / (np.sum(y) + np.sum(p) + EPS)


def ref_tversky(y, p, alpha=0.5, beta=0.5):  # Keras 3, axis=None, on one sample
    y, p = y.reshape(-1), p.reshape(-1)
    inter = np.sum(y * p)
    fp, fn = np.sum((1 - p) * y), np.sum(p * (1 - y))
    return 1 - inter / (inter + alpha * fp + beta * fn + EPS)


def _binary(shape):
    return (RNG.random(shape) > 0.5) * 1.0


def _probs(shape):
    return _softmax(RNG.normal(size=shape))


def _one_hot(shape):
    return np.eye(shape[-1])[RNG.integers(shape[-1], size=shape[:-1])]


# name, loss, reference, y_true, y_pred
CASES = [
    ("mape", losses.MeanAbsolutePercentageError(), ref_mape, RNG.normal(size=(5, 3)), RNG.normal(size=(5, 3))),
    ("msle", losses.MeanSquaredLogarithmicError(), ref_msle, RNG.random((5, 3)) * 3, RNG.random((5, 3)) * 3),
    ("log_cosh", losses.LogCosh(), ref_log_cosh, RNG.normal(size=(5, 3)), RNG.normal(size=(5, 3))),
    ("poisson", losses.Poisson(), ref_poisson, RNG.poisson(2, (5, 3)) * 1.0, RNG.random((5, 3)) * 3 + 0.1),
    ("hinge_01", losses.Hinge(), ref_hinge, _binary((5, 4)), RNG.normal(size=(5, 4))),
    ("hinge_pm1", losses.Hinge(), ref_hinge, 2 * _binary((5, 4)) - 1, RNG.normal(size=(5, 4))),
    ("squared_hinge", losses.SquaredHinge(), ref_squared_hinge, _binary((5, 4)), RNG.normal(size=(5, 4))),
    ("categorical_hinge", losses.CategoricalHinge(), ref_categorical_hinge, _one_hot((5, 4)),
     RNG.normal(size=(5, 4))),
    ("cosine", losses.CosineSimilarity(), ref_cosine, RNG.normal(size=(5, 4)), RNG.normal(size=(5, 4))),
    ("cat_focal", losses.CategoricalFocalCrossentropy(), ref_cat_focal, _one_hot((5, 4)), _probs((5, 4))),
    ("cat_focal_logits_smooth",
     losses.CategoricalFocalCrossentropy(alpha=0.4, gamma=1.5, from_logits=True, label_smoothing=0.1),
     lambda y, p: ref_cat_focal(y, p, 0.4, 1.5, True, 0.1), _one_hot((5, 4)), RNG.normal(size=(5, 4)) * 2),
    ("cat_focal_gamma0", losses.CategoricalFocalCrossentropy(gamma=0.0),
     lambda y, p: ref_cat_focal(y, p, gamma=0.0), _one_hot((5, 4)), _probs((5, 4))),
    ("bin_focal", losses.BinaryFocalCrossentropy(), ref_bin_focal, _binary((5, 3)), RNG.uniform(0.05, 0.95, (5, 3))),
    ("bin_focal_balanced_logits",
     losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=0.3, gamma=3.0, from_logits=True,
                                    label_smoothing=0.2),
     lambda y, p: ref_bin_focal(y, p, True, 0.3, 3.0, True, 0.2), _binary((5, 3)), RNG.normal(size=(5, 3)) * 2),
    ("dice", losses.Dice(), lambda y, p: np.array([ref_dice(a, b) for a, b in zip(y, p)]),
     _binary((4, 3, 3)), RNG.random((4, 3, 3))),
    ("tversky", losses.Tversky(alpha=0.3, beta=0.7),
     lambda y, p: np.array([ref_tversky(a, b, 0.3, 0.7) for a, b in zip(y, p)]), _binary((4, 6)), RNG.random((4, 6))),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name, loss, reference, y_true, y_pred", CASES, ids=IDS)
def test_values_match_keras_formulas(name, loss, reference, y_true, y_pred):
    np.testing.assert_allclose(loss.call(y_true, y_pred), reference(y_true, y_pred), rtol=1e-10, atol=1e-12)
    # The default reduction is the mean of the per-sample values.
    np.testing.assert_allclose(loss(y_true, y_pred), reference(y_true, y_pred).mean(), rtol=1e-10)


@pytest.mark.parametrize("name, loss, reference, y_true, y_pred", CASES, ids=IDS)
def test_gradients_match_finite_differences(name, loss, reference, y_true, y_pred):
    result = check_loss_gradients(loss, y_true, y_pred)
    assert result.errors and result.max_error <= 1e-6, str(result)


def test_sequence_outputs_average_over_time_steps():
    y, p = RNG.normal(size=(3, 5, 2)), RNG.normal(size=(3, 5, 2))
    np.testing.assert_allclose(losses.LogCosh().call(y, p), ref_log_cosh(y, p).mean(axis=1), rtol=1e-12)
    assert check_loss_gradients(losses.LogCosh(), y, p).max_error <= 1e-6


def test_cosine_similarity_on_another_axis():
    y, p = RNG.normal(size=(3, 4, 2)), RNG.normal(size=(3, 4, 2))
    loss = losses.CosineSimilarity(axis=1)
    np.testing.assert_allclose(loss.call(y, p), ref_cosine(y, p, axis=1).mean(axis=1), rtol=1e-12)
    assert check_loss_gradients(loss, y, p).max_error <= 1e-6
    np.testing.assert_allclose(losses.CosineSimilarity().call(y, y), -np.ones(3), rtol=1e-12)


@pytest.mark.parametrize("name, cls, kwargs", [
    ("mean_absolute_percentage_error", losses.MeanAbsolutePercentageError, {}),
    ("mape", losses.MeanAbsolutePercentageError, {}), ("msle", losses.MeanSquaredLogarithmicError, {}),
    ("log_cosh", losses.LogCosh, {}), ("poisson", losses.Poisson, {}), ("hinge", losses.Hinge, {}),
    ("squared_hinge", losses.SquaredHinge, {}), ("categorical_hinge", losses.CategoricalHinge, {}),
    ("cosine_similarity", losses.CosineSimilarity, {"axis": 1}),
    ("categorical_focal_crossentropy", losses.CategoricalFocalCrossentropy, {"alpha": 0.5, "gamma": 1.0}),
    ("binary_focal_crossentropy", losses.BinaryFocalCrossentropy, {"apply_class_balancing": True}),
    ("dice", losses.Dice, {}), ("tversky", losses.Tversky, {"alpha": 0.2, "beta": 0.8}),
])
def test_names_and_saved_configurations(name, cls, kwargs):
    assert type(losses.get(name)) is cls
    loss = cls(**kwargs)
    restored = losses.deserialize(losses.serialize(loss))
    assert type(restored) is cls and restored.get_config() == loss.get_config()
    assert restored.get_config()["name"] == loss.name == cls().name


def test_function_forms():
    y, p = _binary((4, 3)), RNG.normal(size=(4, 3))
    np.testing.assert_allclose(losses.hinge(y, p), ref_hinge(y, p), rtol=1e-12)
    np.testing.assert_allclose(losses.binary_focal_crossentropy(y, p, from_logits=True, gamma=1.0),
                               ref_bin_focal(y, p, gamma=1.0, from_logits=True), rtol=1e-12)
    assert type(losses.get(losses.tversky)) is losses.Tversky  # a built-in function trains with its fused gradient


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="Received: gamma=-1"):
        losses.BinaryFocalCrossentropy(gamma=-1)
    with pytest.raises(ValueError, match="Received: axis=1"):
        losses.CategoricalFocalCrossentropy(axis=1)
    with pytest.raises(ValueError, match=r"Received: axis=\(1, 2\)"):
        losses.Dice(axis=(1, 2))
    with pytest.raises(ValueError, match="Received: axis=0"):
        losses.CosineSimilarity(axis=0).call(np.ones((2, 3)), np.ones((2, 3)))


@pytest.mark.parametrize("loss, activation", [("binary_focal_crossentropy", "sigmoid"), ("hinge", "tanh"),
                                              ("dice", "sigmoid"), ("log_cosh", None)])
def test_training_lowers_the_loss(loss, activation):
    x = RNG.normal(size=(64, 4)).astype("float32")
    y = (x[:, :1] + x[:, 1:2] > 0).astype("float32")
    y = np.concatenate([y, 1 - y], axis=1)  # every sample has a positive entry, so its dice can fall
    model = Sequential([Dense(8, activation="tanh"), Dense(2, activation=activation)])
    model.compile(optimizer=optimizers.Adam(0.02), loss=loss)
    history = model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.8 * history.history["loss"][0]


def test_float32_values_stay_float32():
    p = RNG.normal(size=(4, 3)).astype(np.float32)
    assert losses.LogCosh().call(p * 0, p).dtype == np.float32
    assert backend.floatx() == "float32"


# ------------------------------------------------------- sparse categorical crossentropy ignore_class
def test_sparse_categorical_crossentropy_ignore_class():
    labels = RNG.integers(4, size=(5, 6))
    labels[0, :2] = labels[3, 4] = -1
    logits = RNG.normal(size=(5, 6, 4))
    loss = losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = labels != -1
    entries = np.where(valid, -np.take_along_axis(log_p, np.where(valid, labels, 0)[..., None], -1)[..., 0], 0)
    np.testing.assert_allclose(loss.call(labels, logits), entries.mean(axis=1), rtol=1e-12)
    # A direct call's mean divides by the valid entries only (Keras 3's masked mean).
    assert loss(labels, logits) == pytest.approx(entries.sum() / valid.sum(), rel=1e-12)
    for probabilities in (False, True):
        checked = losses.SparseCategoricalCrossentropy(ignore_class=-1) if probabilities else loss
        y_pred = np.exp(log_p) if probabilities else logits
        result = check_loss_gradients(checked, labels, y_pred)
        assert result.max_error <= 1e-6, str(result)
        assert not checked.gradient(labels, y_pred)[~valid].any()  # ignored entries get no gradient
    loss.check_targets(labels, (None, 6, 4))  # the ignored label is accepted
    restored = losses.deserialize(losses.serialize(loss))
    assert restored.ignore_class == -1
    with pytest.raises(ValueError, match="Received: ignore_class=0.5"):
        losses.SparseCategoricalCrossentropy(ignore_class=0.5)
