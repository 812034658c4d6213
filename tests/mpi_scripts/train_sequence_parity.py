"""Train a text-like sequence model on N ranks (or one process) and save its final weights and losses.

    python train_sequence_parity.py OUT.npz

Embedding with mask_zero -> Bidirectional GRU -> TimeDistributed Dense -> LSTM -> Dense on padded
integer sequences (203 samples: the last batch splits unevenly); rank 0 writes the final flat
parameters and the loss history.
"""
import sys

import numpy as np

from distnn import backend, distributed
from distnn.layers import GRU, LSTM, Bidirectional, Dense, Embedding, Input, TimeDistributed
from distnn.models import Model
from distnn.utils import set_random_seed


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
    model, history = padded_text_model()
    if distributed.rank() == 0:
        np.savez(sys.argv[1], params=backend.to_numpy(model.params), loss=np.array(history.history["loss"]))


if __name__ == "__main__":
    main()
