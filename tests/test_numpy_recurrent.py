"""The numpy backend's recurrent and attention layers: lstm, gru (reset_after true and false),
simple_rnn, bidirectional (every merge) and attention (Keras's MultiHeadAttention as
self-attention), with and without embedding's mask.

Gradients (backpropagation through time by hand) against central finite differences in
float64; forward values against the real Keras 3 layers (TensorFlow backend) with the same
weights; whole models against keras.Model (every row, every gradient, steps of fit); the
emitted program against the engine.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import modelspec as ms
from modelspec.backends.numpy import NumpyEngine
from modelspec.backends.numpy import kernels as K
from modelspec.backends.numpy.emit import emit
from modelspec.training import LossConfig, TrainConfig, loss_from_logits, synthetic_ids

from corpus import transformer
from test_numpy_gradients import check_layer, numeric_gradient, rand

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def keras_modules():
    keras = pytest.importorskip("keras")
    import tensorflow as tf

    return keras, tf


def f32(*shape, seed=1, scale=1.0):
    return rand(*shape, seed=seed, scale=scale).astype(np.float32)


# Masks of 3 samples over 6 steps (ids != 0): right padding, left padding, holes.
IDS = np.array([[3, 1, 4, 1, 0, 0],
                [0, 0, 5, 9, 2, 6],
                [5, 0, 3, 0, 0, 8]], np.int32)
N, T, D, U = 3, 6, 4, 3
WITH_EMPTY = np.vstack([IDS, np.zeros((1, T), np.int32)])  # and a sample with every step masked
GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}
KINDS = ["lstm", "gru", "gru-reset_before", "simple_rnn"]


def recurrent(kind, dtype=np.float64, seed=0, bias=True, **options):
    """A kernels layer with random weights (a GRU's bias (2, 3U) with reset_after), and the same
    weights as Keras's get_weights()."""
    base = kind.split("-")[0]
    g = GATES[base]
    cls = {"lstm": K.LSTM, "gru": K.GRU, "simple_rnn": K.SimpleRNN}[base]
    if kind == "gru-reset_before":
        options["reset_after"] = False
    reset_after = base == "gru" and options.get("reset_after", True)
    weights = [rand(D, g * U, seed=seed + 1, scale=0.6), rand(U, g * U, seed=seed + 2, scale=0.6)]
    if bias:
        weights.append(rand(*((2, g * U) if reset_after else (g * U,)), seed=seed + 3, scale=0.5))
    weights = [w.astype(dtype) for w in weights]
    return cls(weights[0], weights[1], weights[2] if bias else None, **options), weights


def keras_recurrent(keras, kind, **options):
    base = kind.split("-")[0]
    cls = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple_rnn": keras.layers.SimpleRNN}[base]
    if kind == "gru-reset_before":
        options["reset_after"] = False
    return cls(U, **options)


def attention(dtype=np.float64, heads=2, key_dim=3, value_dim=3, bias=True, **options):
    shapes = [(D, heads, key_dim), (heads, key_dim), (D, heads, key_dim), (heads, key_dim),
              (D, heads, value_dim), (heads, value_dim), (heads, value_dim, D), (D,)]
    weights = [rand(*s, seed=k + 1, scale=0.6).astype(dtype) for k, s in enumerate(shapes)]
    given = weights if bias else [w if k % 2 == 0 else None for k, w in enumerate(weights)]
    return K.Attention(*given, **options), weights if bias else weights[::2]


# ---------------------------------------------------------------------------------------
# Gradients against finite differences, float64


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forwards", "backwards"])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_recurrent_gradients(kind, return_sequences, go_backwards, masked):
    """Input, kernel, recurrent kernel and bias gradients through time; the mask has right
    padding, left padding and holes (a masked step passes the state's gradient through)."""
    layer, _ = recurrent(kind, return_sequences=return_sequences, go_backwards=go_backwards, masked=masked)
    layer.ids = IDS
    check_layer(layer, rand(N, T, D, seed=7))


@pytest.mark.parametrize("kind", KINDS)
def test_recurrent_gradients_without_bias_and_with_other_activations(kind):
    options = {"activation": K.relu, "activation_grad": K.relu_grad}
    if kind != "simple_rnn":
        options.update(recurrent_activation=K.tanh, recurrent_activation_grad=K.tanh_grad)
    layer, _ = recurrent(kind, bias=False, return_sequences=True, masked=True, **options)
    layer.ids = IDS
    check_layer(layer, rand(N, T, D, seed=8))


@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bidirectional_gradients(merge, return_sequences, masked, kind):
    """Both directions' weights; with return_sequences the masked steps output 0 in both."""
    options = {"return_sequences": return_sequences, "masked": masked, "zero_output_for_mask": return_sequences}
    forward, _ = recurrent(kind, seed=0, **options)
    backward, _ = recurrent(kind, seed=10, go_backwards=True, **options)
    layer = K.Bidirectional(forward, backward, merge, masked=masked)
    layer.ids = IDS
    check_layer(layer, rand(N, T, D, seed=9))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("value_dim", [3, 2])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_attention_gradients(bias, value_dim, masked, dropout):
    """All eight (or four) weights and the input (query, key and value at once); with dropout
    the same masks in every pass (the stream restarts)."""
    layer, _ = attention(bias=bias, value_dim=value_dim, dropout=dropout, rng=K.dropout_rng(5, None, 0),
                         masked=masked)
    layer.ids = IDS

    def reset():
        layer.rng = K.dropout_rng(5, None, 0)

    check_layer(layer, rand(N, T, D, seed=10), reset=reset)


def test_attention_dropout_only_while_training():
    layer, _ = attention(dtype=np.float32, dropout=0.5, rng=K.dropout_rng(1, None, 0))
    x = f32(N, T, D)
    assert np.array_equal(layer.forward(x, False), layer.forward(x, False))
    assert not np.allclose(layer.forward(x, True), layer.forward(x, False))


@pytest.mark.parametrize("kind", [*KINDS, "bidirectional", "attention"])
def test_float32_stays_float32(kind):
    """Outputs, weight gradients and input gradients keep the weights' float32."""
    options = {"return_sequences": True, "masked": True}
    if kind == "attention":
        layer, _ = attention(np.float32, dropout=0.2, rng=K.dropout_rng(1, None, 0), masked=True)
    elif kind == "bidirectional":
        layer = K.Bidirectional(recurrent("lstm", np.float32, **options)[0],
                                recurrent("lstm", np.float32, go_backwards=True, **options)[0], "ave", masked=True)
    else:
        layer, _ = recurrent(kind, np.float32, **options)
    layer.ids = IDS
    y = layer.forward(f32(N, T, D), True)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.grads)


