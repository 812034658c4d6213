"""The ops path of convolution layers: ``Conv1D``/``Conv2D`` with ``groups > 1``, and the bias and
activation of the convolution layers written with ops (``distnn/layers/conv_transpose.py``).

A grouped convolution runs on ``ops.conv`` (one batched GEMM over the groups) and the tape
differentiates it; the fused im2col path of ``distnn/layers/conv.py`` serves ``groups == 1`` only.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from distnn.layers.activation_layers import apply_activation
from distnn.ops.conv import conv
from distnn.ops.shape import pad, reshape


def check_groups(groups: Any, filters: Any) -> int:
    """``groups`` as an int; a clear error unless it is positive and divides ``filters``."""
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups <= 0:
        raise ValueError(f"Invalid value for argument `groups`. Expected a strictly positive value. "
                         f"Received: groups={groups!r}")
    if isinstance(filters, (int, np.integer)) and filters > 0 and filters % groups:
        raise ValueError(f"The number of filters must be evenly divisible by the number of groups. "
                         f"Received: groups={groups}, filters={filters}")
    return int(groups)


def bias_and_activation(layer: Any, y: Any) -> Any:
    """``activation(y + bias)`` with ops, the bias along the channel axis of ``layer.data_format``."""
    if layer.bias is not None:
        bias = layer.bias
        if layer.data_format == "channels_first":
            bias = reshape(bias, (-1, *(1,) * (len(np.shape(y)) - 2)))
        y = y + bias
    if layer.activation.name != "linear":
        y = apply_activation(y, layer.activation)
    return y


def grouped_conv_call(layer: Any, x: Any) -> Any:
    """The output of a grouped ``Conv1D``/``Conv2D`` (its kernel has ``channels / groups`` inputs)."""
    padding = layer.padding
    if padding == "causal":  # left padding of the steps, then a valid convolution
        steps_axis = 2 if layer.data_format == "channels_first" else 1
        widths = [(0, 0)] * 3
        widths[steps_axis] = ((layer.kernel_size[0] - 1) * layer.dilation_rate[0], 0)
        x, padding = pad(x, widths), "valid"
    y = conv(x, layer.kernel, layer.strides, padding, layer.data_format, layer.dilation_rate)
    return bias_and_activation(layer, y)
