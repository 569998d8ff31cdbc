"""The numpy backend on sequences: embedding, conv1d, the 1-D pools, layernorm, reshape,
integer inputs and embedding's mask.

Forward values against real Keras 3 layers (TensorFlow backend); gradients by central
finite differences in float64; the tie rules of the max pools, where no derivative exists,
against tf.GradientTape on tied inputs; whole models against keras.Model with the same
weights; the emitted program against the engine.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

import modelspec as ms
from modelspec.backends.numpy import NumpyEngine
from modelspec.backends.numpy import kernels as K
from modelspec.backends.numpy.emit import emit
from modelspec.training import LossConfig, TrainConfig, loss_from_logits, synthetic_ids

from test_numpy_gradients import check_layer, numeric_gradient, rand

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def keras_modules():
    keras = pytest.importorskip("keras")
    import tensorflow as tf

    return keras, tf


def f32(*shape, seed=1):
    return rand(*shape, seed=seed).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Forward values against Keras's layers

CONV_CASES = [(p, s, d, k) for p in ("valid", "same", "causal")
              for s, d in ((1, 1), (2, 1), (3, 1), (1, 2), (1, 3)) for k in (1, 2, 3, 4)]


@pytest.mark.keras
def test_conv1d_forward_matches_keras_for_every_padding_stride_and_dilation():
    keras, _ = keras_modules()
    x = f32(2, 11, 3)
    for padding, s, d, k in CONV_CASES:
        kernel, bias = f32(k, 3, 2, seed=k), f32(2, seed=5)
        theirs = keras.layers.Conv1D(2, k, strides=s, padding=padding, dilation_rate=d)
        theirs.build((None, 11, 3))
        theirs.set_weights([kernel, bias])
        expected = theirs(x).numpy()
        ours = K.Conv1D(kernel, bias, s, padding, d).forward(x)
        assert ours.shape == expected.shape, (padding, s, d, k)
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6, err_msg=str((padding, s, d, k)))


@pytest.mark.keras
def test_pool1d_forward_matches_keras():
    """Max 'same' never lets a pad win (x is negative here, so a zero pad would); average
    'same' divides by the real cells only."""
    keras, _ = keras_modules()
    x = f32(2, 11, 3) - 3
    for (ours_class, theirs_class), p, s, padding in itertools.product(
            [(K.MaxPool1D, "MaxPooling1D"), (K.AvgPool1D, "AveragePooling1D")], (2, 3, 4), (None, 1, 2, 3),
            ("valid", "same")):
        expected = getattr(keras.layers, theirs_class)(p, strides=s, padding=padding)(x).numpy()
        ours = ours_class(p, s, padding).forward(x)
        assert ours.shape == expected.shape
        np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6, err_msg=str((theirs_class, p, s, padding)))


@pytest.mark.keras
def test_global_pools_forward_match_keras_with_and_without_a_mask():
    keras, _ = keras_modules()
    x = f32(3, 6, 4)
    ids = np.array([[3, 0, 1, 0, 0, 2], [0, 0, 0, 0, 0, 7], [1, 2, 3, 4, 5, 6]])
    avg, masked = K.GlobalAvgPool1D(), K.GlobalAvgPool1D(masked=True)
    masked.ids = ids
    theirs = keras.layers.GlobalAveragePooling1D()
    np.testing.assert_allclose(avg.forward(x), theirs(x).numpy(), rtol=1e-6)
    expected = theirs(x, mask=ids != 0).numpy()
    np.testing.assert_allclose(masked.forward(x), expected, rtol=1e-6)
    assert not np.allclose(masked.forward(x), avg.forward(x))  # the mask changes the numbers
    np.testing.assert_allclose(masked.forward(x)[1], x[1, 5])  # one real step: itself
    np.testing.assert_array_equal(K.GlobalMaxPool1D().forward(x), keras.layers.GlobalMaxPooling1D()(x).numpy())


@pytest.mark.keras
def test_a_fully_masked_sample_averages_to_nan_as_in_keras():
    keras, _ = keras_modules()
    x, ids = f32(2, 3, 2), np.array([[0, 0, 0], [1, 0, 2]])
    layer = K.GlobalAvgPool1D(masked=True)
    layer.ids = ids
    with np.errstate(invalid="ignore"):
        ours = layer.forward(x)
    expected = keras.layers.GlobalAveragePooling1D()(x, mask=ids != 0).numpy()
    assert np.isnan(ours[0]).all() and np.isnan(expected[0]).all()
    np.testing.assert_allclose(ours[1], expected[1], rtol=1e-6)


@pytest.mark.keras
@pytest.mark.parametrize("epsilon", [1e-3, 0.5])
def test_layernorm_forward_matches_keras(epsilon):
    keras, _ = keras_modules()
    x = f32(2, 5, 6) * 3 + 1
    gamma, beta = f32(6, seed=2), f32(6, seed=3)
    theirs = keras.layers.LayerNormalization(epsilon=epsilon)
    theirs.build((None, 5, 6))
    theirs.set_weights([gamma, beta])
    np.testing.assert_allclose(K.LayerNorm(gamma, beta, epsilon).forward(x), theirs(x).numpy(), rtol=1e-5, atol=1e-6)
    x2 = f32(4, 6)  # rank 2: still the last axis only
    np.testing.assert_allclose(K.LayerNorm(gamma, beta, epsilon).forward(x2), theirs(x2).numpy(), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.keras
@pytest.mark.parametrize("target", [(3, -1), (-1, 2, 2), (12,), (2, 3, 2)])
def test_reshape_forward_matches_keras(target):
    keras, _ = keras_modules()
    x = np.arange(2 * 12, dtype=np.float32).reshape(2, 4, 3)
    np.testing.assert_array_equal(K.Reshape(target).forward(x), keras.layers.Reshape(target)(x).numpy())


@pytest.mark.keras
def test_embedding_lookup_matches_keras():
    """Integer ids (negative ones count from the end, as TF's CPU gather does) and float ids,
    which Keras truncates toward zero."""
    keras, _ = keras_modules()
    table = f32(7, 3)
    theirs = keras.layers.Embedding(7, 3)
    theirs.build((None, 5))
    theirs.set_weights([table])
    ids = np.array([[0, 6, 2, 2, -1], [1, 1, 3, 4, 5]], np.int32)
    ours = K.Embedding(table)
    np.testing.assert_array_equal(ours.forward(ids), theirs(ids).numpy())
    floats = np.array([[2.9, 0.5, 6.0, 1.2, 3.99]], np.float32)
    np.testing.assert_array_equal(ours.forward(floats), theirs(floats).numpy())
    np.testing.assert_array_equal(ours.forward(floats), table[[[2, 0, 6, 1, 3]]])


# ---------------------------------------------------------------------------------------
# Gradients by finite differences (float64)


@pytest.mark.parametrize("padding, s, d, k", [c for c in CONV_CASES if c[3] in (1, 3, 4)],
                         ids=[str(c) for c in CONV_CASES if c[3] in (1, 3, 4)])
def test_conv1d_gradients(padding, s, d, k):
    check_layer(K.Conv1D(rand(k, 2, 3, seed=2), rand(3, seed=3), s, padding, d), rand(2, 9, 2))


def test_conv1d_without_bias_gradients():
    check_layer(K.Conv1D(rand(3, 2, 2, seed=2), None, 2, "same"), rand(2, 8, 2))


@pytest.mark.parametrize("kind", [K.MaxPool1D, K.AvgPool1D])
@pytest.mark.parametrize("p, s, padding", [(2, None, "valid"), (2, None, "same"), (3, 2, "same"), (3, 1, "same"),
                                           (4, 3, "valid"), (3, 2, "valid")])
def test_pool1d_gradients(kind, p, s, padding):
    check_layer(kind(p, s, padding), rand(2, 11, 3))


def test_global_pool1d_layernorm_and_reshape_gradients():
    check_layer(K.GlobalAvgPool1D(), rand(3, 5, 4))
    check_layer(K.GlobalMaxPool1D(), rand(3, 5, 4))
    check_layer(K.LayerNorm(rand(4, seed=2), rand(4, seed=3), 1e-3), rand(3, 5, 4))
    check_layer(K.LayerNorm(rand(4, seed=2), rand(4, seed=3), 0.5), rand(3, 4))
    check_layer(K.Reshape((-1, 2)), rand(3, 5, 4))


def test_masked_global_average_gradient():
    layer = K.GlobalAvgPool1D(masked=True)
    layer.ids = np.array([[3, 0, 1, 0, 0], [0, 0, 0, 0, 7], [1, 2, 3, 4, 5]])
    check_layer(layer, rand(3, 5, 4))
    dx = layer.backward(np.ones((3, 4)))
    assert not dx[0, [1, 3, 4]].any() and not dx[1, :4].any()  # masked steps get nothing


def test_embedding_sparse_gradient_with_repeated_ids():
    """The table's gradient by finite differences: a repeated id sums its uses, an unused
    row gets exactly zero, a negative id's row (counted from the end) gets its share, and the
    buffer is rewritten (not accumulated) at each backward."""
    table = rand(6, 3, seed=2)
    layer = K.Embedding(table)
    ids = np.array([[1, 4, 1, 1], [4, 0, 1, -1]])
    r = rand(2, 4, 3, seed=7)
    layer.forward(ids, True)
    assert layer.backward(r * 5, need_dx=False) is None
    layer.forward(ids, True)
    layer.backward(r, need_dx=False)
    numeric = numeric_gradient(lambda: float(np.sum(layer.forward(ids) * r)), table)
    np.testing.assert_allclose(layer.grads[0], numeric, rtol=1e-6, atol=1e-8)
    assert not layer.grads[0][[2, 3]].any()
    np.testing.assert_allclose(layer.grads[0][1], r[0, 0] + r[0, 2] + r[0, 3] + r[1, 2])
    np.testing.assert_allclose(layer.grads[0][5], r[1, 3])


# ---------------------------------------------------------------------------------------
# Tie rules against tf.GradientTape


@pytest.mark.keras
def test_maxpool1d_ties_give_the_first_max_everything_as_tensorflow():
    keras, tf = keras_modules()
    x = np.array([1, 1, 2, 2, 0, 0, 3, 3, 3], np.float32).reshape(1, 9, 1)
    x = np.concatenate([x, x[:, ::-1]], axis=2)
    for p, s, padding in [(2, None, "valid"), (3, 1, "same"), (2, 2, "same"), (3, 2, "valid")]:
        ours = K.MaxPool1D(p, s, padding)
        y = ours.forward(x)
        dy = np.arange(1, y.size + 1, dtype=np.float32).reshape(y.shape)
        theirs = keras.layers.MaxPooling1D(p, strides=s, padding=padding)
        t = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(t)
            total = tf.reduce_sum(theirs(t) * dy)
        np.testing.assert_array_equal(ours.backward(dy), tape.gradient(total, t).numpy(), err_msg=str((p, s, padding)))
    ours = K.MaxPool1D(2)
    ours.forward(x[:, :6, :1])
    assert ours.backward(np.ones((1, 3, 1), np.float32))[0, :, 0].tolist() == [1, 0, 1, 0, 1, 0]


@pytest.mark.keras
def test_globalmaxpool1d_ties_split_the_gradient_equally_as_tensorflow():
    keras, tf = keras_modules()
    x = np.array([[[2, 1], [5, 1], [5, 0], [5, 1]], [[0, 3], [1, 3], [1, 2], [-1, 3]]], np.float32)
    dy = np.array([[6, 3], [4, 9]], np.float32)
    ours = K.GlobalMaxPool1D()
    ours.forward(x)
    t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(t)
        total = tf.reduce_sum(keras.layers.GlobalMaxPooling1D()(t) * dy)
    expected = tape.gradient(total, t).numpy()
    np.testing.assert_allclose(ours.backward(dy), expected, rtol=1e-6)
    assert ours.backward(dy)[0, :, 0].tolist() == [0, 2, 2, 2]


# ---------------------------------------------------------------------------------------
# Whole models with integer inputs

MASKED = """model masked
input 12 int
embedding 30 4 mask_zero l2=0.01
layernorm
dense 5 relu
globalavgpool1d
dense 3 softmax
"""

SEQUENCE = """model sequence
input 16 int
embedding 20 4 l1=0.002 l2=0.01
conv1d 5 3 padding=causal dilation=2 relu
maxpool1d 3 stride=2 padding=same
conv1d 4 2 stride=2 padding=same l2=0.01
avgpool1d 2 stride=1 padding=same
reshape -1x2
globalmaxpool1d
dense 3 softmax
"""


def keras_model(keras, report):
    """The spec's layers by hand as a Keras functional model on int32 ids."""
    L = keras.layers
    make = {
        "embedding": lambda c: L.Embedding(c.input_dim, c.output_dim, mask_zero=c.mask_zero,
                                           embeddings_regularizer=keras.regularizers.L1L2(
                                               c.embeddings_regularizer.l1, c.embeddings_regularizer.l2)
                                           if c.embeddings_regularizer else None),
        "conv1d": lambda c: L.Conv1D(c.filters, c.kernel_size, strides=c.strides, padding=c.padding,
                                     dilation_rate=c.dilation_rate, activation=c.activation,
                                     kernel_regularizer=keras.regularizers.L1L2(
                                         c.kernel_regularizer.l1, c.kernel_regularizer.l2)
                                     if c.kernel_regularizer else None),
        "maxpool1d": lambda c: L.MaxPooling1D(c.pool_size, strides=c.strides, padding=c.padding),
        "avgpool1d": lambda c: L.AveragePooling1D(c.pool_size, strides=c.strides, padding=c.padding),
        "globalavgpool1d": lambda c: L.GlobalAveragePooling1D(),
        "globalmaxpool1d": lambda c: L.GlobalMaxPooling1D(),
        "layernorm": lambda c: L.LayerNormalization(epsilon=c.epsilon),
        "reshape": lambda c: L.Reshape(c.target_shape),
        "dense": lambda c: L.Dense(c.units, activation=c.activation),
    }
    x = keras.Input(report.input_shape[1:], dtype="int32")
    h, outputs = x, []
    for row in report.layers:
        h = make[row.kind](row.layer)(h)
        outputs.append(h)
    return keras.Model(x, outputs)


def engine_for(text, dtype=np.float32, seed=3):
    text += "loss sparse_categorical_crossentropy\noptimizer sgd\n"
    spec = ms.parse(text)
    report = ms.check(spec)
    engine = NumpyEngine(spec, report, seed=seed, dtype=dtype)
    loss = "sparse_categorical_crossentropy"
    engine.set_training(TrainConfig("sgd", {"learning_rate": 0.1}, LossConfig(loss, loss_from_logits(spec, loss)),
                                    ()))
    engine.get_weights()
    return spec, report, engine


@pytest.mark.keras
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("text", [MASKED, SEQUENCE], ids=["masked", "sequence"])
def test_every_row_and_every_gradient_match_a_keras_model(text):
    """Each row's output and each weight's gradient of the loss with its penalties, on
    int32 ids with zeros among them (the mask), against the same model in Keras."""
    keras, tf = keras_modules()
    keras.backend.clear_session()
    spec, report, engine = engine_for(text)
    assert engine.report.layers[3].mask_in if text is MASKED else True
    model = keras_model(keras, report)
    rng = np.random.default_rng(0)
    weights = [w + rng.uniform(-0.3, 0.3, w.shape).astype(np.float32) for w in engine.get_weights()]
    model.set_weights(weights)
    engine.set_weights(weights)
    x = synthetic_ids(spec, 8, rng)
    assert (x == 0).any() and x.dtype == np.int32
    for ours, theirs, row in zip(engine.layer_outputs(x), model(x), report.layers):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=2e-5, atol=2e-6, err_msg=row.name)

    y = rng.integers(0, 3, 8)
    with tf.GradientTape() as tape:
        out = model(x, training=True)[-1]
        expected_loss = keras.losses.SparseCategoricalCrossentropy()(y, out) + sum(model.losses)
    expected = tape.gradient(expected_loss, model.trainable_weights)
    data = engine.prepare(x, y)
    loss, _ = engine.gradients(data.x, data.y)
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-5)
    for ours, theirs, variable in zip(engine.net.grads, expected, model.trainable_weights):
        theirs = tf.convert_to_tensor(theirs).numpy()  # the embedding's IndexedSlices made dense
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6, err_msg=variable.path)


