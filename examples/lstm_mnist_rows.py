"""An LSTM reads each MNIST image row by row — 28 steps of 28 pixels — and classifies the digit from
its last state (Keras' classic "MNIST as a sequence" example, with distnn's imports).

    python examples/lstm_mnist_rows.py [--units 128] [--epochs 8] [--seed 0]
    distnn-run -np 2 python examples/lstm_mnist_rows.py     # data-parallel: the same global batch of 64

Uses the 5,000-image MNIST subset distnn ships (4,000 training / 1,000 test images, no download);
about 0.96 test accuracy after 8 epochs.
"""
import argparse

from distnn import datasets, distributed
from distnn.layers import LSTM, Dense, Input
from distnn.models import Sequential
from distnn.optimizers import Adam
from distnn.utils import set_random_seed


def build_model(units: int = 128, learning_rate: float = 0.002) -> Sequential:
    model = Sequential([Input((28, 28)), LSTM(units), Dense(10, activation="softmax")])
    model.compile(optimizer=Adam(learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    set_random_seed(args.seed)

    (train_images, train_labels), (test_images, test_labels) = datasets.mnist()
    train_rows = train_images.astype("float32") / 255  # (n, 28 steps, 28 features)
    test_rows = test_images.astype("float32") / 255

    model = build_model(args.units)
    if args.verbose:
        model.summary()  # prints on rank 0 only
    model.fit(train_rows, train_labels, epochs=args.epochs, batch_size=args.batch_size, verbose=args.verbose)
    test_loss, test_acc = model.evaluate(test_rows, test_labels, verbose=0)
    if args.verbose and distributed.is_root():  # one line per job, not per rank
        print(f"test_loss={test_loss:.4f} test_acc={test_acc:.4f}")
    return test_acc


if __name__ == "__main__":
    main()
