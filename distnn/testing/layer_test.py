"""``run_layer_test``: one check that every layer passes, in the spirit of Keras' ``run_layer_test``.

For a layer class and its constructor arguments it checks, each on a fresh instance:

1. configuration: ``get_config`` → JSON → ``from_config`` gives the same configuration (unbuilt and
   built), and the rebuilt layer given the same weights computes the same output;
2. eager call: output shape (and values, if given), built state, weight counts, ``losses``;
3. symbolic call on ``Input``: output shape with a ``None`` batch axis, and a functional ``Model``
   around it computes the same shape;
4. masks: ``supports_masking`` as declared; when true, a mask made upstream reaches a layer after it
   in a functional model, as ``compute_mask`` says;
5. gradients: the tape's gradients with respect to the inputs and every trainable weight match
   central finite differences in float64 (``distnn.gradient_check``);
6. training: a compiled model holding the layer trains one step to a finite loss and moves its
   trainable weights;
7. saving: a model holding the (trained) layer is saved and loaded; its predictions are unchanged.

A failed check raises ``AssertionError`` naming the layer class and the check.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import tempfile
from typing import Any

import numpy as np

from distnn import backend
from distnn.gradient_check import check_layer_gradients
from distnn.layers.base import Layer
from distnn.layers.core import Input
from distnn.models import Functional, Model, load_model
from distnn.ops.core import value_of
from distnn.layers import deserialize as deserialize_layer, serialize as serialize_layer


@dataclasses.dataclass
class LayerTestReport:
    """What ``run_layer_test`` measured (every check it ran passed)."""

    output_shape: tuple
    gradient_errors: dict[str, float] | None = None  # relative error per input and weight
    training_loss: float | None = None
    checks: list[str] = dataclasses.field(default_factory=list)  # the checks that ran, in order


def run_layer_test(layer_cls: type, init_kwargs: dict | None = None, input_shape: Any = None,
                   input_data: Any = None, input_dtype: str = "float32", call_kwargs: dict | None = None,
                   expected_output_shape: tuple | None = None, expected_output: Any = None,
                   expected_output_dtype: str | None = None, expected_num_trainable_weights: int | None = None,
                   expected_num_non_trainable_weights: int | None = None, expected_num_losses: int | None = None,
                   supports_masking: bool | None = None, expected_mask_shape: tuple | None = None,
                   custom_objects: dict | None = None, run_training_check: bool = True,
                   run_gradient_check: bool = True, gradient_check_training: bool = True,
                   gradient_tolerance: float = 1e-6, run_saving_check: bool = True, seed: int = 0) -> LayerTestReport:
    """Check ``layer_cls(**init_kwargs)`` the same way as every built-in layer (see the module docstring).

    Args:
        layer_cls: the layer class.
        init_kwargs: its constructor arguments (JSON values, as a saved configuration holds).
        input_shape: the full input shape, batch axis first (a list of shapes for a layer taking a
            list of inputs); random normal data of ``input_dtype`` is drawn for it.
        input_data: the input instead of ``input_shape`` (an array or a list of arrays).
        call_kwargs: extra keyword arguments for every call of the layer.
        expected_output_shape: the eager output's full shape.
        expected_output: the eager output's values (compared to 1e-6).
        expected_num_trainable_weights, expected_num_non_trainable_weights: weight counts once built.
        expected_num_losses: ``len(layer.losses)`` after a call.
        supports_masking: the expected ``layer.supports_masking``; ``True`` also checks that masks
            pass through the layer in a functional model.
        expected_mask_shape: the full shape of the mask after the layer (default: the output shape
            without its last axis).
        custom_objects: for ``from_config`` and ``load_model`` (functions of a ``Lambda``, say).
        run_training_check, run_gradient_check, run_saving_check: switch those checks off (the
            gradient check must be off for integer inputs, whose gradient means nothing).
        gradient_check_training: the gradient check's ``training`` flag (random layers replay their
            noise, so both modes are deterministic).
        gradient_tolerance: the largest relative gradient error accepted.
        seed: seed of the random data.
    """
    init_kwargs = dict(init_kwargs or {})
    call_kwargs = dict(call_kwargs or {})
    name = layer_cls.__name__
    rng = np.random.default_rng(seed)
    data = _input_data(input_shape, input_data, input_dtype, rng)
    several = isinstance(data, list)
    arrays = data if several else [data]
    if run_gradient_check and any(np.dtype(a.dtype).kind != "f" for a in arrays):
        raise ValueError(f"{name}: the gradient with respect to non-float inputs means nothing. Pass "
                         "run_gradient_check=False for this layer")

    def make(**overrides: Any) -> Layer:
        return layer_cls(**{**init_kwargs, **overrides})

    # 1. configuration round trip of an unbuilt layer
    report = LayerTestReport(output_shape=())
    _check_config_round_trip(make(), layer_cls, custom_objects, f"{name} (unbuilt)")
    report.checks.append("config")

    # 2. eager call
    layer = make()
    output = layer(data, **call_kwargs)
    out = backend.to_numpy(value_of(output))
    report.output_shape = tuple(out.shape)
    _expect(layer.built, f"{name}: the layer is not built after its first call")
    if expected_output_shape is not None:
        _expect(tuple(out.shape) == tuple(expected_output_shape),
                f"{name}: eager output shape {tuple(out.shape)} != expected {tuple(expected_output_shape)}")
    if expected_output_dtype is not None:
        _expect(np.dtype(out.dtype) == np.dtype(expected_output_dtype),
                f"{name}: output dtype {out.dtype} != expected {expected_output_dtype}")
    if expected_output is not None:
        np.testing.assert_allclose(out, np.asarray(expected_output), rtol=1e-6, atol=1e-6,
                                   err_msg=f"{name}: eager output differs from expected_output")
    _check_weight_counts(layer, expected_num_trainable_weights, expected_num_non_trainable_weights, f"{name} (eager)")
    if expected_num_losses is not None:
        _expect(len(layer.losses) == expected_num_losses,
                f"{name}: {len(layer.losses)} losses after a call != expected {expected_num_losses}")
    clone = _check_config_round_trip(layer, layer_cls, custom_objects, f"{name} (built)")
    clone(data, **call_kwargs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(backend.to_numpy(value_of(clone(data, **call_kwargs))),
                               backend.to_numpy(value_of(layer(data, **call_kwargs))), rtol=1e-6, atol=1e-6,
                               err_msg=f"{name}: a layer rebuilt from its configuration (same weights) computes "
                                       "something else: get_config() misses an argument, or the layer keeps "
                                       "state outside its weights")
    report.checks += ["eager", "config (built)"]

    # 3. symbolic call and a functional model around it
    symbolic_layer = make()
    inputs = [Input(shape=a.shape[1:], dtype=str(a.dtype)) for a in arrays]
    symbolic_output = symbolic_layer(inputs if several else inputs[0], **call_kwargs)
    expected_symbolic = (None, *out.shape[1:])
    _expect(tuple(symbolic_output.shape) == expected_symbolic,
            f"{name}: symbolic output shape {tuple(symbolic_output.shape)} != {expected_symbolic}")
    _check_weight_counts(symbolic_layer, expected_num_trainable_weights, expected_num_non_trainable_weights,
                         f"{name} (symbolic)")
    model = Functional(inputs if several else inputs[0], symbolic_output)
    model_out = backend.to_numpy(value_of(model(data)))
    _expect(model_out.shape == out.shape,
            f"{name}: a functional model around the layer outputs shape {model_out.shape} != {out.shape}")
    report.checks.append("symbolic")

    # 4. masks
    if supports_masking is not None:
        _expect(make().supports_masking == supports_masking,
                f"{name}: supports_masking is {make().supports_masking}, expected {supports_masking}")
        if supports_masking:
            _check_mask_propagation(make(), data, call_kwargs, expected_mask_shape, name)
        report.checks.append("masking")

    # 5. gradients in float64
    if run_gradient_check:
        checked = make(dtype="float64")
        # seed + 1: drawn with the data's seed, the check's random projection would equal the data, and
        # for a scale-invariant layer (UnitNormalization) the gradient along the input itself is zero.
        result = check_layer_gradients(checked, x=[a.astype(np.float64) for a in arrays] if several else
                                       arrays[0].astype(np.float64), training=gradient_check_training,
                                       seed=seed + 1)
        _expect(result.max_error <= gradient_tolerance,
                f"{name}: gradients differ from finite differences by more than {gradient_tolerance}: {result}")
        report.gradient_errors = dict(result.errors)
        report.checks.append("gradients")

    # 6. one training step of a compiled model holding the layer
    if run_training_check and np.dtype(out.dtype).kind == "f":
        report.training_loss = _check_training_step(model, symbolic_layer, data, out.shape, rng, name)
        report.checks.append("training")

    # 7. save and load a model holding the layer (with the trained weights and state)
    if run_saving_check:
        _check_saving(symbolic_layer, layer_cls, init_kwargs, data, call_kwargs, custom_objects, name)
        report.checks.append("saving")
    return report


# ------------------------------------------------------------------------------------ checks
def _expect(condition: bool, message: str) -> None:
    if not condition:  # not ``assert``: these checks must also run under ``python -O``
        raise AssertionError(message)


def _input_data(input_shape: Any, input_data: Any, dtype: str, rng: np.random.Generator) -> Any:
    if (input_shape is None) == (input_data is None):
        raise ValueError("run_layer_test needs exactly one of input_shape and input_data. "
                         f"Received: input_shape={input_shape!r}, input_data given: {input_data is not None}")
    if input_data is not None:
        if isinstance(input_data, (list, tuple)):
            return [np.asarray(a) for a in input_data]
        return np.asarray(input_data)
    several = isinstance(input_shape, list) and all(isinstance(s, (list, tuple)) for s in input_shape)

    def draw(shape: tuple) -> np.ndarray:
        if np.dtype(dtype).kind == "f":
            return rng.standard_normal(tuple(shape)).astype(dtype)
        return rng.integers(0, 4, size=tuple(shape)).astype(dtype)

    return [draw(s) for s in input_shape] if several else draw(input_shape)


def _from_config(layer_cls: type, config: dict, custom_objects: dict | None) -> Layer:
    if "custom_objects" in inspect.signature(layer_cls.from_config).parameters:
        return layer_cls.from_config(config, custom_objects=custom_objects)
    return layer_cls.from_config(config)


def _check_config_round_trip(layer: Layer, layer_cls: type, custom_objects: dict | None, what: str) -> Layer:
    config = layer.get_config()
    try:
        saved = json.loads(json.dumps(config))
    except TypeError as exc:
        raise AssertionError(f"{what}: get_config() is not JSON-serializable: {exc}") from exc
    clone = _from_config(layer_cls, saved, custom_objects)
    _expect(type(clone) is layer_cls, f"{what}: from_config built a {type(clone).__name__}")
    again = json.loads(json.dumps(clone.get_config()))
    _expect(again == saved, f"{what}: get_config -> from_config -> get_config changed the configuration:\n"
                            f"  before: {saved}\n  after:  {again}")
    return clone


def _check_weight_counts(layer: Layer, trainable: int | None, non_trainable: int | None, what: str) -> None:
    if trainable is not None:
        _expect(len(layer.trainable_weights) == trainable,
                f"{what}: {len(layer.trainable_weights)} trainable weights != expected {trainable}")
    if non_trainable is not None:
        _expect(len(layer.non_trainable_weights) == non_trainable,
                f"{what}: {len(layer.non_trainable_weights)} non-trainable weights != expected {non_trainable}")


class _ZeroMasking(Layer):
    """Masks the positions whose features (last axis) are all zero, like Keras' ``Masking``."""

    def call(self, inputs):
        return inputs

    def compute_mask(self, inputs, mask=None):
        x = value_of(inputs)
        return backend.get_array_module(x).any(x != 0, axis=-1)