@pytest.mark.parametrize("text", [MASKED, SEQUENCE], ids=["masked", "sequence"])
def test_whole_network_gradients_with_embedding_penalties_in_float64(text):
    spec, report, engine = engine_for(text, dtype=np.float64)
    x = synthetic_ids(spec, 5, np.random.default_rng(1))
    data = engine.prepare(x, np.random.default_rng(2).integers(0, 3, 5))
    assert data.x.dtype == np.int32
    total, _ = engine.gradients(data.x, data.y)
    assert engine.net.penalty() > 0
    analytic = [g.copy() for g in engine.net.grads]
    f = lambda: float(engine.net.evaluate(data.x, data.y, training=True)[0])  # noqa: E731
    for a, p in zip(analytic, engine.net.params):
        np.testing.assert_allclose(a, numeric_gradient(f, p), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ids_stay_integers_in_an_engine_of_either_float_dtype(dtype):
    """Prepared ids are int32 (floats truncated toward zero, as Keras's Embedding casts them),
    never the engine's float dtype; the outputs are in the engine's dtype."""
    spec, report, engine = engine_for(MASKED, dtype=dtype)
    ids = synthetic_ids(spec, 6, np.random.default_rng(0))
    for given in (ids, ids.astype(np.int64), ids + 0.7):
        data = engine.prepare(given, None)
        assert data.x.dtype == np.int32
        np.testing.assert_array_equal(data.x, ids)
        assert engine.predict(data, 4).dtype == dtype
    outputs = engine.layer_outputs(ids.astype(np.float32))  # as a float32 caller would pass them
    assert all(o.dtype == dtype for o in outputs)
    np.testing.assert_array_equal(outputs[0], engine.get_weights()[0][ids])


def test_model_api_trains_a_step_on_int_ids():
    text = MASKED + "loss sparse_categorical_crossentropy\noptimizer adam\n"
    model = ms.build(text, backend="numpy", seed=1)
    rng = np.random.default_rng(2)
    x = synthetic_ids(model.spec, 16, rng)
    y = rng.integers(0, 3, 16)
    before = model.get_weights()
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = model.get_weights()
    table_rows_used = np.unique(x)
    changed = np.abs(after[0] - before[0]).max(axis=1) > 0
    assert changed[table_rows_used].all()  # Adam moves every row that had a gradient
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    predictions = model.predict(x)
    np.testing.assert_allclose(predictions.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(predictions, model.engine.layer_outputs(x)[-1])


# ---------------------------------------------------------------------------------------
# The emitted program

GRAPH = """model graph
input 12 int
e = embedding 30 4 mask_zero
a = globalavgpool1d from=e
c = conv1d 4 3 padding=same from=e
b = globalmaxpool1d from=c
j = concat a b
dense 3 softmax
"""


@pytest.mark.keras
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_graph_with_a_masked_average_matches_keras():
    """In a graph, the masked mean reads the embedding's output and the model's ids, beside a
    branch (conv1d, then the global max) that drops the mask."""
    keras, tf = keras_modules()
    keras.backend.clear_session()
    spec, report, engine = engine_for(GRAPH)
    assert [row.mask_in for row in report.layers] == [False, True, True, False, False, False]
    L = keras.layers
    ids = keras.Input((12,), dtype="int32")
    e = L.Embedding(30, 4, mask_zero=True)(ids)
    a = L.GlobalAveragePooling1D()(e)
    c = L.Conv1D(4, 3, padding="same")(e)
    b = L.GlobalMaxPooling1D()(c)
    out = L.Dense(3, activation="softmax")(L.Concatenate()([a, b]))
    model = keras.Model(ids, out)
    by_name = {layer.name: layer for layer in model.layers}
    weights = engine.get_weights()
    # Keras's order of a functional model's layers is the report's (embedding, conv1d, dense)
    model.set_weights(weights)
    every = keras.Model(ids, [by_name[row.name].output for row in report.layers])
    x = synthetic_ids(spec, 8, np.random.default_rng(3))
    for ours, theirs, row in zip(engine.layer_outputs(x), every(x), report.layers):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=2e-5, atol=2e-6, err_msg=row.name)
    y = np.random.default_rng(4).integers(0, 3, 8)
    with tf.GradientTape() as tape:
        expected_loss = keras.losses.SparseCategoricalCrossentropy()(y, model(x, training=True))
    expected = tape.gradient(expected_loss, model.trainable_weights)
    data = engine.prepare(x, y)
    loss, _ = engine.gradients(data.x, data.y)
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-5)
    for ours, theirs, variable in zip(engine.net.grads, expected, model.trainable_weights):
        np.testing.assert_allclose(ours, tf.convert_to_tensor(theirs).numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=variable.path)


