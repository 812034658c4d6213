"""A small Transformer encoder that reads MNIST digits row by row: 28 tokens of 28 pixels each.

    python examples/transformer_classifier.py [--epochs 10] [--blocks 2] [--dropout 0.1] [--seed 0]
    distnn-run -np 2 python examples/transformer_classifier.py     # data-parallel: the same result

Each row is projected to ``--width`` features and gets a learned position embedding; encoder
blocks (multi-head self-attention, residual ``Add``, ``LayerNormalization``, a ReLU feed-forward
network, residual ``Add``, ``LayerNormalization``) follow, then the mean over the 28 tokens and a
softmax over the 10 digits. Trained on distnn's offline MNIST subset (4,000 training / 1,000 test
images); the default settings reach about 0.95 test accuracy. Dropout draws its masks per global
sample (``distnn.random``), so two ranks train exactly as one process.
"""
import argparse

import numpy as np

from distnn import backend, datasets, distributed, layers, optimizers
from distnn.models import Model
from distnn.utils import set_random_seed


@layers.register_serializable
class PositionEmbedding(layers.Layer):
    """Adds a learned vector per position: a ``(sequence length, features)`` table, broadcast over the batch."""

    def __init__(self, initializer="random_normal", **kwargs):
        super().__init__(**kwargs)
        self.initializer = initializer

    def build(self, input_shape):
        self.table = self.add_weight(shape=tuple(input_shape[1:]), initializer=self.initializer, name="table")

    def call(self, inputs):
        return inputs + self.table

    def get_config(self):
        return {**super().get_config(), "initializer": self.initializer}


def encoder_block(x, heads: int, ff: int, dropout: float):
    """Post-norm Transformer encoder block (as the original paper and PyTorch's default)."""
    width = x.shape[-1]
    attended = layers.MultiHeadAttention(heads, width // heads, dropout=dropout)(x, x)
    x = layers.LayerNormalization(epsilon=1e-6)(layers.add([x, layers.Dropout(dropout)(attended)]))
    hidden = layers.Dense(width)(layers.Dense(ff, activation="relu")(x))
    return layers.LayerNormalization(epsilon=1e-6)(layers.add([x, layers.Dropout(dropout)(hidden)]))


def build_model(width: int = 64, heads: int = 4, ff: int = 128, blocks: int = 2, dropout: float = 0.1) -> Model:
    inputs = layers.Input(shape=(28, 28))  # 28 rows (tokens) of 28 pixels (features)
    x = PositionEmbedding()(layers.Dense(width)(inputs))
    for _ in range(blocks):
        x = encoder_block(x, heads, ff, dropout)
    outputs = layers.Dense(10, activation="softmax")(layers.GlobalAveragePooling1D()(x))
    return Model(inputs, outputs)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ff", type=int, default=128, help="feed-forward width")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--limit", type=int, default=None, help="train on the first LIMIT images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-weights", default=None, help="rank 0 writes the trained flat parameters (.npy)")
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    set_random_seed(args.seed)

    (train_images, train_labels), (test_images, test_labels) = datasets.mnist()
    train_images = train_images[:args.limit].reshape(-1, 28, 28).astype("float32") / 255
    train_labels = train_labels[:args.limit]
    test_images = test_images.reshape(-1, 28, 28).astype("float32") / 255

    model = build_model(args.width, args.heads, args.ff, args.blocks, args.dropout)
    if args.verbose:
        model.summary()  # prints on rank 0 only
    model.compile(optimizer=optimizers.Adam(args.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(train_images, train_labels, epochs=args.epochs, batch_size=args.batch_size, verbose=args.verbose)
    test_loss, test_acc = model.evaluate(test_images, test_labels, verbose=0)
    if distributed.is_root():  # one line (and one file) per job, not per rank
        if args.save_weights:
            np.save(args.save_weights, backend.to_numpy(model.params))
        if args.verbose:
            print(f"test_loss={test_loss:.4f} test_acc={test_acc:.4f}")
    return test_acc


if __name__ == "__main__":
    main()
