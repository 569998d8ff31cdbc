"""`modelspec import` of what real Keras models compile with: learning-rate schedules, the
optimizers adadelta, adamax and lion, gradient clipping, the cross-entropies' from_logits
and label_smoothing, top-k metrics with their k, and the Softmax layer. Each model is
built, compiled and saved by Keras itself; the imported spec must mean what Keras does
(each step's rate, the history of a fit), and what a spec cannot hold is refused by name."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import modelspec as ms
from modelspec.cli import main
from modelspec.keras_import import UnsupportedError, spec_from_config
from modelspec.printer import to_text
from modelspec.schedules import learning_rates

pytest.importorskip("keras")
import keras  # noqa: E402

pytestmark = [pytest.mark.keras,
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]  # Keras's own, on NumPy 2

S = keras.optimizers.schedules


def saved(tmp_path, optimizer="sgd", loss="categorical_crossentropy", metrics=None, layers=None, name="m"):
    """A small Keras model compiled with these settings, saved as a .keras file, and its path."""
    keras.backend.clear_session(free_memory=False)
    layers = layers or [keras.layers.Dense(4, activation="softmax")]
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"), *layers], name=name)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    return path, model


def imported(path) -> ms.ir.Spec:
    spec, _ = spec_from_config(json.loads(zipfile.ZipFile(path).read("config.json")))
    return spec


SCHEDULES = {
    "exponential_decay": S.ExponentialDecay(0.1, decay_steps=3, decay_rate=0.5, staircase=True),
    "inverse_time_decay": S.InverseTimeDecay(0.2, decay_steps=2, decay_rate=0.7),
    "polynomial_decay": S.PolynomialDecay(0.1, decay_steps=4, end_learning_rate=0.01, power=2.0, cycle=True),
    "cosine_decay": S.CosineDecay(0.01, decay_steps=6, alpha=0.1, warmup_target=0.05, warmup_steps=3),
    "piecewise_constant_decay": S.PiecewiseConstantDecay([2, 5], [0.3, 0.1, 0.003]),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_a_schedule_comes_back_with_every_step_rate(name, tmp_path):
    schedule = SCHEDULES[name]
    path, _ = saved(tmp_path, optimizer=keras.optimizers.SGD(learning_rate=schedule, momentum=0.5))
    spec = imported(path)
    got = spec.optimizer.schedule
    assert got.name == name and spec.optimizer.momentum == 0.5
    steps = np.arange(16)
    expected = np.array([float(schedule(int(s))) for s in steps], dtype=np.float32)
    np.testing.assert_array_equal(learning_rates(got, steps), expected)


def test_the_spec_text_of_an_imported_schedule(tmp_path, capsys):
    path, _ = saved(tmp_path, optimizer=keras.optimizers.Adam(S.ExponentialDecay(0.1, 100, 0.96)))
    assert main(["import", str(path)]) == 0
    assert "\noptimizer adam learning_rate=exponential_decay(0.1, decay_steps=100, decay_rate=0.96)\n" \
        in capsys.readouterr().out


OPTIMIZERS = {
    "adadelta": (keras.optimizers.Adadelta(learning_rate=1.0, rho=0.9, clipnorm=0.5),
                 {"learning_rate": 1.0, "rho": 0.9, "epsilon": 1e-7, "weight_decay": None, "clipnorm": 0.5}),
    "adamax": (keras.optimizers.Adamax(learning_rate=0.02, beta_2=0.99, clipvalue=0.1),
               {"learning_rate": 0.02, "beta_1": 0.9, "beta_2": 0.99, "epsilon": 1e-7, "weight_decay": None,
                "clipvalue": 0.1}),
    "lion": (keras.optimizers.Lion(learning_rate=3e-4, beta_1=0.95, weight_decay=0.01, global_clipnorm=1.5),
             {"learning_rate": 3e-4, "beta_1": 0.95, "beta_2": 0.99, "weight_decay": 0.01, "global_clipnorm": 1.5}),
    "rmsprop": (keras.optimizers.RMSprop(clipnorm=2.0), {**ms.ir.Optimizer(name="rmsprop").config(), "clipnorm": 2.0}),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_an_optimizer_and_its_clipping_come_back(name, tmp_path):
    optimizer, expected = OPTIMIZERS[name]
    path, _ = saved(tmp_path, optimizer=optimizer)
    spec = imported(path)
    assert spec.optimizer.name == name and spec.optimizer.config() == expected


LOSSES = {
    "sparse_logits": (keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      ms.ir.Loss(name="sparse_categorical_crossentropy", from_logits=True)),
    "categorical_both": (keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
                         ms.ir.Loss(name="categorical_crossentropy", from_logits=True, label_smoothing=0.1)),
    "binary_smoothing": (keras.losses.BinaryCrossentropy(label_smoothing=0.2),
                         ms.ir.Loss(name="binary_crossentropy", label_smoothing=0.2)),
    "defaults": (keras.losses.CategoricalCrossentropy(), ms.ir.Loss(name="categorical_crossentropy")),
}


@pytest.mark.parametrize("name", LOSSES)
def test_a_loss_comes_back_with_its_options(name, tmp_path):
    loss, expected = LOSSES[name]
    path, _ = saved(tmp_path, loss=loss)
    assert imported(path).loss == expected


def test_top_k_metrics_come_back_with_their_k(tmp_path):
    path, _ = saved(tmp_path, metrics=[keras.metrics.TopKCategoricalAccuracy(k=2), "accuracy"])
    spec = imported(path)
    assert spec.metrics == ("top_k_categorical_accuracy", "accuracy") and spec.k == 2
    assert "\nmetrics top_k_categorical_accuracy accuracy k=2\n" in to_text(spec)
    path, _ = saved(tmp_path, loss="sparse_categorical_crossentropy", metrics=["sparse_top_k_categorical_accuracy"])
    spec = imported(path)
    assert spec.metrics == ("sparse_top_k_categorical_accuracy",) and spec.top_k is None and spec.k == 5


def test_an_imported_model_trains_as_the_keras_model(tmp_path):
    """The imported schedule, optimizer, clipping, loss options and top-k metric, trained on the
    Keras engine from the Keras model's weights, give the history of Keras's own fit."""
    path, model = saved(tmp_path, optimizer=keras.optimizers.Adamax(S.InverseTimeDecay(0.05, 2, 0.5), clipvalue=0.02),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=2)],
                        layers=[keras.layers.Dense(4)])
    spec = imported(path)
    ours = ms.build(spec, backend="keras")
    ours.set_weights(model.get_weights())
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype(np.float32), rng.integers(0, 4, 32)
    history = ours.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0).history
    expected = model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0).history
    assert list(history) == list(expected) == ["loss", "sparse_top_k_categorical_accuracy"]
    for key in expected:
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-6, err_msg=key)


def test_the_softmax_layer_comes_back_with_its_axis(tmp_path):
    keras.backend.clear_session(free_memory=False)
    model = keras.Sequential([keras.Input((3, 4)), keras.layers.Dense(5), keras.layers.Softmax(axis=1),
                              keras.layers.Flatten(), keras.layers.Dense(2), keras.layers.Softmax()], name="s")
    spec, _ = spec_from_config(json.loads(model.to_json()))
    assert [layer.kind for layer in spec.layers] == ["dense", "softmax", "flatten", "dense", "softmax"]
    assert (spec.layers[1].axis, spec.layers[4].axis) == (1, -1)
    report = ms.check(spec)
    assert [(r.name, r.keras_class) for r in report.layers] == [(layer.name, type(layer).__name__)
                                                                 for layer in model.layers]
    ours = ms.build(spec, backend="keras")
    ours.set_weights(model.get_weights())
    x = np.random.default_rng(1).normal(size=(5, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(ours.predict(x), model.predict(x, verbose=0), rtol=1e-6)


REFUSED = {
    "restarts": (dict(optimizer=keras.optimizers.SGD(S.CosineDecayRestarts(0.1, 10))),
                 "compile(): SGD's learning_rate is a schedule (CosineDecayRestarts) a spec cannot hold; expected one "
                 "of ExponentialDecay"),
    "reduction": (dict(loss=keras.losses.CategoricalCrossentropy(reduction="sum")),
                  "compile(): CategoricalCrossentropy(reduction='sum') cannot be expressed in a spec"),
    "ignore_class": (dict(loss=keras.losses.SparseCategoricalCrossentropy(ignore_class=0)),
                     "compile(): SparseCategoricalCrossentropy(ignore_class=0) cannot be expressed in a spec"),
    "two_k": (dict(metrics=[keras.metrics.TopKCategoricalAccuracy(k=2),
                            keras.metrics.SparseTopKCategoricalAccuracy(k=3)]),
              "compile(): the top-k metrics have different k (2, 3); a spec's top-k metrics share one k"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_what_a_spec_cannot_hold_is_refused_clearly(case, tmp_path, capsys):
    settings, message = REFUSED[case]
    path, _ = saved(tmp_path, **settings)
    with pytest.raises(UnsupportedError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        imported(path)
    assert main(["import", str(path)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_a_keras_file_holds_no_callbacks(tmp_path):
    """model.save writes the config, compile()'s arguments and the weights; callbacks are
    fit()'s arguments, not the model's: nothing of them reaches the file."""
    path, model = saved(tmp_path)
    x = np.random.default_rng(2).normal(size=(20, 6)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)[np.arange(20) % 4]
    model.fit(x, y, epochs=3, validation_split=0.2, verbose=0,
              callbacks=[keras.callbacks.EarlyStopping(patience=1, min_delta=0.123),
                         keras.callbacks.ReduceLROnPlateau(factor=0.321)])
    model.save(path)
    with zipfile.ZipFile(path) as z:
        text = "".join(z.read(n).decode() for n in z.namelist() if n.endswith(".json"))
    for word in ("EarlyStopping", "ReduceLROnPlateau", "patience", "0.123", "0.321", "callback"):
        assert word not in text
    spec = imported(path)
    assert spec.early_stopping is None and spec.reduce_lr_on_plateau is None
