"""Sequences on Keras (issue 14): token ids, embeddings, 1-D convolutions and pooling, layer
normalization, reshape.

The checker against real Keras 3: the issue's three examples, each written here by hand as a
Keras user would (a Sequential model and a functional one), must check to Keras's names,
output shapes, parameter counts and `model.summary()` text character for character; every
option's output shape is the one Keras computes when it runs the layer; where Keras refuses a
layer, so does the checker. The Keras backend builds and emits those models with an int32
input, trains an embedding as `model.fit` does (its gradient is sparse) and averages only the
unmasked steps. `modelspec import` brings Keras models with these layers back to specs that
check to Keras's own numbers and load its weights.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import modelspec as ms
from modelspec import backends
from modelspec.cli import main
from modelspec.diagnostics import SpecError
from modelspec.keras_import import convert

pytest.importorskip("keras")
import keras  # noqa: E402

import keras_reference as kr  # noqa: E402

pytestmark = [pytest.mark.keras,
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # Keras's own
              pytest.mark.filterwarnings("ignore:.*does not support masking:UserWarning")]  # Keras's, as §3.7 says

L = keras.layers

# The examples, each also as a graph of the same kinds, and the same models written
# by hand with Keras's API (a Sequential model; the functional API for a graph).
EXAMPLES = {
    "bag_of_embeddings": "input 20 int; embedding 1000 16; globalavgpool1d; dense 1 sigmoid",
    "text_cnn": "input 40 int; embedding 500 8; conv1d 16 5 relu; maxpool1d 2; conv1d 16 3 padding=same relu; "
                "globalmaxpool1d; dense 3 softmax",
    "reshaped_pixels": "input 784; reshape 28x28x1; conv2d 4 3x3 relu; globalmaxpool2d; dense 10 softmax",
}
GRAPHS = {
    "bag_of_embeddings": "input 20 int; e = embedding 1000 16; a = globalavgpool1d; "
                         "b = globalmaxpool1d from=e; concat a b; dense 1 sigmoid",
    "text_cnn": "input 40 int; e = embedding 500 8; a = conv1d 16 5 padding=same relu; "
                "b = conv1d 16 3 padding=causal dilation=2 relu from=e; add a b; maxpool1d 2; "
                "conv1d 16 3 padding=same relu; layernorm; globalmaxpool1d; dense 3 softmax",
    "reshaped_pixels": "input 784; r = reshape 28x28x1; conv2d 4 3x3 relu; a = globalmaxpool2d; "
                       "b = globalavgpool2d from=r; concat a b; dense 10 softmax",
}


def sequential_by_hand(case: str) -> keras.Model:
    if case == "bag_of_embeddings":
        layers = [keras.Input((20,), dtype="int32"), L.Embedding(1000, 16), L.GlobalAveragePooling1D(),
                  L.Dense(1, activation="sigmoid")]
    elif case == "text_cnn":
        layers = [keras.Input((40,), dtype="int32"), L.Embedding(500, 8), L.Conv1D(16, 5, activation="relu"),
                  L.MaxPooling1D(2), L.Conv1D(16, 3, padding="same", activation="relu"), L.GlobalMaxPooling1D(),
                  L.Dense(3, activation="softmax")]
    else:
        layers = [keras.Input((784,)), L.Reshape((28, 28, 1)), L.Conv2D(4, (3, 3), activation="relu"),
                  L.GlobalMaxPooling2D(), L.Dense(10, activation="softmax")]
    return keras.Sequential(layers, name="sequential")


def functional_by_hand(case: str) -> keras.Model:
    if case == "bag_of_embeddings":
        inputs = keras.Input((20,), dtype="int32")
        e = L.Embedding(1000, 16)(inputs)
        x = L.Concatenate()([L.GlobalAveragePooling1D()(e), L.GlobalMaxPooling1D()(e)])
        outputs = L.Dense(1, activation="sigmoid")(x)
    elif case == "text_cnn":
        inputs = keras.Input((40,), dtype="int32")
        e = L.Embedding(500, 8)(inputs)
        a = L.Conv1D(16, 5, padding="same", activation="relu")(e)
        b = L.Conv1D(16, 3, padding="causal", dilation_rate=2, activation="relu")(e)
        x = L.MaxPooling1D(2)(L.Add()([a, b]))
        x = L.LayerNormalization()(L.Conv1D(16, 3, padding="same", activation="relu")(x))
        outputs = L.Dense(3, activation="softmax")(L.GlobalMaxPooling1D()(x))
    else:
        inputs = keras.Input((784,))
        r = L.Reshape((28, 28, 1))(inputs)
        a = L.GlobalMaxPooling2D()(L.Conv2D(4, (3, 3), activation="relu")(r))
        x = L.Concatenate()([a, L.GlobalAveragePooling2D()(r)])
        outputs = L.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="sequential")


def hand_model(case: str, functional: bool) -> keras.Model:
    keras.backend.clear_session(free_memory=False)  # Keras's names restart
    return functional_by_hand(case) if functional else sequential_by_hand(case)


def example_spec(case: str, functional: bool) -> ms.ir.Spec:
    return ms.parse(GRAPHS[case] if functional else EXAMPLES[case])


def rows(model: keras.Model) -> list[tuple]:
    return [(layer.name, type(layer).__name__, tuple(layer.output.shape), layer.count_params())
            for layer in model.layers if not isinstance(layer, L.InputLayer)]


@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
@pytest.mark.parametrize("case", EXAMPLES)
def test_the_examples_check_exactly_as_keras(case, functional, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    spec = example_spec(case, functional)
    report, hand = ms.check(spec), hand_model(case, functional)
    assert report.functional is functional
    assert [(r.name, r.keras_class, r.output_shape, r.params) for r in report.layers] == rows(hand)
    assert [(w.path, w.shape, w.trainable) for w in report.weights] == [
        (w.path, tuple(w.shape), w.trainable) for w in hand.weights]
    assert report.total_params == hand.count_params()
    assert report.input_shape == tuple(hand.inputs[0].shape)
    for width in (76, 88, 100, 120):
        assert report.summary(line_length=width) == kr.summary(hand, width)


# A mask consumed inside a graph: Keras's functional summary lists the mask's own operations
# as rows (`not_equal (NotEqual)` reading the input, `logical_or (LogicalOr)` where a merge
# joins two masks) and the consumer as "Connected to" the mask too; model.layers has none of them.
MASKED_GRAPH = ("input 6 int; e = embedding 10 3 mask_zero; a = dense 3 from=e; b = dense 3 from=e; add a b; "
                "globalavgpool1d; dense 1")


def masked_graph_by_hand() -> keras.Model:
    keras.backend.clear_session(free_memory=False)
    inputs = keras.Input((6,), dtype="int32")
    e = L.Embedding(10, 3, mask_zero=True)(inputs)
    x = L.GlobalAveragePooling1D()(L.Add()([L.Dense(3)(e), L.Dense(3)(e)]))
    return keras.Model(inputs, L.Dense(1)(x), name="sequential")


def test_a_masked_graph_has_keras_layers():
    report, hand = ms.check(ms.parse(MASKED_GRAPH)), masked_graph_by_hand()
    assert [(r.name, r.keras_class, r.output_shape, r.params) for r in report.layers] == rows(hand)
    assert [w.path for w in report.weights] == [w.path for w in hand.weights]


def test_a_masked_graphs_summary_is_keras_own(monkeypatch):
    """Keras lists the mask's operations (NotEqual, LogicalOr) among a functional model's rows."""
    monkeypatch.setenv("COLUMNS", "200")
    report, hand = ms.check(ms.parse(MASKED_GRAPH)), masked_graph_by_hand()
    assert report.summary(line_length=100) == kr.summary(hand, 100)
    assert "not_equal (NotEqual)" in report.summary(line_length=100)


MASKED_GRAPHS = [
    # a residual add of masked values, then the masked mean
    "input 10 int; e = embedding 50 4 mask_zero; dense 4; add e; globalavgpool1d; dense 2",
    # two masked embeddings merged three ways: two logical_or per merge of three
    "input 8 int; a = embedding 20 3 mask_zero; b = embedding 20 3 mask_zero from=in; c = dense 3 from=a; "
    "average a b c; layernorm; globalavgpool1d; dense 2",
    # a masked embedding whose mask is dropped (conv1d) beside one whose mask is consumed: the
    # first's not_equal is made but never listed, and takes the first name
    "input 8 int; a = embedding 20 3 mask_zero; conv1d 3 3 padding=same; g = globalmaxpool1d; "
    "e = embedding 20 3 mask_zero from=in; globalavgpool1d; add g; dense 2",
    # the masked mean feeds two branches; a merge of a masked and an unmasked tensor carries no mask
    "input 8 int; e = embedding 20 3 mask_zero; p = globalavgpool1d; f = embedding 20 3 from=in; "
    "average e f; globalavgpool1d; add p; dense 2",
]


@pytest.mark.parametrize("text", MASKED_GRAPHS)
def test_masked_graphs_list_keras_mask_operations(text, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    keras.backend.clear_session(free_memory=False)
    spec = ms.parse(text)
    assert ms.check(spec).summary(line_length=108) == kr.summary(kr.model(spec), 108)


def test_the_examples_summaries_hold_keras_numbers():
    """A few numbers of Keras's tables written out, should the two sides ever agree wrongly."""
    assert "│ embedding (Embedding)           │ (None, 20, 16)         │        16,000 │" in (
        ms.check(ms.parse(EXAMPLES["bag_of_embeddings"])).summary(line_length=76))
    text_cnn = ms.check(ms.parse(EXAMPLES["text_cnn"]))
    assert [r.output_shape for r in text_cnn.layers] == [(None, 40, 8), (None, 36, 16), (None, 18, 16),
                                                         (None, 18, 16), (None, 16), (None, 3)]
    # 500*8 + (5*8*16 + 16) + (3*16*16 + 16) + (16*3 + 3)
    assert text_cnn.total_params == 4000 + 656 + 784 + 51 == 5491
    assert ms.check(ms.parse(EXAMPLES["reshaped_pixels"])).total_params == 40 + 50


