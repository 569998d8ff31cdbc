"""early_stopping and reduce_lr_on_plateau: the decisions of Keras's callbacks on scripted
sequences (the tuples verified against Keras in SEMANTICS_NEXT §7.2-7.3), and whole fits
against real Keras 3 (same initial weights, no shuffling, the same validation split): the
same number of epochs, the same history (learning_rate included) and the same final weights."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

import modelspec as ms
from modelspec import callbacks, ir
from modelspec.training import MetricConfig

METRICS = (MetricConfig("accuracy", "categorical_accuracy"), MetricConfig("mse", "mse"))


class Scripted:
    """What a callback touches on the model: weights (the epoch number stands for them) and
    the learning rate."""

    def __init__(self) -> None:
        self.epoch, self.weights, self.rates = 0, None, []

    def get_weights(self):
        return [np.array(self.epoch)]

    def set_weights(self, weights):
        self.weights = int(weights[0])

    def set_learning_rate(self, value):
        self.rates.append(value)


def early_stop(values, **options):
    """(epochs run, stopped_epoch, best, best_epoch, wait, epoch whose weights the model ends with)."""
    cb = callbacks.EarlyStopping(ir.EarlyStopping(**options), METRICS, 0, None)
    model = Scripted()
    run = 0
    for epoch, value in enumerate(values):
        model.epoch, run = epoch, epoch + 1
        if cb.epoch_end(epoch, {"val_loss": value, "val_accuracy": value}, model):
            break
    cb.train_end(model)
    return run, cb.stopped_epoch, cb.best, cb.best_epoch, cb.wait, model.weights


def test_early_stopping_decides_as_keras():
    assert early_stop([5, 4, 4, 3]) == (3, 2, 4, 1, 1, None)
    assert early_stop([5, 3, 4, 4.5, 6], patience=2, restore_best_weights=True) == (4, 3, 3, 1, 2, 1)
    # restore_best_weights restores at the end also without an early stop (Keras 3)
    assert early_stop([5, 3, 4], patience=5, restore_best_weights=True)[5] == 1
    # an improvement that misses the baseline does not reset the count
    assert early_stop([5, 4, 3, 1, 1.5, 1.6], patience=2, baseline=2)[:2] == (6, 5)
    # improving epochs that miss it never stop training, but the first epoch after them does
    assert early_stop([5, 4, 3, 1, 1.5, 1.6, 1.7], patience=2, baseline=0.5)[:2] == (5, 4)
    assert early_stop([5, 4, 3, 1, 1.5, 1.6, 1.7], patience=2)[:2] == (6, 5)
    # epochs before start_from_epoch do not count, even better ones
    run, _, best, best_epoch, _, weights = early_stop([1, 6, 7, 8, 9], start_from_epoch=2, restore_best_weights=True)
    assert (best, best_epoch, weights) == (7, 2, 2)
    # strict improvement, by |min_delta|; a stop at epoch 0 is impossible
    assert early_stop([5, 5, 5])[:2] == (2, 1)
    for delta in (0.5, -0.5):
        assert early_stop([5, 4.6, 4.4, 3], min_delta=delta, patience=1)[:4] == (2, 1, 5, 0)
    assert early_stop([5, 4.6, 4.4, 3], patience=1)[:4] == (4, 0, 3, 3)
    # val_accuracy improves upwards under mode=auto; mode=min turns it round
    assert early_stop([0.5, 0.6, 0.55], monitor="val_accuracy")[:4] == (3, 2, 0.6, 1)
    assert early_stop([0.5, 0.6, 0.55], monitor="val_accuracy", mode="min")[:4] == (2, 1, 0.5, 0)


def test_improvement_is_compared_in_float32_as_keras():
    cb = callbacks.EarlyStopping(ir.EarlyStopping(monitor="val_loss"), METRICS, 0, None)
    assert not cb.improved(1.0 - 1e-9, 1.0)  # ops.less on float32 tensors: equal there
    assert cb.improved(1.0 - 1e-7, 1.0)


def test_mode_auto_directions():
    assert callbacks.minimizes("es", "val_loss", "auto", METRICS)
    assert not callbacks.minimizes("es", "accuracy", "auto", METRICS)
    assert callbacks.minimizes("es", "val_mse", "auto", METRICS)  # MeanSquaredError: _direction "down"
    assert not callbacks.minimizes("es", "loss", "max", METRICS)


def plateau(values, lr=1.0, **options):
    """The rate used in each epoch, and the history's learning_rate."""
    cb = callbacks.ReduceLROnPlateau(ir.ReduceLROnPlateau(**options), METRICS, 0, None, lr)
    model, used, logged = Scripted(), [], []
    for epoch, value in enumerate(values):
        used.append(cb.rate)
        logs = {"val_loss": value}
        cb.epoch_end(epoch, logs, model)
        logged.append(logs["learning_rate"])
    assert logged == used
    return [float(np.float32(r)) for r in used]


