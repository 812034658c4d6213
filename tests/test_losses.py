"""Losses: values against Keras 3's formulas written out here, reductions, fusion, lookup, errors.

Gradients are checked by finite differences in test_gradient_check.py.
"""
import numpy as np
import pytest

from distnn import activations, losses

EPS = 1e-7
RNG = np.random.default_rng(0)
N, C = 8, 4
LABELS = RNG.integers(C, size=N)
ONE_HOT = np.eye(C)[LABELS]
LOGITS = RNG.normal(size=(N, C)) * 3
PROBS = np.exp(LOGITS) / np.exp(LOGITS).sum(-1, keepdims=True)
BINARY = (RNG.random((N, 3)) > 0.5).astype(float)
BIN_PROBS = RNG.uniform(0.01, 0.99, size=(N, 3))
TARGETS = RNG.normal(size=(N, 3))
PREDS = RNG.normal(size=(N, 3)) * 2


def _cce(y, p):
    p = np.clip(p / p.sum(-1, keepdims=True), EPS, 1 - EPS)
    return -(y * np.log(p)).sum(-1)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _bce(y, p):
    p = np.clip(p, EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(-1)


def _bce_logits(y, z):
    return (np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0) - z * y).mean(-1)


def _huber(y, p, delta):
    e = np.abs(p - y)
    return np.where(e <= delta, 0.5 * e ** 2, delta * e - 0.5 * delta ** 2).mean(-1)


def _kld(y, p):
    y, p = np.clip(y, EPS, 1), np.clip(p, EPS, 1)
    return (y * np.log(y / p)).sum(-1)


def _smooth(y, ls):
    return y * (1 - ls) + ls / y.shape[-1]


CASES = [
    ("cce", losses.CategoricalCrossentropy(), ONE_HOT, PROBS, _cce(ONE_HOT, PROBS)),
    ("cce_logits", losses.CategoricalCrossentropy(from_logits=True), ONE_HOT, LOGITS,
     -(ONE_HOT * _log_softmax(LOGITS)).sum(-1)),
    ("cce_smooth", losses.CategoricalCrossentropy(label_smoothing=0.2), ONE_HOT, PROBS,
     _cce(_smooth(ONE_HOT, 0.2), PROBS)),
    ("cce_soft_labels", losses.CategoricalCrossentropy(), PROBS[::-1], PROBS, _cce(PROBS[::-1], PROBS)),
    ("sparse", losses.SparseCategoricalCrossentropy(), LABELS, PROBS, _cce(ONE_HOT, PROBS)),
    ("sparse_column", losses.SparseCategoricalCrossentropy(), LABELS[:, None], PROBS, _cce(ONE_HOT, PROBS)),
    ("sparse_logits", losses.SparseCategoricalCrossentropy(from_logits=True), LABELS, LOGITS,
     -(ONE_HOT * _log_softmax(LOGITS)).sum(-1)),
    ("bce", losses.BinaryCrossentropy(), BINARY, BIN_PROBS, _bce(BINARY, BIN_PROBS)),
    ("bce_logits", losses.BinaryCrossentropy(from_logits=True), BINARY, PREDS, _bce_logits(BINARY, PREDS)),
    ("bce_smooth", losses.BinaryCrossentropy(label_smoothing=0.1), BINARY, BIN_PROBS,
     _bce(BINARY * 0.9 + 0.05, BIN_PROBS)),
    ("mse", losses.MeanSquaredError(), TARGETS, PREDS, ((PREDS - TARGETS) ** 2).mean(-1)),
    ("mae", losses.MeanAbsoluteError(), TARGETS, PREDS, np.abs(PREDS - TARGETS).mean(-1)),
    ("huber", losses.Huber(delta=0.7), TARGETS, PREDS, _huber(TARGETS, PREDS, 0.7)),
    ("kld", losses.KLDivergence(), PROBS[::-1], PROBS, _kld(PROBS[::-1], PROBS)),
]