def test_masked_steps_keep_the_state_and_repeat_the_output():
    """§4.3: leading pads output 0, a hole repeats the previous output, the last output of a
    right-padded sample is its last valid step's."""
    layer, _ = recurrent("lstm", return_sequences=True, masked=True)
    layer.ids = IDS
    out = layer.forward(rand(N, T, D, seed=3))
    np.testing.assert_array_equal(out[0, 4], out[0, 3])
    np.testing.assert_array_equal(out[0, 5], out[0, 3])
    np.testing.assert_array_equal(out[1, :2], 0)
    np.testing.assert_array_equal(out[2, 1], out[2, 0])
    layer.return_sequences = False
    np.testing.assert_array_equal(layer.forward(rand(N, T, D, seed=3)), out[:, -1])


# ---------------------------------------------------------------------------------------
# Forward values against Keras's layers, float32


@pytest.mark.keras
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_recurrent_forward_matches_keras(kind, masked):
    """Right and left padding, holes, and a sample with no step left (its output is 0)."""
    keras, _ = keras_modules()
    x = f32(N + 1, T, D, seed=2)
    for return_sequences in (False, True):
        for go_backwards in (False, True):
            ours, weights = recurrent(kind, np.float32, return_sequences=return_sequences, go_backwards=go_backwards,
                                      masked=masked)
            ours.ids = WITH_EMPTY
            theirs = keras_recurrent(keras, kind, return_sequences=return_sequences, go_backwards=go_backwards)
            theirs.build((None, T, D))
            theirs.set_weights(weights)
            expected = theirs(x, mask=WITH_EMPTY != 0 if masked else None).numpy()
            got = ours.forward(x)
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6,
                                       err_msg=str((kind, return_sequences, go_backwards)))


