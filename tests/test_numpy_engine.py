"""The numpy engine's contract (backends/base.py): float32 everywhere, Keras's history
accounting, stopping on a non-finite step, batch order, label alignment, batchnorm and
dropout state, optimizer variables, weights in and out; and the standalone code `emit`
writes."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import modelspec as ms
from modelspec import ir
from modelspec.backends import get
from modelspec.backends.numpy import NumpyBackend, NumpyEngine
from modelspec.backends.numpy import kernels as K
from modelspec.initializers import initial_weights
from modelspec.model import check_y
from modelspec.training import LossConfig, MetricConfig, TrainConfig


def engine_for(text, optimizer="sgd", loss="categorical_crossentropy", from_logits=False, metrics=(),
               seed=0, **hyper):
    spec = ms.parse(text)
    engine = NumpyEngine(spec, ms.check(spec), seed=seed)
    config = ir.Optimizer(name=optimizer).config() | hyper
    engine.set_training(TrainConfig(optimizer, config, LossConfig(loss, from_logits),
                                    tuple(MetricConfig(m, m) for m in metrics)))
    return engine


EVERYTHING = """
input 9x8x2
conv2d 4 3x3 padding=same strides=2 relu l2=0.01
maxpool2d 2x2 strides=1 padding=same
conv2d 3 2x2 elu l1=0.01
avgpool2d 2x2 padding=same
batchnorm
dropout 0.3
conv2d 3 1x1 swish
globalavgpool2d
dense 6 gelu
dense 6 selu
dense 6 softplus
dense 6 relu6
dense 6 leaky_relu
leaky_relu
dense 6 tanh
dense 6 sigmoid
dense 6
flatten
dense 3 softmax
"""


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop", "adam", "adamw", "adagrad", "nadam"])
def test_everything_is_float32(optimizer):
    hyper = {"momentum": 0.9} if optimizer in ("sgd", "rmsprop") else {}
    engine = engine_for(EVERYTHING, optimizer, from_logits=True, metrics=("categorical_accuracy",), **hyper)
    produced = []
    for layer in engine.layers:  # record every array a layer hands on, forward and backward
        def spy(method, layer=layer):
            def wrapped(*args, **kwargs):
                out = method(*args, **kwargs)
                if out is not None:
                    produced.append((type(layer).__name__, out.dtype))
                return out
            return wrapped
        layer.forward, layer.backward = spy(layer.forward), spy(layer.backward)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 9, 8, 2))  # float64 in: converted once
    y = np.eye(3)[rng.integers(0, 3, 20)]
    data = engine.prepare(x, y)
    assert data.x.dtype == np.float32 and data.y.dtype == np.float32
    totals = engine.train_epoch(data, np.arange(20), 8)
    assert totals.stopped_at is None
    engine.evaluate(data, 8)
    out = engine.predict(data, 8)
    assert out.dtype == np.float32
    assert produced and all(dtype == np.float32 for _, dtype in produced), \
        sorted({name for name, dtype in produced if dtype != np.float32})
    assert all(w.dtype == np.float32 for w in engine.get_weights())
    assert all(g.dtype == np.float32 for g in engine.net.grads)
    state = engine.optimizer_state()
    assert state[0].dtype == np.int64 and all(s.dtype == np.float32 for s in state[1:])
    loss, _ = engine.gradients(data.x[:8], data.y[:8])
    assert loss.dtype == np.float32


@pytest.mark.parametrize("loss, from_logits", [
    (K.categorical_crossentropy, True), (K.categorical_crossentropy, False),
    (K.binary_crossentropy, True), (K.binary_crossentropy, False), (K.mse, None), (K.mae, None), (K.huber, None)])
def test_losses_stay_float32(loss, from_logits):
    rng = np.random.default_rng(0)
    z = rng.random((5, 3), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 1, 0]]
    options = {} if from_logits is None else {"from_logits": from_logits}
    value, grad = loss(y, z, **options)
    assert value.dtype == np.float32 and grad.dtype == np.float32
    value, grad = K.sparse_categorical_crossentropy(np.array([0, 1, 2, 1, 0]), z, from_logits=bool(from_logits))
    assert value.dtype == np.float32 and grad.dtype == np.float32


LINEAR = "input 3\ndense 1"


def test_history_accounting_weights_batches_by_size():
    """loss_sum = Σ n_b·L_b over batches of 4, 4 and 2 (the last partial), each L_b the mean
    squared error plus the penalty, written out here; a zero learning rate keeps the weights."""
    engine = engine_for("input 3\ndense 1 l2=0.5", loss="mse", metrics=("mae",), learning_rate=0.0)
    kernel, bias = np.array([[1.0], [-2.0], [0.5]], np.float32), np.array([0.25], np.float32)
    engine.set_weights([kernel, bias])
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 3)).astype(np.float32), rng.normal(size=(10, 1)).astype(np.float32)
    totals = engine.train_epoch(engine.prepare(x, y), np.arange(10), 4)
    error = (x @ kernel + bias - y)[:, 0].astype(np.float64)
    penalty = 0.5 * np.sum(kernel.astype(np.float64) ** 2)
    expected = sum(len(b) * (np.mean(b ** 2) + penalty) for b in (error[:4], error[4:8], error[8:]))
    assert totals.count == 10
    assert totals.loss_sum == pytest.approx(expected, rel=1e-6)
    assert totals.metric_sums[0] == pytest.approx(np.abs(error).sum(), rel=1e-6)


def test_batches_follow_the_order():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(13, 3)).astype(np.float32), rng.normal(size=(13, 1)).astype(np.float32)
    order = rng.permutation(13)
    a = engine_for(LINEAR, "adam", loss="mse")
    b = engine_for(LINEAR, "adam", loss="mse")
    ta = a.train_epoch(a.prepare(x, y), order, 5)
    tb = b.train_epoch(b.prepare(x[order], y[order]), np.arange(13), 5)
    assert ta.loss_sum == tb.loss_sum
    assert all((wa == wb).all() for wa, wb in zip(a.get_weights(), b.get_weights()))
    with pytest.raises(IndexError):
        a.train_epoch(a.prepare(x, y), np.arange(14), 5)


def test_a_non_finite_step_stops_without_its_update():
    text = "input 3\ndense 4 relu\nbatchnorm\ndense 1"
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 3)).astype(np.float32), rng.normal(size=(12, 1)).astype(np.float32)
    x[9, 1] = np.nan  # in the third batch of 4
    clean = engine_for(text, "adam", loss="mse")
    clean.train_epoch(clean.prepare(x[:8], y[:8]), np.arange(8), 4)
    engine = engine_for(text, "adam", loss="mse")
    totals = engine.train_epoch(engine.prepare(x, y), np.arange(12), 4)
    assert totals.stopped_at == 2
    assert totals.count == 12 and np.isnan(totals.loss_sum)  # the bad batch is in the running mean, as in Keras
    for ours, reference in zip(engine.get_weights(), clean.get_weights()):
        np.testing.assert_array_equal(ours, reference)  # moving statistics included
    assert int(engine.optimizer_state()[0]) == 2


def test_labels_are_aligned_once_by_the_model_as_keras_aligns_them():
    assert check_y(np.arange(4), 4, (None, 1), "mse").shape == (4, 1)
    assert check_y(np.zeros((4, 1, 1)), 4, (None, 1), "mse").shape == (4, 1)
    sparse = "sparse_categorical_crossentropy"
    labels = check_y(np.array([[1], [4], [0], [2]]), 4, (None, 5), sparse)
    assert labels.shape == (4,) and labels.dtype == np.int64
    assert check_y(np.array([3.0, 1.0]), 2, (None, 5), sparse).dtype == np.int64
    with pytest.raises(ValueError, match="class id 5"):
        check_y(np.array([1, 5]), 2, (None, 5), sparse)
    with pytest.raises(ValueError, match="whole-number class ids"):
        check_y(np.array([1.5, 2.0]), 2, (None, 5), sparse)
    assert check_y(np.eye(5)[:2], 2, (None, 5), "categorical_crossentropy").dtype == np.float32
    # the engine keeps them as they are: class ids int64, values in its dtype
    engine = NumpyEngine(ms.parse("input 3\ndense 5"), ms.check(ms.parse("input 3\ndense 5")), dtype=np.float64)
    assert engine.prepare(np.zeros((4, 3)), labels).y.dtype == np.int64
    assert engine.prepare(np.zeros((2, 3)), np.eye(5, dtype=np.float32)[:2]).y.dtype == np.float64


def test_batchnorm_moving_statistics_use_the_biased_variance():
    """keras/src/layers/normalization/batch_normalization.py: moving = 0.99·moving + 0.01·batch statistic, variance biased (ddof=0)."""
    engine = engine_for("input 3\nbatchnorm\ndense 1", loss="mse")
    rng = np.random.default_rng(4)
    x, y = rng.normal(2.0, 3.0, size=(8, 3)).astype(np.float32), np.zeros((8, 1), np.float32)
    engine.train_epoch(engine.prepare(x, y), np.arange(8), 8)
    gamma, beta, mean, variance = engine.get_weights()[:4]
    np.testing.assert_allclose(mean, 0.01 * x.astype(np.float64).mean(0), rtol=1e-5)
    np.testing.assert_allclose(variance, 0.99 + 0.01 * x.astype(np.float64).var(0, ddof=0), rtol=1e-6)
    # inference uses the moving statistics: (x - mean)/√(var + 1e-3)·γ + β
    engine.set_weights([np.full(3, 2.0, np.float32), np.full(3, 0.5, np.float32), mean, variance,
                        np.ones((3, 1), np.float32), np.zeros(1, np.float32)])
    out = engine.predict(engine.prepare(x, None), 8)
    expected = ((x - mean) / np.sqrt(variance + 1e-3) * 2.0 + 0.5).sum(1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_dropout_is_inverted_seeded_and_only_in_training():
    text = "input 1000\ndropout 0.25 seed=9\ndense 1 nobias"
    rng = np.random.default_rng(5)
    x = rng.random((4, 1000)).astype(np.float32) + 1
    engines = [engine_for(text, seed=s, loss="mse") for s in (1, 2)]
    layers = []
    for engine in engines:
        engine.set_weights([np.ones((1000, 1), np.float32)])
        layers.append(engine.layers[0])
        out = layers[-1].forward(engine.prepare(x, None).x, training=True)
        kept = out != 0
        assert 0.72 < kept.mean() < 0.78
        np.testing.assert_allclose(out[kept], (x / 0.75)[kept], rtol=1e-6)
        assert layers[-1].forward(x, training=False) is x
        np.testing.assert_allclose(engine.predict(engine.prepare(x, None), 4)[:, 0], x.sum(1), rtol=1e-5)
    # the layer's own seed fixes the masks whatever the model seed; each step draws anew
    first = [layer.forward(x, True) for layer in layers]
    np.testing.assert_array_equal(first[0], first[1])
    assert (layers[0].forward(x, True) != first[0]).any()
    unseeded = [engine_for("input 100\ndropout 0.5\ndense 1", seed=s, loss="mse").layers[0] for s in (1, 1, 2)]
    masks = [layer.forward(np.ones((2, 100), np.float32), True) for layer in unseeded]
    np.testing.assert_array_equal(masks[0], masks[1])
    assert (masks[0] != masks[2]).any()


def test_weights_in_and_out():
    spec = ms.parse("input 3\ndense 2 relu\nbatchnorm\ndense 1")
    report = ms.check(spec)
    engine = NumpyEngine(spec, report, seed=7)
    drawn = engine.get_weights()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(drawn, initial_weights(spec, report, 7)))
    drawn[0][:] = 99  # copies: the engine's weights do not change
    assert (engine.get_weights()[0] != 99).all()
    new = [np.full(w.shape, i, np.float64) for i, w in enumerate(report.weights)]
    engine.set_weights(new)
    assert all(w.dtype == np.float32 and (w == i).all() for i, w in enumerate(engine.get_weights()))


def test_backend_declaration():
    backend = get("numpy")
    assert isinstance(backend, NumpyBackend) and backend.name == "numpy"
    spec = ms.parse(EVERYTHING + "optimizer nadam\nloss huber")
    assert backend.unsupported(spec) == []
    engine = backend.engine(spec, ms.check(spec), seed=3)
    assert isinstance(engine, NumpyEngine) and engine.seed == 3
    with pytest.raises(RuntimeError, match="set_training"):
        engine.evaluate(engine.prepare(np.zeros((1, 9, 8, 2)), np.zeros((1, 3))), 1)
    with pytest.raises(ValueError, match="softmax or sigmoid"):
        engine_for("input 3\ndense 2 relu", from_logits=True)


# ---------------------------------------------------------------------------------------
# emit


DRIVER = textwrap.dedent("""
    import json, runpy, sys
    sys.modules["modelspec"] = None  # the generated code must not need modelspec
    import numpy as np
    g = runpy.run_path(sys.argv[1])
    data = np.load(sys.argv[2])
    weights = g["initial_weights"]()
    out = {f"w{i}": w for i, w in enumerate(weights)}
    out["predict"] = g["predict"](g["build"](weights), data["x"])
    if "fit" in g:
        net = g["network"](g["initial_weights"]())
        history = g["fit"](net, g["make_optimizer"](), data["x"], data["y"], epochs=2, batch_size=5,
                           validation_split=0.0, shuffle=False)
        out["history"] = np.array(history["loss"])
        out["trained"] = g["predict"](net.layers, data["x"])
    out["name"] = np.array(g["MODEL_NAME"])
    np.savez(sys.argv[3], **out)
