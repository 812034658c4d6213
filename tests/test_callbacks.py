"""Callbacks: History, EarlyStopping, ModelCheckpoint, LearningRateScheduler, ReduceLROnPlateau,
CSVLogger, TerminateOnNaN, LambdaCallback and the progress output of verbose=1 / verbose=2."""
import csv
import io
import os
import re

import numpy as np
import pytest

from distnn import callbacks, optimizers
from distnn.layers import Dense
from distnn.models import Sequential, load_model
from distnn.utils import set_random_seed

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 4)).astype("float32")
Y = np.eye(2, dtype="float32")[(X[:, 0] > 0).astype(int)]
X_VAL, Y_VAL = X[:16] * 1.5, Y[:16]


def model_for(optimizer=None, seed=0):
    set_random_seed(seed)
    model = Sequential([Dense(6, activation="tanh", input_shape=(4,)), Dense(2, activation="softmax")])
    model.compile(optimizer=optimizer or optimizers.SGD(0.1), loss="categorical_crossentropy", metrics=["accuracy"])
    return model


class Recorder(callbacks.Callback):
    """Remembers the hooks called, the learning rate per epoch and each epoch's weights."""

    def __init__(self):
        super().__init__()
        self.calls, self.rates, self.weights = [], [], []

    def on_train_begin(self, logs=None):
        self.calls.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(f"epoch_begin {epoch}")
        self.rates.append(self.model.optimizer.learning_rate)

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(f"batch_end {batch}")

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(f"epoch_end {epoch}")
        self.weights.append(self.model.get_weights())

    def on_train_end(self, logs=None):
        self.calls.append("train_end")


def scripted(values):
    """A callback that overwrites ``val_loss`` with a scripted sequence, to drive monitors exactly."""
    return callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(val_loss=values[epoch]))


def test_history_holds_the_epoch_logs_and_the_hook_order():
    model = model_for()
    recorder = Recorder()
    history = model.fit(X, Y, epochs=3, batch_size=32, validation_data=(X_VAL, Y_VAL), callbacks=[recorder],
                        verbose=0)
    assert history is model.history and history.epoch == [0, 1, 2]
    assert list(history.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert history.history["val_loss"][-1] == pytest.approx(model.evaluate(X_VAL, Y_VAL, verbose=0)[0], rel=1e-6)
    assert recorder.calls == ["train_begin", "epoch_begin 0", "batch_end 0", "batch_end 1", "epoch_end 0",
                              "epoch_begin 1", "batch_end 0", "batch_end 1", "epoch_end 1",
                              "epoch_begin 2", "batch_end 0", "batch_end 1", "epoch_end 2", "train_end"]
    with pytest.raises(TypeError, match="Callback instances"):
        model.fit(X, Y, callbacks=[lambda: None], verbose=0)


# ------------------------------------------------------------------------------ EarlyStopping
@pytest.mark.parametrize("values, patience, stops_after", [
    ([1.0, 0.9, 0.95, 0.97, 0.99, 1.0, 1.0, 1.0], 2, 4),  # best at epoch 1, two bad epochs -> 4 epochs run
    ([1.0, 0.9, 0.95, 0.85, 0.9, 0.91, 0.92, 0.93], 2, 6),  # a late improvement restarts the patience
    ([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7], 0, 2),
    ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], 1, 8),  # always improving: runs to the end
])
def test_early_stopping_patience(values, patience, stops_after):
    model = model_for()
    history = model.fit(X, Y, epochs=8, batch_size=64, verbose=0,
                        callbacks=[scripted(values), callbacks.EarlyStopping(patience=patience)])
    assert len(history.epoch) == stops_after


def test_early_stopping_restores_the_best_weights():
    model = model_for()
    recorder = Recorder()
    stopper = callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    model.fit(X, Y, epochs=10, batch_size=32, verbose=0,
              callbacks=[scripted([3.0, 2.0, 1.0, 1.5, 1.6, 0.5, 0.1, 0.1, 0.1, 0.1]), recorder, stopper])
    assert stopper.best_epoch == 2 and stopper.stopped_epoch == 4
    for got, want in zip(model.get_weights(), recorder.weights[2]):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(recorder.weights[2][0], recorder.weights[4][0])


