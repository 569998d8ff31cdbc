"""The Keras engine against plain Keras: the same weights and batches through `model.fit`,
`evaluate` and `predict` of a Keras model built independently (tests/keras_reference.py)
must give the numbers modelspec's Keras path gives, history accounting included."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import modelspec as ms
from modelspec import backends

pytest.importorskip("keras")
import keras  # noqa: E402

import keras_reference as kr  # noqa: E402

pytestmark = pytest.mark.keras

OPTIMIZER_CLASSES = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW",
                     "adagrad": "Adagrad", "nadam": "Nadam"}


def reference(spec: ms.ir.Spec, weights: list[np.ndarray]) -> keras.Model:
    """The spec as a Keras model of its own, compiled as a user would compile it."""
    keras.backend.clear_session(free_memory=False)  # Keras's names; no half-second gc.collect()
    model = keras.Sequential([keras.Input(spec.input_shape), *(kr.layer(n) for n in spec.layers)], name=spec.name)
    model.set_weights(weights)
    opt = spec.optimizer or ms.ir.Optimizer(name="rmsprop")
    hyper = {k: v for k, v in opt.config().items() if v is not None}
    loss = keras.losses.Huber(delta=spec.loss.delta) if spec.loss.delta else spec.loss.name
    model.compile(optimizer=getattr(keras.optimizers, OPTIMIZER_CLASSES[opt.name])(**hyper), loss=loss,
                  metrics=list(spec.metrics))
    return model


def dataset(spec: ms.ir.Spec, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *spec.input_shape)).astype(np.float32)
    out = ms.check(spec).output_shape[1:]
    loss = spec.loss.name
    if loss == "sparse_categorical_crossentropy":
        return x, rng.integers(0, out[-1], n)
    if loss == "categorical_crossentropy":
        return x, np.eye(out[-1], dtype=np.float32)[rng.integers(0, out[-1], (n, *out[:-1]))]
    if loss == "binary_crossentropy":
        return x, rng.integers(0, 2, (n, *out)).astype(np.float32)
    return x, rng.normal(size=(n, *out)).astype(np.float32)


TRAINING = {
    "digits_b": "specs/digits_b.ms",
    "digits_cnn": "specs/digits_cnn.ms",
    "regularized_huber_adamw": """
        input 6x6x2
        conv2d 3 3x3 padding=same relu l2=0.01 he_normal(seed=1)
        batchnorm momentum=0.9
        flatten
        dense 5 tanh l1=0.001 l2=0.002
        dense 3
        optimizer adamw learning_rate=0.01 weight_decay=0.01
        loss huber delta=0.5
        metrics mse mae
    """,
    "binary_sgd_nesterov": """
        input 7
        dense 8 relu6; leaky_relu 0.1; dense 4 gelu; dense 1 sigmoid
        optimizer sgd learning_rate=0.1 momentum=0.9 nesterov=true
        loss binary_crossentropy
        metrics accuracy binary_accuracy
    """,
    "nadam_mae": """
        input 3x4
        dense 5 selu; batchnorm; dense 2 softplus
        optimizer nadam learning_rate=0.01
        loss mae
        metrics mse
    """,
    "rmsprop_centered_softmax": """
        input 5
        dense 6 swish; dense 4 softmax
        optimizer rmsprop rho=0.8 momentum=0.3 centered=true
        loss categorical_crossentropy
        metrics acc
    """,
}


@pytest.mark.parametrize("source", TRAINING.values(), ids=TRAINING.keys())
def test_history_matches_keras_fit(source):
    spec = ms.parse(source)
    model = ms.build(spec, backend="keras", seed=3)
    x, y = dataset(spec, 70)
    ref = reference(spec, model.get_weights())
    got = model.fit(x, y, batch_size=16, epochs=3, validation_split=0.2, shuffle=False, verbose=0).history
    want = ref.fit(x, y, batch_size=16, epochs=3, validation_split=0.2, shuffle=False, verbose=0).history
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=2e-6, atol=1e-7, err_msg=key)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.predict(x), ref.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    keras_eval = ref.evaluate(x, y, verbose=0, return_dict=True)
    for key, value in model.evaluate(x, y).items():
        assert value == pytest.approx(keras_eval[key], rel=1e-6, abs=1e-7)


def test_batches_follow_the_given_order():
    spec = ms.parse(TRAINING["digits_b"])
    model = ms.build(spec, backend="keras")
    x, y = dataset(spec, 50)
    ref = reference(spec, model.get_weights())
    order = np.random.default_rng(5).permutation(50)
    model.compile()  # the spec's settings
    model._training_config(y.shape)
    engine = model.engine
    totals = engine.train_epoch(engine.prepare(x, y), order, 8)
    history = ref.fit(x[order], y[order], batch_size=8, epochs=1, shuffle=False, verbose=0).history
    assert totals.count == 50 and totals.stopped_at is None
    assert totals.loss_sum / 50 == pytest.approx(history["loss"][0], rel=1e-6)
    assert totals.metric_sums[0] / 50 == pytest.approx(history["categorical_accuracy"][0], rel=1e-6)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_progress_callback_sees_the_running_totals():
    spec = ms.parse(TRAINING["nadam_mae"])
    quiet, live = (ms.build(spec, backend="keras") for _ in range(2))
    x, y = dataset(spec, 45)
    calls = []
    totals = []
    for model, on_batch in ((quiet, None), (live, lambda *a: calls.append(a))):
        model._training_config(y.shape)
        totals.append(model.engine.train_epoch(model.engine.prepare(x, y), np.arange(45), 4, on_batch))
    assert totals[0] == totals[1]
    steps = [c[0] for c in calls]
    assert steps == sorted(steps) and steps[-1] == 11 and calls[-1][1] == 45
    assert calls[-1][2:] == (totals[0].loss_sum, totals[0].metric_sums)
    for a, b in zip(quiet.get_weights(), live.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_summary_after_fit_counts_the_optimizer_as_keras_does(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich crops Keras's capture at the terminal's width
    spec = ms.parse(TRAINING["digits_b"])
    model = ms.build(spec, backend="keras")
    x, y = dataset(spec, 20)
    model.fit(x, y, epochs=1, verbose=0)
    ours: list[str] = []
    model.summary(line_length=88, print_fn=ours.append)
    assert "".join(ours) == kr.summary(model.native, 88)
    assert "Optimizer params" in "".join(ours)


def test_native_is_the_keras_model_the_checker_describes():
    spec = ms.parse(TRAINING["regularized_huber_adamw"])
    report = ms.check(spec)
    native = ms.build(spec, backend="keras").native
    assert isinstance(native, keras.Model) and native.name == spec.name
    assert [layer.name for layer in native.layers] == [r.name for r in report.layers]
    assert [(w.path, tuple(w.shape), w.trainable) for w in native.weights] == \
        [(w.path, w.shape, w.trainable) for w in report.weights]


def test_weights_saved_from_another_backend_load_into_keras(tmp_path):
    spec = ms.parse(TRAINING["regularized_huber_adamw"])
    source = ms.build(spec, backend="numpy", seed=9)
    x, y = dataset(spec, 20)
    source.fit(x, y, epochs=1, verbose=0)
    source.save(tmp_path / "w.safetensors")
    loaded = ms.load_model(tmp_path / "w.safetensors", backend="keras")
    assert isinstance(loaded.native, keras.Model)
    np.testing.assert_allclose(loaded.predict(x), source.predict(x), rtol=1e-5, atol=1e-6)


def test_engine_options():
    spec = ms.parse("input 3; dense 2")
    with pytest.raises(TypeError, match="'colour'"):
        ms.build(spec, backend="keras", colour="red")
    ms.build(spec, backend="keras", device="cpu")
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        with pytest.raises(backends.BackendError, match="GPU"):
            ms.build(spec, backend="keras", device="cuda")
    with pytest.raises(backends.BackendError, match="unknown device 'tpu'"):
        ms.build(spec, backend="keras", device="tpu")


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, **env}
    environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300)


def test_building_and_training_print_nothing():
    result = _run("import modelspec as ms, numpy as np\n"
                  "m = ms.build('dense 3 relu in 4; dense 2 softmax\\nloss categorical_crossentropy', backend='keras')\n"
                  "m.fit(np.ones((8, 4)), np.eye(2)[[0, 1] * 4], verbose=0)\n"
                  "m.predict(np.ones((2, 4)))\n")
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")


@pytest.mark.skipif(not __import__("importlib").util.find_spec("torch"), reason="needs torch")
def test_runs_on_another_keras_backend():
    """KERAS_BACKEND=torch: the same model, the same predictions and, away from clipped
    probabilities, the same losses as the NumPy backend."""
    code = """
import numpy as np, modelspec as ms, keras
spec = 'input 5; dense 6 relu; batchnorm; dense 3 softmax\\noptimizer adam\\nloss categorical_crossentropy\\nmetrics accuracy'
x = np.random.default_rng(0).normal(size=(30, 5)).astype('float32')
y = np.eye(3, dtype='float32')[np.random.default_rng(1).integers(0, 3, 30)]
out = {}
for name in ('keras', 'numpy'):
    m = ms.build(spec, backend=name, seed=4)
    h = m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    out[name] = (m.predict(x), h.history['loss'], h.history['accuracy'])
assert keras.backend.backend() == 'torch'
np.testing.assert_allclose(out['keras'][0], out['numpy'][0], rtol=1e-4, atol=1e-6)
np.testing.assert_allclose(out['keras'][1], out['numpy'][1], rtol=1e-4)
np.testing.assert_allclose(out['keras'][2], out['numpy'][2], rtol=1e-6)
print('ok')
"""
    result = _run(code, KERAS_BACKEND="torch")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
