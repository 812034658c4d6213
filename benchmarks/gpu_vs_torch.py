"""GPU training throughput: distnn (cupy) vs PyTorch eager on the same GPU, in one run.

    DISTNN_DEVICE=gpu python benchmarks/gpu_vs_torch.py [--seconds 8]     (benchmarks/gpu.sh runs it)

Models (SGD 0.01, cross-entropy, random data, float32):
  mlp          4096 -> 4096 -> 4096 -> 10 (relu), batch 1024
  mnist_cnn    the MNIST CNN of benchmarks/bench_cnn.py, batch 256
  lstm         LSTM(128) over 28 x 28 rows -> Dense(10), batch 256
  transformer  one encoder block (64 tokens, width 256, 8 heads, ff 1024) -> mean -> Dense(10), batch 64

Both frameworks get the same host numpy batches and upload one per step (distnn's fit moves each
batch to the device; the PyTorch loop calls ``.cuda()`` on it), and each time ends on a device
synchronisation. Prints samples/s of each and the ratio distnn / PyTorch (targets from issue 16:
MLP >= 0.8, CNN >= 0.5).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

CLASSES = 10
MODELS = {  # name: (input shape, batch size, samples)
    "mlp": ((4096,), 1024, 16384),
    "mnist_cnn": ((28, 28, 1), 256, 8192),
    "lstm": ((28, 28), 256, 8192),
    "transformer": ((64, 256), 64, 2048),
}


def distnn_model(name: str):
    from distnn import layers
    from distnn.models import Model, Sequential

    if name == "mlp":
        return Sequential([layers.Input((4096,)), layers.Dense(4096, activation="relu"),
                           layers.Dense(4096, activation="relu"), layers.Dense(CLASSES, activation="softmax")])
    if name == "mnist_cnn":
        return Sequential([
            layers.Input((28, 28, 1)), layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"), layers.Flatten(),
            layers.Dense(64, activation="relu"), layers.Dense(CLASSES, activation="softmax")])
    if name == "lstm":
        return Sequential([layers.Input((28, 28)), layers.LSTM(128), layers.Dense(CLASSES, activation="softmax")])
    inputs = layers.Input((64, 256))
    attended = layers.MultiHeadAttention(8, 32)(inputs, inputs)
    x = layers.LayerNormalization(epsilon=1e-5)(layers.add([inputs, attended]))
    hidden = layers.Dense(256)(layers.Dense(1024, activation="relu")(x))
    x = layers.LayerNormalization(epsilon=1e-5)(layers.add([x, hidden]))
    return Model(inputs, layers.Dense(CLASSES, activation="softmax")(layers.GlobalAveragePooling1D()(x)))


def torch_model(name: str):
    import torch

    nn = torch.nn
    if name == "mlp":
        return nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, CLASSES))
    if name == "mnist_cnn":
        class Cnn(nn.Module):  # NHWC input as distnn's, permuted to PyTorch's NCHW
            def __init__(self) -> None:
                super().__init__()
                self.body = nn.Sequential(
                    nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, CLASSES))

            def forward(self, x):
                return self.body(x.permute(0, 3, 1, 2))
        return Cnn()
    if name == "lstm":
        class Rnn(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm, self.head = nn.LSTM(28, 128, batch_first=True), nn.Linear(128, CLASSES)

            def forward(self, x):
                return self.head(self.lstm(x)[0][:, -1])
        return Rnn()

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.TransformerEncoderLayer(256, 8, dim_feedforward=1024, dropout=0.0, batch_first=True)
            self.head = nn.Linear(256, CLASSES)

        def forward(self, x):
            return self.head(self.block(x).mean(dim=1))
    return Block()


def data(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    shape, batch, samples = MODELS[name]
    rng = np.random.default_rng(0)
    return rng.random((samples, *shape), dtype=np.float32), rng.integers(CLASSES, size=samples), batch


def best_rate(run_epoch, samples: int, seconds: float) -> float:
    run_epoch()  # warm up: kernels compiled, memory pools filled
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        run_epoch()
        best = max(best, samples / (time.perf_counter() - start))
    return best


def bench_distnn(name: str, seconds: float) -> float:
    from distnn import backend
    from distnn.optimizers import SGD
    from distnn.utils import set_random_seed

    assert backend.device() == "gpu", "run with DISTNN_DEVICE=gpu"
    set_random_seed(0)
    x, y, batch = data(name)
    model = distnn_model(name)
    model.compile(optimizer=SGD(0.01), loss="sparse_categorical_crossentropy")
    sync = backend.xp().cuda.Device().synchronize

    def epoch() -> None:
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        sync()
    return best_rate(epoch, len(x), seconds)


def bench_torch(name: str, seconds: float) -> float:
    import torch

    torch.manual_seed(0)
    x, y, batch = data(name)
    model = torch_model(name).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def epoch() -> None:
        for i in range(0, len(x), batch):
            optimizer.zero_grad()
            loss_fn(model(xt[i:i + batch].cuda(non_blocking=True)), yt[i:i + batch].cuda()).backward()
            optimizer.step()
        torch.cuda.synchronize()
    return best_rate(epoch, len(x), seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="timing budget per model and framework")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args(argv)
    print(f"{'model':<12} {'distnn samples/s':>17} {'torch samples/s':>16} {'ratio':>6}", flush=True)
    for name in args.models:
        ours, theirs = bench_distnn(name, args.seconds), bench_torch(name, args.seconds)
        print(f"{name:<12} {ours:>17.0f} {theirs:>16.0f} {ours / theirs:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
