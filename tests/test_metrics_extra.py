"""Keras 3's further metrics against sklearn / numpy, their saved configurations, and AUC's exactness
on 2 ranks (its state is the confusion histogram, summed across ranks)."""
import json

import numpy as np
import pytest
from sklearn.metrics import (average_precision_score, confusion_matrix, f1_score, fbeta_score, r2_score,
                             roc_auc_score)

from conftest import run_mpi, run_python
from distnn import metrics
from distnn.layers import Dense
from distnn.models import Sequential

RNG = np.random.default_rng(4)


def _result(metric, y_true, y_pred, sample_weight=None, batches=3):
    """Accumulate in several batches (as an epoch does) and return the result."""
    metric.reset_state()
    for part in np.array_split(np.arange(len(y_true)), batches):
        metric.update_state(y_true[part], y_pred[part], None if sample_weight is None else sample_weight[part])
    return metric.result()


def _scores(n=4000):
    y = (RNG.random(n) < 0.4).astype(float)
    p = 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + RNG.normal(size=n) * 1.5)))
    return y[:, None], p[:, None]


def _keras_auc_reference(y, p, w, curve, method, num_thresholds=200):
    """Keras 3's AUC written out: confusion counts per threshold by brute force, then its sums."""
    t = np.array([-1e-7] + [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)] + [1 + 1e-7])
    pos = p.ravel()[None, :] > t[:, None]
    y, w = y.ravel(), w.ravel()
    tp, fp = (pos * y * w).sum(1), (pos * (1 - y) * w).sum(1)
    fn, tn = (~pos * y * w).sum(1), (~pos * (1 - y) * w).sum(1)
    div = lambda a, b: np.where(b > 0, a / np.where(b > 0, b, 1), 0)  # noqa: E731
    if curve == "PR" and method == "interpolation":
        dtp, pp = tp[:-1] - tp[1:], tp + fp
        slope = div(dtp, np.maximum(pp[:-1] - pp[1:], 0))
        intercept = tp[1:] - slope * pp[1:]
        ratio = np.where((pp[:-1] > 0) & (pp[1:] > 0), div(pp[:-1], pp[1:]), 1)
        return div(slope * (dtp + intercept * np.log(ratio)), tp[1:] + fn[1:]).sum()
    recall = div(tp, tp + fn)
    x, yy = (div(fp, fp + tn), recall) if curve == "ROC" else (recall, div(tp, tp + fp))
    heights = {"interpolation": (yy[:-1] + yy[1:]) / 2, "minoring": np.minimum(yy[:-1], yy[1:]),
               "majoring": np.maximum(yy[:-1], yy[1:])}[method]
    return ((x[:-1] - x[1:]) * heights).sum()


@pytest.mark.parametrize("curve, method", [("ROC", "interpolation"), ("ROC", "minoring"), ("ROC", "majoring"),
                                           ("PR", "interpolation"), ("PR", "minoring"), ("PR", "majoring")])
def test_auc_equals_keras_formula(curve, method):
    y, p = _scores(500)
    w = RNG.random(500)
    got = _result(metrics.AUC(curve=curve, summation_method=method), y, p, w)
    assert got == pytest.approx(_keras_auc_reference(y, p, w, curve, method), rel=1e-12)


def test_auc_against_sklearn_within_the_interpolation_error():
    # Keras documents AUC as an approximation by a Riemann sum over num_thresholds buckets; with 200
    # thresholds the gap to the exact value is below 1e-3 here (ROC) and 1e-2 (PR vs average precision).
    y, p = _scores()
    assert _result(metrics.AUC(), y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-3)
    assert _result(metrics.AUC(curve="PR"), y, p) == pytest.approx(average_precision_score(y, p), abs=1e-2)
    w = RNG.random(len(y))
    assert _result(metrics.AUC(), y, p, w) == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-3)
    assert _result(metrics.AUC(num_thresholds=2000), y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-4)


