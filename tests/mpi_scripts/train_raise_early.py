"""Rank 1 fails while 'loading data', before anything touched MPI; rank 0 goes on to train.

Without distnn's early abort hook (installed by `import distnn` under a launcher), rank 0 would
wait forever in its first collective.
"""
import os

import distnn  # noqa: F401 - installs the hook
from distnn.datasets import make_classification
from distnn.layers import Dense
from distnn.models import Sequential

if os.environ.get("PMI_RANK") == "1":
    raise FileNotFoundError("rank 1 could not read its data shard")
x, y = make_classification(64, n_features=4, n_classes=2)
model = Sequential([Dense(2, activation="softmax", input_shape=(4,))])
model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
model.fit(x, y, epochs=1000, verbose=0)
