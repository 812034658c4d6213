"""Train one of the example models (functional residual, two-output functional, subclassed) on a digits
subset and save what it learned; run under mpiexec -n N or as plain python.

    python train_parity_models.py OUT.npz --model resnet|two-output|subclassed [--samples 203]
                                  [--batch-size 32] [--epochs 2] [--learning-rate 5e-3]
                                  [--floatx float32|float64] [--verbose 0]

The models come from examples/ (resnet_digits, multi_output_digits, subclassed_digits), shrunk to 4
filters. As train_parity.py: rank 0 writes OUT.npz with the flat parameters and non-trainable state
after every epoch (``epoch{e}``, ``state{e}``), the loss history, the evaluate results and the
predictions (``predictions`` or ``predictions_<output>``); every rank checks after each epoch that
all ranks hold identical weights and reports how many checks ran (``identical_checks``).
"""
import argparse
import os
import sys

import numpy as np

import distnn  # noqa: F401 - first, so a failure on any rank ends the job (distnn's early abort hook)
from distnn import distributed
from distnn.utils import set_random_seed

from train_parity import RecordAndCompare  # beside this script

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples"))
import multi_output_digits  # noqa: E402
import resnet_digits  # noqa: E402
import subclassed_digits  # noqa: E402


def build(kind: str):
    """The model and its compile function, from the example that defines it."""
    if kind == "resnet":
        return resnet_digits.build_model(filters=4, blocks=2), resnet_digits.compile_model
    if kind == "two-output":
        return multi_output_digits.build_model(filters=4, hidden=8), multi_output_digits.compile_model
    return subclassed_digits.DigitsResNet(filters=4, blocks=2), subclassed_digits.compile_model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--model", required=True, choices=["resnet", "two-output", "subclassed"])
    parser.add_argument("--samples", type=int, default=203)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--floatx", default="float32", choices=["float32", "float64"])
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args()
    distnn.backend.set_floatx(args.floatx)

    comm = distributed.init()
    set_random_seed(7)
    loader = multi_output_digits.load_digits if args.model == "two-output" else resnet_digits.load_digits
    (x, y), _ = loader()
    x = x[:args.samples].astype(args.floatx)
    y = {k: v[:args.samples] for k, v in y.items()} if isinstance(y, dict) else y[:args.samples]
    model, compile_model = build(args.model)
    compile_model(model, args.learning_rate, args.epochs * -(-args.samples // args.batch_size))
    recorder = RecordAndCompare()
    history = model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=args.verbose,
                        callbacks=[recorder])
    evaluation = model.evaluate(x, y, batch_size=17, verbose=0)
    predictions = model.predict(x, batch_size=19)
    if isinstance(predictions, dict):
        predictions = {f"predictions_{name}": value for name, value in predictions.items()}
    else:
        predictions = {"predictions": predictions}
    if distributed.rank() == 0:
        np.savez(args.out, evaluation=np.array(evaluation), loss_history=np.array(history.history["loss"]),
                 identical_checks=recorder.checks, **predictions, **recorder.snapshots)
        print(f"size={comm.size} model={args.model} evaluation={evaluation}", flush=True)


if __name__ == "__main__":
    main()