def test_auc_from_logits_and_explicit_thresholds():
    y, p = _scores(300)
    logits = np.log(p / (1 - p))
    assert _result(metrics.AUC(from_logits=True), y, logits) == pytest.approx(_result(metrics.AUC(), y, p), rel=1e-9)
    explicit = metrics.AUC(thresholds=[0.25, 0.5, 0.75])
    assert explicit.num_thresholds == 5
    assert _result(explicit, y, p) == pytest.approx(_result(metrics.AUC(num_thresholds=5), y, p), rel=1e-12)
    with pytest.raises(ValueError, match="Received: curve='XY'"):
        metrics.AUC(curve="XY")
    with pytest.raises(ValueError, match="multi_label=True"):
        metrics.AUC(multi_label=True)


@pytest.mark.parametrize("average", [None, "micro", "macro", "weighted"])
def test_f_scores_against_sklearn(average):
    y = np.eye(4)[RNG.integers(4, size=120)]
    p = RNG.random((120, 4))
    labels, predicted = y.argmax(1), p.argmax(1)
    f1 = metrics.F1Score(average=average)
    f1.build_for_output((None, 4))
    fb = metrics.FBetaScore(average=average, beta=2.0)
    fb.build_for_output((None, 4))
    np.testing.assert_allclose(_result(f1, y, p), f1_score(labels, predicted, average=average), atol=1e-6)
    np.testing.assert_allclose(_result(fb, y, p), fbeta_score(labels, predicted, beta=2.0, average=average), atol=1e-6)


def test_f1_with_a_threshold_is_multi_label():
    y = (RNG.random((80, 3)) > 0.5).astype(float)
    p = RNG.random((80, 3))
    f1 = metrics.F1Score(average="macro", threshold=0.4)
    assert _result(f1, y, p) == pytest.approx(f1_score(y, p > 0.4, average="macro"), abs=1e-6)


def test_regression_metrics():
    y, p = RNG.normal(size=(90, 3)), RNG.normal(size=(90, 3))
    w = RNG.random(90)
    rmse = _result(metrics.RootMeanSquaredError(), y, p, w)
    assert rmse == pytest.approx(np.sqrt(np.average(((y - p) ** 2).mean(1), weights=w)), rel=1e-12)
    for aggregation, sk in (("uniform_average", "uniform_average"), ("variance_weighted_average", "variance_weighted"),
                            (None, "raw_values")):
        r2 = metrics.R2Score(class_aggregation=aggregation)
        r2.build_for_output((None, 3))
        np.testing.assert_allclose(_result(r2, y, p, w), r2_score(y, p, sample_weight=w, multioutput=sk), rtol=1e-10)
    adjusted = metrics.R2Score(num_regressors=4)
    adjusted.build_for_output((None, 3))
    expected = 1 - (1 - r2_score(y, p)) * (90 - 1) / (90 - 4 - 1)
    assert _result(adjusted, y, p) == pytest.approx(expected, rel=1e-10)
    log_cosh = _result(metrics.LogCoshError(), y, p)
    assert log_cosh == pytest.approx(np.log(np.cosh(p - y)).mean(), rel=1e-10)
    cosine = _result(metrics.CosineSimilarity(), y, p)
    norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    assert cosine == pytest.approx((norm(y) * norm(p)).sum(1).mean(), rel=1e-10)


def test_mean_iou_against_a_confusion_matrix():
    y, p = RNG.integers(4, size=(30, 5)), RNG.integers(4, size=(30, 5))
    cm = confusion_matrix(y.ravel(), p.ravel(), labels=range(4))
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert _result(metrics.MeanIoU(num_classes=4), y, p) == pytest.approx(iou.mean(), rel=1e-12)
    scores = np.eye(4)[p] + 0.01 * RNG.random((30, 5, 4))
    dense = metrics.MeanIoU(num_classes=4, sparse_y_pred=False)
    assert _result(dense, y, scores) == pytest.approx(iou.mean(), rel=1e-12)
    keep = y.ravel() != 2
    cm = confusion_matrix(y.ravel()[keep], p.ravel()[keep], labels=range(4))
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert _result(metrics.MeanIoU(num_classes=4, ignore_class=2), y, p) == pytest.approx(np.nanmean(iou), rel=1e-12)