def test_early_stopping_restores_at_the_end_even_without_stopping():
    model = model_for()
    recorder = Recorder()
    model.fit(X, Y, epochs=4, batch_size=32, verbose=0,
              callbacks=[scripted([2.0, 1.0, 1.5, 1.2]), recorder,
                         callbacks.EarlyStopping(patience=5, restore_best_weights=True)])
    for got, want in zip(model.get_weights(), recorder.weights[1]):  # Keras 3 behaviour
        np.testing.assert_array_equal(got, want)


def test_early_stopping_mode_and_min_delta():
    model = model_for()
    # mode "max" on an increasing metric never stops; mode "min" stops at once.
    rising = [0.1, 0.2, 0.3, 0.4, 0.5]
    grow = callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(score=rising[epoch]))
    history = model.fit(X, Y, epochs=5, verbose=0, callbacks=[grow, callbacks.EarlyStopping("score", mode="max")])
    assert len(history.epoch) == 5
    history = model.fit(X, Y, epochs=5, verbose=0, callbacks=[grow, callbacks.EarlyStopping("score", mode="min")])
    assert len(history.epoch) == 2
    # "auto" picks max for accuracy-like names.
    assert callbacks.EarlyStopping("val_accuracy").monitor_op is np.greater
    assert callbacks.EarlyStopping("val_loss").monitor_op is np.less
    # Improvements smaller than min_delta do not count.
    history = model.fit(X, Y, epochs=5, verbose=0, callbacks=[
        scripted([1.0, 0.99, 0.98, 0.97, 0.96]), callbacks.EarlyStopping(patience=1, min_delta=0.05)])
    assert len(history.epoch) == 2
    with pytest.raises(ValueError, match="mode='maximum'"):
        callbacks.EarlyStopping(mode="maximum")


def test_early_stopping_needs_its_monitor():
    with pytest.raises(ValueError, match="'val_loss', which is not in the logs"):
        model_for().fit(X, Y, epochs=2, verbose=0, callbacks=[callbacks.EarlyStopping()])


# ----------------------------------------------------------------------------- ModelCheckpoint
def test_model_checkpoint_filepath_template(tmp_path):
    model = model_for()
    template = str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.3f}.distnn")
    history = model.fit(X, Y, epochs=3, batch_size=32, validation_data=(X_VAL, Y_VAL), verbose=0,
                        callbacks=[callbacks.ModelCheckpoint(template, monitor="val_loss")])
    expected = sorted(f"ckpt-{e + 1:02d}-{v:.3f}.distnn" for e, v in enumerate(history.history["val_loss"]))
    assert sorted(os.listdir(tmp_path)) == expected
    last = load_model(str(tmp_path / expected[-1]))
    np.testing.assert_array_equal(last.predict(X, verbose=0), model.predict(X, verbose=0))


def test_model_checkpoint_save_best_only(tmp_path):
    model = model_for()
    path = str(tmp_path / "best-{epoch}.distnn")
    model.fit(X, Y, epochs=5, verbose=0, callbacks=[
        scripted([1.0, 0.5, 0.7, 0.4, 0.6]), callbacks.ModelCheckpoint(path, monitor="val_loss", save_best_only=True)])
    assert sorted(os.listdir(tmp_path)) == ["best-1.distnn", "best-2.distnn", "best-4.distnn"]


def test_model_checkpoint_save_weights_only(tmp_path):
    model = model_for()
    recorder = Recorder()
    path = str(tmp_path / "weights.distnn")
    model.fit(X, Y, epochs=3, verbose=0, callbacks=[
        recorder, scripted([1.0, 0.5, 0.7]),
        callbacks.ModelCheckpoint(path, save_best_only=True, save_weights_only=True)])
    fresh = model_for(seed=9)
    fresh.load_weights(path)
    for got, want in zip(fresh.get_weights(), recorder.weights[1]):
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------- learning-rate control
def test_learning_rate_scheduler_sets_the_rate_each_epoch():
    model = model_for(optimizers.SGD(0.1))
    recorder = Recorder()
    history = model.fit(X, Y, epochs=4, verbose=0, callbacks=[
        callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch else lr), recorder])
    assert recorder.rates == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    # The older one-argument form schedule(epoch) works too.
    model.fit(X, Y, epochs=2, verbose=0, callbacks=[callbacks.LearningRateScheduler(lambda epoch: 0.3), recorder])
    assert model.optimizer.learning_rate == 0.3


