"""The classic Keras MNIST convnet, with only the imports renamed to distnn.

    python examples/mnist_cnn.py [--optimizer adam|rmsprop] [--epochs 5] [--seed 0]
    distnn-run -np 2 python examples/mnist_cnn.py     # data-parallel: the same global batch of 64

distnn ships the 5,000-image MNIST subset (4,000 training / 1,000 test images) offline, so
``datasets.mnist()`` replaces ``keras.datasets.mnist.load_data()``; about 97% test accuracy after
5 epochs.
"""
# First: under an MPI launcher this starts MPI, so an error in any later import ends the whole job.
import distnn  # noqa: F401,I001

import argparse

from distnn import datasets, distributed
from distnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from distnn.models import Sequential
from distnn.utils import set_random_seed, to_categorical


def build_model() -> Sequential:
    """The convnet of Keras' MNIST example (also what tests/interop exchanges with Keras)."""
    model = Sequential()
    model.add(Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)))
    model.add(MaxPooling2D((2, 2)))
    model.add(Conv2D(64, (3, 3), activation="relu"))
    model.add(MaxPooling2D((2, 2)))
    model.add(Conv2D(64, (3, 3), activation="relu"))
    model.add(Flatten())
    model.add(Dense(64, activation="relu"))
    model.add(Dense(10, activation="softmax"))
    return model


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    set_random_seed(args.seed)

    (train_images, train_labels), (test_images, test_labels) = datasets.mnist()
    train_images = train_images.reshape((-1, 28, 28, 1)).astype("float32") / 255
    test_images = test_images.reshape((-1, 28, 28, 1)).astype("float32") / 255
    train_labels = to_categorical(train_labels)
    test_labels = to_categorical(test_labels)

    model = build_model()
    if args.verbose:
        model.summary()  # prints on rank 0 only

    model.compile(optimizer=args.optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_images, train_labels, epochs=args.epochs, batch_size=64, verbose=args.verbose)
    test_loss, test_acc = model.evaluate(test_images, test_labels, verbose=0)
    if args.verbose and distributed.is_root():  # one line per job, not per rank
        print(f"test_loss={test_loss:.4f} test_acc={test_acc:.4f}")
    return test_acc


if __name__ == "__main__":
    main()
