"""Horovod's Keras MNIST recipe (horovod/examples/keras/keras_mnist.py) written for distnn.

A Horovod Keras script needs only its imports changed: ``import distnn.distributed as hvd`` for
``import horovod.keras as hvd`` and ``distnn`` for ``keras``. Two lines differ beyond imports:
MNIST comes from ``distnn.datasets.mnist()`` (5,000 images shipped offline, the same uint8
``(n, 28, 28)`` arrays ``mnist.load_data()`` returns; nothing is downloaded) and the GPU pinning
through TensorFlow sessions is gone (distnn pins rank r to GPU ``local_rank % n`` itself).

    distnn-run -np 2 python examples/horovod/keras_mnist.py

Horovod's semantics hold: ``batch_size=128`` is each rank's batch, and the learning rate is scaled
by ``hvd.size()`` to match the global batch of ``128 * hvd.size()`` (README, "Horovod scripts").
``DISTNN_EXAMPLE_EPOCHS`` overrides the number of epochs; ``DISTNN_EXAMPLE_SEED`` makes the run
repeatable (the initial weights and the shuffles; unseeded, as Horovod's, otherwise).
"""
import math
import os

import distnn as keras
from distnn import backend as K
from distnn.datasets import mnist
from distnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from distnn.models import Sequential
import distnn.distributed as hvd

# Horovod: initialize Horovod.
hvd.init()

if "DISTNN_EXAMPLE_SEED" in os.environ:  # every rank the same seed (weights and data order come from rank 0)
    keras.utils.set_random_seed(int(os.environ["DISTNN_EXAMPLE_SEED"]))

batch_size = 128
num_classes = 10

# Horovod: fewer epochs on more ranks (each rank passes over the whole training set every epoch).
epochs = int(math.ceil(12.0 / hvd.size()))
epochs = int(os.environ.get("DISTNN_EXAMPLE_EPOCHS", epochs))

img_rows, img_cols = 28, 28

(x_train, y_train), (x_test, y_test) = mnist()

if K.image_data_format() == "channels_first":
    x_train = x_train.reshape(x_train.shape[0], 1, img_rows, img_cols)
    x_test = x_test.reshape(x_test.shape[0], 1, img_rows, img_cols)
    input_shape = (1, img_rows, img_cols)
else:
    x_train = x_train.reshape(x_train.shape[0], img_rows, img_cols, 1)
    x_test = x_test.reshape(x_test.shape[0], img_rows, img_cols, 1)
    input_shape = (img_rows, img_cols, 1)

x_train = x_train.astype("float32")
x_test = x_test.astype("float32")
x_train /= 255
x_test /= 255
print("x_train shape:", x_train.shape)
print(x_train.shape[0], "train samples")
print(x_test.shape[0], "test samples")

# One-hot labels.
y_train = keras.utils.to_categorical(y_train, num_classes)
y_test = keras.utils.to_categorical(y_test, num_classes)

model = Sequential()
model.add(Conv2D(32, kernel_size=(3, 3), activation="relu", input_shape=input_shape))
model.add(Conv2D(64, (3, 3), activation="relu"))
model.add(MaxPooling2D(pool_size=(2, 2)))
model.add(Dropout(0.25))
model.add(Flatten())
model.add(Dense(128, activation="relu"))
model.add(Dropout(0.5))
model.add(Dense(num_classes, activation="softmax"))

# Horovod: scale the learning rate by the number of ranks.
opt = keras.optimizers.Adadelta(1.0 * hvd.size())

# Horovod: wrap the optimizer.
opt = hvd.DistributedOptimizer(opt)

model.compile(loss=keras.losses.categorical_crossentropy, optimizer=opt, metrics=["accuracy"])

callbacks = [
    # Horovod: start every rank from rank 0's weights.
    hvd.callbacks.BroadcastGlobalVariablesCallback(0),
]

# Horovod: only rank 0 writes checkpoints.
if hvd.rank() == 0:
    callbacks.append(keras.callbacks.ModelCheckpoint(os.environ.get("DISTNN_EXAMPLE_DIR", ".")
                                                     + "/checkpoint-{epoch}.h5"))

model.fit(x_train, y_train, batch_size=batch_size, callbacks=callbacks, epochs=epochs,
          verbose=1 if hvd.rank() == 0 else 0, validation_data=(x_test, y_test))
score = model.evaluate(x_test, y_test, verbose=0)
print("Test loss:", score[0])
print("Test accuracy:", score[1])