@pytest.mark.parametrize("text", [MASKED, SEQUENCE, GRAPH], ids=["masked", "sequence", "graph"])
def test_emitted_program_computes_what_the_engine_computes_on_ids(text):
    spec, report, engine = engine_for(text)
    source = emit(spec, report)
    assert "INPUT_DTYPE = np.int32" in source
    namespace: dict = {}
    exec(compile(source, "<emitted>", "exec"), namespace)  # noqa: S102 - our own generated code
    weights = engine.get_weights()
    x = synthetic_ids(spec, 10, np.random.default_rng(4))
    net = namespace["network"]([w.copy() for w in weights])
    np.testing.assert_array_equal(namespace["predict"](net.layers, x, batch_size=4),
                                  engine.predict(engine.prepare(x, None), 4))
    data = engine.prepare(x, np.random.default_rng(5).integers(0, 3, 10))
    assert net.gradients(data.x, data.y)[0] == engine.gradients(data.x, data.y)[0]
    for theirs, ours in zip(net.grads, engine.net.grads):
        np.testing.assert_array_equal(theirs, ours)


@pytest.mark.keras
@pytest.mark.parametrize("optimizer", ["adam", "rmsprop", "adagrad", "nadam", "adamw", "sgd"])
@pytest.mark.parametrize("penalty", ["", " l2=0.01"], ids=["sparse", "penalized"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_optimizers_update_an_embedding_as_keras_does(optimizer, penalty, backend):
    """Keras squares the embedding's sparse gradient row by row before the rows of one id are
    summed (Adam's v takes Σ g², not (Σ g)²); a penalty makes the gradient dense, and the usual
    rule returns. Three steps of fit in both, from the same weights, on ids that repeat."""
    keras, _ = keras_modules()
    keras.backend.clear_session()
    text = f"input 6 int\nembedding 5 3{penalty}\nflatten\ndense 2 softmax\noptimizer {optimizer} lr=0.05\n" \
           "loss sparse_categorical_crossentropy\n"
    if backend == "torch":
        pytest.importorskip("torch")
    model = ms.build(text, backend=backend, seed=4)
    reference = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(
        5, 3, embeddings_regularizer=keras.regularizers.L2(0.01) if penalty else None), keras.layers.Flatten(),
        keras.layers.Dense(2, activation="softmax")])
    reference.set_weights(model.get_weights())
    keras_optimizer = {"adam": "Adam", "rmsprop": "RMSprop", "adagrad": "Adagrad", "nadam": "Nadam",
                       "adamw": "AdamW", "sgd": "SGD"}[optimizer]
    reference.compile(getattr(keras.optimizers, keras_optimizer)(learning_rate=0.05),
                      "sparse_categorical_crossentropy")
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 5, (24, 6)).astype(np.int32), rng.integers(0, 2, 24)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    reference.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for ours, theirs in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-6)