@pytest.mark.parametrize("name, loss, y_true, y_pred, expected", CASES, ids=[c[0] for c in CASES])
def test_per_sample_values_and_reductions(name, loss, y_true, y_pred, expected):
    np.testing.assert_allclose(loss.call(np.asarray(y_true, float), y_pred), expected, rtol=1e-10)
    # Keras' default reduction: the (weighted) sum over the batch divided by the batch size.
    assert loss(y_true, y_pred) == pytest.approx(expected.mean(), rel=1e-10)
    w = np.linspace(0.0, 2.0, N)
    assert loss(y_true, y_pred, sample_weight=w) == pytest.approx((w * expected).sum() / N, rel=1e-10)
    assert type(loss)(reduction="sum", **_args(loss))(y_true, y_pred) == pytest.approx(expected.sum(), rel=1e-10)
    np.testing.assert_allclose(type(loss)(reduction="none", **_args(loss))(y_true, y_pred), expected, rtol=1e-10)


def _args(loss):
    config = loss.get_config()
    config.pop("name"), config.pop("reduction")
    return config


def test_per_sample_average_over_extra_axes():
    # A (batch, time, classes) output: Keras averages the per-step losses of each sample.
    y = np.eye(3)[RNG.integers(3, size=(5, 4))]
    p = RNG.random((5, 4, 3)) + 0.05
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(losses.CategoricalCrossentropy().call(y, p), _cce(y, p).mean(-1), rtol=1e-12)
    np.testing.assert_allclose(losses.MeanSquaredError().call(y, p), ((p - y) ** 2).mean(axis=(1, 2)), rtol=1e-12)


def test_probabilities_are_clipped_and_logits_are_stable():
    y = np.array([[1.0, 0.0]])
    assert losses.CategoricalCrossentropy().call(y, np.array([[0.0, 1.0]]))[0] == pytest.approx(-np.log(EPS))
    huge = np.array([[1000.0, -1000.0]])
    assert losses.CategoricalCrossentropy(from_logits=True).call(y[:, ::-1], huge)[0] == pytest.approx(2000.0)
    bce = losses.BinaryCrossentropy(from_logits=True)
    assert bce.call(np.array([[0.0]]), np.array([[800.0]]))[0] == pytest.approx(800.0)


@pytest.mark.parametrize("loss, activation, y", [
    (losses.CategoricalCrossentropy(), "softmax", ONE_HOT),
    (losses.CategoricalCrossentropy(label_smoothing=0.1), "softmax", ONE_HOT),
    (losses.SparseCategoricalCrossentropy(), "softmax", LABELS),
    (losses.BinaryCrossentropy(), "sigmoid", (LOGITS > 0).astype(float)),
    (losses.BinaryCrossentropy(label_smoothing=0.2), "sigmoid", (LOGITS > 0).astype(float)),
])
def test_fused_gradient_equals_the_chain_rule(loss, activation, y):
    assert loss.fusable_with(activation)
    fn = activations.get(activation)
    p = fn(LOGITS.copy())
    chained = fn.backward(loss.gradient(np.asarray(y, float), p), LOGITS, p)
    np.testing.assert_allclose(loss.fused_gradient(np.asarray(y, float), p), chained, rtol=1e-8, atol=1e-12)


def test_fusion_applies_only_to_its_activation():
    assert not losses.CategoricalCrossentropy(from_logits=True).fusable_with("softmax")
    assert not losses.CategoricalCrossentropy().fusable_with("sigmoid")
    assert not losses.MeanSquaredError().fusable_with("softmax")


def test_lookup_names_aliases_and_config_round_trip():
    for name, cls in [("categorical_crossentropy", losses.CategoricalCrossentropy), ("mse", losses.MeanSquaredError),
                      ("mae", losses.MeanAbsoluteError), ("kld", losses.KLDivergence), ("huber", losses.Huber),
                      ("sparse_categorical_crossentropy", losses.SparseCategoricalCrossentropy),
                      ("binary_crossentropy", losses.BinaryCrossentropy)]:
        assert type(losses.get(name)) is cls
    assert type(losses.get(losses.Huber)) is losses.Huber
    original = losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.3)
    restored = losses.get(losses.serialize(original))
    assert restored.get_config() == original.get_config()
    assert restored(ONE_HOT, LOGITS) == pytest.approx(original(ONE_HOT, LOGITS), rel=1e-12)


