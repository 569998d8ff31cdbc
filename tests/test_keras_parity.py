"""One spec, the same numbers: the Keras backend against the NumPy backend.

Both start from the same initial weights (drawn once in NumPy) and see the same batches.
Predictions agree within 1e-5 relative (with a 1e-6 floor for probabilities near zero:
float32 sums in another order differ by a few ulps) and the per-epoch losses and metrics
of 3 epochs within 1e-4, for every spec in specs/ and for every optimizer and every loss.
Dropout masks cannot be shared between frameworks, so training runs with rate 0.
"""

from __future__ import annotations

import numpy as np
import pytest

import modelspec as ms
from corpus import SPEC_FILES
from modelspec.crosscheck import without_dropout

pytest.importorskip("keras")

pytestmark = pytest.mark.keras

PREDICT = dict(rtol=1e-5, atol=1e-6)
EPOCHS = dict(rtol=1e-4, atol=1e-7)


def labels(spec: ms.ir.Spec, loss: str, n: int, rng: np.random.Generator) -> np.ndarray:
    units = ms.check(spec).output_shape[-1]
    if loss == "sparse_categorical_crossentropy":
        return rng.integers(0, units, n)
    if loss == "categorical_crossentropy":
        return np.eye(units, dtype=np.float32)[rng.integers(0, units, n)]
    if loss == "binary_crossentropy":
        return rng.integers(0, 2, (n, units)).astype(np.float32)
    return rng.normal(size=(n, units)).astype(np.float32)


def train_both(spec: ms.ir.Spec, n: int = 80, **fit) -> dict[str, tuple[np.ndarray, dict]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *spec.input_shape)).astype(np.float32)
    y = labels(spec, spec.loss.name, n, rng)
    out = {}
    for backend in ("keras", "numpy"):
        model = ms.build(spec, backend=backend, seed=2)
        before = model.predict(x)
        history = model.fit(x, y, epochs=3, verbose=0, **fit).history
        out[backend] = (before, history, model.predict(x))
    return out


def assert_same(out: dict) -> None:
    (k_before, k_hist, k_after), (n_before, n_hist, n_after) = out["keras"], out["numpy"]
    np.testing.assert_allclose(k_before, n_before, **PREDICT)
    assert sorted(k_hist) == sorted(n_hist)
    for key in n_hist:
        np.testing.assert_allclose(k_hist[key], n_hist[key], **EPOCHS, err_msg=key)
    np.testing.assert_allclose(k_after, n_after, rtol=1e-3, atol=1e-5)  # after 3 epochs of float32 noise


@pytest.mark.parametrize("path", SPEC_FILES, ids=[p.stem for p in SPEC_FILES])
def test_every_spec_file(path):
    spec = without_dropout(ms.parse(path))
    if spec.loss is None:
        spec = spec.model_copy(update={"loss": ms.ir.Loss(name="categorical_crossentropy"),
                                       "metrics": ("accuracy",)})
    fit = spec.fit or ms.ir.Fit()
    assert_same(train_both(spec, batch_size=min(fit.batch_size or 32, 32), validation_split=fit.validation_split or 0.0,
                           shuffle=True, seed=1))


OPTIMIZERS = {
    "sgd": "optimizer sgd learning_rate=0.05",
    "sgd_nesterov_decay": "optimizer sgd learning_rate=0.05 momentum=0.9 nesterov=true weight_decay=0.01",
    "rmsprop_centered": "optimizer rmsprop momentum=0.5 centered=true",
    "adam": "optimizer adam learning_rate=0.01",
    "adamw": "optimizer adamw learning_rate=0.01 weight_decay=0.05",
    "adagrad": "optimizer adagrad learning_rate=0.05",
    "nadam": "optimizer nadam learning_rate=0.01",
}
HEADS = {
    "categorical_crossentropy": "dense 4 softmax",
    "sparse_categorical_crossentropy": "dense 4; softmax",
    "binary_crossentropy": "dense 1 sigmoid",
    "mse": "dense 2",
    "mae": "dense 2 tanh",
    "huber": "dense 2",
}
METRICS = {"categorical_crossentropy": "accuracy", "sparse_categorical_crossentropy": "accuracy",
           "binary_crossentropy": "binary_accuracy", "mse": "mae", "mae": "mse", "huber": "mse"}


# Every optimizer once and every loss at least once: the loss and the update rule are separate
# code in every backend, so the full product would cost six times the time for little more.
PAIRS = [(opt, list(HEADS)[i % len(HEADS)]) for i, opt in enumerate(OPTIMIZERS)]


@pytest.mark.parametrize("optimizer, loss", PAIRS, ids=[f"{o}-{l}" for o, l in PAIRS])
def test_every_optimizer_and_loss(optimizer, loss):
    source = (f"input 5x4x2\nconv2d 3 2x2 relu he_normal l2=0.01\nbatchnorm\nflatten\ndense 6 elu l1=0.001\n"
              f"{HEADS[loss]}\n{OPTIMIZERS[optimizer]}\nloss {loss}{' delta=0.5' if loss == 'huber' else ''}\n"
              f"metrics {METRICS[loss]}")
    assert_same(train_both(ms.parse(source), n=40, batch_size=16, shuffle=True, validation_split=0.25))
