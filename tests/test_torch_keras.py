"""The torch backend against real Keras 3 (TensorFlow backend) on tutorial specs: the same
initial weights and batches give Keras's history, evaluation, predictions and weights."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

import keras_reference as kr  # noqa: E402

import modelspec as ms  # noqa: E402
from corpus import ROOT  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.keras, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

KERAS_OPTIMIZERS = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad",
                    "nadam": "Nadam"}


@pytest.mark.parametrize("name, n, labels", [("mnist", 96, "onehot"), ("digits_c", 80, "onehot"),
                                             ("digits_cnn", 64, "ids")])
def test_tutorial_specs_train_as_in_keras(name, n, labels):
    spec = ms.parse(ROOT / "specs" / f"{name}.ms")
    rng = np.random.default_rng(0)
    x = rng.random((n, *spec.input_shape), dtype=np.float32)
    ids = rng.integers(0, 10, n)
    y = np.eye(10, dtype=np.float32)[ids] if labels == "onehot" else ids
    model = ms.build(spec, backend="torch", device="cpu", seed=1)
    reference = kr.model(spec)
    reference.set_weights(model.get_weights())
    optimizer = getattr(keras.optimizers, KERAS_OPTIMIZERS[spec.optimizer.name])(**spec.optimizer.config())
    reference.compile(optimizer, spec.loss.name, metrics=list(spec.metrics))
    fit = dict(epochs=3, batch_size=16, shuffle=False, verbose=0)
    theirs = reference.fit(x, y, validation_split=0.25, **fit).history
    ours = model.fit(x, y, validation_split=0.25, **fit).history
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, err_msg=key)
    evaluated = reference.evaluate(x, y, verbose=0, return_dict=True)
    for key, value in model.evaluate(x, y).items():
        assert value == pytest.approx(evaluated[key], rel=1e-4), key
    np.testing.assert_allclose(model.predict(x), reference.predict(x, verbose=0), rtol=1e-4, atol=1e-6)
    for path, ours_w, theirs_w in zip(model.weight_paths, model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(ours_w, theirs_w, rtol=1e-3, atol=1e-5, err_msg=path)  # moving stats too
