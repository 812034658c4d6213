"""Run under mpiexec by test_tensorboard.py: a 2-rank fit with the TensorBoard callback.

    mpiexec -n 2 python tests/interop/mpi_tensorboard.py OUT_DIR

Each rank is given its own log directory, OUT_DIR/rank<r>, so the test can see that only rank 0
writes; rank 0 also writes OUT_DIR/history.json.
"""
import json
import os
import sys

import numpy as np

from distnn import distributed, layers, models
from distnn.callbacks import TensorBoard
from distnn.utils import set_random_seed


def main(out_dir: str) -> None:
    set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("float32")[:, None]
    model = models.Sequential([layers.Input((6,)), layers.Dense(8, activation="relu"),
                               layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    callback = TensorBoard(os.path.join(out_dir, f"rank{distributed.rank()}"), histogram_freq=1,
                           write_steps_per_second=True, update_freq=2)
    history = model.fit(x[:64], y[:64], validation_data=(x[64:], y[64:]), epochs=3, batch_size=16, verbose=0,
                        callbacks=[callback])
    if distributed.is_root():
        with open(os.path.join(out_dir, "history.json"), "w") as f:
            json.dump(history.history, f)


if __name__ == "__main__":
    main(sys.argv[1])
