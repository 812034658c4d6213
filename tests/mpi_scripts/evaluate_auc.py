"""Evaluate a fixed model with AUC (ROC, PR) and F1 on fixed data; run under mpiexec -n N or plain python.

    python evaluate_auc.py OUT.json

Rank 0 writes the evaluate results (and the number of ranks) to OUT.json, so a test can compare
N ranks with one process: the metrics' states (AUC's confusion histogram) are summed across ranks.
"""
import json
import sys

import numpy as np

from distnn import distributed, metrics
from distnn.layers import Dense
from distnn.models import Sequential
from distnn.utils import set_random_seed

set_random_seed(3)
rng = np.random.default_rng(7)
x = rng.normal(size=(203, 5)).astype("float32")
y = ((x[:, 0] - 0.5 * x[:, 1] + rng.normal(size=203)) > 0).astype("float32")[:, None]
model = Sequential([Dense(6, activation="tanh", input_shape=(5,)), Dense(1, activation="sigmoid")])
model.compile(optimizer="sgd", loss="binary_crossentropy",
              metrics=[metrics.AUC(), metrics.AUC(curve="PR", name="pr_auc"), metrics.F1Score(threshold=0.5)])
results = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
if distributed.get_communicator().rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump({"ranks": distributed.get_communicator().size,
                   **{k: np.asarray(v).tolist() for k, v in results.items()}}, f)
