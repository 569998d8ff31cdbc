"""The numpy backend on graphs (functional models): the merge kernels and the Graph network.

Gradients are checked by central finite differences in float64 (the kernels are
dtype-generic); the tie rule of maximum/minimum, where there is no derivative to
difference, against tf.GradientTape on real Keras layers; forward passes against real
keras.Model graphs built here by hand with the same weights; the emitted program
against the engine.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

import modelspec as ms
from modelspec import ir
from modelspec.backends.numpy import NumpyBackend, NumpyEngine
from modelspec.backends.numpy import kernels as K
from modelspec.backends.numpy.emit import emit
from modelspec.training import LossConfig, TrainConfig, loss_from_logits

from test_numpy_gradients import numeric_gradient, rand

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def test_every_layer_kind_has_a_lowering():
    assert NumpyBackend.layer_kinds == set(ir.LAYER_CLASSES)


# ---------------------------------------------------------------------------------------
# The merge kernels


def check_merge(layer, xs, atol=1e-7, rtol=1e-6):
    """Each input's gradient of sum(r * layer(xs)) against finite differences."""
    y = layer.forward(xs)
    r = rand(*y.shape, seed=7)
    analytic = layer.backward(r)
    assert len(analytic) == len(xs)
    for x, a in zip(xs, analytic):
        n = numeric_gradient(lambda: float(np.sum(layer.forward(xs) * r)), x)
        assert a.shape == x.shape
        np.testing.assert_allclose(a, n, rtol=rtol, atol=atol)


FOLDS = {"add": (K.Add, lambda a, b: a + b), "multiply": (K.Multiply, lambda a, b: a * b),
         "maximum": (K.Maximum, np.maximum), "minimum": (K.Minimum, np.minimum)}


@pytest.mark.parametrize("kind", sorted(FOLDS))
@pytest.mark.parametrize("count", [1, 2, 3])
def test_elementwise_merge_folds_left_to_right(kind, count):
    layer, op = FOLDS[kind]
    xs = [rand(2, 3, 4, seed=i) for i in range(count)]
    expected = functools.reduce(op, xs)
    np.testing.assert_array_equal(layer().forward(xs), expected)
    check_merge(layer(), xs)


def test_subtract_and_average():
    a, b, c = rand(3, 5, seed=1), rand(3, 5, seed=2), rand(3, 5, seed=3)
    np.testing.assert_array_equal(K.Subtract().forward([a, b]), a - b)
    np.testing.assert_array_equal(K.Average().forward([a, b, c]), ((a + b) + c) / 3)
    check_merge(K.Subtract(), [a, b])
    check_merge(K.Average(), [a, b, c])


@pytest.mark.parametrize("axis", [-1, 1, 2])
def test_concatenate(axis):
    sizes = [1, 3, 2]
    xs = [rand(*[s if i == axis % 3 else 2 for i in range(3)], seed=s) for s in sizes]
    np.testing.assert_array_equal(K.Concatenate(axis).forward(xs), np.concatenate(xs, axis=axis))
    check_merge(K.Concatenate(axis), xs)


@pytest.mark.parametrize("kind", ["add", "subtract", "multiply", "average", "maximum", "minimum"])
def test_rank_broadcast_inserts_axes_after_the_batch_axis(kind):
    """(B,4) meets (B,3,4) as (B,1,4) (keras/src/layers/merging/base_merge.py): with B = 3 a
    right-aligned broadcast would silently pair the batch axis with the 3."""
    layer = {"add": K.Add, "subtract": K.Subtract, "multiply": K.Multiply, "average": K.Average,
             "maximum": K.Maximum, "minimum": K.Minimum}[kind]
    a, b = rand(3, 4, seed=1), rand(3, 3, 4, seed=2)
    y = layer().forward([a, b])
    assert y.shape == (3, 3, 4)
    ref = {"add": a[:, None] + b, "subtract": a[:, None] - b, "multiply": a[:, None] * b,
           "average": (a[:, None] + b) / 2, "maximum": np.maximum(a[:, None], b),
           "minimum": np.minimum(a[:, None], b)}[kind]
    np.testing.assert_array_equal(y, ref)
    check_merge(layer(), [a, b])
    check_merge(layer(), [rand(2, 3, 1, seed=3), rand(2, 1, 4, seed=4)])  # dims of 1 stretch both ways


