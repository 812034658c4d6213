"""Finite-difference gradient checks, public so users can verify their own layers and losses.

Every check runs in float64 with central differences and reports the worst *normwise* relative
error of each checked tensor, ``max|analytic - numeric| / max(max|analytic|, max|numeric|)``::

    from distnn.utils import check_layer_gradients
    result = check_layer_gradients(MyLayer(8), input_shape=(4, 5))
    assert result.max_error < 1e-6, result

Large tensors are checked on a random sample of their entries (``max_entries``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from distnn import backend, random
from distnn.global_state import global_rng
from distnn.layers.base import Layer
from distnn.losses import Loss
from distnn.ops.core import Tape, Tensor, value_of
from distnn.ops.numpy import sum as ops_sum


@dataclasses.dataclass
class GradientCheckResult:
    """Relative error per checked tensor (``"input"``, weight names, ``"y_pred"``...)."""

    errors: dict[str, float]

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    def __str__(self) -> str:
        return ", ".join(f"{k}: {v:.2e}" for k, v in self.errors.items())


def _relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    scale = max(float(np.abs(analytic).max(initial=0)), float(np.abs(numeric).max(initial=0)))
    if scale == 0:
        return 0.0
    return float(np.abs(analytic - numeric).max(initial=0)) / scale


def _numeric_gradient(f: Callable[[], float], array: Any, entries: np.ndarray, eps: float) -> np.ndarray:
    """Central differences of ``f`` w.r.t. the flat ``entries`` of ``array`` (perturbed in place)."""
    flat = array.reshape(-1)
    out = np.empty(len(entries))
    for k, i in enumerate(entries):
        original = float(flat[i])
        flat[i] = original + eps
        plus = f()
        flat[i] = original - eps
        minus = f()
        flat[i] = original
        out[k] = (plus - minus) / (2 * eps)
    return out


def _noise_replayer(layers: list) -> Callable[[], None]:
    """A function that rewinds every random source the layers draw from (their ``SeedGenerator``s,
    ``distnn.random``'s global one and distnn's global numpy generator), so each forward pass of a
    check reuses the same dropout mask: the checked function is then deterministic, as finite
    differences require."""
    generators = list(random.seed_generators(layers).values())
    states = [g.state for g in generators]  # seeds an unseeded generator now, once for every pass
    numpy_state = global_rng().bit_generator.state

    def replay() -> None:
        global_rng().bit_generator.state = numpy_state
        for generator, state in zip(generators, states):
            generator.state = state

    return replay


def _entries(size: int, max_entries: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(size) if size <= max_entries else np.sort(rng.choice(size, max_entries, replace=False))


def _compare(name: str, analytic: Any, f: Callable[[], float], array: Any, eps: float, max_entries: int,
             rng: np.random.Generator, errors: dict[str, float]) -> None:
    entries = _entries(array.size, max_entries, rng)
    numeric = _numeric_gradient(f, array, entries, eps)
    errors[name] = _relative_error(backend.to_numpy(analytic).reshape(-1)[entries], numeric)


def check_layer_gradients(layer: Any, input_shape: Any = None, x: Any = None, training: bool = True,
                          eps: float = 1e-6, max_entries: int = 300, seed: int = 0) -> GradientCheckResult:
    """Check a layer's gradients (with respect to its inputs and weights) against finite differences.

    The layer must be unbuilt or built in float64. The scalar checked is ``sum(r * layer(x))`` for a
    fixed random ``r``. A layer taking a list of inputs (a merging layer) gets a list of shapes or
    arrays, and each input is checked (``input_0``, ``input_1``, ...).

    Args:
        layer: the layer (create it with ``dtype="float64"``).
        input_shape: full input shape including the batch axis, for random ``x`` (or a list of them).
        x: an explicit input instead of ``input_shape`` (or a list of them).
        training: run the forward pass in training mode.
    """
    rng = np.random.default_rng(seed)
    if x is None:
        if input_shape is None:
            raise ValueError("check_layer_gradients needs input_shape or x. Received neither")
        several = isinstance(input_shape, list) and all(isinstance(s, (list, tuple)) for s in input_shape)
        x = [rng.standard_normal(s) for s in input_shape] if several else rng.standard_normal(input_shape)
    several = isinstance(x, (list, tuple))
    # Contiguous copies: perturbing a.reshape(-1) must perturb a (a transposed view would reshape to a
    # copy), and one input only (the same array passed twice must be two inputs).
    xs = [backend.to_device(np.array(a, dtype=np.float64, order="C")) for a in (x if several else [x])]

    def packed(values: list) -> Any:
        return list(values) if several else values[0]

    if layer.dtype != "float64":
        raise ValueError(f"Gradient checks run in float64: create the layer with dtype='float64'. "
                         f"Received: layer {layer.name!r} with dtype={layer.dtype}")
    replay_noise = _noise_replayer(layer._flatten_layers())
    replay_noise()
    y = layer(packed(xs), training=training)  # builds the layer
    r = backend.to_device(rng.standard_normal(np.shape(y)))

    def objective() -> float:
        replay_noise()
        return float((layer(packed(xs), training=training) * r).sum())

    replay_noise()
    with Tape() as tape:
        leaves = [Tensor(a, tape) for a in xs]
        y = layer(packed(leaves), training=training)
    for v in layer.trainable_weights:
        v.grad[...] = 0
    tape.backward([(y, r)])
    analytic = {v.name: backend.to_numpy(v.grad).copy() for v in layer.trainable_weights}
    errors: dict[str, float] = {}
    for i, (a, leaf) in enumerate(zip(xs, leaves)):
        dx = leaf.grad if leaf.grad is not None else np.zeros_like(a)
        _compare(f"input_{i}" if several else "input", dx, objective, a, eps, max_entries, rng, errors)
    for v in layer.trainable_weights:
        _compare(v.name, analytic[v.name], objective, v.value, eps, max_entries, rng, errors)
    return GradientCheckResult(errors)


def check_loss_gradients(loss: Any, y_true: Any, y_pred: Any, eps: float = 1e-6, max_entries: int = 300,
                         seed: int = 0) -> GradientCheckResult:
    """Check a loss's gradient (its fused ``gradient``, else the tape's derivative of ``call``) against
    finite differences of ``sum(loss.call(y_true, y_pred))``."""
    rng = np.random.default_rng(seed)
    y_true = backend.to_device(np.asarray(y_true, dtype=np.float64))
    y_pred = backend.to_device(np.array(y_pred, dtype=np.float64))
    if loss.has_fused_gradient:
        analytic = loss.gradient(y_true, y_pred)
    else:
        with Tape() as tape:
            leaf = Tensor(y_pred, tape)
            total = ops_sum(loss.call(y_true, leaf))
        tape.backward([(total, np.ones(()))])
        analytic = leaf.grad if leaf.grad is not None else np.zeros_like(y_pred)
    errors: dict[str, float] = {}
    _compare("y_pred", analytic, lambda: float(value_of(loss.call(y_true, y_pred)).sum()),
             y_pred, eps, max_entries, rng, errors)
    return GradientCheckResult(errors)


def check_model_gradients(model: Any, x: Any, y: Any, sample_weight: Any = None, eps: float = 1e-6,
                          max_entries: int = 300, seed: int = 0) -> GradientCheckResult:
    """Check a compiled float64 model's gradient of its mean training loss (fusions included)."""
    rng = np.random.default_rng(seed)
    x_checked, ys, weights = model._check_xy(x, y, sample_weight)  # builds the model on first data
    if model.params.dtype != np.float64:
        raise ValueError("Gradient checks run in float64: call distnn.backend.set_floatx('float64') before "
                         f"building the model. Received: params of dtype {model.params.dtype}")
    replay_noise = _noise_replayer(model._flatten_layers())
    replay_noise()
    _, grads = model.compute_gradients(x, y, sample_weight)
    ys = [backend.to_device(t) for t in ys]  # the loss compares on the device, as in a training step
    weights = None if weights is None else backend.to_device(weights)

    def objective() -> float:
        replay_noise()
        outputs = model._flat_outputs(model(x_checked, training=True))
        states = model._batch_states(ys, [value_of(o) for o in outputs], weights, len(ys[0]))
        return model._logs_from(states)["loss"]

    errors: dict[str, float] = {}
    _compare("params", grads, objective, model.params, eps, max_entries, rng, errors)
    return GradientCheckResult(errors)


def check_gradients(target: Any, *args: Any, **kwargs: Any) -> GradientCheckResult:
    """Dispatch to the layer, loss or model check by the type of ``target`` (a model is a layer that
    trains: told by its ``fit``, so that this module needs no import of the models)."""
    if isinstance(target, Layer) and callable(getattr(target, "fit", None)):
        return check_model_gradients(target, *args, **kwargs)
    if isinstance(target, Layer):
        return check_layer_gradients(target, *args, **kwargs)
    if isinstance(target, Loss):
        return check_loss_gradients(target, *args, **kwargs)
    return check_model_gradients(target, *args, **kwargs)