class _MaskProbe(Layer):
    """Passes its input on and keeps the mask it was called with."""

    def call(self, inputs, mask=None):
        self.received_mask = mask
        return inputs


def _check_mask_propagation(layer: Layer, data: Any, call_kwargs: dict, expected_shape: tuple | None,
                            name: str) -> None:
    """Input -> _ZeroMasking -> layer -> _MaskProbe: the probe must see ``layer.compute_mask`` of the
    upstream masks (a mask that is not all true, or none if the layer ends masks)."""
    several = isinstance(data, list)
    arrays = [a.copy() for a in (data if several else [data])]
    for a in arrays:  # mask the last position of the first sample
        a[(0, -1) if a.ndim > 2 else 0] = 0
    inputs = [Input(shape=a.shape[1:], dtype=str(a.dtype)) for a in arrays]
    maskers = [_ZeroMasking() for _ in arrays]
    masked = [m(i) for m, i in zip(maskers, inputs)]
    probe = _MaskProbe()
    outputs = probe(layer(masked if several else masked[0], **call_kwargs))
    model = Functional(inputs if several else inputs[0], outputs)
    probe.received_mask = None
    output = model(arrays if several else arrays[0])
    input_masks = [m.compute_mask(a) for m, a in zip(maskers, arrays)]
    expected = layer.compute_mask(arrays if several else arrays[0], input_masks if several else input_masks[0])
    received = probe.received_mask
    if expected is None:  # a layer that accepts masks and ends them (Keras' Dot)
        _expect(received is None, f"{name}: compute_mask ends the mask, but the layer after it received one")
        return
    _expect(received is not None, f"{name}: the mask made before the layer did not reach the layer after it")
    received, expected = backend.to_numpy(received), backend.to_numpy(expected)
    shape = tuple(expected_shape) if expected_shape is not None else tuple(np.shape(value_of(output)))[:-1]
    _expect(received.shape == shape, f"{name}: the mask after the layer has shape {received.shape} != {shape}")
    _expect(np.array_equal(received, expected), f"{name}: the mask after the layer differs from compute_mask's")
    _expect(not received.all(), f"{name}: the mask after the layer lost the masked position")


