"""A character-level language model trained on text every Python installation ships: the standard
library's own source files. Embedding -> LSTM -> Dense over the next character, then a few lines of
generated text and the validation perplexity.

    python examples/char_lm.py [--chars 200000] [--epochs 5] [--units 128]
    distnn-run -np 2 python examples/char_lm.py      # data-parallel: the same global batch

The text is the concatenated source of a fixed list of standard-library modules (read from the
running interpreter's own files, so nothing is downloaded); the last 10 % is the validation split.
With the defaults (200,000 characters, LSTM(128), 5 epochs) the validation perplexity is 7.28
(seed 0; a uniform guess over the 96 symbols scores 96), in about 100 s on one core.
"""
import distnn  # noqa: F401 - first, so that under a launcher MPI starts before anything can fail

import argparse
import math
import sysconfig
from pathlib import Path

import numpy as np

from distnn import layers
from distnn.models import Sequential
from distnn.optimizers import Adam
from distnn.utils import set_random_seed

MODULES = ("json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "shlex.py", "csv.py",
           "fnmatch.py", "glob.py", "heapq.py", "bisect.py", "calendar.py", "argparse.py")
VOCAB = 96  # printable ASCII 32..126 -> 1..95; everything else (newline included) -> 0


def load_text(chars: int) -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "".join((stdlib / name).read_text(encoding="utf-8") for name in MODULES if (stdlib / name).exists())
    if len(text) < chars:
        raise ValueError(f"The standard library files give {len(text)} characters. Received: --chars {chars}")
    return text[:chars]


def encode(text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("ascii", "replace"), dtype=np.uint8).astype(np.int32)
    return np.where((codes >= 32) & (codes < 127), codes - 31, 0)


def decode(ids: np.ndarray) -> str:
    return "".join("\n" if i == 0 else chr(int(i) + 31) for i in ids)


def windows(ids: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows: inputs ``ids[i:i+steps]``, targets shifted by one character."""
    count = (len(ids) - 1) // steps
    x = ids[:count * steps].reshape(count, steps)
    y = ids[1:count * steps + 1].reshape(count, steps)
    return x, y


def build_model(units: int, steps: int) -> Sequential:
    model = Sequential([layers.Input((steps,), dtype="int32"), layers.Embedding(VOCAB, 32),
                        layers.LSTM(units, return_sequences=True), layers.Dense(VOCAB, activation="softmax")])
    model.compile(optimizer=Adam(0.005), loss="sparse_categorical_crossentropy")
    return model


def generate(model: Sequential, seed_text: str, length: int, steps: int, temperature: float = 0.7,
             seed: int = 0) -> str:
    """A continuation of ``seed_text`` sampled at ``temperature`` (the model reads the last ``steps``
    characters; greedy decoding would settle into runs of spaces)."""
    rng = np.random.default_rng(seed)
    ids = list(encode(seed_text))
    for _ in range(length):
        window = np.array(ids[-steps:], dtype=np.int32)
        window = np.pad(window, (steps - len(window), 0))[None]
        logits = np.log(np.maximum(model.predict(window, verbose=0)[0, -1], 1e-12)) / temperature
        probabilities = np.exp(logits - logits.max())
        ids.append(int(rng.choice(VOCAB, p=probabilities / probabilities.sum())))
    return decode(np.array(ids))


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    set_random_seed(args.seed)
    ids = encode(load_text(args.chars))
    split = int(len(ids) * 0.9)
    x_train, y_train = windows(ids[:split], args.steps)
    x_val, y_val = windows(ids[split:], args.steps)
    model = build_model(args.units, args.steps)
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=args.verbose,
              validation_data=(x_val, y_val))
    perplexity = math.exp(model.evaluate(x_val, y_val, batch_size=256, verbose=0))
    if distnn.distributed.rank() == 0:
        print(generate(model, "def ", 120, args.steps))
        print(f"validation_perplexity={perplexity:.2f}")
    return perplexity


if __name__ == "__main__":
    main()
