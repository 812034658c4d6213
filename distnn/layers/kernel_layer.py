"""What the layers with a kernel share (``Dense``, ``Conv1D``/``Conv2D``, ``Conv*Transpose``): their
options, the fused ``activation(rows @ kernel + bias)`` forward and backward, and the GEMM a fused
backward runs in polled pieces while gradient buckets are in flight (docs/architecture.md,
"Gradient buckets and overlap")."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distnn import activations, backend, constraints, initializers, regularizers

if TYPE_CHECKING:
    from distnn.layers.base import Layer, Variable


def init_kernel_options(layer: "Layer", activation: Any, use_bias: bool, kernel_initializer: Any,
                        bias_initializer: Any, kernel_regularizer: Any, bias_regularizer: Any,
                        kernel_constraint: Any = None, bias_constraint: Any = None) -> None:
    """Resolve and set, under Keras' attribute names, the activation, bias switch, initializers,
    regularizers and constraints of a layer with a kernel (``Dense``, ``Conv1D``, ``Conv2D``)."""
    layer.activation = activations.get(activation)
    if isinstance(layer.activation, activations.GLU):  # the fused kernel path keeps the output's shape
        raise ValueError(f"{type(layer).__name__} cannot apply glu, which halves an axis; put an Activation('glu') "
                         f"layer after it. Received: activation={activation!r}")
    layer.use_bias = bool(use_bias)
    layer.kernel_initializer = initializers.get(kernel_initializer)
    layer.bias_initializer = initializers.get(bias_initializer)
    layer.kernel_regularizer = regularizers.get(kernel_regularizer)
    layer.bias_regularizer = regularizers.get(bias_regularizer)
    layer.kernel_constraint = constraints.get(kernel_constraint)
    layer.bias_constraint = constraints.get(bias_constraint)


def affine_forward(layer: "Layer", rows: Any, kernel: Any, training: bool) -> Any:
    """``activation(rows @ kernel + bias)`` for a kernel layer: ``Dense`` on its inputs, a convolution
    on its im2col matrix. Keeps what ``affine_backward`` needs; training reuses the layer's buffers."""
    xp = backend.get_array_module(rows)
    # Training reuses one buffer per shape; inference returns fresh arrays the caller may keep.
    z = xp.matmul(rows, kernel, out=layer._buffer("z", (rows.shape[0], kernel.shape[1])) if training else None)
    if layer.bias is not None:
        z += layer.bias.value
    if layer.activation.needs_input:
        layer._z = z
        y = layer.activation(z, out=layer._buffer("y", z.shape) if training else None)
    else:
        y = layer.activation(z, out=z)  # in place: backward needs only the output
    layer._y = y
    return y


def affine_backward(layer: "Layer", g: Any, rows: Any, kernel_grad: Any) -> Any:
    """From dL/dy (2-D, may be overwritten) to dL/d(rows @ kernel + bias); writes the kernel and bias
    gradients in place (views of the model's flat gradient buffer) and returns dL/dz."""
    xp = backend.get_array_module(g)
    if not layer.fused_output_activation:
        g = layer.activation.backward(g, getattr(layer, "_z", None), layer._y)
    polled_matmul(layer, rows.T, g, kernel_grad, variable=layer.kernel)
    if layer.bias is not None:  # a GEMV with ones: several times faster than g.sum(axis=0) on tall g
        ones = layer._buffer("ones", (g.shape[0],))
        ones.fill(1)
        xp.matmul(ones, g, out=layer.bias.grad)
    return g


# Multiply-adds per piece of a polled GEMM, and the most pieces. Measured on the emulated 2-node
# cluster at 4 Gbit/s (MLP, 2 ranks; docs/architecture.md, "Gradient buckets and overlap"), rank 0's
# exposed gradient communication per step, 3.8-4.0 ms blocking: whole GEMMs 2.38 ms (median of 3
# rounds), pieces of 2^24 multiply-adds 2.26 ms (median of 3), pieces of 2^22 2.17 ms (median of 5;
# single runs 1.15-1.77 ms), and with their rows reported as written 1.36-1.38 ms (medians of 5).
# Cut along the output's rows (dL/dW) or columns (dL/dx), each element's sum over the shared axis is
# unchanged: bitwise the same result. Pieces along rows of a 784x128 @ 128x512 product cost 3 %,
# along columns none, while 32-row pieces of dL/dx = g @ kernel.T cost 45 % (one thread), hence the
# column cut there.
POLL_PIECE_MACS = 1 << 22
POLL_MAX_PIECES = 8
# Every piece reads the whole of the other operand (``b`` for row pieces, ``a`` for column pieces):
# cut only while that stays in cache. A convolution's weight gradient (patches.T @ g, with g of
# 19 MB for the MNIST CNN's second layer at 128 samples) would be read 8 times over.
POLL_REREAD_BYTES = 1 << 20


def polled_matmul(layer: "Layer", a: Any, b: Any, out: Any, axis: int = 0, variable: "Variable | None" = None) -> Any:
    """``a @ b`` into ``out`` inside a fused ``backward``. While gradient buckets cross a network (the
    tape's ``poll_transfers``: overlap.BucketReducer.reports_within_ops), a large product runs in pieces along ``axis`` of ``out`` (0: rows,
    1: columns) with a poll of the transfers after each: MPI advances a transfer only inside MPI calls,
    and over TCP a bucket started before a millisecond-long GEMM otherwise waits it out.

    ``variable``: the weight whose gradient ``out`` is (row-major, from its first element), when this
    product finishes it; with ``axis=0`` each piece's rows are then reported final as they are
    written, so the buckets they complete start before the product ends."""
    if variable is not None and axis != 0:
        raise ValueError(f"polled_matmul reports a variable's leading rows, so variable= needs axis=0. "
                         f"Received: axis={axis}")
    xp = backend.get_array_module(a)
    tape = layer._backward_tape
    poll = None if tape is None else tape.poll_transfers
    pieces = min(POLL_MAX_PIECES, a.shape[0] * a.shape[1] * b.shape[1] // POLL_PIECE_MACS)
    if poll is None or pieces < 2 or (b if axis == 0 else a).nbytes > POLL_REREAD_BYTES:
        return xp.matmul(a, b, out=out)
    step = -(-out.shape[axis] // pieces)
    for lo in range(0, out.shape[axis], step):
        hi = min(lo + step, out.shape[axis])
        if axis == 0:
            xp.matmul(a[lo:hi], b, out=out[lo:hi])
        else:
            xp.matmul(a, b[:, lo:hi], out=out[:, lo:hi])
        if variable is not None and tape.report_prefix is not None:
            tape.report_prefix(variable, hi * out.shape[1])  # also polls
        else:
            poll()
    return out


def kernel_options_config(layer: "Layer") -> dict:
    """The ``get_config`` entries of the options set by ``init_kernel_options``."""
    return {"activation": activations.serialize(layer.activation), "use_bias": layer.use_bias,
            "kernel_initializer": initializers.serialize(layer.kernel_initializer),
            "bias_initializer": initializers.serialize(layer.bias_initializer),
            "kernel_regularizer": regularizers.serialize(layer.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(layer.bias_regularizer),
            "kernel_constraint": constraints.serialize(layer.kernel_constraint),
            "bias_constraint": constraints.serialize(layer.bias_constraint)}
