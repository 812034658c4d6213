"""Transposed, depthwise and separable convolution layers with Keras 3 names, arguments and weight
layouts: ``Conv1DTranspose``, ``Conv2DTranspose``, ``DepthwiseConv1D``, ``DepthwiseConv2D``,
``SeparableConv1D``, ``SeparableConv2D``.

They compute with ``distnn.ops`` (``conv_transpose``, ``depthwise_conv``, ``conv``: im2col GEMMs
with their own VJPs), so the tape differentiates them (docs/architecture.md, "Layers").
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn import constraints, initializers, regularizers
from distnn.layers.base import normalize_tuple
from distnn.layers.kernel_layer import init_kernel_options, kernel_options_config
from distnn.layers.conv import SpatialLayer, normalize_padding
from distnn.layers.grouped_conv import bias_and_activation
from distnn.ops.conv import _geometry, _transpose_padding, conv, conv_transpose, depthwise_conv


def _positive_int(argument: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"Invalid value for argument `{argument}`. Expected a strictly positive value. "
                         f"Received: {argument}={value!r}")
    return int(value)


class _Convolution(SpatialLayer):
    """Window options shared by the layers here, and the bias + activation of their outputs."""

    def __init__(self, kernel_size: Any, strides: Any, padding: str, data_format: str | None, dilation_rate: Any,
                 activation: Any, use_bias: bool, bias_initializer: Any, bias_regularizer: Any,
                 bias_constraint: Any, **kwargs: Any):
        super().__init__(data_format=data_format, **kwargs)
        self.kernel_size = normalize_tuple(kernel_size, self.rank, "kernel_size")
        self.strides = normalize_tuple(strides, self.rank, "strides")
        self.dilation_rate = normalize_tuple(dilation_rate, self.rank, "dilation_rate")
        self.padding = normalize_padding(padding)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"strides > 1 not supported in conjunction with dilation_rate > 1. "
                             f"Received: strides={self.strides} and dilation_rate={self.dilation_rate}")
        init_kernel_options(self, activation, use_bias, "glorot_uniform", bias_initializer, None,
                            bias_regularizer, None, bias_constraint)

    def _channels(self, input_shape: tuple) -> int:
        self._check_rank(input_shape)
        channels = self._channels_last_shape(input_shape)[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel dimension of the inputs must be known. "
                             f"Received: input_shape={tuple(input_shape)}")
        return int(channels)

    def _add_bias(self, size: int) -> None:
        self.bias = (self.add_weight(shape=(size,), initializer=self.bias_initializer,
                                     regularizer=self.bias_regularizer, constraint=self.bias_constraint, name="bias")
                     if self.use_bias else None)

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        if None in shape[1:]:
            raise ValueError(f"{self.name}: the spatial sizes of the inputs must be known. "
                             f"Received: input_shape={shape}")
        return (shape[0], *self._output_sample_shape(shape[1:]))

    def _output_sample_shape(self, sample_shape: tuple) -> tuple:
        raise NotImplementedError

    def _window_config(self) -> dict:
        return {"kernel_size": list(self.kernel_size), "strides": list(self.strides), "padding": self.padding,
                "dilation_rate": list(self.dilation_rate)}


class ConvTranspose(_Convolution):
    """Shared implementation of ``Conv1DTranspose`` and ``Conv2DTranspose``."""

    def __init__(self, filters: int, kernel_size: Any, strides: Any = 1, padding: str = "valid",
                 output_padding: Any = None, data_format: str | None = None, dilation_rate: Any = 1,
                 activation: Any = None, use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                 bias_initializer: Any = "zeros", kernel_regularizer: Any = None, bias_regularizer: Any = None,
                 kernel_constraint: Any = None, bias_constraint: Any = None, **kwargs: Any):
        super().__init__(kernel_size, strides, padding, data_format, dilation_rate, activation, use_bias,
                         bias_initializer, bias_regularizer, bias_constraint, **kwargs)
        self.filters = _positive_int("filters", filters)
        self.output_padding = None
        if output_padding is not None:
            values = (output_padding,) * self.rank if isinstance(output_padding, (int, np.integer)) \
                else tuple(output_padding)
            if len(values) != self.rank or not all(isinstance(v, (int, np.integer)) and 0 <= v < s
                                                   for v, s in zip(values, self.strides)):
                raise ValueError(f"output_padding must be {self.rank} non-negative integers, each smaller than its "
                                 f"stride {self.strides}. Received: output_padding={output_padding!r}")
            self.output_padding = tuple(int(v) for v in values)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)

    def build(self, input_shape):
        channels = self._channels(input_shape)
        # Keras' layout: (*window, filters, in_channels), the kernel of the Conv this layer transposes.
        self.kernel = self.add_weight(shape=(*self.kernel_size, self.filters, channels),
                                      initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
                                      constraint=self.kernel_constraint, name="kernel")
        self._add_bias(self.filters)
        self.built = True

    def _output_sample_shape(self, sample_shape):
        spatial = sample_shape[1:] if self.data_format == "channels_first" else sample_shape[:-1]
        extras = self.output_padding or (None,) * self.rank
        out = tuple(_transpose_padding(n, k, s, d, self.padding, e)[0]
                    for n, k, s, d, e in zip(spatial, self.kernel_size, self.strides, self.dilation_rate, extras))
        return (self.filters, *out) if self.data_format == "channels_first" else (*out, self.filters)

    def call(self, x):
        y = conv_transpose(x, self.kernel, self.strides, self.padding, self.output_padding,
                                    self.data_format, self.dilation_rate)
        return bias_and_activation(self, y)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, **self._window_config(),
                "output_padding": None if self.output_padding is None else list(self.output_padding),
                **kernel_options_config(self)}


_TRANSPOSE_DOC = """Transposed {rank}-D convolution (the gradient of ``Conv{rank}D`` with respect to its input), as
    ``keras.layers.Conv{rank}DTranspose``.

    Args:
        filters: positive integer, the number of output channels.
        kernel_size, strides, dilation_rate: integers or tuples of {rank} integers.
        padding: ``"valid"`` (output ``(n - 1) * stride + max(kernel, stride)``) or ``"same"``
            (output ``n * stride``).
        output_padding: integers (each below its stride) added to the output size, or ``None``.
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.
        activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, kernel_constraint, bias_constraint: as in ``Conv{rank}D``.

    The kernel has Keras' shape ``(*kernel_size, filters, in_channels)``.
    """


class Conv2DTranspose(ConvTranspose):
    __doc__ = _TRANSPOSE_DOC.format(rank=2)
    rank = 2

    def __init__(self, filters: int, kernel_size: Any, strides: Any = (1, 1), padding: str = "valid",
                 output_padding: Any = None, data_format: str | None = None, dilation_rate: Any = (1, 1),
                 **kwargs: Any):
        super().__init__(filters, kernel_size, strides, padding, output_padding, data_format, dilation_rate,
                         **kwargs)


class Conv1DTranspose(ConvTranspose):
    __doc__ = _TRANSPOSE_DOC.format(rank=1)
    rank = 1


class DepthwiseConv(_Convolution):
    """Shared implementation of ``DepthwiseConv1D`` and ``DepthwiseConv2D``."""

    def __init__(self, kernel_size: Any, strides: Any = 1, padding: str = "valid", depth_multiplier: int = 1,
                 data_format: str | None = None, dilation_rate: Any = 1, activation: Any = None,
                 use_bias: bool = True, depthwise_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 depthwise_regularizer: Any = None, bias_regularizer: Any = None, depthwise_constraint: Any = None,
                 bias_constraint: Any = None, **kwargs: Any):
        super().__init__(kernel_size, strides, padding, data_format, dilation_rate, activation, use_bias,
                         bias_initializer, bias_regularizer, bias_constraint, **kwargs)
        self.depth_multiplier = _positive_int("depth_multiplier", depth_multiplier)
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.depthwise_regularizer = regularizers.get(depthwise_regularizer)
        self.depthwise_constraint = constraints.get(depthwise_constraint)

    def build(self, input_shape):
        channels = self._channels(input_shape)
        # Keras 3's layout and name: "kernel" of shape (*window, in_channels, depth_multiplier).
        self.kernel = self.add_weight(shape=(*self.kernel_size, channels, self.depth_multiplier),
                                      initializer=self.depthwise_initializer, regularizer=self.depthwise_regularizer,
                                      constraint=self.depthwise_constraint, name="kernel")
        self._add_bias(channels * self.depth_multiplier)
        self.built = True

    def _output_sample_shape(self, sample_shape):
        spatial = sample_shape[1:] if self.data_format == "channels_first" else sample_shape[:-1]
        channels = (sample_shape[0] if self.data_format == "channels_first" else sample_shape[-1])
        out, _ = _geometry(spatial, self.kernel_size, self.strides, self.dilation_rate, self.padding)
        filters = channels * self.depth_multiplier
        return (filters, *out) if self.data_format == "channels_first" else (*out, filters)

    def call(self, x):
        y = depthwise_conv(x, self.kernel, self.strides, self.padding, self.data_format,
                                    self.dilation_rate)
        return bias_and_activation(self, y)

    def get_config(self):
        config = {**super().get_config(), **self._window_config(), "depth_multiplier": self.depth_multiplier,
                  **kernel_options_config(self)}
        for key in ("kernel_initializer", "kernel_regularizer", "kernel_constraint"):
            del config[key]
        return {**config, "depthwise_initializer": initializers.serialize(self.depthwise_initializer),
                "depthwise_regularizer": regularizers.serialize(self.depthwise_regularizer),
                "depthwise_constraint": constraints.serialize(self.depthwise_constraint)}


_DEPTHWISE_DOC = """Depthwise {rank}-D convolution, as ``keras.layers.DepthwiseConv{rank}D``: each input channel is
    convolved with its own ``depth_multiplier`` filters; output channel ``c * depth_multiplier + m``.

    Args:
        kernel_size, strides, dilation_rate: integers or tuples of {rank} integers.
        padding: ``"valid"`` or ``"same"``.
        depth_multiplier: positive integer, the filters per input channel.
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.
        activation, use_bias: as in ``Conv{rank}D``.
        depthwise_initializer, depthwise_regularizer, depthwise_constraint: of the kernel, which has
            Keras 3's name ``kernel`` and shape ``(*kernel_size, in_channels, depth_multiplier)``.
        bias_initializer, bias_regularizer, bias_constraint: of the bias
            (``in_channels * depth_multiplier``).
    """


class DepthwiseConv2D(DepthwiseConv):
    __doc__ = _DEPTHWISE_DOC.format(rank=2)
    rank = 2

    def __init__(self, kernel_size: Any, strides: Any = (1, 1), padding: str = "valid", depth_multiplier: int = 1,
                 data_format: str | None = None, dilation_rate: Any = (1, 1), **kwargs: Any):
        super().__init__(kernel_size, strides, padding, depth_multiplier, data_format, dilation_rate, **kwargs)


class DepthwiseConv1D(DepthwiseConv):
    __doc__ = _DEPTHWISE_DOC.format(rank=1)
    rank = 1


class SeparableConv(_Convolution):
    """Shared implementation of ``SeparableConv1D`` and ``SeparableConv2D``."""

    def __init__(self, filters: int, kernel_size: Any, strides: Any = 1, padding: str = "valid",
                 data_format: str | None = None, dilation_rate: Any = 1, depth_multiplier: int = 1,
                 activation: Any = None, use_bias: bool = True, depthwise_initializer: Any = "glorot_uniform",
                 pointwise_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 depthwise_regularizer: Any = None, pointwise_regularizer: Any = None, bias_regularizer: Any = None,
                 depthwise_constraint: Any = None, pointwise_constraint: Any = None, bias_constraint: Any = None,
                 **kwargs: Any):
        super().__init__(kernel_size, strides, padding, data_format, dilation_rate, activation, use_bias,
                         bias_initializer, bias_regularizer, bias_constraint, **kwargs)
        self.filters = _positive_int("filters", filters)
        self.depth_multiplier = _positive_int("depth_multiplier", depth_multiplier)
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.pointwise_initializer = initializers.get(pointwise_initializer)
        self.depthwise_regularizer = regularizers.get(depthwise_regularizer)
        self.pointwise_regularizer = regularizers.get(pointwise_regularizer)
        self.depthwise_constraint = constraints.get(depthwise_constraint)
        self.pointwise_constraint = constraints.get(pointwise_constraint)

    def build(self, input_shape):
        channels = self._channels(input_shape)
        self.depthwise_kernel = self.add_weight(
            shape=(*self.kernel_size, channels, self.depth_multiplier), initializer=self.depthwise_initializer,
            regularizer=self.depthwise_regularizer, constraint=self.depthwise_constraint, name="depthwise_kernel")
        self.pointwise_kernel = self.add_weight(
            shape=(*(1,) * self.rank, channels * self.depth_multiplier, self.filters),
            initializer=self.pointwise_initializer, regularizer=self.pointwise_regularizer,
            constraint=self.pointwise_constraint, name="pointwise_kernel")
        self._add_bias(self.filters)
        self.built = True

    def _output_sample_shape(self, sample_shape):
        spatial = sample_shape[1:] if self.data_format == "channels_first" else sample_shape[:-1]
        out, _ = _geometry(spatial, self.kernel_size, self.strides, self.dilation_rate, self.padding)
        return (self.filters, *out) if self.data_format == "channels_first" else (*out, self.filters)

    def call(self, x):
        # Keras' separable_conv: strides and dilation in the depthwise step, then a 1x1 convolution.
        y = depthwise_conv(x, self.depthwise_kernel, self.strides, self.padding, self.data_format,
                                    self.dilation_rate)
        y = conv(y, self.pointwise_kernel, 1, "valid", self.data_format)
        return bias_and_activation(self, y)

    def get_config(self):
        config = {**super().get_config(), "filters": self.filters, **self._window_config(),
                  "depth_multiplier": self.depth_multiplier, **kernel_options_config(self)}
        for key in ("kernel_initializer", "kernel_regularizer", "kernel_constraint"):
            del config[key]
        extra = {}
        for kind in ("depthwise", "pointwise"):
            extra[f"{kind}_initializer"] = initializers.serialize(getattr(self, f"{kind}_initializer"))
            extra[f"{kind}_regularizer"] = regularizers.serialize(getattr(self, f"{kind}_regularizer"))
            extra[f"{kind}_constraint"] = constraints.serialize(getattr(self, f"{kind}_constraint"))
        return {**config, **extra}


_SEPARABLE_DOC = """Depthwise-separable {rank}-D convolution, as ``keras.layers.SeparableConv{rank}D``: a depthwise
    convolution (``depth_multiplier`` filters per channel, with the strides and dilation) followed by
    a 1x1 convolution to ``filters`` channels.

    Args:
        filters: positive integer, the number of output channels.
        kernel_size, strides, dilation_rate: integers or tuples of {rank} integers.
        padding: ``"valid"`` or ``"same"``.
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.
        depth_multiplier: positive integer.
        activation, use_bias, bias_*: as in ``Conv{rank}D``.
        depthwise_* and pointwise_* initializers, regularizers, constraints: of the two kernels,
            ``depthwise_kernel`` ``(*kernel_size, in_channels, depth_multiplier)`` and
            ``pointwise_kernel`` ``(*ones, in_channels * depth_multiplier, filters)`` as in Keras.
    """


class SeparableConv2D(SeparableConv):
    __doc__ = _SEPARABLE_DOC.format(rank=2)
    rank = 2

    def __init__(self, filters: int, kernel_size: Any, strides: Any = (1, 1), padding: str = "valid",
                 data_format: str | None = None, dilation_rate: Any = (1, 1), **kwargs: Any):
        super().__init__(filters, kernel_size, strides, padding, data_format, dilation_rate, **kwargs)


class SeparableConv1D(SeparableConv):
    __doc__ = _SEPARABLE_DOC.format(rank=1)
    rank = 1


Convolution2DTranspose, Convolution1DTranspose = Conv2DTranspose, Conv1DTranspose
SeparableConvolution1D, SeparableConvolution2D = SeparableConv1D, SeparableConv2D
