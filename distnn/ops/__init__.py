"""Differentiable operations with Keras 3's ``keras.ops`` names: ``from distnn import ops``.

Outside training they compute on plain arrays of the backend's array module (numpy or cupy); inside a
``Tape`` they record themselves so that backward can differentiate them (``distnn.ops.core``).
"""
from distnn.ops.conv import average_pool, conv, conv_transpose, depthwise_conv, max_pool
from distnn.ops.core import Tape, Tensor, custom_gradient, stop_gradient, value_and_grad
from distnn.ops.creation import (arange, convert_to_numpy, convert_to_tensor, eye, full, ones, ones_like, shape,
                                 zeros, zeros_like)
from distnn.ops.linalg import dot, einsum, matmul, norm, tensordot
from distnn.ops.math import erf
from distnn.ops.nn import (batch_normalization, binary_crossentropy, categorical_crossentropy, elu, gelu,
                           hard_sigmoid, leaky_relu, log_sigmoid, log_softmax, moments, one_hot, relu, relu6, selu,
                           sigmoid, silu, softmax, softplus, softsign, sparse_categorical_crossentropy)
from distnn.ops.numpy import (abs, absolute, add, cast, clip, cos, divide, exp, log, log1p, maximum, minimum,
                              multiply, negative, power, sign, sin, sqrt, square, subtract, tanh, true_divide, where)
from distnn.ops.operators import TensorOperators
from distnn.ops.reduction import argmax, argmin, cumsum, logsumexp, max, mean, min, prod, std, sum, var
from distnn.ops.shape import (broadcast_to, concatenate, expand_dims, flip, getitem, pad, repeat, reshape, slice,
                              split, squeeze, stack, take, take_along_axis, tile, transpose)

swish = silu  # Keras' alias

# Tape tensors get the operators here: core cannot import the ops it would dispatch to.
for _name, _member in vars(TensorOperators).items():
    if _name.startswith("__") and _name not in ("__module__", "__dict__", "__weakref__", "__doc__",
                                                 "__qualname__") or _name == "T":
        setattr(Tensor, _name, _member)
del _name, _member
