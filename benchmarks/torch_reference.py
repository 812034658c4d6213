"""The PyTorch side of the benchmarks: the same training loop for every model, so that the
comparison measures the frameworks, not two differently written loops."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np


def epoch_runner(model: Any, optimizer: Any, x: np.ndarray, y: np.ndarray, batch_size: int) -> Callable[[int], None]:
    """``run(n)`` trains one shuffled pass over the first ``n`` samples with cross-entropy, in eager mode
    (the numpy arrays are shared with torch, not copied)."""
    import torch

    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def run(n: int) -> None:
        order = torch.randperm(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            optimizer.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            optimizer.step()

    return run
