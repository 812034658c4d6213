"""Iris MLP: 4 -> 64 (relu) -> 3 (softmax), the classic Keras tutorial, data-parallel under MPI.

    python launch/train_iris.py
    mpiexec -n 2 python launch/train_iris.py --backup-dir backups/iris
"""
# First: under an MPI launcher this starts MPI, so an error in any later import ends the whole job.
import distnn  # noqa: F401,I001

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

from distnn import datasets  # noqa: E402
from distnn.layers import Dense  # noqa: E402
from distnn.models import Sequential  # noqa: E402
from distnn.utils import set_random_seed, to_categorical  # noqa: E402


def main(argv=None):
    args = common.parser(__doc__, epochs=100, batch_size=32, optimizer="sgd").parse_args(argv)
    set_random_seed(args.seed)
    common.report_rank()
    (x_train, y_train), (x_test, y_test) = datasets.iris()
    x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    model = Sequential([Dense(64, activation="relu", input_dim=4), Dense(3, activation="softmax")])
    model.compile(optimizer=common.optimizer_from(args), loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, to_categorical(y_train, 3), batch_size=args.batch_size, epochs=args.epochs,
                        verbose=args.verbose if args.epochs <= 20 else 0, callbacks=common.callbacks_from(args))
    common.plot_curves(history, args)
    return common.finish(model, args, x_test, to_categorical(y_test, 3))


if __name__ == "__main__":
    main()
