"""Transformer encoder block training throughput: distnn vs PyTorch's nn.TransformerEncoderLayer, one thread.

The block is PyTorch's default (post-norm) encoder layer: multi-head self-attention, residual add,
LayerNormalization, a ReLU feed-forward network, residual add, LayerNormalization; here batch 32,
64 tokens, 128 wide, 4 heads of 32, feed-forward 512 (4x), layer-norm epsilon 1e-5, no dropout,
followed by a mean over the tokens and a 10-way classifier (cross-entropy, Adam). Both frameworks
train on the same batches in this one run, alternating, best of ``--repeats``:

    python benchmarks/bench_transformer.py
    PYTHONPATH=. /path/to/venv-with-torch/bin/python benchmarks/bench_transformer.py --parts

Prints samples/s (sequences) for each framework and their ratio, then where distnn's step time goes
(forward / backward per layer and for the attention core, the optimizer, the rest of ``fit``) and
how much of it the block's matrix products alone take in numpy (the bound BLAS sets).
"""
from __future__ import annotations

import argparse
import functools
import os
import time

_THREADS = os.environ.setdefault("OMP_NUM_THREADS", "1")
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)  # before numpy/torch load their thread pools

import numpy as np  # noqa: E402

import torch_reference  # noqa: E402 - beside this script
from bench_cnn import Clock  # noqa: E402

CLASSES = 10


def flops_per_sample(tokens: int, width: int, ff: int) -> float:
    """Multiply-adds x 2 of one sequence's forward pass (projections, attention, feed-forward)."""
    projections = tokens * width * 4 * width  # query, key, value, output
    attention = 2 * tokens * tokens * width  # q k^T and p v, all heads together
    return 2.0 * (projections + attention + 2 * tokens * width * ff)