# ---------------------------------------------------------------------------------------
# Whole graphs: every weight's gradient by finite differences, in float64

RESIDUAL = """
input 5x5x2
conv2d 3 3x3 relu padding=same
block residual(filters) {
  conv2d filters 3x3 relu padding=same
  conv2d filters 3x3 padding=same
  batchnorm
  add in
  relu
}
residual 3
globalavgpool2d
dense 3 softmax
"""

GRAPHS = {
    "residual": (RESIDUAL, "categorical_crossentropy"),
    "concat3": ("input 6; h = dense 4 relu; a = dense 3 from=h; b = dense 2 tanh from=h; "
                "c = dense 3 from=h; concat a b c; dense 3 softmax", "categorical_crossentropy"),
    # one output read by three layers, one of them a merge that lists it twice
    "fanout": ("input 5; h = dense 4 tanh; a = dense 4 from=h; b = dense 4 sigmoid from=h; "
               "multiply h h a b; dense 2", "mse"),
    "merges": ("input 4; h = dense 5 tanh; a = dense 5 from=h; b = dense 5 from=h; c = dense 5 from=in; "
               "s = subtract a b; m = multiply a c; v = average a b c; x = maximum b c a; n = minimum c a b; "
               "add s m v x n; dense 2 sigmoid", "binary_crossentropy"),
    "concat_axis1": ("input 3x4; a = dense 2; b = dense 2 from=in; concat a b axis=1; flatten; dense 2",
                     "mse"),
    "rank_broadcast": ("input 3x5; h = dense 4; flatten from=in; dense 4; add h; flatten; dense 2 softmax",
                       "categorical_crossentropy"),
    "linear_branch": ("input 4; h = linear; dense 4 tanh; add h; dense 2", "mse"),
    "input_merge": ("input 4; dense 4 tanh; add in; dense 2; linear; softmax",
                    "categorical_crossentropy"),
}


def engine_for(text, loss, dtype=np.float64, seed=3):
    spec = ms.parse(text)
    report = ms.check(spec)
    engine = NumpyEngine(spec, report, seed=seed, dtype=dtype)
    engine.set_training(TrainConfig("sgd", {"learning_rate": 0.1},
                                    LossConfig(loss, loss_from_logits(spec, loss)), ()))
    engine.get_weights()  # draws them
    return spec, report, engine


def labels(report, loss, n, seed=5):
    out = report.output_shape[-1]
    rng = np.random.default_rng(seed)
    if loss == "categorical_crossentropy":
        return np.eye(out)[rng.integers(0, out, n)]
    if loss == "binary_crossentropy":
        return rng.integers(0, 2, (n, out)).astype(np.float64)
    return rng.standard_normal((n, out))


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_graph_gradients_by_finite_differences(name):
    text, loss = GRAPHS[name]
    spec, report, engine = engine_for(text, loss)
    assert isinstance(engine.net, K.Graph)
    x = rand(4, *spec.input_shape, seed=11)
    data = engine.prepare(x, labels(report, loss, 4))
    total, _ = engine.gradients(data.x, data.y)
    analytic = [g.copy() for g in engine.net.grads]
    f = lambda: float(engine.net.evaluate(data.x, data.y, training=True)[0])  # noqa: E731
    assert f() == pytest.approx(float(total))
    assert len(engine.net.params) == sum(w.trainable for w in report.weights)
    for param, grad in zip(engine.net.params, analytic):
        assert np.abs(grad).max() > 0  # every weight reaches the loss
        np.testing.assert_allclose(grad, numeric_gradient(f, param), rtol=1e-5, atol=1e-8)