@pytest.mark.keras
@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_bidirectional_forward_matches_keras(merge, masked):
    keras, _ = keras_modules()
    x = f32(N + 1, T, D, seed=4)
    for kind in KINDS:
        for return_sequences in (False, True):
            options = {"return_sequences": return_sequences, "masked": masked,
                       "zero_output_for_mask": return_sequences}
            forward, wf = recurrent(kind, np.float32, seed=0, **options)
            backward, wb = recurrent(kind, np.float32, seed=10, go_backwards=True, **options)
            ours = K.Bidirectional(forward, backward, merge, masked=masked)
            ours.ids = WITH_EMPTY
            theirs = keras.layers.Bidirectional(keras_recurrent(keras, kind, return_sequences=return_sequences),
                                                merge_mode=merge)
            theirs.build((None, T, D))
            theirs.set_weights(wf + wb)
            expected = theirs(x, mask=WITH_EMPTY != 0 if masked else None).numpy()
            np.testing.assert_allclose(ours.forward(x), expected, rtol=1e-5, atol=1e-6,
                                       err_msg=str((kind, return_sequences)))


@pytest.mark.keras
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("value_dim", [None, 2])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_attention_forward_matches_keras(bias, value_dim, masked, dropout):
    """On an embedding's output, so that Keras takes the query's and the value's masks from it
    (MultiHeadAttention.call reads the query's mask off the tensor); padded query rows
    included. In inference: without dropout Keras takes ops.dot_product_attention (a padded
    query attends evenly over every step, pads too), with dropout its einsum path (the query
    scaled first, and the masked Softmax zeroes a padded query's probabilities)."""
    keras, _ = keras_modules()
    table = f32(10, D, seed=5)
    x = table[IDS]
    ours, weights = attention(np.float32, heads=2, key_dim=3, value_dim=value_dim or 3, bias=bias, masked=masked,
                              dropout=dropout)
    ours.ids = IDS
    ids = keras.Input((T,), dtype="int32")
    embedded = keras.layers.Embedding(10, D, mask_zero=masked)(ids)
    mha = keras.layers.MultiHeadAttention(2, 3, value_dim=value_dim, use_bias=bias, dropout=dropout)
    theirs = keras.Model(ids, mha(embedded, embedded))
    theirs.set_weights([table, *weights])
    np.testing.assert_allclose(ours.forward(x), theirs(IDS).numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Whole models against keras.Model: every row, every gradient, steps of fit

LSTM_TEXT = """input 12 int
embedding 20 4 mask_zero
lstm 5
dense 2 softmax
"""

MODELS = {
    "lstm": LSTM_TEXT,
    "stacked": """input 10 int
embedding 30 6 mask_zero
lstm 5 return_sequences go_backwards l2=0.01
gru 4 return_sequences reset_after=false
simple_rnn 3 relu l1=0.001
dense 2 softmax
""",
    "bidirectional": """input 9 int
embedding 25 5 mask_zero
bidirectional gru 4 return_sequences merge=mul l2=0.02
bidirectional lstm 3 merge=concat
dense 2 softmax
""",
    "bidirectional-ave": """input 9 int
embedding 25 5 mask_zero
bidirectional simple_rnn 4 return_sequences merge=ave
bidirectional gru 3 reset_after=false merge=sum
dense 2 softmax
""",
    "unmasked": """input 7x3
lstm 6 return_sequences
gru 4 go_backwards
dense 2 softmax
""",
    "transformer": transformer("input 10 int\nembedding 40 8 mask_zero", "encoder 2 4 16 8"),
    "attention-nobias": """model attn
input 8 int
e = embedding 30 6
a = attention heads=3 key_dim=2 value_dim=4 nobias
globalmaxpool1d
dense 2 softmax
""",
}


def keras_layer(keras, layer, name):
    """The Keras layer of one spec layer, by hand from its options."""
    L = keras.layers

    def reg(r):
        return keras.regularizers.L1L2(r.l1, r.l2) if r else None

    kind = layer.kind
    if kind in ("lstm", "gru", "simple_rnn"):
        cls = {"lstm": L.LSTM, "gru": L.GRU, "simple_rnn": L.SimpleRNN}[kind]
        options = {"return_sequences": layer.return_sequences, "go_backwards": layer.go_backwards,
                   "activation": layer.activation, "use_bias": layer.use_bias,
                   "kernel_regularizer": reg(layer.kernel_regularizer)}
        if kind != "simple_rnn":
            options["recurrent_activation"] = layer.recurrent_activation
        if kind == "gru":
            options["reset_after"] = layer.reset_after
        return cls(layer.units, name=name, **options)
    if kind == "bidirectional":
        return L.Bidirectional(keras_layer(keras, layer.layer, None), merge_mode=layer.merge_mode, name=name)
    if kind == "attention":
        return L.MultiHeadAttention(layer.num_heads, layer.key_dim, value_dim=layer.value_dim,
                                    dropout=layer.dropout, use_bias=layer.use_bias, name=name)
    make = {
        "embedding": lambda c: L.Embedding(c.input_dim, c.output_dim, mask_zero=c.mask_zero, name=name),
        "dense": lambda c: L.Dense(c.units, activation=c.activation, name=name),
        "layernorm": lambda c: L.LayerNormalization(epsilon=c.epsilon, name=name),
        "add": lambda c: L.Add(name=name),
        "globalavgpool1d": lambda c: L.GlobalAveragePooling1D(name=name),
        "globalmaxpool1d": lambda c: L.GlobalMaxPooling1D(name=name),
    }
    return make[kind](layer)


def keras_model(keras, report, weights):
    """The report's rows as a Keras functional model (every row an output), each layer with
    its share of `weights`."""
    ints = report.layers[0].kind == "embedding"
    x = keras.Input(report.input_shape[1:], dtype="int32" if ints else "float32")
    values, layers = [], []
    for row in report.layers:
        layer = keras_layer(keras, row.layer, row.name)
        reads = [values[s] if s >= 0 else x for s in row.sources]
        if row.kind == "attention":
            values.append(layer(reads[0], reads[0]))
        else:
            values.append(layer(reads if row.layer.merges else reads[0]))
        layers.append(layer)
    position = 0
    for row, layer in zip(report.layers, layers):
        if row.weights:
            layer.set_weights(weights[position:position + len(row.weights)])
            position += len(row.weights)
    return keras.Model(x, values)


def engine_for(text, dtype=np.float32, seed=3, lr=0.1):
    text += "loss sparse_categorical_crossentropy\noptimizer sgd\n"
    spec = ms.parse(text)
    report = ms.check(spec)
    engine = NumpyEngine(spec, report, seed=seed, dtype=dtype)
    loss = "sparse_categorical_crossentropy"
    engine.set_training(TrainConfig("sgd", {"learning_rate": lr}, LossConfig(loss, loss_from_logits(spec, loss)),
                                    ()))
    engine.get_weights()
    return spec, report, engine


def samples(spec, n, rng):
    if spec.input_dtype == "int32":
        return synthetic_ids(spec, n, rng)
    return rng.standard_normal((n, *spec.input_shape)).astype(np.float32)


@pytest.mark.keras
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", list(MODELS))
def test_every_row_and_every_gradient_match_a_keras_model(name):
    """Each row's output, the loss with its penalties and each weight's gradient, on ids with
    zeros among them (the mask), against the same model in Keras, from weights moved off
    their initial values."""
    keras, tf = keras_modules()
    keras.backend.clear_session()
    spec, report, engine = engine_for(MODELS[name])
    rng = np.random.default_rng(0)
    weights = [w + rng.uniform(-0.3, 0.3, w.shape).astype(np.float32) for w in engine.get_weights()]
    engine.set_weights(weights)
    model = keras_model(keras, report, weights)
    x = samples(spec, 8, rng)
    for ours, theirs, row in zip(engine.layer_outputs(x), model(x), report.layers):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=2e-5, atol=2e-6, err_msg=row.name)
    y = rng.integers(0, 2, 8)
    with tf.GradientTape() as tape:
        out = model(x, training=True)[-1]
        expected_loss = keras.losses.SparseCategoricalCrossentropy()(y, out) + sum(model.losses)
    expected = tape.gradient(expected_loss, model.trainable_weights)
    data = engine.prepare(x, y)
    loss, _ = engine.gradients(data.x, data.y)
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-5)
    assert len(engine.net.grads) == len(expected)
    for ours, theirs, variable in zip(engine.net.grads, expected, model.trainable_weights):
        theirs = tf.convert_to_tensor(theirs).numpy()  # the embedding's IndexedSlices made dense
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=2e-6, err_msg=variable.path)


