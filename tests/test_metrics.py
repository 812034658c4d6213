"""Metrics against direct computations: accuracy resolution, top-k, precision/recall, regression
metrics, custom functions, sample weights and class weights."""
import numpy as np
import pytest
from sklearn.metrics import precision_score, recall_score

from distnn import metrics, optimizers
from distnn.layers import Dense
from distnn.models import Sequential

RNG = np.random.default_rng(0)
X = RNG.normal(size=(60, 5)).astype("float32")
LABELS = RNG.integers(4, size=60)
ONE_HOT = np.eye(4, dtype="float32")[LABELS]


def _model(units, activation, loss, metric_list, seed=0):
    model = Sequential([Dense(units, activation=activation, input_shape=(5,),
                              kernel_initializer={"class_name": "GlorotUniform", "config": {"seed": seed}})])
    model.compile(optimizer="sgd", loss=loss, metrics=metric_list)
    return model


@pytest.mark.parametrize("loss, labels, resolved", [
    ("categorical_crossentropy", ONE_HOT, "categorical"),
    ("sparse_categorical_crossentropy", LABELS, "sparse"),
    ("sparse_categorical_crossentropy", LABELS[:, None], "sparse"),
    ("mse", ONE_HOT, "categorical"),
])
def test_accuracy_resolution_for_multiclass_outputs(loss, labels, resolved):
    model = _model(4, "softmax", loss, ["accuracy", "acc"])
    probs = model.predict(X, verbose=0)
    hits = probs.argmax(-1) == LABELS  # both resolutions mean this for these labels
    loss_value, accuracy, acc = model.evaluate(X, labels, verbose=0)
    assert accuracy == pytest.approx(hits.mean()) and acc == accuracy
    fn = model.metrics[0].fn
    assert fn is {"categorical": metrics.categorical_accuracy, "sparse": metrics.sparse_categorical_accuracy}[resolved]


@pytest.mark.parametrize("loss", ["binary_crossentropy", "mse"])
def test_accuracy_resolution_for_one_output_unit(loss):
    model = _model(1, "sigmoid", loss, ["accuracy"])
    y = (X[:, :1] > 0).astype("float32")
    p = model.predict(X, verbose=0)
    assert model.evaluate(X, y, verbose=0)[1] == pytest.approx(((p > 0.5) == (y > 0.5)).mean())
    assert model.metrics[0].fn is metrics.binary_accuracy


def test_multilabel_accuracy_follows_keras3_shape_rules():
    """Keras 3 resolves "accuracy" from shapes, not the loss: 3 sigmoid units are categorical;
    "binary_accuracy" by name gives the per-label accuracy."""
    model = _model(3, "sigmoid", "binary_crossentropy", ["accuracy", "binary_accuracy"])
    y = (RNG.random((60, 3)) > 0.5).astype("float32")
    p = model.predict(X, verbose=0)
    _, accuracy, binary = model.evaluate(X, y, verbose=0)
    assert accuracy == pytest.approx((p.argmax(-1) == y.argmax(-1)).mean())
    assert binary == pytest.approx(((p > 0.5) == y).mean())


def test_top_k_against_argsort():
    scores = RNG.random((200, 10))
    targets = np.eye(10)[RNG.integers(10, size=200)]
    for k in (1, 3, 5):
        top = np.argsort(-scores, axis=-1)[:, :k]
        expected = (top == targets.argmax(-1)[:, None]).any(-1)
        np.testing.assert_array_equal(metrics.top_k_categorical_accuracy(targets, scores, k=k), expected)
        metric = metrics.TopKCategoricalAccuracy(k=k)
        metric.update_state(targets[:120], scores[:120])
        metric.update_state(targets[120:], scores[120:])
        assert metric.result() == pytest.approx(expected.mean())


def test_top_k_in_a_model():
    # The string form uses Keras' k=5, which four classes always satisfy; an object sets k.
    model = _model(4, "softmax", "categorical_crossentropy",
                   ["top_k_categorical_accuracy", metrics.TopKCategoricalAccuracy(k=2, name="top2")])
    p = model.predict(X, verbose=0)
    in_top_2 = (np.argsort(-p, -1)[:, :2] == LABELS[:, None]).any(-1)
    assert 0 < in_top_2.mean() < 1
    assert model.evaluate(X, ONE_HOT, verbose=0)[1:] == pytest.approx([1.0, in_top_2.mean()])


def test_precision_and_recall_against_sklearn():
    y = (RNG.random((300, 1)) > 0.4).astype("float32")
    p = RNG.random((300, 1))
    w = RNG.uniform(0, 2, size=300)
    for threshold in (0.3, 0.5, 0.8):
        pred = (p > threshold).ravel()
        for cls, reference in ((metrics.Precision, precision_score), (metrics.Recall, recall_score)):
            metric = cls(thresholds=threshold)
            metric.update_state(y[:100], p[:100])
            metric.update_state(y[100:], p[100:])
            assert metric.result() == pytest.approx(reference(y.ravel(), pred))
            weighted = cls(thresholds=threshold)
            weighted.update_state(y, p, sample_weight=w)
            assert weighted.result() == pytest.approx(reference(y.ravel(), pred, sample_weight=w))
            weighted.reset_state()
            assert weighted.result() == 0.0