def f32(values):
    return [float(np.float32(v)) for v in values]


def test_reduce_lr_on_plateau_decides_as_keras():
    close = dict(rtol=1e-6)  # each product rounds to float32: 0.1 * 0.1 is not float32(0.01)
    np.testing.assert_allclose(plateau([1.0] * 8, patience=2), [1, 1, 1, .1, .1, .01, .01, .001], **close)
    np.testing.assert_allclose(plateau([1.0] * 10, patience=2, cooldown=2),
                               [1, 1, 1, .1, .1, .1, .01, .01, .01, .001], **close)
    assert plateau([1.0] * 6, patience=1, min_lr=0.05) == f32([1, 1, .1, .05, .05, .05])
    assert plateau([1, .99995, .99989, .99985], patience=1) == f32([1, 1, .1, .1])
    assert plateau([1, .99995, .99989, .99985], patience=1, min_delta=0) == [1.0] * 4
    # the product is float64 from the float32 rate, stored back as float32
    assert plateau([1.0] * 3, lr=0.001, patience=1)[1:] == [0.0010000000474974513, 0.00010000000474974513]


def test_reduce_lr_on_plateau_prints_keras_lines():
    out = io.StringIO()
    cb = callbacks.ReduceLROnPlateau(ir.ReduceLROnPlateau(patience=0), METRICS, 1, out, 0.001)
    cb.epoch_end(0, {"val_loss": 1.0}, Scripted())
    cb.epoch_end(1, {"val_loss": 1.0}, Scripted())
    assert out.getvalue() == "\nEpoch 2: ReduceLROnPlateau reducing learning rate to 0.00010000000474974513.\n"


SPEC = """model t
input 6
dense 16 relu
dense 3 softmax
optimizer adam lr=0.03
loss categorical_crossentropy
metrics accuracy
fit batch=16 epochs=12 validation=0.3 shuffle=false
"""


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6)).astype(np.float32)
    classes = (x[:, 0] + rng.normal(size=80) > 0).astype(int) + (x[:, 1] > 1)
    return x, np.eye(3, dtype=np.float32)[classes]


def test_the_spec_statements_drive_fit_and_print_keras_lines():
    x, y = data()
    text = SPEC + "early_stopping patience=2 restore_best_weights\nreduce_lr_on_plateau patience=1 factor=0.5\n"
    out = io.StringIO()
    history = ms.build(text).fit(x, y, verbose=2, stream=out).history
    printed = out.getvalue()
    assert "Epoch 3: ReduceLROnPlateau reducing learning rate to 0.014999999664723873." in printed
    assert printed.endswith("Epoch 4: early stopping\nRestoring model weights from the end of the best epoch: 2.\n")
    assert history["learning_rate"] == f32([0.03, 0.03, 0.03, 0.015])
    # fit's own callbacks replace the spec's; False drops them
    assert "learning_rate" not in ms.build(text).fit(x, y, verbose=0, reduce_lr_on_plateau=False).history
    assert len(ms.build(text).fit(x, y, verbose=0, early_stopping={"patience": 100}).history["loss"]) == 12


