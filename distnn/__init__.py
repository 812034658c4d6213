"""distnn: Keras-style deep learning on numpy/cupy with exact data-parallel training over MPI.

``import distnn`` stays light: MPI is initialised only when the process was started by an MPI
launcher (then at once, so that any later failure ends the whole job), and cupy only when a GPU
is selected.
"""
from distnn import (activations, backend, callbacks, constraints, initializers, layers, losses, metrics, ops,
                    optimizers, random, regularizers, saving, utils)
from distnn.layers import Input, Layer
from distnn.models import Model, Sequential, load_model

__version__ = "0.1.0"

__all__ = ["activations", "backend", "callbacks", "constraints", "initializers", "layers", "losses", "metrics", "ops",
           "optimizers", "random", "regularizers", "saving", "utils", "Input", "Layer", "Model", "Sequential",
           "load_model", "__version__"]

# Under an MPI launcher, MPI starts now: from here on, a rank that fails, stalls or leaves early
# ends the whole job instead of leaving the others waiting (docs/architecture.md, "Reliability").
from distnn.distributed.launcher_start import start_under_launcher  # noqa: E402

start_under_launcher()
