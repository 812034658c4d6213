"""Horovod's TensorFlow 2 Keras MNIST recipe (horovod/examples/tensorflow2/tensorflow2_keras_mnist.py)
written for distnn.

``import distnn.distributed as hvd`` replaces ``import horovod.tensorflow.keras as hvd`` and
``distnn`` replaces ``tf.keras``. MNIST comes from ``distnn.datasets.mnist()`` (uint8
``(n, 28, 28)`` images, as ``load_data()`` returns); the ``tf.data`` pipeline
``from_tensor_slices(...).repeat().shuffle(10000).batch(128)`` becomes the generator ``batches``
below, which a Keras 3 script passes to ``fit`` the same way. The GPU pinning through
``tf.config`` is gone (distnn pins rank r to GPU ``local_rank % n`` itself). At the end the model is
evaluated on the test images, which the original leaves to its caller.

    distnn-run -np 2 python examples/horovod/tensorflow2_keras_mnist.py

Each rank draws its own shuffled stream of batches of 128 (an unseeded ``shuffle`` differs per
rank), so ``fit`` trains in own-shard mode: the global batch is ``128 * hvd.size()`` and the
script scales the learning rate and divides the steps by ``hvd.size()``, exactly as under Horovod.
``DISTNN_EXAMPLE_EPOCHS`` and ``DISTNN_EXAMPLE_STEPS`` (steps per epoch before the division by
``hvd.size()``) shorten the run, and ``DISTNN_EXAMPLE_SEED`` fixes the initial weights and the
shuffles; the test suite uses them.
"""
import os

import numpy as np

import distnn
import distnn.datasets
import distnn.distributed as hvd


def batches(images, labels, batch_size, seed):
    """An endless stream of shuffled batches: each pass over the data in a new random order, and
    batches running on across passes (``repeat().shuffle(10000).batch(batch_size)``)."""
    rng = np.random.default_rng(seed)
    order = np.empty(0, dtype=np.int64)
    while True:
        while len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(len(images))])
        rows, order = order[:batch_size], order[batch_size:]
        yield images[rows], labels[rows]


def train():
    # Horovod: initialize Horovod.
    hvd.init()

    (mnist_images, mnist_labels), (test_images, test_labels) = distnn.datasets.mnist()

    # An unseeded tf.data shuffle differs on every rank and every run; here the rank seeds it, from
    # fresh entropy unless DISTNN_EXAMPLE_SEED makes the run (the initial weights too) repeatable.
    base_seed = int(os.environ.get("DISTNN_EXAMPLE_SEED", np.random.SeedSequence().entropy))
    if "DISTNN_EXAMPLE_SEED" in os.environ:
        distnn.utils.set_random_seed(base_seed)
    dataset = batches((mnist_images[..., np.newaxis] / 255.0).astype(np.float32), mnist_labels.astype(np.int64),
                      128, seed=base_seed + hvd.rank())

    mnist_model = distnn.Sequential([
        distnn.layers.Conv2D(32, [3, 3], activation="relu"),
        distnn.layers.Conv2D(64, [3, 3], activation="relu"),
        distnn.layers.MaxPooling2D(pool_size=(2, 2)),
        distnn.layers.Dropout(0.25),
        distnn.layers.Flatten(),
        distnn.layers.Dense(128, activation="relu"),
        distnn.layers.Dropout(0.5),
        distnn.layers.Dense(10, activation="softmax"),
    ])

    # Horovod: adjust learning rate based on number of ranks.
    scaled_lr = 0.001 * hvd.size()
    opt = distnn.optimizers.Adam(scaled_lr)

    # Horovod: add Horovod DistributedOptimizer.
    opt = hvd.DistributedOptimizer(opt, backward_passes_per_step=1, average_aggregated_gradients=True)

    mnist_model.compile(loss=distnn.losses.SparseCategoricalCrossentropy(), optimizer=opt, metrics=["accuracy"])

    callbacks = [
        # Horovod: broadcast initial variable states from rank 0 to all other processes.
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        # Horovod: average metrics among workers at the end of every epoch.
        hvd.callbacks.MetricAverageCallback(),
        # Horovod: ramp the scaled learning rate up over the first three epochs.
        hvd.callbacks.LearningRateWarmupCallback(initial_lr=scaled_lr, warmup_epochs=3, verbose=1),
    ]

    # Horovod: save checkpoints only on worker 0.
    if hvd.rank() == 0:
        callbacks.append(distnn.callbacks.ModelCheckpoint(os.environ.get("DISTNN_EXAMPLE_DIR", ".")
                                                          + "/checkpoint-{epoch}.h5"))

    # Horovod: write logs on worker 0.
    verbose = 1 if hvd.rank() == 0 else 0

    # Horovod: adjust number of steps based on number of ranks.
    steps = int(os.environ.get("DISTNN_EXAMPLE_STEPS", 500))
    epochs = int(os.environ.get("DISTNN_EXAMPLE_EPOCHS", 24))
    mnist_model.fit(dataset, steps_per_epoch=steps // hvd.size(), callbacks=callbacks, epochs=epochs, verbose=verbose)

    test_x = (test_images[..., np.newaxis] / 255.0).astype(np.float32)
    loss, accuracy = mnist_model.evaluate(test_x, test_labels.astype(np.int64), verbose=0)
    print("Test loss:", loss)
    print("Test accuracy:", accuracy)
    return mnist_model


if __name__ == "__main__":
    train()
