"""The common Model API (modelspec.model) on the NumPy reference backend.

Expected values come from real Keras (model.fit / evaluate / summary on the same weights and
data), from scikit-learn's digits with an independent split, or from the arguments' own
definitions; never from modelspec itself.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import modelspec as ms
from modelspec.backends import BackendError
from modelspec.backends.base import Backend
from modelspec.backends.numpy import NumpyBackend

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SPECS = os.path.join(os.path.dirname(__file__), "..", "specs")

SMALL = """
model small
input 12
dense 16 relu he_normal(seed=1) l2=0.01
batchnorm
dense 8 tanh
dense 3 softmax
optimizer rmsprop lr=0.01 momentum=0.5
loss categorical_crossentropy
metrics accuracy mse
"""


def _data(n=50, seed=0, classes=3, features=12):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    labels = rng.integers(0, classes, size=n)
    return x, np.eye(classes, dtype=np.float32)[labels], labels


# ---------------------------------------------------------------------------------------
# The acceptance: the digits spec trains to at least 95% on scikit-learn's digits


def test_digits_spec_reaches_95_percent_on_sklearn_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32)  # raw pixels 0-16: the spec's rescale divides them
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.2,
                                                        stratify=digits.target, random_state=0)
    model = ms.build(ms.parse(os.path.join(SPECS, "digits.ms")), backend="numpy")
    model.fit(x_train, np.eye(10)[y_train], verbose=0)
    result = model.evaluate(x_test, np.eye(10)[y_test])
    predicted = model.predict(x_test).argmax(axis=1)
    assert result["categorical_accuracy"] >= 0.95
    assert np.mean(predicted == y_test) == pytest.approx(result["categorical_accuracy"])


# ---------------------------------------------------------------------------------------
# Against real Keras: fit's history, evaluate, predict, summary after training


@pytest.fixture(scope="module")
def keras_run():
    keras = pytest.importorskip("keras")
    import keras_reference as kr

    spec = ms.parse(SMALL)
    x, y, _ = _data(50)
    model = ms.build(spec, backend="numpy", seed=3)
    reference = kr.model(spec)
    reference.set_weights(model.get_weights())
    reference.compile(optimizer=keras.optimizers.RMSprop(learning_rate=0.01, momentum=0.5),
                      loss="categorical_crossentropy", metrics=["accuracy", "mse"])
    # batch 16 over 37 training samples: a partial last batch; the last 13 validate
    expected = reference.fit(x, y, batch_size=16, epochs=3, validation_split=0.25, shuffle=False, verbose=0)
    got = model.fit(x, y, batch_size=16, epochs=3, validation_split=0.25, shuffle=False, verbose=0)
    return spec, model, reference, expected.history, got.history, x, y


def test_fit_history_matches_keras(keras_run):
    _, _, _, expected, got, _, _ = keras_run
    assert list(got) == sorted(expected)  # Keras's keys, sorted as Keras sorts them
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, err_msg=key)


def test_evaluate_and_predict_match_keras(keras_run):
    _, model, reference, _, _, x, y = keras_run
    expected = reference.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    got = model.evaluate(x, y)
    assert list(got) == sorted(expected)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key
    np.testing.assert_allclose(model.predict(x), reference.predict(x, verbose=0), rtol=1e-5, atol=1e-7)


def test_summary_after_training_matches_keras(keras_run):
    import keras_reference as kr

    _, model, reference, _, _, _, _ = keras_run
    lines: list[str] = []
    model.summary(line_length=88, print_fn=lines.append)
    assert "Optimizer params" in lines[0]
    assert lines[0] == kr.summary(reference, 88)


def test_validation_is_the_tail_taken_before_shuffling():
    x, y, _ = _data(40)
    model = ms.build(SMALL, seed=1)
    hist = model.fit(x, y, batch_size=8, epochs=1, validation_split=0.25, shuffle=True, seed=5, verbose=0)
    tail = model.evaluate(x[30:], y[30:], batch_size=8)
    assert hist.history["val_loss"][0] == pytest.approx(tail["loss"], rel=1e-6)


# ---------------------------------------------------------------------------------------
# Determinism, settings, weights


def test_same_seed_gives_bit_identical_weights_and_history():
    x, y, _ = _data(64)
    runs = []
    for _ in range(2):
        model = ms.build(SMALL, seed=11)
        hist = model.fit(x, y, batch_size=10, epochs=2, verbose=0, seed=4)
        runs.append((model.get_weights(), hist.history))
    (w1, h1), (w2, h2) = runs
    assert h1 == h2
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2))
    other = ms.build(SMALL, seed=12).get_weights()
    assert not np.array_equal(other[0], w1[0]) or not np.array_equal(other[0], ms.build(SMALL, seed=11).get_weights()[0])


def test_spec_fit_statement_is_used_and_keywords_override_it():
    spec = SMALL + "fit batch=7 epochs=2 shuffle=false\n"
    x, y, _ = _data(20)
    hist = ms.build(spec).fit(x, y, verbose=0)
    assert hist.params["batch_size"] == 7 and hist.params["steps"] == 3 and len(hist.epoch) == 2
    hist = ms.build(spec).fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert hist.params["steps"] == 1 and len(hist.epoch) == 1


def test_defaults_are_keras_rmsprop_and_batch_32():
    model = ms.build("dense 2 softmax in 3; loss categorical_crossentropy")
    x, y, _ = _data(70, classes=2, features=3)
    hist = model.fit(x, y, verbose=0)
    assert hist.params["batch_size"] == 32 and hist.params["steps"] == 3
    assert [a.size for a in model.engine.optimizer_state()][:2] == [1, 1]  # iteration, learning rate


def test_weights_round_trip_and_shape_errors_name_the_weight():
    model = ms.build(SMALL)
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(12, 16), (16,), (16,), (16,), (16,), (16,), (16, 8), (8,), (8, 3), (3,)]
    assert all(w.dtype == np.float32 for w in weights)
    model.set_weights([w * 2 for w in weights])
    assert np.array_equal(model.get_weights()[0], weights[0] * 2)
    with pytest.raises(ValueError, match=r"small/dense/kernel has shape \(12, 16\); received \(16, 12\)"):
        model.set_weights([weights[0].T] + weights[1:])
    with pytest.raises(ValueError, match="expected 10 weight arrays"):
        model.set_weights(weights[:3])


def test_save_and_load_model(tmp_path):
    x, y, _ = _data(30)
    model = ms.build(SMALL, seed=2)
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "small.safetensors"
    model.save(path)
    from safetensors.numpy import load_file

    stored = load_file(path)  # a plain safetensors file, keys are Keras's weight paths
    assert sorted(stored) == sorted(model.weight_paths)
    loaded = ms.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    again = ms.build(SMALL, seed=99)
    again.load_weights(path)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


def test_load_rejects_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="not a modelspec weights file"):
        ms.load_model(bad)
    from safetensors.numpy import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, foreign)
    with pytest.raises(ValueError, match="holds no modelspec spec"):
        ms.load_model(foreign)
    model = ms.build(SMALL)
    with pytest.raises(ValueError, match="has no small/dense/kernel"):
        model.load_weights(foreign)


# ---------------------------------------------------------------------------------------
# Bad input: a ValueError naming what was expected and received, before any step runs


@pytest.mark.parametrize("make, message", [
    (lambda x, y: (x.reshape(-1, 3, 4), y), r"x has shape \(50, 3, 4\), but the model's input is \(None, 12\)"),
    (lambda x, y: (x[:, :5], y), r"x has shape \(50, 5\), but the model's input is \(None, 12\)"),
    (lambda x, y: (x, y[:40]), "x has 50 samples but y has 40"),
    (lambda x, y: (x, y[:, :2]), r"y has shape \(50, 2\), but the model's output is \(None, 3\)"),
    (lambda x, y: (x[:0], y[:0]), "x is empty"),
    (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), y), r"NaN or infinite value\(s\), the first at index \(0, 7\)"),
    (lambda x, y: (x.astype(str), y), "x must hold numbers; received an array of dtype <U"),
    (lambda x, y: (x, y * 3), "labels between 0 and 1"),
])
def test_bad_input_raises_before_training(make, message):
    x, y, _ = _data(50)
    model = ms.build(SMALL)
    before = model.get_weights()
    with pytest.raises(ValueError, match=message):
        model.fit(*make(x, y), verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_sparse_labels_out_of_range_and_one_hot_mixups():
    model = ms.build("dense 3 softmax in 4; loss sparse_categorical_crossentropy")
    x = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="class id 3, but the model has 3 output units; expected ids from 0 to 2"):
        model.fit(x, np.array([0, 1, 2, 3]), verbose=0)
    with pytest.raises(ValueError, match="look one-hot: use categorical_crossentropy"):
        model.fit(x, np.eye(3)[[0, 1, 2, 0]], verbose=0)
    dense = ms.build("dense 3 softmax in 4; loss categorical_crossentropy")
    with pytest.raises(ValueError, match="look like integer class ids"):
        dense.fit(x, np.array([0, 1, 2, 0]), verbose=0)


def test_a_loss_that_turns_nan_stops_and_keeps_the_last_good_weights():
    spec = "dense 8 relu in 4; dense 1; optimizer sgd lr=1e30; loss mse"
    model = ms.build(spec, seed=0)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    y = np.ones((64, 1), np.float32)
    with pytest.warns(RuntimeWarning, match="epoch 1, step"):
        hist = model.fit(x, y, batch_size=8, epochs=5, shuffle=False, verbose=0)
    assert "epoch 1, step" in hist.stopped and len(hist.epoch) <= 1
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_no_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="has no loss: add a `loss` statement"):
        ms.build("dense 2 in 3").fit(np.zeros((2, 3)), np.zeros((2, 2)), verbose=0)


# ---------------------------------------------------------------------------------------
# Backends: the registry and declared gaps


def test_unknown_backend_suggests_the_closest():
    with pytest.raises(BackendError, match="unknown backend 'kerass'; did you mean 'keras'?"):
        ms.build(SMALL, backend="kerass")


def test_numpy_backend_rejects_cuda():
    with pytest.raises(BackendError, match="CPU only"):
        ms.build(SMALL, device="cuda")


def test_an_unsupported_layer_is_reported_against_its_line():
    class NoConv(Backend):
        name = "noconv"
        layer_kinds = NumpyBackend.layer_kinds - {"conv2d"}

    spec = ms.parse("input 8x8x1\nconv2d 4 3x3\nflatten\ndense 2 softmax\n")
    [problem] = NoConv().unsupported(spec)
    assert (problem.line, problem.column) == (2, 1)
    assert problem.message == "the noconv backend does not support conv2d layers"


def test_two_fits_continue_one_shuffle_stream():
    x, y, _ = _data(40)
    once = ms.build(SMALL, seed=5).fit(x, y, batch_size=8, epochs=2, verbose=0).history["loss"]
    model = ms.build(SMALL, seed=5)
    twice = [model.fit(x, y, batch_size=8, epochs=1, verbose=0).history["loss"][0] for _ in range(2)]
    assert twice == once


def test_sparse_labels_follow_the_output_rank():
    model = ms.build("input 4x3; dense 5 softmax; loss sparse_categorical_crossentropy")
    x = np.zeros((6, 4, 3), np.float32)
    with pytest.raises(ValueError, match=r"class ids of shape \(None, 4\); y has shape \(6,\)"):
        model.fit(x, np.zeros(6), verbose=0)
    model.fit(x, np.zeros((6, 4, 1)), verbose=0)  # a trailing axis of 1 is squeezed, as Keras does


@pytest.mark.parametrize("backend, framework", [("torch", "torch"), ("onnx", "onnxruntime")])
def test_a_missing_framework_names_the_extra_to_install(monkeypatch, backend, framework):
    import importlib

    from modelspec import backends

    real = importlib.import_module

    def without(name, *args):
        if name == backends.BUILTIN[backend].partition(":")[0]:
            raise ModuleNotFoundError(f"No module named '{framework}'", name=framework)
        return real(name, *args)

    monkeypatch.setattr(backends.importlib, "import_module", without)
    with pytest.raises(BackendError, match=rf"the {backend} backend needs {framework}, which is not installed: "
                                           rf"pip install 'modelspec\[{backend}\]'"):
        ms.build(SMALL, backend=backend)
    assert backend not in backends.installed()


def test_weights_load_into_a_renamed_model_and_warn_about_a_changed_layer(tmp_path):
    import warnings

    trained = ms.build("model a\ndense 4 relu in 3\ndense 2 softmax", seed=1)
    trained.save(tmp_path / "w.safetensors")
    renamed = ms.build("model b\ndense 4 relu in 3\ndense 2 softmax", seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the name is not part of the weights' meaning: no warning
        renamed.load_weights(tmp_path / "w.safetensors")
    for ours, theirs in zip(renamed.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    changed = ms.build("model a\ndense 4 relu in 3\ndense 2 sigmoid", seed=2)
    with pytest.warns(ms.model.SpecMismatch, match="was trained with another spec: layer 2 was `dense 2 softmax`, "
                                                     "is `dense 2 sigmoid`"):
        changed.load_weights(tmp_path / "w.safetensors")
