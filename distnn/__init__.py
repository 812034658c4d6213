"""distnn: Keras-style deep learning on numpy/cupy with exact data-parallel training over MPI.

``import distnn`` stays light: MPI is initialised only by ``distnn.distributed`` when the process
was started by an MPI launcher, and cupy only when a GPU is selected.
"""
from distnn import (activations, backend, callbacks, constraints, initializers, layers, losses, metrics, ops,
                    optimizers, random, regularizers, saving, utils)
from distnn.layers import Input, Layer
from distnn.models import Model, Sequential, load_model

__version__ = "0.1.0"

__all__ = ["activations", "backend", "callbacks", "constraints", "initializers", "layers", "losses", "metrics", "ops",
           "optimizers", "random", "regularizers", "saving", "utils", "Input", "Layer", "Model", "Sequential",
           "load_model", "__version__"]

# Under an MPI launcher, an exception raised before training starts must still end every rank.
from distnn.distributed.world import install_early_abort_hook  # noqa: E402

install_early_abort_hook()