@pytest.mark.parametrize("name", list(MODELS))
def test_whole_network_gradients_in_float64(name):
    """The whole network's gradients, penalties included, against finite differences, from
    weights moved off their initial values (zero biases would put relu's kink exactly at a
    step that reads zeros)."""
    spec, report, engine = engine_for(MODELS[name], dtype=np.float64)
    rng = np.random.default_rng(1)
    engine.set_weights([w + rng.uniform(-0.3, 0.3, w.shape) for w in engine.get_weights()])
    data = engine.prepare(samples(spec, 4, rng), rng.integers(0, 2, 4))
    engine.gradients(data.x, data.y)
    analytic = [g.copy() for g in engine.net.grads]
    f = lambda: float(engine.net.evaluate(data.x, data.y, training=True)[0])  # noqa: E731
    for a, p in zip(analytic, engine.net.params):
        np.testing.assert_allclose(a, numeric_gradient(f, p), rtol=1e-5, atol=1e-7)


@pytest.mark.keras
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["lstm", "stacked", "bidirectional", "transformer"])
def test_steps_of_fit_match_keras(name):
    """Three epochs of SGD on 24 samples in batches of 8, unshuffled, from the same initial
    weights: the epoch losses and the final weights."""
    keras, _ = keras_modules()
    keras.backend.clear_session()
    text = MODELS[name] + "optimizer sgd lr=0.5\nloss sparse_categorical_crossentropy\n"
    model = ms.build(text, backend="numpy", seed=6)
    rng = np.random.default_rng(7)
    x, y = samples(model.spec, 24, rng), rng.integers(0, 2, 24)
    reference = keras_model(keras, model.report, model.get_weights())
    reference = keras.Model(reference.inputs, reference.outputs[-1])
    reference.compile(keras.optimizers.SGD(learning_rate=0.5), "sparse_categorical_crossentropy")
    ours = model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0).history["loss"]
    theirs = reference.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0).history["loss"]
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)