def test_learning_rate_scheduler_changes_the_updates():
    a, b = model_for(optimizers.SGD(0.1)), model_for(optimizers.SGD(0.05))
    a.fit(X, Y, epochs=1, batch_size=16, shuffle=False, verbose=0,
          callbacks=[callbacks.LearningRateScheduler(lambda epoch, lr: 0.05)])
    b.fit(X, Y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    np.testing.assert_array_equal(a.params, b.params)


def test_reduce_lr_on_plateau():
    model = model_for(optimizers.SGD(1.0))
    recorder = Recorder()
    history = model.fit(X, Y, epochs=9, verbose=0, callbacks=[
        scripted([1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0, 1.0]), recorder,
        callbacks.ReduceLROnPlateau(factor=0.5, patience=2, min_lr=0.3)])
    # Epochs 2 and 3 do not improve on 0.9: halve after epoch 3; epochs 4 and 5: halve again, but not below
    # min_lr=0.3; epochs 6 and 7: already at the floor, nothing changes.
    assert recorder.rates == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.3, 0.3, 0.3])
    # The rate of each epoch is logged, as in Keras.
    assert history.history["learning_rate"] == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.3, 0.3, 0.3])
    with pytest.raises(ValueError, match="factor=1.5"):
        callbacks.ReduceLROnPlateau(factor=1.5)


def test_reduce_lr_on_plateau_cooldown():
    model = model_for(optimizers.SGD(1.0))
    plateau = callbacks.ReduceLROnPlateau(factor=0.5, patience=1, cooldown=2)
    recorder = Recorder()
    model.fit(X, Y, epochs=6, verbose=0, callbacks=[scripted([1.0, 2.0, 2.0, 2.0, 2.0, 2.0]), recorder, plateau])
    # Keras: the epoch after a reduction is a cooldown epoch (not counted), the next one counts again.
    assert recorder.rates == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.25])
    assert model.optimizer.learning_rate == pytest.approx(0.125)


# --------------------------------------------------------------------------------- CSVLogger
def test_csv_logger_writes_every_epoch(tmp_path):
    path = tmp_path / "log.csv"
    model = model_for()
    history = model.fit(X, Y, epochs=3, validation_data=(X_VAL, Y_VAL), verbose=0,
                        callbacks=[callbacks.CSVLogger(str(path))])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [float(r[key]) for r in rows] == pytest.approx(history.history[key], rel=1e-12)
    # append=True continues the file without a second header.
    model.fit(X, Y, epochs=1, validation_data=(X_VAL, Y_VAL), verbose=0,
              callbacks=[callbacks.CSVLogger(str(path), append=True)])
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    assert len(lines) == 5 and lines[0].startswith("epoch")


# --------------------------------------------------------------------------- TerminateOnNaN
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_terminate_on_nan_stops_at_the_bad_batch(capsys):
    x = np.concatenate([X, X * 1e30]).astype("float32")  # batches 4-7 overflow the float32 loss
    y = np.concatenate([Y, Y])
    model = Sequential([Dense(2, input_shape=(4,))])
    model.compile(optimizer=optimizers.SGD(0.01), loss="mse")
    running_losses = []
    history = model.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0, callbacks=[
        callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: running_losses.append(logs["loss"])),
        callbacks.TerminateOnNaN()])
    assert len(running_losses) == 5  # batches 0-3 are fine, batch 4 is the first bad one
    assert np.isfinite(running_losses[:4]).all() and not np.isfinite(running_losses[4])
    assert history.epoch == [0] and not np.isfinite(history.history["loss"][0])
    assert "Batch 4: invalid loss, terminating training" in capsys.readouterr().out
    # A later fit starts afresh rather than stopping at once.
    model = model_for()
    assert len(model.fit(X, Y, epochs=2, verbose=0, callbacks=[callbacks.TerminateOnNaN()]).epoch) == 2