""")


def run_emitted(tmp_path, spec, x, y=None):
    source = NumpyBackend().emit(spec, ms.check(spec))
    path = tmp_path / "model.py"
    path.write_text(source, encoding="utf-8")
    np.savez(tmp_path / "data.npz", x=x, y=x[:, :1] if y is None else y)
    subprocess.run([sys.executable, "-c", DRIVER, str(path), str(tmp_path / "data.npz"), str(tmp_path / "out.npz")],
                   check=True, cwd=tmp_path, capture_output=True, timeout=300)
    return source, dict(np.load(tmp_path / "out.npz"))


def imports(source):
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(node.module)
    return found


TRAINED = """model emitted
input 6x6x1
conv2d 3 3x3 padding=same strides=2 relu l2=0.01
maxpool2d 2x2 strides=1 padding=same
batchnorm
flatten
dense 5 gelu l1=0.02
dense 3 softmax
optimizer nadam lr=0.01
loss categorical_crossentropy
metrics accuracy
fit seed=4
"""


def test_emitted_code_is_standalone_and_computes_what_the_engine_does(tmp_path):
    spec = ms.parse(TRAINED)
    report = ms.check(spec)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(15, 6, 6, 1)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 15)]
    source, out = run_emitted(tmp_path, spec, x, y)
    assert imports(source) == ["numpy"]
    weights = initial_weights(spec, report, 4)  # the spec's fit seed
    assert all(out[f"w{i}"].tobytes() == w.tobytes() for i, w in enumerate(weights))
    engine = NumpyEngine(spec, report)
    engine.set_weights(weights)
    data = engine.prepare(x, y)
    np.testing.assert_allclose(out["predict"], engine.predict(data, 32), rtol=1e-6, atol=1e-7)
    engine.set_training(TrainConfig("nadam", spec.optimizer.config(), LossConfig("categorical_crossentropy", True),
                                    (MetricConfig("accuracy", "categorical_accuracy"),)))
    history = []
    for _ in range(2):
        totals = engine.train_epoch(data, np.arange(15), 5)
        history.append(totals.loss_sum / totals.count)
    np.testing.assert_allclose(out["history"], history, rtol=1e-6)
    np.testing.assert_allclose(out["trained"], engine.predict(data, 32), rtol=1e-5, atol=1e-6)
    # only what the spec uses: no other layers, optimizers, losses or activations, so every
    # definition is used (the entry points by the `__main__` block)
    assert defined_but_unused(source) == set()


def defined_but_unused(source):
    """Top-level functions, classes and constants nothing in the module refers to."""
    tree = ast.parse(source)
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    defined |= {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    return defined - {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def test_emitted_code_for_every_tutorial_spec_compiles():
    from pathlib import Path

    for path in sorted(Path(__file__).parent.parent.joinpath("specs").glob("*.ms")):
        spec = ms.parse(path)
        source = NumpyBackend().emit(spec, ms.check(spec))
        compile(source, str(path), "exec")
        assert imports(source) == ["numpy"]
        assert defined_but_unused(source) == set(), path.stem


HOSTILE = ['x"); import os #', "a'''b\"\"\"c", "line\nbreak\rreturn\u2028sep", "\\", "#", "é 模型"]


@pytest.mark.parametrize("name", HOSTILE)
def test_spec_text_never_becomes_code(tmp_path, name):
    spec = ms.parse("input 4\ndense 3 relu\ndense 2 softmax\noptimizer sgd\nloss categorical_crossentropy")
    layers = list(spec.layers)
    layers[0] = layers[0].model_copy(update={"name": name})
    spec = spec.model_copy(update={"name": name, "layers": tuple(layers)})
    x = np.random.default_rng(7).normal(size=(10, 4)).astype(np.float32)
    source, out = run_emitted(tmp_path, spec, x, np.eye(2, dtype=np.float32)[[0, 1] * 5])
    assert imports(source) == ["numpy"]
    assert str(out["name"]) == name
    # the name appears only inside string literals and comments made by repr()
    tree = ast.parse(source)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
        {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert "os" not in names


def test_on_batch_reports_running_sums():
    engine = engine_for(LINEAR, loss="mse", metrics=("mae",))
    x, y = np.ones((10, 3), np.float32), np.zeros((10, 1), np.float32)
    calls = []
    totals = engine.train_epoch(engine.prepare(x, y), np.arange(10), 4, on_batch=lambda *a: calls.append(a))
    assert [(step, seen) for step, seen, _, _ in calls] == [(0, 4), (1, 8), (2, 10)]
    assert calls[-1][2] == totals.loss_sum and calls[-1][3] == totals.metric_sums
    assert 0 < calls[0][2] < calls[1][2] < calls[2][2]