@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
@pytest.mark.parametrize("case", EXAMPLES)
def test_the_backend_builds_the_hand_written_model(case, functional, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    spec = example_spec(case, functional)
    model = ms.build(spec, backend="keras", seed=1)
    hand = hand_model(case, functional)
    assert kr.summary(model.native, 100) == kr.summary(hand, 100)
    want = "int32" if spec.input_dtype == "int32" else "float32"
    assert keras.backend.standardize_dtype(model.native.inputs[0].dtype) == want
    hand.set_weights(model.get_weights())
    x = (np.random.default_rng(0).integers(0, spec.id_limit, (5, *spec.input_shape)) if spec.id_limit
         else np.random.default_rng(0).normal(size=(5, *spec.input_shape)))
    np.testing.assert_allclose(model.predict(x), hand.predict(x, verbose=0), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------
# Every option's output shape: what Keras's layer gives when it runs


# (input of the spec, the layer): each shape checked against the tensor Keras's layer returns
OPTIONS = [
    ("input 11x3", "conv1d 4 3"),
    ("input 11x3", "conv1d 4 4 padding=same"),
    ("input 11x3", "conv1d 4 4 stride=2 padding=same"),
    ("input 11x3", "conv1d 4 3 stride=3"),
    ("input 11x3", "conv1d 4 3 padding=causal"),
    ("input 11x3", "conv1d 4 3 padding=causal dilation=2"),
    ("input 11x3", "conv1d 4 2 padding=causal stride=2"),
    ("input 11x3", "conv1d 4 3 dilation=3"),
    ("input 11x3", "conv1d 4 4 dilation=2 padding=same nobias"),
    ("input 11x3", "maxpool1d"),
    ("input 11x3", "maxpool1d 3 stride=1"),
    ("input 11x3", "maxpool1d 2 padding=same"),
    ("input 11x3", "maxpool1d 4 stride=3 padding=same"),
    ("input 11x3", "avgpool1d 3"),
    ("input 11x3", "avgpool1d 2 stride=1 padding=same"),
    ("input 11x3", "avgpool1d 3 stride=2 padding=same"),
    ("input 11x3", "globalavgpool1d"),
    ("input 11x3", "globalmaxpool1d"),
    ("input 11x3", "layernorm"),
    ("input 11x3", "layernorm epsilon=0.1"),
    ("input 4x6x2", "layernorm eps=1e-5"),
    ("input 12x2", "reshape 4x6"),
    ("input 12x2", "reshape -1x3"),
    ("input 12x2", "reshape 2x-1x3"),
    ("input 12x2", "reshape 24"),
    ("input 7 int", "embedding 30 5"),
    ("input 7 int", "embedding 30 5 mask_zero\nglobalavgpool1d"),  # a masked output is refused
    ("input 3x4 int", "embedding 9 2 l2=0.01"),
]


@pytest.mark.parametrize("inputs, layer", OPTIONS, ids=[f"{i}; {l}" for i, l in OPTIONS])
def test_an_options_shape_and_parameters_are_keras_own(inputs, layer):
    spec = ms.parse(f"{inputs}\n{layer}")
    row = ms.check(spec).layers[0]
    built = kr.layer(spec.layers[0])
    dtype = "int32" if spec.input_dtype == "int32" else "float32"
    x = keras.ops.zeros((2, *spec.input_shape), dtype=dtype)
    out = built(x)
    assert row.output_shape == (None, *out.shape[1:])
    assert row.output_shape == tuple(built.compute_output_shape((None, *spec.input_shape)))
    assert row.params == built.count_params()
    assert [(w.path.rsplit("/", 1)[1], w.shape) for w in row.weights] == [
        (w.name, tuple(w.shape)) for w in built.weights]


@pytest.mark.parametrize("text, keras_build, ours", [
    ("input 20\nreshape 3x7", lambda: L.Reshape((3, 7))(keras.Input((20,))),
     "its input (None, 20) has 20 values, but the target shape 3x7 has 21"),
    ("input 20\nreshape 3x-1", lambda: L.Reshape((3, -1))(keras.Input((20,))), "20 is not a multiple of 3"),
    ("input 9x2\nconv1d 4 3 stride=2 dilation=2", lambda: L.Conv1D(4, 3, strides=2, dilation_rate=2),
     "a stride above 1 cannot go with a dilation above 1"),
    ("input 4\nconv1d 4 3", lambda: L.Conv1D(4, 3)(keras.Input((4,))), "conv1d"),
    ("input 4x2\nconv1d 4 5", lambda: L.Conv1D(4, 5)(keras.Input((4, 2))), "conv1d"),
    ("input 3x2\nmaxpool1d 4", lambda: L.MaxPooling1D(4)(keras.Input((3, 2))), "maxpool1d"),
    ("input 6\nglobalavgpool1d", lambda: L.GlobalAveragePooling1D()(keras.Input((6,))), "globalavgpool1d"),
])
def test_where_keras_refuses_a_layer_so_does_the_checker(text, keras_build, ours):
    keras.backend.clear_session(free_memory=False)
    with pytest.raises(Exception):  # noqa: B017 (Keras raises ValueError or TF's own errors)
        keras_build()
    with pytest.raises(SpecError, match=ours.replace("(", r"\(").replace(")", r"\)")):
        ms.check(ms.parse(text))


# ---------------------------------------------------------------------------------------
# The backend: int32 ids, the mask, training as model.fit


MASKED = "input 6 int\nembedding 12 3 mask_zero\nlayernorm\ndense 2 tanh\nglobalavgpool1d\ndense 2 softmax"


def test_pooling_averages_the_unmasked_steps_only():
    """Keras's GlobalAveragePooling1D with a mask: Σ mask·h / Σ mask (a row of zeros: NaN, 0/0),
    computed here in float64 from the weights (layernorm and dense keep the mask, §3.7)."""
    spec = ms.parse(MASKED)
    model = ms.build(spec, backend="keras", seed=4)
    x = np.array([[3, 5, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6], [0, 7, 0, 11, 0, 0], [0, 0, 0, 0, 0, 0]], np.int32)
    emb, gamma, beta, k1, b1, k2, b2 = (w.astype(np.float64) for w in model.get_weights())
    h = emb[x]
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-3) * gamma + beta
    h = np.tanh(h @ k1 + b1)
    mask = (x != 0)[..., None]
    with np.errstate(invalid="ignore"):
        pooled = (h * mask).sum(1) / mask.sum(1)
    outputs = model.engine.layer_outputs(x)
    np.testing.assert_allclose(outputs[3][:3], pooled[:3], rtol=1e-5, atol=1e-6)
    assert np.isnan(outputs[3][3]).all()
    assert not np.allclose(outputs[3][0], h[0].mean(0), atol=1e-3)  # the plain mean is another number
    logits = pooled[:3] @ k2 + b2
    want = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(model.predict(x[:3]), want, rtol=1e-5, atol=1e-6)


def test_ids_reach_the_model_as_int32():
    spec = ms.parse("input 5 int\nembedding 16777218 1 zeros")
    engine = ms.build(spec, backend="keras").engine
    for x in (np.arange(5, dtype=np.int64)[None], np.arange(5, dtype=np.float32)[None]):
        assert keras.backend.standardize_dtype(engine.prepare(x, None).x.dtype) == "int32"
    # 2**24 + 1 is no float32: an id through a float would read row 2**24
    w = np.zeros((2**24 + 2, 1), np.float32)
    w[2**24 + 1] = 7.0
    engine.set_weights([w])
    ids = np.array([[2**24 + 1, 0, 1, 2, 3]], np.int32)
    assert engine.layer_outputs(ids)[0][0, 0, 0] == 7.0
    assert engine.predict(engine.prepare(ids, None), 1)[0, 0, 0] == 7.0
    model = ms.build(spec, backend="keras")
    model.set_weights([w])
    assert model.predict(ids.astype(np.int64))[0, 0, 0] == 7.0  # through the Model's own checks


TRAINED = {
    "text_cnn": EXAMPLES["text_cnn"] + "; optimizer adam lr=0.01; loss sparse_categorical_crossentropy; "
                                       "metrics accuracy",
    "masked_l2": "input 6 int; embedding 12 3 mask_zero l1=0.01 l2=0.01; layernorm; dense 2 tanh; "
                 "globalavgpool1d; dense 2 softmax; optimizer rmsprop lr=0.01; loss sparse_categorical_crossentropy",
}


@pytest.mark.parametrize("case", TRAINED)
def test_training_matches_keras_fit(case):
    """The engine's loop (a sparse gradient for the embedding, its penalties) against
    model.fit of the hand-made model from the same weights."""
    spec = ms.parse(TRAINED[case])
    model = ms.build(spec, backend="keras", seed=3)
    rng = np.random.default_rng(0)
    x = rng.integers(0, spec.id_limit, (40, *spec.input_shape)).astype(np.int32)
    x[:5, 3:] = 0
    y = rng.integers(0, model.report.output_shape[-1], 40)
    ref = kr.model(spec)
    initial = model.get_weights()
    ref.set_weights(initial)
    opt = spec.optimizer
    ref.compile(optimizer=getattr(keras.optimizers, {"adam": "Adam", "rmsprop": "RMSprop"}[opt.name])(
        **{k: v for k, v in opt.config().items() if v is not None}), loss=spec.loss.name, metrics=list(spec.metrics))
    got = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    want = ref.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=2e-6, atol=1e-7, err_msg=key)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(model.get_weights()[0], initial[0])  # the embedding trained


