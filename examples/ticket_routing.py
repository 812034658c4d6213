"""The Keras functional-API guide's multi-input, multi-output model: a support ticket's title, body
and tags predict its priority (a score) and the department that handles it. Data is generated (the
guide uses random data too), with a signal the model can learn: priority grows with one word's count
in the body, and the department is set by the first title word.

    python examples/ticket_routing.py [--epochs 5]
    distnn-run -np 2 python examples/ticket_routing.py
"""
import distnn  # noqa: F401 - first, so that under a launcher MPI starts before anything can fail

import argparse

import numpy as np

import distnn as keras
from distnn import layers
from distnn.utils import set_random_seed

NUM_TAGS, NUM_WORDS, NUM_DEPARTMENTS = 12, 1000, 4


def make_tickets(count: int, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    title = rng.integers(1, NUM_WORDS, size=(count, 10))
    body = rng.integers(1, NUM_WORDS, size=(count, 100))
    tags = rng.integers(0, 2, size=(count, NUM_TAGS)).astype("float32")
    department = title[:, 0] % NUM_DEPARTMENTS
    priority = ((body == 7).sum(axis=1, keepdims=True) + tags[:, :1]).astype("float32") / 3
    return ({"title": title, "body": body, "tags": tags},
            {"priority": priority, "department": np.eye(NUM_DEPARTMENTS, dtype="float32")[department]})


def build_model() -> keras.Model:
    title_input = keras.Input(shape=(None,), dtype="int32", name="title")
    body_input = keras.Input(shape=(None,), dtype="int32", name="body")
    tags_input = keras.Input(shape=(NUM_TAGS,), name="tags")
    title_features = layers.LSTM(32)(layers.Embedding(NUM_WORDS, 16)(title_input))
    body_features = layers.LSTM(16)(layers.Embedding(NUM_WORDS, 16)(body_input))
    x = layers.concatenate([title_features, body_features, tags_input])
    priority = layers.Dense(1, name="priority")(x)
    department = layers.Dense(NUM_DEPARTMENTS, activation="softmax", name="department")(x)
    model = keras.Model(inputs=[title_input, body_input, tags_input], outputs={"priority": priority,
                                                                               "department": department})
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss={"priority": "mse", "department": "categorical_crossentropy"},
                  loss_weights={"priority": 1.0, "department": 0.2}, metrics={"department": ["accuracy"]})
    return model


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1280)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    set_random_seed(args.seed)
    x, y = make_tickets(args.samples, args.seed)
    model = build_model()
    history = model.fit(x, y, epochs=args.epochs, batch_size=32, verbose=args.verbose)
    if distnn.distributed.rank() == 0:
        print(" ".join(f"{k}={v[-1]:.4f}" for k, v in history.history.items()))
    return history.history


if __name__ == "__main__":
    main()