def test_backward_skips_what_reaches_no_weight():
    """The branch from the input through weightless layers never runs backward; the merge
    that joins it to a weighted branch still passes the gradient to that branch."""
    text = "input 4; a = tanh; dense 4 from=in; add a; dense 2"
    spec, report, engine = engine_for(text, "mse")
    calls = []
    kinds = [type(layer).__name__ for layer in engine.net.layers]
    assert kinds == ["Dense", "Activation", "Add", "Dense"]  # Keras's order: dense, activation, add, dense_1
    engine.net.layers[1].backward = lambda *args, **kw: calls.append(args)
    data = engine.prepare(rand(3, 4), rand(3, 2, seed=2))
    engine.gradients(data.x, data.y)
    assert calls == [] and engine.net.reach == [True, False, True, True]
    assert np.abs(engine.net.grads[0]).max() > 0


# ---------------------------------------------------------------------------------------
# Against real Keras


def keras_modules():
    keras = pytest.importorskip("keras")
    import tensorflow as tf

    return keras, tf


@pytest.mark.keras
@pytest.mark.parametrize("kind", ["maximum", "minimum"])
def test_tie_gradient_matches_gradient_tape(kind):
    """Exactly tied inputs: TensorFlow gives the whole gradient to the earlier input
    (math_grad.py, _MaximumGrad/_MinimumGrad use >= / <=), also through the left-to-right fold."""
    keras, tf = keras_modules()
    a = np.array([[1.0, 2.0, 3.0, -1.0], [0.0, 5.0, 5.0, 2.0]], np.float32)
    b = np.array([[1.0, 0.0, 3.0, -1.0], [0.0, 5.0, 7.0, 1.0]], np.float32)
    c = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, -5.0, 5.0, 2.0]], np.float32)
    dy = np.arange(1, 9, dtype=np.float32).reshape(2, 4)
    for xs in ([a, b], [a, b, c], [a, a]):
        ours = getattr(K, kind.capitalize())()
        ours.forward(xs)
        grads = ours.backward(dy)
        keras_layer = getattr(keras.layers, kind.capitalize())()
        tensors = [tf.constant(x) for x in xs]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            out = keras_layer(tensors)
            total = tf.reduce_sum(out * dy)
        expected = tape.gradient(total, tensors)
        for g, e in zip(grads, expected):
            np.testing.assert_array_equal(g, e.numpy())
    assert grads[0].tolist() == dy.tolist() and not grads[1].any()  # [a, a]: all to the first


def keras_tiny_resnet(keras, report):
    """tiny_resnet by hand as a keras.Model (the spec of benchmarks/resnet.ms, smaller)."""
    L = keras.layers
    x = keras.Input((5, 5, 2))
    h = L.Conv2D(3, 3, activation="relu", padding="same")(x)
    for _ in range(2):
        r = L.Conv2D(3, 3, activation="relu", padding="same")(h)
        r = L.Conv2D(3, 3, padding="same")(r)
        r = L.BatchNormalization()(r)
        h = L.Activation("relu")(L.Add()([r, h]))
    y = L.Dense(4, activation="softmax")(L.GlobalAveragePooling2D()(h))
    return keras.Model(x, y)


TINY_RESNET = RESIDUAL.replace("residual 3\n", "residual 3\nresidual 3\n").replace("dense 3 softmax", "dense 4 softmax")


def keras_concat(keras, report):
    L = keras.layers
    x = keras.Input((6,))
    h = L.Dense(4, activation="relu")(x)
    a = L.Dense(3)(h)
    b = L.Dense(2, activation="tanh")(h)
    c = L.Dense(3)(x)
    y = L.Dense(3, activation="softmax")(L.Concatenate()([a, b, c]))
    return keras.Model(x, y)