# --------------------------------------------------------------------------- LambdaCallback
def test_lambda_callback_hooks():
    seen = []
    cb = callbacks.LambdaCallback(on_train_begin=lambda logs: seen.append("begin"),
                                  on_epoch_end=lambda epoch, logs: seen.append((epoch, round(logs["loss"], 6))),
                                  on_batch_end=lambda batch, logs: seen.append(f"b{batch}"),
                                  on_train_end=lambda logs: seen.append("end"))
    history = model_for().fit(X, Y, epochs=2, batch_size=32, verbose=0, callbacks=[cb])
    losses = [round(v, 6) for v in history.history["loss"]]
    assert seen == ["begin", "b0", "b1", (0, losses[0]), "b0", "b1", (1, losses[1]), "end"]
    with pytest.raises(TypeError, match="on_epoch_ends"):
        callbacks.LambdaCallback(on_epoch_ends=print)


# ---------------------------------------------------------------------------- progress output
def test_verbose_2_prints_one_line_per_epoch(capsys):
    model = model_for()
    history = model.fit(X, Y, epochs=3, batch_size=16, validation_data=(X_VAL, Y_VAL), verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("Epoch")] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    summaries = [line for line in lines if line.startswith("4/4")]
    assert len(summaries) == 3
    for epoch, line in enumerate(summaries):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert f"{key}: {history.history[key][epoch]:.4f}" in line


