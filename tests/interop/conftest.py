"""The interop tests run against the real libraries of the ``interop`` extra (Keras 3 on JAX's CPU
backend, h5py, onnx, onnxruntime, tensorboard, matplotlib). Without them these tests skip, except
under ``CI=true``, where .ci/run installs the extra and a missing package fails them. Test modules
import those packages inside the tests (through the fixtures here), so collection never needs them."""
from __future__ import annotations

import importlib
import importlib.util
import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports keras
os.environ.setdefault("JAX_PLATFORMS", "cpu")

INTEROP_PACKAGES = ("keras", "jax", "h5py", "onnx", "onnxruntime", "tensorboard", "matplotlib")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if os.path.abspath(str(item.fspath)).startswith(here):
            item.add_marker(pytest.mark.interop)


@pytest.fixture(autouse=True)
def _interop_extra():
    missing = [name for name in INTEROP_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        reason = f"the interop extra is not installed (missing {missing}): pip install '.[interop]'"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


@pytest.fixture
def keras(_interop_extra):
    module = importlib.import_module("keras")
    assert module.backend.backend() == "jax", "tests/interop runs Keras on JAX's CPU backend"
    return module