def test_top_k_and_crossentropy_metrics():
    p = RNG.random((50, 6))
    p /= p.sum(1, keepdims=True)
    labels = RNG.integers(6, size=50)
    in_top3 = [labels[i] in np.argsort(-p[i])[:3] for i in range(50)]
    assert _result(metrics.SparseTopKCategoricalAccuracy(k=3), labels, p) == pytest.approx(np.mean(in_top3))
    sorted_ids = np.argsort(-p, axis=1)
    top = metrics.SparseTopKCategoricalAccuracy(k=3, from_sorted_ids=True)
    assert _result(top, labels, sorted_ids) == pytest.approx(np.mean(in_top3))
    cce = -np.log(p[np.arange(50), labels]).mean()
    assert _result(metrics.SparseCategoricalCrossentropy(), labels, p) == pytest.approx(cce, rel=1e-10)
    assert _result(metrics.CategoricalCrossentropy(), np.eye(6)[labels], p) == pytest.approx(cce, rel=1e-10)
    yb, pb = (RNG.random((50, 2)) > 0.5) * 1.0, RNG.uniform(0.05, 0.95, (50, 2))
    bce = -(yb * np.log(pb) + (1 - yb) * np.log(1 - pb)).mean()
    assert _result(metrics.BinaryCrossentropy(), yb, pb) == pytest.approx(bce, rel=1e-10)


@pytest.mark.parametrize("metric", [metrics.AUC(curve="PR", num_thresholds=50), metrics.AUC(thresholds=[0.3, 0.6]),
                                    metrics.F1Score(average="macro"), metrics.FBetaScore(beta=0.5),
                                    metrics.RootMeanSquaredError(), metrics.R2Score(num_regressors=2),
                                    metrics.MeanIoU(num_classes=3, ignore_class=0),
                                    metrics.SparseTopKCategoricalAccuracy(k=2),
                                    metrics.CategoricalCrossentropy(from_logits=True),
                                    metrics.SparseCategoricalCrossentropy(), metrics.BinaryCrossentropy(),
                                    metrics.CosineSimilarity(axis=1), metrics.LogCoshError()],
                         ids=lambda m: type(m).__name__)
def test_saved_and_restored(metric):
    restored = metrics.deserialize(metrics.serialize(metric))
    assert type(restored) is type(metric) and restored.get_config() == metric.get_config()


def test_names_and_compile(tmp_path):
    assert type(metrics.get("auc")) is metrics.AUC
    assert type(metrics.get("r2_score", (None, 2))) is metrics.R2Score
    x = RNG.normal(size=(64, 4)).astype("float32")
    y = np.eye(3)[(x[:, 0] > 0).astype(int) + (x[:, 1] > 1)].astype("float32")
    model = Sequential([Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy",
                  metrics=["auc", metrics.F1Score(average="macro"), "categorical_crossentropy"])
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    p = model.predict(x, verbose=0)
    assert logs["f1_score"] == pytest.approx(f1_score(y.argmax(1), p.argmax(1), average="macro"), abs=1e-6)
    assert logs["categorical_crossentropy"] == pytest.approx(logs["loss"], rel=1e-5)
    assert logs["auc"] == pytest.approx(_keras_auc_reference(y, p, np.ones_like(y), "ROC", "interpolation"), rel=1e-6)


def test_auc_on_two_ranks_equals_one_process(tmp_path):
    script = "tests/mpi_scripts/evaluate_auc.py"
    run_python([script, str(tmp_path / "one.json")], timeout=60)
    run_mpi(2, [script, str(tmp_path / "two.json")], timeout=60)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (one["ranks"], two["ranks"]) == (1, 2)
    for key in ("auc", "pr_auc", "f1_score"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-12)