def test_precision_recall_and_regression_metrics_in_a_model():
    model = _model(1, "sigmoid", "binary_crossentropy", ["precision", "recall", "mse", "mae"])
    y = (X[:, 0] + X[:, 1] > 0).astype("float32")[:, None]
    p = model.predict(X, verbose=0).astype(np.float64)
    logs = model.evaluate(X, y, verbose=0, return_dict=True)
    pred = (p > 0.5).ravel()
    assert logs["precision"] == pytest.approx(precision_score(y.ravel(), pred))
    assert logs["recall"] == pytest.approx(recall_score(y.ravel(), pred))
    assert logs["mse"] == pytest.approx(((p - y) ** 2).mean(), rel=1e-5)
    assert logs["mae"] == pytest.approx(np.abs(p - y).mean(), rel=1e-5)


def test_custom_function_metric_is_averaged_over_samples():
    def max_error(y_true, y_pred):
        return np.abs(y_true - y_pred).max(axis=-1)

    model = _model(4, "softmax", "categorical_crossentropy", ["accuracy", max_error])
    p = model.predict(X, verbose=0)
    logs = model.evaluate(X, ONE_HOT, batch_size=7, verbose=0, return_dict=True)
    assert list(logs) == ["loss", "accuracy", "max_error"]
    assert logs["max_error"] == pytest.approx(np.abs(ONE_HOT - p).max(-1).mean(), rel=1e-5)


def test_sample_weights_in_evaluate():
    model = _model(4, "softmax", "categorical_crossentropy", ["accuracy"])
    p = model.predict(X, verbose=0).astype(np.float64)
    w = RNG.uniform(0, 3, size=60)
    per_sample = -np.log(np.clip(p[np.arange(60), LABELS], 1e-7, 1))
    hits = p.argmax(-1) == LABELS
    loss, accuracy = model.evaluate(X, ONE_HOT, sample_weight=w, batch_size=16, verbose=0)
    assert loss == pytest.approx((w * per_sample).sum() / 60, rel=1e-5)  # Keras: weighted sum / batch size
    assert accuracy == pytest.approx(hits.mean(), rel=1e-6)  # Keras 3: `metrics` ignore sample_weight
    model.compile(optimizer="sgd", loss="categorical_crossentropy", weighted_metrics=["accuracy"])
    _, weighted = model.evaluate(X, ONE_HOT, sample_weight=w, batch_size=16, verbose=0)
    assert weighted == pytest.approx((w * hits).sum() / w.sum(), rel=1e-6)  # weighted_metrics: weighted mean


def test_class_weight_equals_per_sample_weights():
    class_weight = {0: 1.0, 1: 3.0, 2: 0.5, 3: 2.0}
    a = _model(4, "softmax", "categorical_crossentropy", ["accuracy"], seed=3)
    b = _model(4, "softmax", "categorical_crossentropy", ["accuracy"], seed=3)
    a.compile(optimizer=optimizers.SGD(0.1), loss="categorical_crossentropy", metrics=["accuracy"])
    b.compile(optimizer=optimizers.SGD(0.1), loss="categorical_crossentropy", metrics=["accuracy"])
    p = a.predict(X, verbose=0).astype(np.float64)
    weights = np.array([class_weight[c] for c in LABELS])
    history = a.fit(X, ONE_HOT, batch_size=60, epochs=1, shuffle=False, class_weight=class_weight, verbose=0)
    b.fit(X, ONE_HOT, batch_size=60, epochs=1, shuffle=False, sample_weight=weights, verbose=0)
    np.testing.assert_array_equal(a.params, b.params)
    per_sample = -np.log(p[np.arange(60), LABELS])
    assert history.history["loss"][0] == pytest.approx((weights * per_sample).mean(), rel=1e-5)
    with pytest.raises(ValueError, match=r"\[7\]"):
        a.fit(X, ONE_HOT, class_weight={7: 1.0}, verbose=0)


def test_metric_objects_accumulate_and_reset():
    metric = metrics.get("mae")
    a, b = RNG.normal(size=(10, 3)), RNG.normal(size=(10, 3))
    metric.update_state(a[:4], b[:4])
    metric.update_state(a[4:], b[4:])
    assert metric.result() == pytest.approx(np.abs(a - b).mean())
    metric.reset_state()
    assert metric.result() == 0.0
    assert metrics.get("accuracy", output_shape=(None, 3), label_shape=(None,)).fn is metrics.sparse_categorical_accuracy


def test_unknown_metric_lists_valid_names():
    with pytest.raises(ValueError) as info:
        _model(4, "softmax", "categorical_crossentropy", ["accuracyy"])
    assert "'accuracyy'" in str(info.value) and "accuracy" in str(info.value) and "precision" in str(info.value)
    with pytest.raises(TypeError, match="metric"):
        metrics.get(3)
