"""Train sequence models on N ranks (or one process) and save their final weights and losses.

    python train_sequence_parity.py OUT.npz

The LSTM of examples/lstm_mnist_rows.py (32 units) on 640 MNIST images read row by row, and a text-like
model (Embedding with mask_zero -> Bidirectional GRU -> TimeDistributed Dense -> LSTM -> Dense) on
padded integer sequences; rank 0 writes each one's final flat parameters and loss history.
"""
import importlib.util
import sys
from pathlib import Path

import numpy as np

from distnn import backend, datasets, distributed
from distnn.layers import GRU, LSTM, Bidirectional, Dense, Embedding, Input, TimeDistributed
from distnn.models import Model
from distnn.utils import set_random_seed

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lstm_mnist_rows.py"


def mnist_rows_model():
    spec = importlib.util.spec_from_file_location("lstm_mnist_rows", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    set_random_seed(5)
    (x, y), _ = datasets.mnist()
    model = example.build_model(units=32)
    history = model.fit(x[:640].astype("float32") / 255, y[:640], batch_size=64, epochs=2, verbose=0)
    return model, history


def padded_text_model():
    set_random_seed(6)
    rng = np.random.default_rng(2)
    ids = rng.integers(1, 30, (203, 9))
    lengths = rng.integers(3, 10, 203)
    ids[np.arange(9) >= lengths[:, None]] = 0  # right padding, masked by mask_zero
    y = (ids[:, 0] % 3).astype("int64")
    inputs = Input((9,), dtype="int32")
    h = Embedding(30, 8, mask_zero=True)(inputs)
    h = Bidirectional(GRU(6, return_sequences=True))(h)
    h = TimeDistributed(Dense(5, activation="tanh"))(h)
    h = LSTM(7)(h)
    model = Model(inputs, Dense(3, activation="softmax")(h))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = model.fit(ids, y, batch_size=32, epochs=2, verbose=0)
    return model, history


def main():
    distributed.init()
    results = {}
    for name, make in (("mnist_rows", mnist_rows_model), ("padded_text", padded_text_model)):
        model, history = make()
        results[name] = backend.to_numpy(model.params).copy()
        results[name + "_loss"] = np.array(history.history["loss"])
    if distributed.rank() == 0:
        np.savez(sys.argv[1], **results)


if __name__ == "__main__":
    main()