def _check_training_step(model: Model, layer: Layer, data: Any, output_shape: tuple, rng: np.random.Generator,
                         name: str) -> float:
    model.compile(optimizer="sgd", loss="mse")
    target = rng.standard_normal(output_shape).astype(np.float32)
    before = [v.numpy() for v in layer.trainable_weights]
    loss = float(model.train_on_batch(data, target))
    _expect(np.isfinite(loss), f"{name}: one training step gave a non-finite loss {loss}")
    after = [v.numpy() for v in layer.trainable_weights]
    _expect(not before or any(not np.array_equal(b, a) for b, a in zip(before, after)),
            f"{name}: one training step left every trainable weight unchanged")
    return loss


class LayerTestModel(Model):
    """A model made of one layer, which saves like any model: the layer's configuration and the
    input shapes are its configuration."""

    def __init__(self, layer: Layer, input_shapes: list, input_dtypes: list, call_kwargs: dict | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.layer = layer
        self.input_shapes = [list(s) for s in input_shapes]
        self.input_dtypes = list(input_dtypes)
        self.call_kwargs = dict(call_kwargs or {})

    def call(self, inputs):
        return self.layer(inputs, **self.call_kwargs)

    def get_config(self):
        return {**super().get_config(), "layer": serialize_layer(self.layer), "input_shapes": self.input_shapes,
                "input_dtypes": self.input_dtypes, "call_kwargs": self.call_kwargs}

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None) -> "LayerTestModel":
        config = dict(config)
        layer = deserialize_layer(config.pop("layer"), custom_objects)
        model = cls(layer, **config)
        model.build_from_shapes()
        return model

    def build_from_shapes(self) -> None:
        arrays = [backend.xp().zeros((1, *s[1:]), dtype=d) for s, d in zip(self.input_shapes, self.input_dtypes)]
        self._build_by_running(arrays if len(arrays) > 1 else arrays[0])