def test_adam_updates_an_embedding_from_its_sparse_gradient():
    """An id read twice in a batch: Keras's Adam (on TensorFlow, as fit runs it) adds each
    occurrence's gradient to the first moment but each occurrence's square to the second,
    v = (1-b2)·Σ g_i², not (1-b2)·(Σ g_i)² (keras/src/backend/tensorflow/optimizer.py)."""
    spec = ms.parse("input 2 int; embedding 3 1 zeros; flatten; dense 1 nobias ones; optimizer adam lr=0.1; loss mse")
    model = ms.build(spec, backend="keras")
    model.fit(np.array([[1, 1]]), np.array([[1.0]]), batch_size=1, epochs=1, shuffle=False, verbose=0)
    g = -2.0 * (1.0 - 0.0)  # d(1 - p)²/dp at p = 0, once per step of the sequence (kernel of ones)
    m, v = 0.1 * (g + g), 0.001 * (g * g + g * g)
    alpha = 0.1 * math.sqrt(1 - 0.999) / (1 - 0.9)
    np.testing.assert_allclose(model.get_weights()[0][:, 0], [0.0, -alpha * m / (math.sqrt(v) + 1e-7), 0.0],
                               rtol=2e-5)  # float32's 1 - 0.999 is 0.00099998713; (Σ g)² would give 0.1
    # a penalty on the embedding makes its gradient dense (the penalty's is): then (Σ g)², as elsewhere
    spec = ms.parse("input 2 int; embedding 3 1 zeros l2=0.001; flatten; dense 1 nobias ones; optimizer adam lr=0.1; "
                    "loss mse")
    model = ms.build(spec, backend="keras")
    model.fit(np.array([[1, 1]]), np.array([[1.0]]), batch_size=1, epochs=1, shuffle=False, verbose=0)
    v = 0.001 * (g + g) ** 2
    np.testing.assert_allclose(model.get_weights()[0][1, 0], -alpha * m / (math.sqrt(v) + 1e-7), rtol=2e-5)


