"""An LSTM reads each MNIST image row by row — 28 steps of 28 pixels — and classifies the digit from
its last state (Keras' classic "MNIST as a sequence" example, with distnn's imports).

    python examples/lstm_mnist_rows.py [--units 64] [--epochs 10] [--seed 0] [--save lstm.keras]
    distnn-run -np 2 python examples/lstm_mnist_rows.py     # data-parallel: the same global batch of 64

Uses the 5,000-image MNIST subset distnn ships (4,000 training / 1,000 test images, no download).
Adam with a cosine-decaying learning rate reaches 0.969 and 0.961 test accuracy after 10 epochs
(seeds 0 and 1; LSTM(128) with --learning-rate 0.005: 0.966 and 0.971). The decay steadies the last
epochs, which a constant rate leaves between 0.95 and 0.96.
"""
import argparse
import math

from distnn import datasets, distributed
from distnn.layers import LSTM, Dense, Input
from distnn.models import Sequential
from distnn.optimizers import Adam
from distnn.optimizers.schedules import CosineDecay
from distnn.utils import set_random_seed


def build_model(units: int = 64, learning_rate: float = 0.01, decay_steps: int | None = None) -> Sequential:
    """LSTM(units) over the 28 rows -> softmax over the 10 digits; with ``decay_steps`` the learning
    rate decays along a cosine to 5% of ``learning_rate``."""
    model = Sequential([Input((28, 28)), LSTM(units), Dense(10, activation="softmax")])
    rate = learning_rate if decay_steps is None else CosineDecay(learning_rate, decay_steps, alpha=0.05)
    model.compile(optimizer=Adam(rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=1)
    parser.add_argument("--save", metavar="PATH", help="write the trained model to PATH (rank 0)")
    args = parser.parse_args(argv)
    set_random_seed(args.seed)

    (train_images, train_labels), (test_images, test_labels) = datasets.mnist()
    train_rows = train_images.astype("float32") / 255  # (n, 28 steps, 28 features)
    test_rows = test_images.astype("float32") / 255

    steps_per_epoch = math.ceil(len(train_rows) / args.batch_size)  # batch_size is global: any number of ranks
    model = build_model(args.units, args.learning_rate, decay_steps=args.epochs * steps_per_epoch)
    if args.verbose:
        model.summary()  # prints on rank 0 only
    model.fit(train_rows, train_labels, epochs=args.epochs, batch_size=args.batch_size, verbose=args.verbose)
    test_loss, test_acc = model.evaluate(test_rows, test_labels, verbose=0)
    if args.save and distributed.is_root():  # every rank holds the same model
        model.save(args.save)
    if args.verbose and distributed.is_root():  # one line per job, not per rank
        print(f"test_loss={test_loss:.4f} test_acc={test_acc:.4f}")
    return test_acc


if __name__ == "__main__":
    main()