def test_errors_name_the_argument():
    with pytest.raises(ValueError) as info:
        losses.get("categorical_crossentropyy")
    assert "'categorical_crossentropyy'" in str(info.value)
    assert "categorical_crossentropy" in str(info.value) and "mse" in str(info.value)
    with pytest.raises(TypeError, match="a function"):
        losses.get(42)
    with pytest.raises(ValueError, match="label_smoothing=1.5"):
        losses.CategoricalCrossentropy(label_smoothing=1.5)
    with pytest.raises(ValueError, match="delta=0"):
        losses.Huber(delta=0)
    with pytest.raises(ValueError, match="reduction='average'"):  # Keras 3 has "mean", not this
        losses.MeanSquaredError(reduction="average")
    with pytest.raises(ValueError, match="custom_objects"):
        losses.get({"class_name": "NoSuchLoss", "config": {}})


def test_target_checks():
    with pytest.raises(ValueError, match=r"\(8, 3\).*\(None, 4\)"):
        losses.CategoricalCrossentropy().check_targets(np.zeros((8, 3)), (None, 4))
    sparse = losses.SparseCategoricalCrossentropy()
    sparse.check_targets(np.array([0, 3]), (None, 4))
    sparse.check_targets(np.array([[0], [3]]), (None, 4))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        sparse.check_targets(np.array([0, 4]), (None, 4))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        sparse.check_targets(np.array([0.5, 1]), (None, 4))
    with pytest.raises(ValueError, match="integer labels of shape"):
        sparse.check_targets(np.zeros((2, 4)), (None, 4))


class _ElementWiseSquare(losses.Loss):
    """A loss whose call keeps every element (no mean over the last axis)."""

    def call(self, y_true, y_pred):
        return (y_pred - y_true) ** 2


def test_direct_calls_reduce_as_keras_3():
    y_true = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    y_pred = np.array([[0.5, 1.0], [1.0, 1.0], [0.0, 0.5]])
    per_sample = ((y_pred - y_true) ** 2).mean(axis=-1)  # [0.125, 0.5, 0.125]
    weights = np.array([2.0, 0.0, 1.0])
    weighted = per_sample * weights
    expected = {"none": weighted, None: weighted, "sum": weighted.sum(), "sum_over_batch_size": weighted.sum() / 3,
                "mean": weighted.sum() / 3, "mean_with_sample_weight": weighted.sum() / weights.sum()}
    for reduction, value in expected.items():
        loss = losses.MeanSquaredError(reduction=reduction)
        np.testing.assert_allclose(loss(y_true, y_pred, sample_weight=weights), value, rtol=1e-12)
        np.testing.assert_allclose(loss(y_true, y_pred, sample_weight=weights[:, None]), value, rtol=1e-12)
    # Without weights, mean_with_sample_weight is the mean; a (batch, 1) weight column works as well.
    assert losses.MeanSquaredError(reduction="mean_with_sample_weight")(y_true, y_pred) == pytest.approx(0.25)
    assert losses.MeanSquaredError(reduction="mean_with_sample_weight")(
        y_true, y_pred, sample_weight=np.zeros(3)) == 0.0
    # The default divides by the number of loss values, not the batch: every element for element-wise losses.
    square = (y_pred - y_true) ** 2
    assert _ElementWiseSquare()(y_true, y_pred) == pytest.approx(square.sum() / 6)
    np.testing.assert_allclose(_ElementWiseSquare(reduction="none")(y_true, y_pred, sample_weight=weights),
                               square * weights[:, None])
    assert losses.MeanSquaredError().get_config()["reduction"] == "sum_over_batch_size"


def test_compile_refuses_a_reduction_training_would_not_honor():
    from distnn.layers import Dense
    from distnn.models import Sequential

    model = Sequential([Dense(1, input_shape=(2,))])
    for reduction in ("sum", "none", None, "mean_with_sample_weight"):
        with pytest.raises(ValueError, match=f"reduction={reduction!r}.*directly"):
            model.compile(optimizer="sgd", loss=losses.MeanSquaredError(reduction=reduction))
    x = np.random.default_rng(0).normal(size=(16, 2)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    results = []
    for reduction in ("sum_over_batch_size", "mean"):  # the same objective, under both Keras names
        model = Sequential([Dense(1, input_shape=(2,), kernel_initializer="ones")])
        model.compile(optimizer="sgd", loss=losses.MeanSquaredError(reduction=reduction))
        results.append(model.fit(x, 2 * y, epochs=2, batch_size=4, shuffle=False, verbose=0).history["loss"])
    assert results[0] == results[1]
