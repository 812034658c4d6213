"""The classic Keras iris script, with only the imports renamed to distnn.

    python examples/iris_mlp.py [--optimizer sgd|adam] [--seed 0]
"""
# First: under an MPI launcher this starts MPI, so an error in any later import ends the whole job.
import distnn  # noqa: F401,I001

import argparse

from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

from distnn.layers import Dense
from distnn.models import Sequential
from distnn.utils import set_random_seed, to_categorical


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args(argv)
    set_random_seed(args.seed)

    iris = load_iris()
    x, y = iris.data, to_categorical(iris.target)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=42)

    model = Sequential()
    model.add(Dense(64, activation="relu", input_dim=4))
    model.add(Dense(3, activation="softmax"))
    model.compile(optimizer=args.optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test_loss={loss:.4f} test_accuracy={accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