# ---------------------------------------------------------------------------------------
# The emitted program

PROGRAM_CASES = {**{f"{case}": (case, False) for case in EXAMPLES},
                 "text_cnn_functional": ("text_cnn", True)}


@pytest.mark.parametrize("name", PROGRAM_CASES)
def test_the_program_builds_the_hand_written_model(name, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    case, functional = PROGRAM_CASES[name]
    spec = example_spec(case, functional)
    model = ms.build(spec, backend="keras", seed=2)
    code = backends.get("keras").emit(spec, model.report)
    assert "modelspec" not in code.split("import keras")[1]  # a program of keras only
    if spec.input_dtype == "int32":
        assert 'keras.Input(shape=(' in code and 'dtype="int32")' in code
    else:
        assert "dtype" not in code
    namespace: dict = {"__name__": "program"}
    keras.backend.clear_session(free_memory=False)
    exec(compile(code, f"{name}.py", "exec"), namespace)
    built = namespace["build_model"]()
    hand = hand_model(case, functional)
    assert kr.summary(built, 100) == kr.summary(hand, 100)
    assert keras.backend.standardize_dtype(built.inputs[0].dtype) == (
        "int32" if spec.input_dtype == "int32" else "float32")
    built.set_weights(model.get_weights())
    x = (np.random.default_rng(1).integers(0, spec.id_limit, (4, *spec.input_shape)) if spec.id_limit
         else np.random.default_rng(1).normal(size=(4, *spec.input_shape)).astype(np.float32))
    np.testing.assert_allclose(built.predict(x, verbose=0), model.predict(x), rtol=1e-6, atol=1e-7)


def test_the_program_writes_every_option():
    spec = ms.parse("input 30 int\nembedding 50 4 mask_zero he_uniform(seed=2) l2=0.001\n"
                    "conv1d 6 5 strides=2 padding=causal relu he_normal l1=0.001\n"
                    "conv1d filters=4 kernel_size=3 dilation_rate=2 padding=same nobias\n"
                    "maxpool1d pool_size=3 stride=1 padding=same\navgpool1d 2\nlayernorm eps=0.01\n"
                    "reshape (-1, 2)\nglobalmaxpool1d\n")
    code = backends.get("keras").emit(spec, ms.check(spec))
    for line in ['keras.Input(shape=(30,), dtype="int32"),',
                 "embeddings_initializer=keras.initializers.HeUniform(seed=2),",
                 "embeddings_regularizer=keras.regularizers.L2(0.001),", "mask_zero=True,",
                 "kernel_regularizer=keras.regularizers.L1(0.001),",
                 'layers.Conv1D(4, 3, padding="same", dilation_rate=2, use_bias=False),',
                 'layers.MaxPooling1D(3, strides=1, padding="same"),', "layers.AveragePooling1D(2),",
                 "layers.LayerNormalization(epsilon=0.01),", "layers.Reshape((-1, 2)),",
                 "layers.GlobalMaxPooling1D(),"]:
        assert line in code, line
    assert "strides=2," in code and 'padding="causal",' in code


# ---------------------------------------------------------------------------------------
# modelspec import: Keras models with these layers back to specs of Keras's own numbers


def every_option_by_hand() -> keras.Model:
    keras.backend.clear_session(free_memory=False)
    return keras.Sequential([
        keras.Input((30,), dtype="int32"),
        L.Embedding(50, 4, mask_zero=True, embeddings_initializer=keras.initializers.HeUniform(seed=2),
                    embeddings_regularizer=keras.regularizers.L2(0.001)),
        L.LayerNormalization(epsilon=0.01),
        L.Conv1D(6, 5, strides=2, padding="causal", activation="relu", kernel_regularizer=keras.regularizers.L1(1e-3)),
        L.Conv1D(4, 3, dilation_rate=2, padding="same", use_bias=False),
        L.MaxPooling1D(3, strides=1, padding="same"),
        L.AveragePooling1D(2),
        L.Reshape((-1, 2)),
        L.GlobalMaxPooling1D(),
        L.Dense(2, activation="softmax"),
    ], name="every_option")


IMPORTED = {
    "every_option": every_option_by_hand,
    **{f"{case}_sequential": (lambda case: lambda: hand_model(case, False))(case) for case in EXAMPLES},
    **{f"{case}_functional": (lambda case: lambda: hand_model(case, True))(case) for case in EXAMPLES},
}


@pytest.mark.parametrize("case", IMPORTED)
def test_a_keras_model_imports_to_a_spec_of_its_numbers(case, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    hand = IMPORTED[case]()
    imported = convert(json.loads(hand.to_json()))
    uses_ids = keras.backend.standardize_dtype(hand.inputs[0].dtype) == "int32"
    assert imported.spec.input_dtype == ("int32" if uses_ids else "float32")
    assert [(r.name, r.keras_class, r.output_shape, r.params) for r in imported.report.layers] == rows(hand)
    assert [(w.path, w.shape) for w in imported.report.weights] == [(w.path, tuple(w.shape)) for w in hand.weights]
    assert imported.report.summary(line_length=100) == kr.summary(hand, 100)
    # Keras's weights in the imported model give Keras's predictions
    rng = np.random.default_rng(5)
    hand.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in hand.get_weights()])
    model = ms.build(imported.spec, backend="keras")
    model.set_weights(hand.get_weights())
    spec = imported.spec
    x = (rng.integers(0, spec.id_limit, (4, *spec.input_shape)) if uses_ids
         else rng.normal(size=(4, *spec.input_shape)).astype(np.float32))
    np.testing.assert_allclose(model.predict(x), hand.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_every_option_comes_back_as_written():
    imported = convert(json.loads(every_option_by_hand().to_json()))
    assert imported.text == (
        "model every_option\ninput 30 int\nembedding 50 4 mask_zero he_uniform(seed=2) l2=0.001\n"
        "layernorm epsilon=0.01\nconv1d 6 5 stride=2 padding=causal relu l1=0.001\n"
        "conv1d 4 3 padding=same dilation=2 nobias\nmaxpool1d 3 stride=1 padding=same\navgpool1d 2\n"
        "reshape -1x2\nglobalmaxpool1d\ndense 2 softmax\n")


def test_a_saved_model_imports_on_the_command_line(tmp_path, capsys):
    hand = hand_model("text_cnn", False)
    hand.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hand.save(tmp_path / "m.keras")
    assert main(["import", str(tmp_path / "m.keras"), "-o", str(tmp_path / "m.ms")]) == 0
    text = (tmp_path / "m.ms").read_text()
    assert text.startswith("model sequential\ninput 40 int\nembedding 500 8\nconv1d 16 5 relu\nmaxpool1d 2\n")
    assert ms.check(ms.parse(tmp_path / "m.ms")).summary(line_length=90) == kr.summary(hand, 90)


def test_an_input_built_from_a_shape_is_read_as_ids():
    """A Sequential built with build((None, 20)) has a float32 input, which its Embedding casts
    to int32 (keras/src/layers/core/embedding.py): the spec's input is `int`, with a note."""
    keras.backend.clear_session(free_memory=False)
    hand = keras.Sequential([L.Embedding(100, 4), L.GlobalAveragePooling1D(), L.Dense(1)])
    hand.build((None, 20))
    assert hand.get_config()["layers"][0]["config"]["dtype"] == "float32"
    imported = convert(json.loads(hand.to_json()))
    assert imported.text.splitlines()[1] == "input 20 int"
    assert any("casts to int32" in note for note in imported.notes)
    assert imported.report.total_params == hand.count_params()


def config_of(*layers, dtype="float32", shape=(12, 4)) -> dict:
    keras.backend.clear_session(free_memory=False)
    return json.loads(keras.Sequential([keras.Input(shape, dtype=dtype), *layers]).to_json())


@pytest.mark.parametrize("build, message", [
    (lambda: config_of(L.LayerNormalization(axis=1)), "axis=1 cannot be expressed in a spec: layernorm normalizes "
                                                      "the last axis"),
    (lambda: config_of(L.LayerNormalization(axis=[1, 2])), "axis=[1, 2] cannot be expressed"),
    (lambda: config_of(L.LayerNormalization(center=False)), "center=False cannot be expressed"),
    (lambda: config_of(L.LayerNormalization(scale=False)), "scale=False cannot be expressed"),
    (lambda: config_of(L.LayerNormalization(gamma_initializer="zeros")), "gamma_initializer=zeros cannot be "
                                                                          "expressed in a spec (it must be ones)"),
    (lambda: config_of(L.LayerNormalization(beta_regularizer="l2")), "beta_regularizer"),
    (lambda: config_of(L.Conv1D(4, 3, groups=2)), "groups=2 cannot be expressed"),
    (lambda: config_of(L.Conv1D(4, 3, data_format="channels_first")), "data_format='channels_first'"),
    (lambda: config_of(L.Conv1D(4, 3, bias_regularizer="l2")), "bias_regularizer"),
    (lambda: config_of(L.MaxPooling1D(2, data_format="channels_first")), "data_format='channels_first'"),
    (lambda: config_of(L.GlobalAveragePooling1D(keepdims=True)), "keepdims=True cannot be expressed"),
    (lambda: config_of(L.GlobalMaxPooling1D(data_format="channels_first")), "data_format='channels_first'"),
    (lambda: config_of(L.Embedding(10, 2, embeddings_constraint="non_neg"), dtype="int32", shape=(5,)),
     "embeddings_constraint"),
    (lambda: config_of(L.Embedding(10, 2, activity_regularizer="l2"), dtype="int32", shape=(5,)),
     "activity_regularizer"),
    (lambda: config_of(L.Dense(2), dtype="bool"), "the model's input has dtype bool"),
    (lambda: config_of(L.Dense(2), dtype="int32"), "dense reads the model's integer input"),
])
def test_what_a_spec_cannot_hold_is_named(build, message, tmp_path, capsys):
    config = build()
    (tmp_path / "m.json").write_text(json.dumps(config))
    assert main(["import", str(tmp_path / "m.json")]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    if "integer input" not in message:  # the checker's own diagnostic takes a few lines
        assert err.count("\n") == 1


def test_a_tf_keras_2_config_imports():
    """tf.keras 2 saved 1-D sizes as ints or lists, an Embedding's input_length, a layer
    normalization's axis as its index ([2] for (None, T, C))."""
    hand = every_option_by_hand()
    config = json.loads(hand.to_json())
    layers = config["config"]["layers"]
    layers[1]["config"]["input_length"] = 30
    layers[2]["config"]["axis"] = [2]
    layers[3]["config"].update(kernel_size=5, strides=2, dilation_rate=1)
    layers[5]["config"].update(pool_size=3, strides=1)
    imported = convert(config)
    assert imported.text == convert(json.loads(hand.to_json())).text
    assert imported.report.total_params == hand.count_params()


@pytest.mark.parametrize("text", MASKED_GRAPHS)
def test_a_masked_graph_imports_without_its_mask_operations(text, monkeypatch):
    """A functional config lists the mask's operations (NotEqual, LogicalOr) as entries; the
    spec's mask_zero and merges remake them, so the import leaves them out and checks to
    Keras's own summary."""
    monkeypatch.setenv("COLUMNS", "200")
    keras.backend.clear_session(free_memory=False)
    model = kr.model(ms.parse(text))
    spec = convert(json.loads(model.to_json())).spec
    assert ms.check(spec).summary(line_length=108) == kr.summary(model, 108)