def test_a_monitor_training_does_not_report_is_refused_before_training():
    x, y = data()
    model = ms.build(SPEC)
    with pytest.raises(ValueError, match="no validation data"):
        model.fit(x, y, validation_split=0.0, early_stopping=ir.EarlyStopping())
    with pytest.raises(ValueError, match="which training does not report"):
        model.fit(x, y, early_stopping=ir.EarlyStopping(monitor="val_mae"))
    assert not model._trained


# ---------------------------------------------------------------------------------------
# Against real Keras

ES_CASES = {
    "patience0": {},
    "patience2": {"patience": 2},
    "min_delta": {"patience": 1, "min_delta": 0.04, "monitor": "loss"},
    "baseline": {"patience": 2, "baseline": 0.93},
    "restore_on_stop": {"patience": 3, "restore_best_weights": True},
    "restore_without_stop": {"patience": 20, "restore_best_weights": True},
    "start_from_epoch": {"patience": 1, "start_from_epoch": 4, "restore_best_weights": True},
    "accuracy_auto": {"monitor": "val_accuracy", "patience": 2},
    "mode_max_loss": {"monitor": "loss", "mode": "max", "patience": 1},
}
RLR_CASES = {
    "patience1": {"patience": 1},
    "factor": {"patience": 2, "factor": 0.5},
    "cooldown": {"patience": 1, "factor": 0.5, "cooldown": 2},
    "min_lr": {"patience": 1, "factor": 0.2, "min_lr": 0.004},
    "min_delta_loss": {"monitor": "loss", "patience": 1, "min_delta": 0.05, "factor": 0.5},
    "accuracy_mode_min": {"monitor": "val_accuracy", "mode": "min", "patience": 1},
}


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("keras")


def against_keras(keras, es=None, rlr=None):
    import keras_reference as kr

    x, y = data()
    spec = ms.parse(SPEC)
    ours = ms.build(spec, seed=0)
    weights = ours.get_weights()
    history = ours.fit(x, y, verbose=0, early_stopping=False if es is None else ir.EarlyStopping(**es),
                       reduce_lr_on_plateau=False if rlr is None else ir.ReduceLROnPlateau(**rlr)).history
    theirs = kr.model(spec)
    theirs.set_weights(weights)
    theirs.compile(keras.optimizers.Adam(**spec.optimizer.config()), "categorical_crossentropy", metrics=["accuracy"])
    cbs = ([keras.callbacks.EarlyStopping(**es)] if es is not None else []) + \
          ([keras.callbacks.ReduceLROnPlateau(**rlr)] if rlr is not None else [])
    reference = theirs.fit(x, y, batch_size=16, epochs=12, validation_split=0.3, shuffle=False, verbose=0,
                           callbacks=cbs).history
    assert sorted(history) == sorted(reference)
    assert len(history["loss"]) == len(reference["loss"])
    for key in history:
        np.testing.assert_allclose(history[key], reference[key], rtol=1e-4, err_msg=key)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    return history


@pytest.mark.keras
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("options", ES_CASES.values(), ids=ES_CASES.keys())
def test_early_stopping_against_keras(keras, options):
    history = against_keras(keras, es=options)
    assert (len(history["loss"]) == 12) == (options.get("patience") == 20)  # each case but one stops early


@pytest.mark.keras
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("options", RLR_CASES.values(), ids=RLR_CASES.keys())
def test_reduce_lr_on_plateau_against_keras(keras, options):
    history = against_keras(keras, rlr=options)
    assert len(set(history["learning_rate"])) > 1  # it did reduce


@pytest.mark.keras
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_both_callbacks_against_keras(keras):
    history = against_keras(keras, es={"patience": 4, "restore_best_weights": True},
                            rlr={"patience": 1, "factor": 0.5})
    assert len(history["loss"]) < 12
