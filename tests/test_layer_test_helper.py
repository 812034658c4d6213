"""``run_layer_test`` itself: it passes a correct custom layer and catches each kind of broken layer."""
import numpy as np
import pytest

from distnn import backend, ops
from distnn.layers import Layer, Lambda
from distnn.testing import run_layer_test


class Scale(Layer):
    """A correct custom layer (build/call only): ``x * w`` with one weight per feature."""

    def __init__(self, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.offset = offset

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="random_normal", name="w")

    def call(self, x):
        return x * self.w + self.offset

    def get_config(self):
        return {**super().get_config(), "offset": self.offset}


def run(cls, init_kwargs=None, **kwargs):
    options = {"input_shape": (2, 3), "custom_objects": {cls.__name__: cls}}
    options.update(kwargs)
    return run_layer_test(cls, init_kwargs or {}, **options)


def test_a_correct_custom_layer_passes_every_check():
    report = run(Scale, expected_output_shape=(2, 3), expected_num_trainable_weights=1,
                 expected_num_non_trainable_weights=0, supports_masking=False)
    assert report.checks == ["config", "eager", "config (built)", "symbolic", "masking", "gradients", "training",
                             "saving"]
    assert len(report.gradient_errors) == 2 and max(report.gradient_errors.values()) < 1e-6


class ForgetsItsConfig(Scale):
    def __init__(self, offset=1.5, **kwargs):
        super().__init__(offset=offset, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["offset"]
        return config


class WrongBackward(Scale):
    """A fused backward that forgets the factor w."""

    def call(self, x):
        return x * self.w.value

    def backward(self, grad):
        self.w.grad[...] = grad.sum(axis=0)
        return grad


class BypassesTheTape(Scale):
    """Reads the raw weight array, so the tape never sees the weight: its gradient stays zero."""

    def call(self, x):
        return x * self.w.value


class LiesAboutItsShape(Scale):
    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + 1)


class StateOutsideWeights(Scale):
    """Keeps a random array that is not a weight: a loaded model computes something else."""

    def build(self, input_shape):
        super().build(input_shape)
        self.hidden = backend.to_device(np.random.default_rng().standard_normal(input_shape[-1]).astype("float32"))

    def call(self, x):
        return x * self.w + self.hidden


class DropsTheMask(Scale):
    """Declares supports_masking but says every position is valid."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_mask(self, inputs, mask=None):
        return None if mask is None else np.ones_like(mask)


@pytest.mark.parametrize("cls, message", [
    (ForgetsItsConfig, "get_config\\(\\) misses an argument"),
    (WrongBackward, "gradients differ from finite differences"),
    (BypassesTheTape, "gradients differ from finite differences"),
    (LiesAboutItsShape, "symbolic output shape"),
    (StateOutsideWeights, "state outside its weights"),
])
def test_a_broken_layer_fails_the_check_that_covers_it(cls, message):
    with pytest.raises(AssertionError, match=message):
        run(cls, {"offset": 0.25})


def test_a_layer_that_load_model_cannot_find_fails():
    with pytest.raises(ValueError, match="Unknown layer class 'Scale'"):
        run(Scale, custom_objects={})


def test_mask_checks():
    with pytest.raises(AssertionError, match="lost the masked position"):
        run(DropsTheMask, input_shape=(2, 4, 3), supports_masking=True)
    with pytest.raises(AssertionError, match="supports_masking is False, expected True"):
        run(Scale, supports_masking=True)


def test_expectations_are_checked():
    with pytest.raises(AssertionError, match="eager output shape"):
        run(Scale, expected_output_shape=(2, 4))
    with pytest.raises(AssertionError, match="trainable weights != expected 2"):
        run(Scale, expected_num_trainable_weights=2)
    with pytest.raises(AssertionError, match="differs from expected_output"):
        run_layer_test(Lambda, {"function": ops.square}, input_data=np.full((1, 2), 3.0, "float32"),
                       expected_output=[[9.0, 9.5]])


def test_a_non_finite_training_loss_fails():
    with pytest.raises(AssertionError, match="non-finite loss"), np.errstate(invalid="ignore", divide="ignore"):
        run_layer_test(Lambda, {"function": ops.log}, input_data=-np.ones((2, 3), "float32"),
                       run_gradient_check=False)


def test_integer_inputs_need_the_gradient_check_off():
    with pytest.raises(ValueError, match="run_gradient_check=False"):
        run_layer_test(Lambda, {"function": ops.negative}, input_shape=(2, 3), input_dtype="int32")
    report = run_layer_test(Lambda, {"function": ops.negative}, input_shape=(2, 3), input_dtype="int32",
                            run_gradient_check=False)
    assert report.gradient_errors is None and "gradients" not in report.checks


def test_input_shape_or_data_exactly_once():
    with pytest.raises(ValueError, match="exactly one of input_shape and input_data"):
        run_layer_test(Scale, {})