# ---------------------------------------------------------------------------------------
# The emitted program


ATTENTION_DROPOUT = """model drop
input 8 int
embedding 30 6 mask_zero
attention heads=2 key_dim=3 dropout=0.3
globalavgpool1d
dense 2 softmax
"""


@pytest.mark.parametrize("name", ["lstm", "bidirectional", "transformer", "attention-dropout"])
def test_emitted_program_computes_what_the_engine_computes(name):
    """Predictions, the loss and every gradient, bit for bit (the attention's dropout masks
    drawn from the same stream)."""
    spec, report, engine = engine_for(MODELS.get(name, ATTENTION_DROPOUT))
    source = emit(spec, report)
    namespace: dict = {}
    exec(compile(source, "<emitted>", "exec"), namespace)  # noqa: S102 - our own generated code
    weights = engine.get_weights()
    x = samples(spec, 10, np.random.default_rng(4))
    net = namespace["network"]([w.copy() for w in weights], 3)  # the engine's seed: the same dropout masks
    np.testing.assert_array_equal(namespace["predict"](net.layers, x, batch_size=4),
                                  engine.predict(engine.prepare(x, None), 4))
    data = engine.prepare(x, np.random.default_rng(5).integers(0, 2, 10))
    assert net.gradients(data.x, data.y)[0] == engine.gradients(data.x, data.y)[0]
    for theirs, ours in zip(net.grads, engine.net.grads):
        np.testing.assert_array_equal(theirs, ours)
    for theirs, ours in zip(namespace["initial_weights"](3), weights, strict=True):
        np.testing.assert_array_equal(theirs, ours)