def _check_saving(trained: Layer, layer_cls: type, init_kwargs: dict, data: Any, call_kwargs: dict,
                  custom_objects: dict | None, name: str) -> None:
    """Save and load a model holding a fresh layer that carries ``trained``'s weights and state."""
    arrays = data if isinstance(data, list) else [data]
    model = LayerTestModel(layer_cls(**init_kwargs), [(None, *a.shape[1:]) for a in arrays],
                           [str(a.dtype) for a in arrays], call_kwargs)
    model.build_from_shapes()
    model.layer.set_weights(trained.get_weights())
    expected = backend.to_numpy(value_of(model(data)))
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.distnn")
        model.save(path)
        loaded = load_model(path, custom_objects={"LayerTestModel": LayerTestModel, **(custom_objects or {})})
    _expect(type(loaded.layer) is layer_cls, f"{name}: the loaded model holds a {type(loaded.layer).__name__}")
    for saved, restored in zip(model.layer.get_weights(), loaded.layer.get_weights()):
        _expect(np.array_equal(saved, restored), f"{name}: a weight changed through save and load")
    np.testing.assert_allclose(backend.to_numpy(value_of(loaded(data))), expected, rtol=1e-6, atol=1e-6,
                               err_msg=f"{name}: the loaded model predicts differently")