def distnn_model(tokens: int, width: int, heads: int, ff: int, dropout: float):
    from distnn import layers
    from distnn.models import Model

    def dropped(x):  # as PyTorch's layer: dropout after attention, inside and after the feed-forward network
        return layers.Dropout(dropout)(x) if dropout else x

    inputs = layers.Input(shape=(tokens, width))
    attended = layers.MultiHeadAttention(heads, width // heads, dropout=dropout)(inputs, inputs)
    x = layers.LayerNormalization(epsilon=1e-5)(layers.add([inputs, dropped(attended)]))
    hidden = layers.Dense(width)(dropped(layers.Dense(ff, activation="relu")(x)))
    x = layers.LayerNormalization(epsilon=1e-5)(layers.add([x, dropped(hidden)]))
    outputs = layers.Dense(CLASSES, activation="softmax")(layers.GlobalAveragePooling1D()(x))
    return Model(inputs, outputs)


def bench_distnn(x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> tuple[float, float]:
    from distnn.utils import set_random_seed, to_categorical

    set_random_seed(0)
    model = distnn_model(x.shape[1], x.shape[2], args.heads, args.ff, args.dropout)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    y1 = to_categorical(y, CLASSES)
    model.fit(x[:args.batch_size * 3], y1[:args.batch_size * 3], batch_size=args.batch_size, epochs=1, verbose=0)
    with Clock() as clock:
        model.fit(x, y1, batch_size=args.batch_size, epochs=1, verbose=0)
    return clock.rates(len(x))


def bench_torch(x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> tuple[float, float] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(int(_THREADS))
    torch.manual_seed(0)
    nn = torch.nn
    width = x.shape[2]

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.TransformerEncoderLayer(width, args.heads, dim_feedforward=args.ff, dropout=args.dropout,
                                                    batch_first=True)
            self.head = nn.Linear(width, CLASSES)

        def forward(self, inputs):
            return self.head(self.block(inputs).mean(dim=1))

    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    epoch = torch_reference.epoch_runner(model, optimizer, x, y, args.batch_size)
    epoch(args.batch_size * 3)  # warm up
    with Clock() as clock:
        epoch(len(x))
    return clock.rates(len(x))


def distnn_time_split(x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    """CPU milliseconds per step in each layer's forward and backward, the attention core, the optimizer
    and the rest; timers wrap instance methods and the core's function in this process only."""
    from distnn.layers import multi_head_attention
    from distnn.utils import to_categorical

    model = distnn_model(x.shape[1], x.shape[2], args.heads, args.ff, args.dropout)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    y1 = to_categorical(y, CLASSES)
    model.fit(x[:args.batch_size * 2], y1[:args.batch_size * 2], batch_size=args.batch_size, epochs=1, verbose=0)
    times: dict[str, float] = {}

    def timed(key: str, fn):
        @functools.wraps(fn)  # keeps the signature: Layer.__call__ passes ``training`` only if ``call`` names it
        def wrapper(*a, **kw):
            start = time.process_time()
            result = fn(*a, **kw)
            times[key] = times.get(key, 0.0) + (time.process_time() - start) * 1e3
            return result
        return wrapper

    inside_core = {id(layer.dropout_layer) for layer in model._flatten_layers()
                   if isinstance(layer, multi_head_attention.MultiHeadAttention)}  # timed with the core
    for layer in model._flatten_layers(include_self=False):
        if layer.has_fused_backward and id(layer) not in inside_core:
            layer.call = timed(f"forward  {layer.name}", layer.call)
            layer.backward = timed(f"backward {layer.name}", layer.backward)
    attention_forward = multi_head_attention._attention_forward

    def core(*a, **kw):
        attended, probabilities, backward = timed("forward  attention core", attention_forward)(*a, **kw)
        return attended, probabilities, timed("backward attention core", backward)

    multi_head_attention._attention_forward = core
    model.optimizer.apply = timed("optimizer", model.optimizer.apply)
    steps = len(x) // args.batch_size
    try:
        start = time.process_time()
        model.fit(x[:steps * args.batch_size], y1[:steps * args.batch_size], batch_size=args.batch_size, epochs=1,
                  verbose=0)
        total = (time.process_time() - start) * 1e3
    finally:
        multi_head_attention._attention_forward = attention_forward
    split = {key: value / steps for key, value in times.items()}
    split["forward"] = sum(v for k, v in split.items() if k.startswith("forward "))
    split["backward"] = sum(v for k, v in split.items() if k.startswith("backward "))
    split["other"] = total / steps - split["forward"] - split["backward"] - split["optimizer"]
    return split


def gemm_floor(args: argparse.Namespace, tokens: int, width: int, repeats: int = 5) -> float:
    """CPU milliseconds of the block's matrix products alone (forward and both backward products of
    every projection, the batched attention products), float32 numpy: what BLAS bounds a step to."""
    rng = np.random.default_rng(0)
    rows, head = args.batch_size * tokens, width // args.heads
    shapes = [(rows, width, 3 * width), (rows, width, width), (rows, width, args.ff), (rows, args.ff, width)]
    products = []
    for m, k, n in shapes:  # y = x w, dw = x^T dy, dx = dy w^T
        x, w, dy = (rng.standard_normal(s).astype(np.float32) for s in ((m, k), (k, n), (m, n)))
        products += [(x, w), (x.T, dy), (dy, w.T)]
    batched = (args.batch_size, args.heads, tokens)
    q, p = (rng.standard_normal((*batched, d)).astype(np.float32) for d in (head, tokens))
    kt = rng.standard_normal((*batched[:2], head, tokens)).astype(np.float32)
    products += [(q, kt)] * 3 + [(p, q)] * 3  # q k^T and p v, each with two backward products
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for a, b in products:
            np.matmul(a, b)
        best = min(best, (time.process_time() - start) * 1e3)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ff", type=int, default=512, help="feed-forward width")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=20, help="training steps timed per repeat")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternate the frameworks this many times and keep each one's best")
    parser.add_argument("--parts", action="store_true", help="also print distnn's time per layer")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    samples = args.batch_size * args.steps
    x = rng.standard_normal((samples, args.tokens, args.width)).astype(np.float32)
    y = rng.integers(CLASSES, size=samples)
    ours: tuple[float, float] = (0.0, 0.0)
    theirs: tuple[float, float] | None = None
    for _ in range(args.repeats):  # alternating runs share the machine's noise fairly
        ours = tuple(map(max, ours, bench_distnn(x, y, args)))
        rates = None if args.no_torch else bench_torch(x, y, args)
        if rates is not None:
            theirs = rates if theirs is None else tuple(map(max, theirs, rates))
    split = distnn_time_split(x, y, args)
    floor = gemm_floor(args, args.tokens, args.width)

    flops = 3 * flops_per_sample(args.tokens, args.width, args.ff)  # forward + two backward products
    print(f"Transformer encoder block: batch {args.batch_size}, {args.tokens} tokens, width {args.width}, "
          f"{args.heads} heads, feed-forward {args.ff}, dropout {args.dropout}, Adam; {args.steps} steps, "
          f"{_THREADS} thread(s), best of {args.repeats}")
    print("samples/s by wall clock (by CPU time)")
    print(f"distnn : {ours[0]:7.1f} ({ours[1]:7.1f}) samples/s  {ours[1] * flops / 1e9:5.1f} GFLOP/s")
    if theirs is not None:
        print(f"pytorch: {theirs[0]:7.1f} ({theirs[1]:7.1f}) samples/s  {theirs[1] * flops / 1e9:5.1f} GFLOP/s")
        print(f"ratio distnn / pytorch: {ours[0] / theirs[0]:.2f}x by wall clock, "
              f"{ours[1] / theirs[1]:.2f}x by CPU time")
    elif not args.no_torch:
        print("pytorch: not importable here (run with a Python that has torch, PYTHONPATH=. for distnn)")
    phases = ("forward", "backward", "optimizer", "other")
    total = sum(split[key] for key in phases)
    print(f"distnn step {total:.1f} ms CPU: " + ", ".join(f"{key} {split[key]:.1f} ms ({split[key] / total:.0%})"
                                                      for key in phases))
    print(f"the block's matrix products alone: {floor:.1f} ms CPU ({floor / total:.0%} of distnn's step)")
    if args.parts:
        for key, value in sorted(split.items()):
            if key.startswith(("forward ", "backward ")):
                print(f"  {key:<40} {value:6.2f} ms")


if __name__ == "__main__":
    main()
