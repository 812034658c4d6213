"""Train a small model and save the final weights; run under mpiexec -n N or plain python.

    python train_parity.py OUT.npz [--model mlp|mlp-wide|mlp-dropout|cnn|cnn-bn|cnn-vision] [--samples 203] [--batch-size 32]
                           [--epochs 2] [--verbose 0] [--compression none|fp16] [--hidden 16]
                           [--train-on-batch 0]

Rank 0 writes OUT.npz with the flat parameters after every epoch (``epoch{e}``), the evaluate
results and the predictions, so the test compares N ranks with one process. Every rank also
checks, after every epoch, that all ranks hold identical weights, and reports how many epochs
it checked (``identical_checks``) so the test knows the check ran.
"""
import argparse

import numpy as np

import distnn
from distnn import distributed
from distnn.callbacks import Callback
from distnn.datasets import make_classification
from distnn.layers import Dense
from distnn.models import Sequential
from distnn.utils import set_random_seed, to_categorical


class RecordAndCompare(Callback):
    """Keeps each epoch's weights and non-trainable state (BatchNormalization's moving statistics)
    and asserts that every rank holds the same ones."""

    def __init__(self):
        super().__init__()
        self.snapshots = {}
        self.checks = 0

    def on_epoch_end(self, epoch, logs=None):
        params = distnn.backend.to_numpy(self.model.params).copy()
        state = distnn.backend.to_numpy(self.model.state).copy()
        gathered = distributed.get_communicator().allgather_obj((params, state))
        for r, (other_params, other_state) in enumerate(gathered):
            if not (np.array_equal(other_params, params) and np.array_equal(other_state, state)):
                raise AssertionError(f"rank {r} holds different weights or state after epoch {epoch}")
        self.snapshots[f"epoch{epoch}"] = params
        self.snapshots[f"state{epoch}"] = state
        self.checks += 1


def build(kind, input_shape, classes):
    if kind == "mlp":
        layers = [Dense(16, activation="relu", input_shape=input_shape), Dense(classes, activation="softmax")]
    elif kind == "mlp-wide":  # GEMMs large enough that backward runs them in polled pieces under overlap
        layers = [Dense(512, activation="relu", input_shape=input_shape), Dense(512, activation="relu"),
                  Dense(classes, activation="softmax")]
    elif kind == "mlp-dropout":  # random layers: masks per global sample keep N ranks = 1 process
        from distnn.layers import Dropout

        layers = [Dense(16, activation="relu", input_shape=input_shape), Dropout(0.5),
                  Dense(16, activation="relu"), Dropout(0.3, seed=3),
                  Dropout(0.2, noise_shape=(1, None)),  # one mask shared by the whole global batch
                  Dense(classes, activation="softmax")]
    elif kind == "cnn":
        from distnn.layers import Conv2D, Flatten, MaxPooling2D  # the image layers

        layers = [Conv2D(4, (3, 3), activation="relu", input_shape=input_shape), MaxPooling2D((2, 2)),
                  Flatten(), Dense(classes, activation="softmax")]
    elif kind == "cnn-vision":  # the vision layers, their random ones drawing per global sample
        from distnn import layers as L

        layers = [L.GaussianNoise(0.1, input_shape=input_shape), L.Conv2D(4, 3, padding="same"),
                  L.PReLU(shared_axes=[1, 2]), L.SpatialDropout2D(0.25), L.Conv2D(4, 3, groups=2, activation="relu"),
                  L.DepthwiseConv2D(3, depth_multiplier=2), L.GaussianDropout(0.2), L.SeparableConv2D(4, 2),
                  L.Conv2DTranspose(4, 2, strides=2), L.Cropping2D(1), L.UpSampling2D(interpolation="bilinear"),
                  L.AveragePooling2D(4), L.LeakyReLU(), L.AlphaDropout(0.1), L.Flatten(), L.ELU(),
                  Dense(classes, activation="softmax")]
    else:  # synchronized BatchNormalization: global-batch statistics on every rank
        from distnn.layers import Activation, BatchNormalization, Conv2D, Flatten, MaxPooling2D

        # No conv bias: BatchNormalization cancels it (its true gradient is 0, which Adam would turn
        # into +-lr steps of rounding noise).
        layers = [Conv2D(4, (3, 3), use_bias=False, input_shape=input_shape), BatchNormalization(), Activation("relu"),
                  MaxPooling2D((2, 2)), Flatten(), Dense(classes, activation="softmax")]
    return Sequential(layers)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--model", default="mlp", choices=["mlp", "mlp-wide", "mlp-dropout", "cnn", "cnn-bn", "cnn-vision"])
    parser.add_argument("--samples", type=int, default=203)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--hidden", type=int, default=16, help="first layer width (a mismatch test varies it per rank)")
    parser.add_argument("--verbose", type=int, default=0)
    parser.add_argument("--compression", default="none", choices=["none", "fp16"])
    parser.add_argument("--train-on-batch", type=int, default=0,
                        help="after fit, this many train_on_batch steps on the first 35 samples (saved as after_batches)")
    args = parser.parse_args()

    comm = distributed.init(compression=args.compression)

    set_random_seed(7)
    shape = (8,) if args.model.startswith("mlp") else (8, 8, 1)
    x, y = make_classification(args.samples, n_classes=3, shape=shape, seed=1)
    y = to_categorical(y, 3)
    model = build(args.model, shape, 3)
    if args.hidden != 16:
        model = Sequential([Dense(args.hidden, activation="relu", input_shape=shape), Dense(3, activation="softmax")])
    model.compile(optimizer=args.optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    recorder = RecordAndCompare()
    history = model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=args.verbose,
                        callbacks=[recorder])
    for _ in range(args.train_on_batch):
        model.train_on_batch(x[:35], y[:35])
    if args.train_on_batch:
        recorder.snapshots["after_batches"] = distnn.backend.to_numpy(model.params).copy()
    evaluation = model.evaluate(x, y, batch_size=17, verbose=0)
    predictions = model.predict(x, batch_size=19)
    if distributed.rank() == 0:
        np.savez(args.out, evaluation=np.array(evaluation), predictions=predictions,
                 loss_history=np.array(history.history["loss"]), identical_checks=recorder.checks,
                 **recorder.snapshots)
        print(f"size={comm.size} nodes={comm.cross_size} compression={comm.compression.name} "
              f"evaluation={evaluation}", flush=True)


if __name__ == "__main__":
    main()
