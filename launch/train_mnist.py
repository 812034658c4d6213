"""MNIST CNN (the classic Keras example) on the 5,000-image subset, data-parallel under MPI.

    python launch/train_mnist.py
    mpiexec -n 2 python launch/train_mnist.py --backup-dir backups/mnist --save-freq 20
"""
# First: under an MPI launcher this starts MPI, so an error in any later import ends the whole job.
import distnn  # noqa: F401,I001

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

from distnn import datasets  # noqa: E402
from distnn.layers import Conv2D, Dense, Flatten, MaxPooling2D  # noqa: E402
from distnn.models import Sequential  # noqa: E402
from distnn.utils import set_random_seed, to_categorical  # noqa: E402


def build_model():
    return Sequential([
        Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)),
        MaxPooling2D((2, 2)),
        Conv2D(64, (3, 3), activation="relu"),
        MaxPooling2D((2, 2)),
        Conv2D(64, (3, 3), activation="relu"),
        Flatten(),
        Dense(64, activation="relu"),
        Dense(10, activation="softmax"),
    ])


def main(argv=None):
    args = common.parser(__doc__, epochs=5, batch_size=64, optimizer="adam").parse_args(argv)
    set_random_seed(args.seed)
    common.report_rank()
    (x_train, y_train), (x_test, y_test) = datasets.mnist()
    x_train = x_train[:args.limit].reshape(-1, 28, 28, 1).astype("float32") / 255
    x_test = x_test.reshape(-1, 28, 28, 1).astype("float32") / 255
    y_train = to_categorical(y_train[:args.limit], 10)
    model = build_model()
    model.compile(optimizer=common.optimizer_from(args), loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=args.verbose,
                        callbacks=common.callbacks_from(args))
    common.plot_curves(history, args)
    return common.finish(model, args, x_test, to_categorical(y_test, 10))


if __name__ == "__main__":
    main()