def test_verbose_1_without_a_terminal_and_verbose_0(capsys):
    model = model_for()
    history = model.fit(X, Y, epochs=2, batch_size=16, verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 2/2" in out and f"loss: {history.history['loss'][1]:.4f}" in out
    assert "\r" not in out  # no redrawn bar in a captured stream
    model.fit(X, Y, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_verbose_1_on_a_terminal_draws_a_progress_bar():
    model = model_for()
    out = FakeTerminal()
    logger = callbacks.ProgbarLogger(verbose=1, file=out)
    logger.set_model(model)
    logger.set_params({"epochs": 2, "steps": 4})
    logger.on_epoch_begin(0)
    for step in range(4):
        logger.on_train_batch_end(step, {"loss": 0.5 - 0.1 * step})
    logger.on_epoch_end(0, {"loss": 0.2, "accuracy": 0.75})
    text = out.getvalue()
    assert "Epoch 1/2" in text and "4/4" in text and "loss: 0.2000 - accuracy: 0.7500" in text
    assert "=" in text  # the bar itself


# ------------------------------------------------------- batch aliases, evaluate and predict hooks
class HookRecorder(callbacks.Callback):
    """Records every evaluate/predict hook with its batch and the log keys it got."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def on_test_begin(self, logs=None):
        self.calls.append(("test_begin", self.params.get("steps")))

    def on_test_batch_begin(self, batch, logs=None):
        self.calls.append(("test_batch_begin", batch))

    def on_test_batch_end(self, batch, logs=None):
        self.calls.append(("test_batch_end", batch, round(logs["loss"], 6)))

    def on_test_end(self, logs=None):
        self.calls.append(("test_end", round(logs["loss"], 6), round(logs["accuracy"], 6)))

    def on_predict_begin(self, logs=None):
        self.calls.append(("predict_begin", self.params.get("steps")))

    def on_predict_batch_begin(self, batch, logs=None):
        self.calls.append(("predict_batch_begin", batch))

    def on_predict_batch_end(self, batch, logs=None):
        self.calls.append(("predict_batch_end", batch, logs["outputs"].shape))

    def on_predict_end(self, logs=None):
        self.calls.append(("predict_end",))


def test_keras_batch_aliases_fire_with_the_train_batch_hooks():
    class OldStyle(callbacks.Callback):  # Keras 2 code overrides on_batch_* only
        def __init__(self):
            super().__init__()
            self.calls = []

        def on_batch_begin(self, batch, logs=None):
            self.calls.append(f"begin {batch}")

        def on_batch_end(self, batch, logs=None):
            self.calls.append(f"end {batch} {sorted(logs)}")

    old = OldStyle()
    model_for().fit(X, Y, epochs=2, batch_size=32, verbose=0, callbacks=[old])
    assert old.calls == ["begin 0", "end 0 ['accuracy', 'loss']", "begin 1", "end 1 ['accuracy', 'loss']"] * 2
    # A LambdaCallback given both spellings fires both, once each per batch.
    seen = []
    both = callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(f"train {batch}"),
                                    on_batch_end=lambda batch, logs: seen.append(f"alias {batch}"),
                                    on_batch_begin=lambda batch, logs: seen.append(f"begin {batch}"))
    model_for().fit(X, Y, epochs=1, batch_size=32, verbose=0, callbacks=[both])
    assert seen == ["begin 0", "train 0", "alias 0", "begin 1", "train 1", "alias 1"]


def test_evaluate_calls_the_test_hooks():
    model = model_for()
    recorder = HookRecorder()
    loss, accuracy = model.evaluate(X, Y, batch_size=24, verbose=0, callbacks=[recorder])
    assert recorder.model is model
    first = model.evaluate(X[:24], Y[:24], batch_size=24, verbose=0)[0]
    assert recorder.calls[:3] == [("test_begin", 3), ("test_batch_begin", 0), ("test_batch_end", 0, round(first, 6))]
    assert [c[:2] for c in recorder.calls[3:]] == [("test_batch_begin", 1), ("test_batch_end", 1),
                                                  ("test_batch_begin", 2), ("test_batch_end", 2), ("test_end", round(loss, 6))]
    assert recorder.calls[-1] == ("test_end", round(loss, 6), round(accuracy, 6))
    assert recorder.calls[-2][2] == round(loss, 6)  # the last batch's running loss is the full result
    assert not [c for c in recorder.calls if c[0].startswith("predict")]


def test_predict_calls_the_predict_hooks():
    model = model_for()
    recorder = HookRecorder()
    predictions = model.predict(X, batch_size=48, verbose=0, callbacks=[recorder])
    assert predictions.shape == (64, 2)
    assert recorder.calls == [("predict_begin", 2), ("predict_batch_begin", 0), ("predict_batch_end", 0, (48, 2)),
                              ("predict_batch_begin", 1), ("predict_batch_end", 1, (16, 2)), ("predict_end",)]
    with pytest.raises(TypeError, match="Callback instances"):
        model.predict(X, callbacks=[print])


def test_fit_validation_calls_the_test_hooks_each_validated_epoch():
    model = model_for()
    recorder = HookRecorder()
    model.fit(X, Y, epochs=3, batch_size=32, validation_data=(X_VAL, Y_VAL), validation_freq=2, verbose=0,
              callbacks=[recorder])
    names = [c[0] for c in recorder.calls]
    assert names == ["test_begin", "test_batch_begin", "test_batch_end", "test_end"]  # epoch 2 only
    assert recorder.calls[-1][1] == round(model.history.history["val_loss"][0], 6)


def test_lambda_callback_takes_any_hook_by_name():
    seen = []
    cb = callbacks.LambdaCallback(on_test_end=lambda logs: seen.append(("test_end", sorted(logs))),
                                  on_predict_batch_end=lambda batch, logs: seen.append(("predict", batch)))
    model = model_for()
    model.evaluate(X, Y, verbose=0, callbacks=[cb])
    model.predict(X, batch_size=32, verbose=0, callbacks=[cb])
    assert seen == [("test_end", ["accuracy", "loss"]), ("predict", 0), ("predict", 1)]


def test_evaluate_and_predict_verbose_print_a_summary_line(capsys):
    model = model_for()
    loss, accuracy = model.evaluate(X, Y, batch_size=16, verbose=1)
    out = capsys.readouterr().out
    assert re.fullmatch(rf"4/4 - \d+s - \d+ms/step - loss: {loss:.4f} - accuracy: {accuracy:.4f}\n", out), out
    model.predict(X, batch_size=16)  # verbose="auto" shows progress, as Keras
    assert re.fullmatch(r"4/4 - \d+s - \d+ms/step\n", capsys.readouterr().out)
    model.predict(X, verbose=0)
    model.evaluate(X, Y, verbose=0)
    assert capsys.readouterr().out == ""
