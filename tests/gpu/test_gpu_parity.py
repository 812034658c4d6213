"""Every op and layer computes on the device what it computes with numpy: forward and backward,
float32, within 1e-5 relative (the largest difference over the largest magnitude)."""
from __future__ import annotations

import numpy as np
import pytest

from gpu_support import DEVICE, MARKS
from distnn import backend
from distnn.layers.base import Layer
from distnn.ops.core import Tape, Tensor, value_of
from test_layer_test_all import CASES
from test_ops import BINARY, UNARY

pytestmark = MARKS
TOLERANCE = 1e-5


def relative(expected: np.ndarray, actual: np.ndarray) -> float:
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    assert expected.shape == actual.shape
    return float(np.abs(expected - actual).max() / max(np.abs(expected).max(), 1e-6)) if expected.size else 0.0


def on_device(device: str, compute):
    """``compute()`` with this process on ``device``; the results brought back as numpy arrays."""
    previous = backend.device()
    backend.set_device(device)
    try:
        return [backend.to_numpy(value) for value in compute()]
    finally:
        backend.set_device(previous)


def forward_backward(fn, inputs: list, differentiable: list[bool], weights=()) -> list:
    """``fn(*inputs)``, then its gradients (seeded with a fixed pattern) for the inputs and ``weights``."""
    leaves = []
    with Tape() as tape:
        for value, grad in zip(inputs, differentiable):
            value = backend.to_device(value)
            leaves.append(Tensor(value, tape) if grad else value)
        output = fn(*leaves)
    value = value_of(output)
    host_seed = np.cos(np.arange(value.size, dtype=np.float64)).reshape(value.shape).astype(value.dtype)
    tape.backward([(output, backend.to_device(host_seed))])
    grads = [leaf.grad for leaf, grad in zip(leaves, differentiable) if grad]
    return [value, *grads, *[w.grad for w in weights]]


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_op(name):
    op, _, x = UNARY[name]
    x = x.astype(np.float32)
    cpu = on_device("cpu", lambda: forward_backward(op, [x], [True]))
    device = on_device(DEVICE, lambda: forward_backward(op, [x], [True]))
    for expected, actual in zip(cpu, device):
        assert relative(expected, actual) <= TOLERANCE


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_op(name):
    op, _ = BINARY[name]
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 2.0, (3, 1, 4)).astype(np.float32), rng.uniform(0.5, 2.0, (2, 4)).astype(np.float32)
    cpu = on_device("cpu", lambda: forward_backward(op, [a, b], [True, True]))
    device = on_device(DEVICE, lambda: forward_backward(op, [a, b], [True, True]))
    for expected, actual in zip(cpu, device):
        assert relative(expected, actual) <= TOLERANCE


def _layer_inputs(case) -> tuple[list, list[bool]]:
    _, _, _, input_shape, _, _, _, _, extra = case
    if "input_data" in extra:
        data = extra["input_data"]
        data = list(data) if isinstance(data, (list, tuple)) else [data]
    else:
        shapes = input_shape if isinstance(input_shape, list) else [input_shape]
        rng = np.random.default_rng(1)
        data = [rng.standard_normal(shape) for shape in shapes]
    dtype = np.dtype(extra.get("input_dtype", "float32"))
    data = [np.asarray(d).astype(dtype) for d in data]
    return data, [dtype.kind == "f" for _ in data]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_layer_forward_and_backward(case):
    _, cls, kwargs, *_ = case
    inputs, differentiable = _layer_inputs(case)
    weights = {}

    def run():
        # a wrapped layer (TimeDistributed, Bidirectional) is rebuilt per device from its config
        fresh = {k: type(v).from_config(v.get_config()) if isinstance(v, Layer) else v for k, v in kwargs.items()}
        layer = cls(**fresh)
        call = (lambda *xs: layer(list(xs), training=False)) if len(inputs) > 1 else (
            lambda x: layer(x, training=False))
        call(*[backend.to_device(x) for x in inputs])  # builds the layer
        if "values" not in weights:  # the CPU run draws the weights; the device run reuses them
            weights["values"] = [np.array(w) for w in layer.get_weights()]
        layer.set_weights(weights["values"])
        return forward_backward(call, inputs, differentiable, layer.trainable_weights)

    cpu = on_device("cpu", run)
    device = on_device(DEVICE, run)
    assert len(cpu) == len(device)
    for i, (expected, actual) in enumerate(zip(cpu, device)):
        assert relative(expected, actual) <= TOLERANCE, f"result {i} (0: output, then gradients)"