CONCAT = "input 6; h = dense 4 relu; a = dense 3 from=h; b = dense 2 tanh from=h; c = dense 3 from=in; " \
         "concat a b c; dense 3 softmax"


@pytest.mark.keras
@pytest.mark.parametrize("text, build", [(TINY_RESNET, keras_tiny_resnet), (CONCAT, keras_concat)],
                         ids=["tiny_resnet", "concat"])
def test_forward_and_gradients_match_a_keras_model(text, build):
    """Every row's output (inference, batchnorm on non-trivial moving statistics) and every
    weight's gradient of one training-mode batch, against the same graph in Keras."""
    keras, tf = keras_modules()
    keras.backend.clear_session()
    spec, report, engine = engine_for(text, "categorical_crossentropy", dtype=np.float32)
    model = build(keras, report)
    assert [layer.name for layer in model.layers[1:]] == [row.name for row in report.layers]
    rng = np.random.default_rng(0)
    weights = [w + rng.uniform(0.1, 0.5, w.shape).astype(np.float32) * (1 if "variance" in p.path else 0.3)
               for w, p in zip(engine.get_weights(), report.weights)]
    model.set_weights(weights)
    engine.set_weights(weights)
    x = rng.standard_normal((8, *spec.input_shape)).astype(np.float32)

    every = keras.Model(model.inputs[0], [layer.output for layer in model.layers[1:]])
    for ours, theirs, row in zip(engine.layer_outputs(x), every(tf.constant(x), training=False), report.layers):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=2e-5, atol=2e-6, err_msg=row.name)

    y = np.eye(report.output_shape[-1], dtype=np.float32)[rng.integers(0, report.output_shape[-1], 8)]
    loss_fn = keras.losses.CategoricalCrossentropy()
    with tf.GradientTape() as tape:
        expected_loss = loss_fn(y, model(x, training=True))
    expected = tape.gradient(expected_loss, model.trainable_weights)
    data = engine.prepare(x, y)
    loss, _ = engine.gradients(data.x, data.y)
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-5)
    for ours, theirs, variable in zip(engine.net.grads, expected, model.trainable_weights):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=1e-6, err_msg=variable.path)


# ---------------------------------------------------------------------------------------
# The emitted program and the Model API


@pytest.mark.parametrize("name", ["residual", "merges", "concat_axis1", "input_merge"])
def test_emitted_program_computes_what_the_engine_computes(name):
    text, loss = GRAPHS[name]
    text += f"\noptimizer sgd\nloss {loss}"
    spec, report, engine = engine_for(text, loss, dtype=np.float32)
    source = emit(spec, report)
    namespace: dict = {}
    exec(compile(source, f"<{name}>", "exec"), namespace)  # noqa: S102 - our own generated code
    weights = engine.get_weights()
    x = rand(10, *spec.input_shape, seed=4).astype(np.float32)
    net = namespace["network"]([w.copy() for w in weights])
    np.testing.assert_array_equal(namespace["predict"](net.layers, x, batch_size=4),
                                  engine.predict(engine.prepare(x, None), 4))
    data = engine.prepare(x, labels(report, loss, 10).astype(np.float32))
    assert net.gradients(data.x, data.y)[0] == engine.gradients(data.x, data.y)[0]
    for theirs, ours in zip(net.grads, engine.net.grads):
        np.testing.assert_array_equal(theirs, ours)


def test_model_api_fits_evaluates_and_predicts_a_graph():
    model = ms.build(TINY_RESNET + "\noptimizer adam\nloss categorical_crossentropy\nmetrics accuracy",
                     backend="numpy", seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((24, 5, 5, 2)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 24)]
    before = model.evaluate(x, y)
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    after = model.evaluate(x, y)
    assert after["loss"] < before["loss"]
    predictions = model.predict(x)
    assert predictions.shape == (24, 4)
    np.testing.assert_allclose(predictions.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(predictions, model.engine.layer_outputs(x)[-1])
