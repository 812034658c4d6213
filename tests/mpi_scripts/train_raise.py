"""MPI worker for tests/test_distributed_training.py: rank 1 raises from a callback in the middle
of ``fit`` while the other ranks wait in the step's allreduce; the whole job must end promptly.

    mpiexec -n 3 python train_raise.py
"""
import numpy as np

import distnn.distributed as dist
from distnn.callbacks import Callback
from distnn.layers import Dense
from distnn.models import Sequential


class FailOnRank1(Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 3 and dist.rank() == 1:
            raise RuntimeError("deliberate failure on rank 1 during fit")


dist.init()
rng = np.random.default_rng(0)
x, y = rng.normal(size=(200, 5)).astype("float32"), rng.normal(size=(200, 1)).astype("float32")
model = Sequential([Dense(8, activation="relu", input_shape=(5,)), Dense(1)])
model.compile(optimizer="sgd", loss="mse")
model.fit(x, y, batch_size=10, epochs=3, verbose=0, callbacks=[FailOnRank1()])
print(f"unreachable: rank {dist.rank()} finished fit", flush=True)
