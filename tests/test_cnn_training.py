"""Convolutional networks learn real data: the classic Keras MNIST CNN and small digits CNNs."""
from __future__ import annotations

import re

import numpy as np
import pytest

from distnn import datasets
from distnn.layers import (Activation, BatchNormalization, Conv2D, Dense, Flatten, Input, MaxPooling2D,
                           Normalization)
from distnn.models import Sequential
from distnn.utils import set_random_seed, to_categorical

from conftest import REPO_ROOT, run_python


def test_classic_cnn_on_the_mnist_subset():
    """examples/mnist_cnn.py, the Keras tutorial's CNN on 4,000 training images (Adam, batch 64,
    5 epochs): >= 95.5% test accuracy on average over 3 seeds. Each seed runs as a user would, in its
    own process with one BLAS thread (as the launchers set): in-process, a multi-threaded BLAS on a
    loaded 2-core machine took several times longer."""
    accuracies = []
    for seed in (0, 1, 2):
        printed = run_python([str(REPO_ROOT / "examples" / "mnist_cnn.py"), "--seed", str(seed), "--verbose", "1"],
                             timeout=600).stdout
        accuracies.append(float(re.search(r"test_acc=([0-9.]+)", printed).group(1)))
    assert np.mean(accuracies) >= 0.955, accuracies


@pytest.fixture(scope="module")
def digits_data():
    (x_train, y_train), (x_test, y_test) = datasets.digits()
    return (x_train.reshape(-1, 8, 8, 1), y_train), (x_test.reshape(-1, 8, 8, 1), y_test)


def test_small_cnn_on_digits(digits_data):
    (x_train, y_train), (x_test, y_test) = digits_data
    set_random_seed(0)
    model = Sequential([Conv2D(16, 3, activation="relu", padding="same", input_shape=(8, 8, 1)), MaxPooling2D(),
                        Conv2D(32, 3, activation="relu"), Flatten(), Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train / 16.0, to_categorical(y_train, 10), batch_size=32, epochs=10, verbose=0)
    _, accuracy = model.evaluate(x_test / 16.0, to_categorical(y_test, 10), verbose=0)
    assert accuracy >= 0.95


def test_digits_cnn_with_normalization_and_batch_norm(digits_data):
    """Raw 0-16 pixels standardized by an adapted Normalization layer; BatchNormalization before the ReLU."""
    (x_train, y_train), (x_test, y_test) = digits_data
    set_random_seed(1)
    normalization = Normalization(axis=None)
    normalization.adapt(x_train)
    model = Sequential([Input((8, 8, 1)), normalization, Conv2D(16, 3, padding="same"), BatchNormalization(),
                        Activation("relu"), MaxPooling2D(), Conv2D(32, 3, activation="relu"), Flatten(),
                        Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=10, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    assert accuracy >= 0.95
