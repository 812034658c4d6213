"""Differentiable operations with Keras 3's ``keras.ops`` names: ``from distnn import ops``.

Outside training they compute on plain arrays of the backend's array module (numpy or cupy); inside a
``Tape`` they record themselves so that backward can differentiate them (``distnn.ops.core``).
"""
from distnn.ops.core import Tape, Tensor, custom_gradient, stop_gradient
from distnn.ops.nn import log_softmax, relu, sigmoid, softmax
from distnn.ops.numpy import (abs, add, cast, concatenate, divide, exp, expand_dims, getitem, log, matmul, max,
                              maximum, mean, min, minimum, multiply, negative, power, reshape, sqrt, square,
                              squeeze, stack, subtract, sum, tanh, transpose, true_divide, where)
from distnn.ops.operators import TensorOperators

# Tape tensors get the operators here: core cannot import the ops it would dispatch to.
for _name, _member in vars(TensorOperators).items():
    if _name.startswith("__") and _name not in ("__module__", "__dict__", "__weakref__", "__doc__",
                                                 "__qualname__") or _name == "T":
        setattr(Tensor, _name, _member)
del _name, _member
