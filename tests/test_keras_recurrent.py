"""Recurrent layers and attention on Keras (issue 15): lstm, gru, simple_rnn, bidirectional,
attention.

The checker against real Keras 3: the issue's four examples and its transformer encoder block,
each written here by hand as a Keras user would, check to Keras's names, output shapes,
parameters, weight paths and `model.summary()` text character for character; every option's
shape and weights are the ones Keras's layer makes when it runs; masked graphs list Keras's
mask operations. The initial weights modelspec draws (and every backend starts from) follow
Keras's rules, judged against values Keras's own initializers draw. The Keras backend builds
models that predict as the hand-written ones with the same weights, and emits programs that
build them; `modelspec import` brings such Keras models back to specs of Keras's own numbers,
and names what a spec cannot hold.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import modelspec as ms
from modelspec import backends
from modelspec.cli import main
from modelspec.diagnostics import SpecError
from modelspec.initializers import initial_weights
from modelspec.keras_import import UnsupportedError, convert
from modelspec.printer import layer_text

from corpus import TRANSFORMER

pytest.importorskip("keras")
import keras  # noqa: E402

import keras_reference as kr  # noqa: E402

pytestmark = [pytest.mark.keras,
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # Keras's own
              pytest.mark.filterwarnings("ignore:.*does not support masking:UserWarning")]

L = keras.layers


# The examples, and the same models written by hand with Keras's API
EXAMPLES = {
    "lstm": "input 30 int; embedding 2000 32; lstm 24; dense 1 sigmoid",
    "lstm_gru": "input 25 int; embedding 300 12; lstm 16 return_sequences; gru 8; dense 4 softmax",
    "bidirectional_gru": "input 15 int; embedding 100 8; bidirectional gru 6; dense 2 softmax",
    "simple_rnn": "input 30x4; simple_rnn 16; dense 1",
    "transformer": TRANSFORMER,
}


def by_hand(case: str) -> keras.Model:
    keras.backend.clear_session(free_memory=False)  # Keras's names restart
    if case == "lstm":
        layers = [keras.Input((30,), dtype="int32"), L.Embedding(2000, 32), L.LSTM(24),
                  L.Dense(1, activation="sigmoid")]
    elif case == "lstm_gru":
        layers = [keras.Input((25,), dtype="int32"), L.Embedding(300, 12), L.LSTM(16, return_sequences=True),
                  L.GRU(8), L.Dense(4, activation="softmax")]
    elif case == "bidirectional_gru":
        layers = [keras.Input((15,), dtype="int32"), L.Embedding(100, 8), L.Bidirectional(L.GRU(6)),
                  L.Dense(2, activation="softmax")]
    elif case == "simple_rnn":
        layers = [keras.Input((30, 4)), L.SimpleRNN(16), L.Dense(1)]
    else:
        return transformer_by_hand()
    return keras.Sequential(layers, name="sequential")


def transformer_by_hand(mask_zero: bool = False) -> keras.Model:
    inputs = keras.Input((16,), dtype="int32")
    x = L.Embedding(200, 32, mask_zero=mask_zero)(inputs)
    a = L.MultiHeadAttention(num_heads=4, key_dim=8)(x, x)
    a = L.Add()([a, x])
    h = L.LayerNormalization()(a)
    f = L.Dense(64, activation="relu")(h)
    f = L.Dense(32)(f)
    f = L.Add()([f, h])
    x = L.LayerNormalization()(f)
    x = L.GlobalAveragePooling1D()(x)
    outputs = L.Dense(2, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="transformer")


def rows(model: keras.Model) -> list[tuple]:
    return [(layer.name, type(layer).__name__, tuple(layer.output.shape), layer.count_params())
            for layer in model.layers if not isinstance(layer, L.InputLayer)]


def sample(spec: ms.ir.Spec, n: int, seed: int, pad: bool = False) -> np.ndarray:
    """Token ids (with some rows padded with 0, the mask's, when `pad`) or normal values."""
    rng = np.random.default_rng(seed)
    if not spec.id_limit:
        return rng.normal(size=(n, *spec.input_shape)).astype(np.float32)
    x = rng.integers(1, spec.id_limit, (n, *spec.input_shape)).astype(np.int32)
    if pad:
        steps = spec.input_shape[0]
        x[0, steps // 2:] = 0  # right-padded
        x[1, :steps // 3] = 0  # left-padded
        x[2, 1::3] = 0  # holes
        x[3] = 0  # nothing but padding
    return x


@pytest.mark.parametrize("case", EXAMPLES)
def test_the_examples_check_exactly_as_keras(case, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    report, hand = ms.check(ms.parse(EXAMPLES[case])), by_hand(case)
    assert report.functional is (case == "transformer")
    assert [(r.name, r.keras_class, r.output_shape, r.params) for r in report.layers] == rows(hand)
    assert [(w.path, w.shape, w.trainable) for w in report.weights] == [
        (w.path, tuple(w.shape), w.trainable) for w in hand.weights]
    assert report.total_params == hand.count_params()
    for width in (76, 88, 100, 120):
        assert report.summary(line_length=width) == kr.summary(hand, width)


def test_the_examples_hold_keras_numbers():
    """A few numbers written out, should both sides ever agree wrongly (SEMANTICS_NEXT §4.1, §5)."""
    params = {case: ms.check(ms.parse(text)).layers for case, text in EXAMPLES.items()}
    assert params["lstm"][1].params == 4 * 24 * (32 + 24 + 1)
    assert params["lstm_gru"][2].params == 3 * 8 * (16 + 8 + 2)
    assert params["bidirectional_gru"][1].params == 2 * 3 * 6 * (8 + 6 + 2)
    assert params["bidirectional_gru"][1].output_shape == (None, 12)
    assert params["simple_rnn"][0].params == 16 * (4 + 16 + 1)
    assert params["transformer"][1].params == 4 * 32 * 4 * 8 + 3 * 4 * 8 + 32  # 4DHK + 3HK + D
    assert [w.path for w in params["bidirectional_gru"][1].weights][::3] == [
        "sequential/bidirectional/forward_gru/gru_cell/kernel", "sequential/bidirectional/backward_gru/gru_cell/kernel"]


# ---------------------------------------------------------------------------------------
# Every option: shapes, parameters and weights as Keras's layer makes them when it runs

OPTIONS = [
    ("input 7x3", "lstm 4"),
    ("input 7x3", "lstm 4 return_sequences"),
    ("input 7x3", "lstm 4 go_backwards return_sequences"),
    ("input 7x3", "lstm 4 nobias"),
    ("input 7x3", "lstm 4 unit_forget_bias=false relu recurrent_activation=tanh"),
    ("input 7x3", "gru 4"),
    ("input 7x3", "gru 4 reset_after=false"),
    ("input 7x3", "gru 4 reset_after=false nobias"),
    ("input 7x3", "gru 4 nobias return_sequences"),
    ("input 7x3", "simple_rnn 4"),
    ("input 7x3", "simple_rnn 4 return_sequences go_backwards relu"),
    ("input 7x3", "simple_rnn 4 nobias"),
    ("input 7x3", "bidirectional lstm 3"),
    ("input 7x3", "bidirectional lstm 3 return_sequences"),
    ("input 7x3", "bidirectional gru 3 merge=sum return_sequences"),
    ("input 7x3", "bidirectional gru 3 reset_after=false merge=mul"),
    ("input 7x3", "bidirectional simple_rnn 2 nobias merge=ave return_sequences"),
    ("input 7x6", "attention heads=2 key_dim=3"),
    ("input 7x6", "attention heads=2 key_dim=3 value_dim=5"),
    ("input 7x6", "attention heads=3 key_dim=4 nobias"),
    ("input 7x6", "attention heads=1 key_dim=2 value_dim=7 nobias dropout=0.2"),
    ("input 9 int", "embedding 20 4 mask_zero\nlstm 3"),
    ("input 9 int", "embedding 20 4 mask_zero\nbidirectional gru 3"),
]


def built_layer(spec: ms.ir.Spec) -> tuple[keras.layers.Layer, object]:
    """The spec's last layer as Keras builds it (by running it) and its output, from a fresh session."""
    keras.backend.clear_session(free_memory=False)
    dtype = "int32" if spec.input_dtype == "int32" else "float32"
    x = keras.ops.ones((2, *spec.input_shape), dtype=dtype)
    for node in spec.layers:
        built = kr.layer(node)
        x = kr.call(node, built, [x])
    return built, x


@pytest.mark.parametrize("inputs, layer", OPTIONS, ids=[f"{i}; {l}" for i, l in OPTIONS])
def test_an_options_shape_and_weights_are_keras_own(inputs, layer):
    spec = ms.parse(f"{inputs}\n{layer}")
    row = ms.check(spec).layers[-1]
    built, out = built_layer(spec)
    assert row.output_shape == (None, *out.shape[1:])
    assert row.params == built.count_params()
    assert [(w.path.split(f"{row.name}/", 1)[1], w.shape) for w in row.weights] == [
        (w.path.split(f"{built.name}/", 1)[1], tuple(w.shape)) for w in built.weights]


@pytest.mark.parametrize("text, shapes", [
    ("gru 5 reset_after=false", [(3, 15), (5, 15), (15,)]),  # one bias of 3U
    ("gru 5", [(3, 15), (5, 15), (2, 15)]),  # the input's bias and the recurrent one
    ("lstm 5 nobias", [(3, 20), (5, 20)]),
    ("bidirectional simple_rnn 5 nobias", [(3, 5), (5, 5), (3, 5), (5, 5)]),
    ("attention heads=2 key_dim=4 value_dim=6 nobias", [(3, 2, 4), (3, 2, 4), (3, 2, 6), (2, 6, 3)]),
])
def test_the_weights_shapes_of_some_options_written_out(text, shapes):
    spec = ms.parse(f"input 7x3\n{text}")
    assert [w.shape for w in ms.check(spec).layers[-1].weights] == shapes
    built, _ = built_layer(spec)
    assert [tuple(w.shape) for w in built.weights] == shapes


@pytest.mark.parametrize("text, keras_build, ours", [
    ("input 5\nlstm 3", lambda: L.LSTM(3)(keras.Input((5,))), "lstm needs an input of rank 2"),
    ("input 5\ngru 3 return_sequences", lambda: L.GRU(3, return_sequences=True)(keras.Input((5,))),
     "gru needs an input of rank 2"),
    ("input 5\nbidirectional simple_rnn 3", lambda: L.Bidirectional(L.SimpleRNN(3))(keras.Input((5,))),
     "simple_rnn needs an input of rank 2"),
    ("input 5x2\nattention heads=0 key_dim=3", lambda: L.MultiHeadAttention(0, 3), "the number of heads must be"),
    ("input 5x2\nattention heads=2 key_dim=0", lambda: L.MultiHeadAttention(2, 0), "key_dim"),
    # Bidirectional sets its backward copy's go_backwards to True, not to the flip of the wrapped
    # layer's (keras/src/layers/rnn/bidirectional.py, __init__): two backward layers, refused
    ("input 5x2\nbidirectional lstm 2 go_backwards", lambda: L.Bidirectional(L.LSTM(2, go_backwards=True)),
     "go_backwards"),
])
def test_where_keras_refuses_a_layer_so_does_the_checker(text, keras_build, ours):
    keras.backend.clear_session(free_memory=False)
    with pytest.raises(ValueError):
        keras_build()
    with pytest.raises(SpecError, match=ours):
        ms.check(ms.parse(text))


# ---------------------------------------------------------------------------------------
# Masks in functional graphs: Keras's summary lists not_equal, and the mask as a second input
# of the layers that take a `mask=` argument (recurrent ones), but not of attention, which
# reads its query's and value's masks from the tensors themselves

MASKED_GRAPH = ("input 12 int; e = embedding 50 8 mask_zero; attention heads=2 key_dim=4; "
                "lstm 6 return_sequences; bidirectional gru 3; dense 2 softmax")


def masked_graph_by_hand() -> keras.Model:
    keras.backend.clear_session(free_memory=False)
    inputs = keras.Input((12,), dtype="int32")
    e = L.Embedding(50, 8, mask_zero=True)(inputs)
    x = L.MultiHeadAttention(num_heads=2, key_dim=4)(e, e)
    x = L.LSTM(6, return_sequences=True)(x)
    x = L.Bidirectional(L.GRU(3))(x)
    outputs = L.Dense(2, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="sequential")


def test_a_masked_graph_checks_exactly_as_keras(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    report, hand = ms.check(ms.parse(MASKED_GRAPH)), masked_graph_by_hand()
    assert [(r.name, r.keras_class, r.output_shape, r.params) for r in report.layers] == rows(hand)
    assert [w.path for w in report.weights] == [w.path for w in hand.weights]
    for width in (100, 130):
        assert report.summary(line_length=width) == kr.summary(hand, width)
    table = report.summary(line_length=130)
    assert "not_equal (NotEqual)" in table
    # each row's "Connected to" cell: its first line and the next
    cells = {line.split()[1]: (line, following) for line, following in zip(table.splitlines(), table.splitlines()[1:])
             if line.startswith("│ ") and line.split()[1] != "│"}
    line, following = cells["multi_head_attention"]
    assert "embedding[0][0]" in line and "embedding[0][0]" in following and "not_equal" not in following
    for name in ("lstm", "bidirectional"):
        assert "not_equal[0][0]" in "".join(cells[name])


MASKED_GRAPHS = [
    MASKED_GRAPH,
    # the encoder block over a masked embedding, pooled over the unmasked steps
    TRANSFORMER.replace("embedding 200 32", "embedding 200 32 mask_zero"),
    # two recurrent branches of one mask, merged
    "input 10 int; e = embedding 30 4 mask_zero; a = lstm 3 return_sequences; b = gru 3 return_sequences from=e; "
    "add a b; simple_rnn 2; dense 1",
    # a bidirectional layer that passes the mask on, into attention and a masked mean
    "input 8 int; embedding 20 4 mask_zero; bidirectional lstm 3 return_sequences merge=sum; "
    "attention heads=2 key_dim=2 value_dim=3; globalavgpool1d; dense 2",
]


@pytest.mark.parametrize("text", MASKED_GRAPHS)
def test_masked_graphs_list_keras_mask_operations(text, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    spec = ms.parse(text)
    report, model = ms.check(spec), kr.model(spec)
    assert [(r.name, r.output_shape, r.params) for r in report.layers] == [row[:1] + row[2:] for row in rows(model)]
    assert report.summary(line_length=120) == kr.summary(model, 120)


def test_a_masked_chain_is_keras_sequential(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    spec = ms.parse("input 15 int; embedding 100 8 mask_zero; bidirectional gru 6 return_sequences; "
                    "lstm 4; dense 2 softmax")
    assert ms.check(spec).summary(line_length=100) == kr.summary(kr.model(spec), 100)


# ---------------------------------------------------------------------------------------
# Initial weights: modelspec draws them (every backend starts from them) by Keras's rules


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the samples' CDFs."""
    a, b = np.sort(a.ravel()), np.sort(b.ravel())
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / a.size - np.searchsorted(b, grid, "right") / b.size).max())


def ks_limit(n: int, m: int) -> float:
    """The KS statistic two samples of one distribution stay under with probability 0.999."""
    return 1.949 * np.sqrt((n + m) / (n * m))


def keras_draws(spec: ms.ir.Spec, seeds: range) -> list[list[np.ndarray]]:
    """The initial weights real Keras gives the spec's model (tests/keras_reference.py), once per seed."""
    out = []
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        out.append(kr.model(spec).get_weights())
    return out


def ours(spec: ms.ir.Spec, seeds: range) -> list[list[np.ndarray]]:
    return [ms.build(spec, backend="keras", seed=seed).get_weights() for seed in seeds]


def test_the_backend_starts_from_modelspecs_weights_in_the_reports_order():
    for text in (EXAMPLES["bidirectional_gru"], TRANSFORMER, MASKED_GRAPH):
        spec = ms.parse(text)
        model = ms.build(spec, backend="keras", seed=7)
        assert [w.path for w in model.native.weights] == [w.path for w in model.report.weights]
        want = initial_weights(spec, model.report, 7)
        assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), want))


@pytest.mark.parametrize("kind, gates", [("lstm", 4), ("gru", 3), ("simple_rnn", 1)])
def test_recurrent_kernels_are_orthogonal_as_a_whole(kind, gates):
    """Keras's Orthogonal draws the whole (U, g·U) matrix: R·Rᵀ = I, its gate blocks not each
    orthogonal (SEMANTICS_NEXT §4.1); both hold of Keras's draws and ours, whose entries have
    Keras's distribution."""
    spec = ms.parse(f"input 5x3\n{kind} 6")
    theirs, mine = keras_draws(spec, range(6)), ours(spec, range(6))
    for weights in (theirs, mine):
        for w in weights:
            r = w[1].astype(np.float64)
            assert r.shape == (6, gates * 6)
            np.testing.assert_allclose(r @ r.T, np.eye(6), atol=2e-6)
            if gates > 1:
                block = r[:, :6]
                assert np.abs(block @ block.T - np.eye(6)).max() > 0.05
    a, b = np.concatenate([w[1].ravel() for w in theirs]), np.concatenate([w[1].ravel() for w in mine])
    assert ks_distance(a, b) < ks_limit(a.size, b.size)
    # the kernel: glorot over (in, g·U), U(±√(6/(in + g·U)))
    a, b = np.concatenate([w[0].ravel() for w in theirs]), np.concatenate([w[0].ravel() for w in mine])
    limit = np.sqrt(6 / (3 + gates * 6))
    assert np.abs(b).max() <= limit and np.abs(a).max() <= limit
    assert ks_distance(a, b) < ks_limit(a.size, b.size)


def test_the_lstm_forget_bias_is_ones():
    spec = ms.parse("input 5x3\nlstm 4")
    (theirs,), (mine,) = keras_draws(spec, range(1)), ours(spec, range(1))
    np.testing.assert_array_equal(mine[2], theirs[2])
    np.testing.assert_array_equal(mine[2], np.r_[np.zeros(4), np.ones(4), np.zeros(8)])
    # without unit_forget_bias: zeros; with a random bias initializer, its values around the ones
    spec = ms.parse("input 5x3\nlstm 4 unit_forget_bias=false")
    np.testing.assert_array_equal(ours(spec, range(1))[0][2], keras_draws(spec, range(1))[0][2])
    spec = ms.parse("input 5x3\nlstm 50 bias_init=random_uniform")
    theirs, mine = keras_draws(spec, range(4)), ours(spec, range(4))
    for weights in (theirs, mine):
        for w in weights:
            np.testing.assert_array_equal(w[2][50:100], np.ones(50))
            assert np.abs(w[2][:50]).max() <= 0.05 and np.abs(w[2][:50]).max() > 0
    a = np.concatenate([np.r_[w[2][:50], w[2][100:]] for w in theirs])
    b = np.concatenate([np.r_[w[2][:50], w[2][100:]] for w in mine])
    assert ks_distance(a, b) < ks_limit(a.size, b.size)


def test_gru_biases_start_at_zero_in_both_rows():
    spec = ms.parse("input 5x3\ngru 4")
    (theirs,), (mine,) = keras_draws(spec, range(1)), ours(spec, range(1))
    np.testing.assert_array_equal(mine[2], theirs[2])
    assert mine[2].shape == (2, 12) and not mine[2].any()


def test_attention_projections_use_the_einsum_fans():
    """EinsumDense gives glorot its input and output axes: U(±√(6/(D+H·K))) for the query and
    key kernels, √(6/(D+H·V)) for the value's, √(6/(H·V+D)) for the output's (SEMANTICS_NEXT §5),
    not a rank-3 tensor's fans; each judged against Keras's own draws."""
    d, h, k, v = 24, 3, 8, 12
    spec = ms.parse(f"input 6x{d}\nattention heads={h} key_dim={k} value_dim={v}")
    theirs, mine = keras_draws(spec, range(3)), ours(spec, range(3))
    limits = {0: np.sqrt(6 / (d + h * k)), 2: np.sqrt(6 / (d + h * k)), 4: np.sqrt(6 / (d + h * v)),
              6: np.sqrt(6 / (h * v + d))}
    for index, limit in limits.items():
        a = np.concatenate([w[index].ravel() for w in theirs])
        b = np.concatenate([w[index].ravel() for w in mine])
        assert np.abs(a).max() <= limit and np.abs(b).max() <= limit
        assert np.abs(b).max() > 0.97 * limit  # not a narrower rule
        assert ks_distance(a, b) < ks_limit(a.size, b.size), index
    for index in (1, 3, 5, 7):  # the biases: zeros
        assert not any(w[index].any() for w in mine + theirs)


# ---------------------------------------------------------------------------------------
# The backend: the hand-written models' predictions, from the same weights

PREDICTED = [
    *OPTIONS,
    ("input 11 int", "embedding 30 4 mask_zero\nlstm 3 return_sequences go_backwards\ngru 2 go_backwards"),
    ("input 11 int", "embedding 30 4 mask_zero\nbidirectional simple_rnn 3 return_sequences merge=mul\n"
                     "bidirectional lstm 2 merge=ave"),
    ("input 11 int", "embedding 30 4 mask_zero\ngru 3 reset_after=false return_sequences\nglobalavgpool1d"),
]


@pytest.mark.parametrize("inputs, layer", PREDICTED, ids=[f"{i}; {l}" for i, l in PREDICTED])
def test_the_backend_predicts_as_keras(inputs, layer):
    spec = ms.parse(f"{inputs}\n{layer}")
    model = ms.build(spec, backend="keras", seed=2)
    reference = kr.model(spec)
    rng = np.random.default_rng(3)
    weights = [rng.normal(size=w.shape).astype(np.float32) * 0.5 for w in model.get_weights()]
    model.set_weights(weights)
    reference.set_weights(weights)
    x = sample(spec, 5, 4, pad=True)
    got = model.predict(x)
    np.testing.assert_allclose(got, reference.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    every = keras.Model(reference.inputs[0], [layer.output for layer in reference.layers
                                           if not isinstance(layer, L.InputLayer)])(x)
    every = every if isinstance(every, (list, tuple)) else [every]
    for out, want in zip(model.engine.layer_outputs(x), every, strict=True):
        np.testing.assert_allclose(out, np.asarray(want), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", [*EXAMPLES, "masked_transformer", "masked_graph"])
def test_the_backend_builds_the_hand_written_model(case, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    if case == "masked_transformer":
        spec, hand_model = ms.parse(MASKED_GRAPHS[1]), (lambda: (keras.backend.clear_session(free_memory=False),
                                                                 transformer_by_hand(mask_zero=True))[1])
    elif case == "masked_graph":
        spec, hand_model = ms.parse(MASKED_GRAPH), masked_graph_by_hand
    else:
        spec, hand_model = ms.parse(EXAMPLES[case]), (lambda: by_hand(case))
    # the mask's operations (not_equal) take Keras's auto names in the session that builds them
    keras.backend.clear_session(free_memory=False)
    model = ms.build(spec, backend="keras", seed=1)
    hand = hand_model()
    assert kr.summary(model.native, 110) == kr.summary(hand, 110)
    assert [w.path for w in model.native.weights] == [w.path for w in hand.weights]
    hand.set_weights(model.get_weights())
    x = sample(spec, 6, 0, pad=True)
    np.testing.assert_allclose(model.predict(x), hand.predict(x, verbose=0), rtol=1e-6, atol=1e-7)


def test_masked_steps_keep_the_state():
    """What the mask does, written out (SEMANTICS_NEXT §4.3): a right-padded row's output is its
    last valid step's, so the padding changes nothing; without mask_zero it would."""
    spec = ms.parse("input 8 int; embedding 20 3 mask_zero; gru 4")
    model = ms.build(spec, backend="keras", seed=5)
    x = np.array([[3, 4, 5, 0, 0, 0, 0, 0]], np.int32)
    short = ms.build(ms.parse("input 3 int; embedding 20 3 mask_zero; gru 4"), backend="keras", seed=5)
    short.set_weights(model.get_weights())
    np.testing.assert_allclose(model.predict(x), short.predict(x[:, :3]), rtol=1e-6, atol=1e-7)
    unmasked = ms.build(ms.parse("input 8 int; embedding 20 3; gru 4"), backend="keras", seed=5)
    unmasked.set_weights(model.get_weights())
    assert not np.allclose(unmasked.predict(x), short.predict(x[:, :3]), atol=1e-4)


TRAINED = {
    "lstm_l2": "input 10 int; embedding 30 4 mask_zero; lstm 5 l2=0.01 return_sequences; "
               "bidirectional gru 3 merge=ave; dense 2 softmax; optimizer adam lr=0.01; "
               "loss sparse_categorical_crossentropy; metrics accuracy",
    "attention_dropout": "input 10 int; e = embedding 30 8; attention heads=2 key_dim=4 dropout=0.3 seed=4; "
                         "add e; layernorm; globalavgpool1d; dense 2 softmax; optimizer rmsprop lr=0.01; "
                         "loss sparse_categorical_crossentropy",
}


@pytest.mark.parametrize("case", TRAINED)
def test_training_matches_keras_fit(case):
    """The engine's loop against model.fit of the reference model from the same weights: the
    kernel penalty (the kernel's only), the masks' gradients, attention's seeded dropout."""
    spec = ms.parse(TRAINED[case])
    model = ms.build(spec, backend="keras", seed=3)
    rng = np.random.default_rng(0)
    x = rng.integers(1, spec.id_limit, (40, *spec.input_shape)).astype(np.int32)
    x[:6, 6:] = 0
    y = rng.integers(0, 2, 40)
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
        np.testing.assert_allclose(got[key], want[key], rtol=2e-5, atol=1e-6, err_msg=key)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(model.get_weights()[1], initial[1])


# ---------------------------------------------------------------------------------------
# The emitted program


@pytest.mark.parametrize("case", EXAMPLES)
def test_the_program_builds_the_hand_written_model(case, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    spec = ms.parse(EXAMPLES[case])
    model = ms.build(spec, backend="keras", seed=2)
    code = backends.get("keras").emit(spec, model.report)
    assert "modelspec" not in code.split("import keras")[1]
    if case == "transformer":
        assert "def encoder(inputs, heads, key_dim, ff, width):" in code
        assert "layers.MultiHeadAttention(num_heads=heads, key_dim=key_dim)(inputs, inputs)" in code
    namespace: dict = {"__name__": "program"}
    keras.backend.clear_session(free_memory=False)
    exec(compile(code, f"{case}.py", "exec"), namespace)
    built = namespace["build_model"]()
    hand = by_hand(case)
    assert kr.summary(built, 100) == kr.summary(hand, 100)
    assert [w.path for w in built.weights] == [w.path for w in hand.weights]
    built.set_weights(model.get_weights())
    x = sample(spec, 4, 1)
    np.testing.assert_allclose(built.predict(x, verbose=0), model.predict(x), rtol=1e-6, atol=1e-7)


def test_the_program_writes_every_option():
    spec = ms.parse("input 12 int\ne = embedding 50 8 mask_zero\n"
                    "lstm 6 return_sequences go_backwards relu he_normal recurrent_init=orthogonal(gain=2.0) "
                    "recurrent_activation=tanh unit_forget_bias=false l2=0.001\n"
                    "gru 4 return_sequences reset_after=false nobias\n"
                    "bidirectional simple_rnn 3 return_sequences merge=mul\n"
                    "attention heads=2 key_dim=3 value_dim=5 dropout=0.1 nobias seed=7\n"
                    "bidirectional gru 2 bias_init=ones\n")
    code = backends.get("keras").emit(spec, ms.check(spec))
    for line in ["layers.LSTM(", "return_sequences=True,", "go_backwards=True,", 'activation="relu",',
                 'recurrent_activation="tanh",', 'kernel_initializer="he_normal",',
                 "recurrent_initializer=keras.initializers.Orthogonal(gain=2.0),", "unit_forget_bias=False,",
                 "kernel_regularizer=keras.regularizers.L2(0.001),",
                 "layers.GRU(4, return_sequences=True, use_bias=False, reset_after=False)(x)",
                 'layers.Bidirectional(layers.SimpleRNN(3, return_sequences=True), merge_mode="mul")(x)',
                 "layers.MultiHeadAttention(",
                 "num_heads=2,", "key_dim=3,", "value_dim=5,", "dropout=0.1,", "use_bias=False,", "seed=7,",
                 ")(x, x)", 'outputs = layers.Bidirectional(layers.GRU(2, bias_initializer="ones"))(x)']:
        assert line in code, line
    namespace: dict = {"__name__": "program"}
    keras.backend.clear_session(free_memory=False)
    exec(compile(code, "options.py", "exec"), namespace)
    built = namespace["build_model"]()
    report = ms.check(spec)
    assert [w.path for w in built.weights] == [w.path for w in report.weights]
    assert rows(built) == [(r.name, r.keras_class, r.output_shape, r.params) for r in report.layers]


def test_a_block_of_recurrent_layers_is_one_function(monkeypatch):
    """The wrapped layer's units and attention's options are the block's parameters."""
    monkeypatch.setenv("COLUMNS", "200")
    spec = ms.parse("input 10 int\nembedding 40 8 mask_zero\nblock rnn(u, h) {\n  bidirectional lstm u return_sequences\n"
                    "  attention heads=h key_dim=u\n  layernorm\n}\nrnn 4 2\nrnn 6 1\ngru 3\ndense 1\n")
    model = ms.build(spec, backend="keras", seed=3)
    code = backends.get("keras").emit(spec, model.report)
    assert "def rnn(inputs, u, h):\n    x = layers.Bidirectional(layers.LSTM(u, return_sequences=True))(inputs)\n" \
           "    x = layers.MultiHeadAttention(num_heads=h, key_dim=u)(x, x)\n" in code
    assert "x = rnn(x, 4, 2)\n    x = rnn(x, 6, 1)\n" in code
    namespace: dict = {"__name__": "program"}
    keras.backend.clear_session(free_memory=False)
    exec(compile(code, "block.py", "exec"), namespace)
    built = namespace["build_model"]()
    assert kr.summary(built, 110) == model.report.summary(line_length=110)
    assert [w.path for w in built.weights] == [w.path for w in model.report.weights]
    built.set_weights(model.get_weights())
    x = sample(spec, 5, 3, pad=True)
    np.testing.assert_allclose(built.predict(x, verbose=0), model.predict(x), rtol=1e-6, atol=1e-7)


def test_a_wrapped_layers_name_is_written_where_keras_would_choose_another():
    """A wrapped layer is made before its wrapper and takes an auto name of its own: after
    `gru`, Keras names the next GRU gru_1, wrapped or not."""
    spec = ms.parse("input 6x2; gru 3 return_sequences; bidirectional gru 2 return_sequences; gru 2 return_sequences; "
                    "gru 2 return_sequences name=gru_3; bidirectional gru 2")
    code = backends.get("keras").emit(spec, ms.check(spec))
    namespace: dict = {"__name__": "program"}
    keras.backend.clear_session(free_memory=False)
    exec(compile(code, "names.py", "exec"), namespace)
    built = namespace["build_model"]()
    assert [w.path for w in built.weights] == [w.path for w in ms.check(spec).weights]
    assert 'name="gru_4"' in code  # the last wrapped GRU: Keras's counter would give gru_3, a user's name


# ---------------------------------------------------------------------------------------
# modelspec import: Keras models with these layers back to specs of Keras's own numbers


def every_option_by_hand() -> keras.Model:
    keras.backend.clear_session(free_memory=False)
    inputs = keras.Input((12,), dtype="int32")
    e = L.Embedding(50, 8, mask_zero=True)(inputs)
    x = L.LSTM(6, return_sequences=True, go_backwards=True, activation="relu", recurrent_activation="tanh",
               kernel_initializer="he_normal", recurrent_initializer=keras.initializers.Orthogonal(gain=2.0),
               unit_forget_bias=False, kernel_regularizer=keras.regularizers.L2(0.001))(e)
    x = L.GRU(4, return_sequences=True, reset_after=False, use_bias=False)(x)
    x = L.Bidirectional(L.SimpleRNN(3, return_sequences=True), merge_mode="mul")(x)
    x = L.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=5, dropout=0.1, use_bias=False, seed=7)(x, x)
    x = L.Bidirectional(L.GRU(2, bias_initializer="ones"))(x)
    return keras.Model(inputs, L.Dense(1)(x), name="every_option")


IMPORTED = {
    **{case: (lambda case: lambda: by_hand(case))(case) for case in EXAMPLES},
    "masked_graph": masked_graph_by_hand,
    "every_option": every_option_by_hand,
    **{f"option {i}: {layer}": (lambda text: lambda: kr.model(ms.parse(text)))(f"{inputs}\n{layer}")
       for i, (inputs, layer) in enumerate(OPTIONS)},
}


@pytest.mark.parametrize("case", IMPORTED)
def test_a_keras_model_imports_to_a_spec_of_its_numbers(case, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    hand = IMPORTED[case]()
    imported = convert(json.loads(hand.to_json()))
    assert [(r.name, r.keras_class, r.output_shape, r.params) for r in imported.report.layers] == rows(hand)
    assert [(w.path, w.shape) for w in imported.report.weights] == [(w.path, tuple(w.shape)) for w in hand.weights]
    assert imported.report.summary(line_length=110) == kr.summary(hand, 110)
    assert not imported.notes
    rng = np.random.default_rng(5)
    hand.set_weights([rng.normal(size=w.shape).astype(np.float32) * 0.5 for w in hand.get_weights()])
    model = ms.build(imported.spec, backend="keras")
    model.set_weights(hand.get_weights())
    x = sample(imported.spec, 5, 6, pad=True)
    np.testing.assert_allclose(model.predict(x), hand.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_every_option_comes_back_as_written():
    imported = convert(json.loads(every_option_by_hand().to_json()))
    assert [layer_text(node) for node in imported.spec.layers] == [
        "embedding 50 8 mask_zero",
        "lstm 6 return_sequences go_backwards relu he_normal recurrent_init=orthogonal(gain=2.0) l2=0.001 "
        "recurrent_activation=tanh unit_forget_bias=false",
        "gru 4 return_sequences nobias reset_after=false",
        "bidirectional simple_rnn 3 return_sequences merge=mul",
        "attention heads=2 key_dim=3 value_dim=5 dropout=0.1 nobias seed=7",
        "bidirectional gru 2 bias_init=ones",
        "dense 1"]


@pytest.mark.parametrize("text", OPTIONS, ids=[f"{i}; {l}" for i, l in OPTIONS])
def test_an_option_comes_back_as_its_layer(text):
    spec = ms.parse("\n".join(text))
    imported = convert(json.loads(kr.model(spec).to_json()))
    assert [layer_text(n) for n in imported.spec.layers] == [layer_text(n) for n in spec.layers]


def test_unroll_is_left_out_for_it_computes_the_same_numbers():
    """An unrolled layer runs the same steps as the loop, to the bit (TensorFlow's CPU kernels,
    masked steps too), so the spec leaves unroll out."""
    keras.backend.clear_session(free_memory=False)
    inputs = keras.Input((9,), dtype="int32")
    x = L.Embedding(20, 4, mask_zero=True)(inputs)
    x = L.LSTM(3, return_sequences=True, unroll=True, go_backwards=True)(x)
    x = L.GRU(3, return_sequences=True, unroll=True)(x)
    x = L.Bidirectional(L.SimpleRNN(2, unroll=True), merge_mode="sum")(x)
    unrolled = keras.Model(inputs, x)
    imported = convert(json.loads(unrolled.to_json()))
    looped = ms.build(imported.spec, backend="keras")
    looped.set_weights(unrolled.get_weights())
    x = sample(imported.spec, 6, 2, pad=True)
    np.testing.assert_array_equal(looped.predict(x), unrolled.predict(x, verbose=0))


def test_an_unrolled_bidirectional_sequence_is_refused_for_it_computes_other_numbers():
    """In a Bidirectional layer that returns sequences, Keras's unrolled loop outputs zeros for
    the backward half of a masked row's valid steps too: not the loop's numbers."""
    keras.backend.clear_session(free_memory=False)
    inputs = keras.Input((9,), dtype="int32")
    x = L.Embedding(20, 4, mask_zero=True)(inputs)
    x = L.Bidirectional(L.GRU(3, unroll=True, return_sequences=True))(x)
    unrolled = keras.Model(inputs, L.GlobalAveragePooling1D()(x))
    looped = kr.model(ms.parse("input 9 int; embedding 20 4 mask_zero; bidirectional gru 3 return_sequences; "
                               "globalavgpool1d"))
    looped.set_weights(unrolled.get_weights())
    x = np.array([[3, 4, 5, 6, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8, 9]], np.int32)
    got, want = unrolled.predict(x, verbose=0), looped.predict(x, verbose=0)
    np.testing.assert_array_equal(got[:, :3], want[:, :3])  # the forward half
    assert not np.allclose(got[0, 3:], want[0, 3:], atol=1e-3)  # the backward half of a masked row
    np.testing.assert_array_equal(got[1], want[1])  # unmasked, the same
    with pytest.raises(UnsupportedError, match="unroll=True cannot be expressed in a spec here"):
        convert(json.loads(unrolled.to_json()))


def test_a_wrapped_layers_own_name_is_a_note():
    keras.backend.clear_session(free_memory=False)
    hand = keras.Sequential([keras.Input((5, 2)), L.Bidirectional(L.LSTM(3, name="encoder")), L.Dense(1)])
    imported = convert(json.loads(hand.to_json()))
    assert imported.report.total_params == hand.count_params()
    assert imported.notes == ["the layer 'bidirectional' wraps a layer named 'encoder', which a spec cannot name: "
                              "its weights' paths say forward_lstm/ and backward_lstm/, not forward_encoder/"]


def test_a_saved_transformer_imports_on_the_command_line(tmp_path):
    hand = by_hand("transformer")
    hand.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hand.save(tmp_path / "m.keras")
    assert main(["import", str(tmp_path / "m.keras"), "-o", str(tmp_path / "m.ms")]) == 0
    text = (tmp_path / "m.ms").read_text()
    assert "attention heads=4 key_dim=8\n" in text
    assert ms.check(ms.parse(tmp_path / "m.ms")).summary(line_length=100) == kr.summary(hand, 100)


def test_a_saved_bidirectional_imports_on_the_command_line(tmp_path):
    # a saved .keras file gives each initializer a shared_object_id, which differs between
    # the forward and the backward layer of the same mirror
    keras.backend.clear_session(free_memory=False)
    inputs = keras.Input((20,), dtype="int32")
    e = L.Embedding(50, 8, mask_zero=True)(inputs)
    hand = keras.Model(inputs, L.Dense(2, activation="softmax")(L.Bidirectional(L.LSTM(6))(
        L.Add()([L.MultiHeadAttention(2, 4)(e, e), e]))))
    hand.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    hand.save(tmp_path / "m.keras")
    assert main(["import", str(tmp_path / "m.keras"), "-o", str(tmp_path / "m.ms")]) == 0
    assert "bidirectional lstm 6\n" in (tmp_path / "m.ms").read_text()
    assert ms.check(ms.parse(tmp_path / "m.ms")).summary(line_length=100) == kr.summary(hand, 100)


def functional_config(build, shape=(12, 4), dtype="float32") -> dict:
    keras.backend.clear_session(free_memory=False)
    inputs = keras.Input(shape, dtype=dtype)
    return json.loads(keras.Model(inputs, build(inputs)).to_json())


def sequential_config(*layers, shape=(12, 4)) -> dict:
    keras.backend.clear_session(free_memory=False)
    return json.loads(keras.Sequential([keras.Input(shape), *layers]).to_json())


def stateful_config() -> dict:
    keras.backend.clear_session(free_memory=False)
    inputs = keras.Input((12, 4), batch_size=2)
    return json.loads(keras.Model(inputs, L.LSTM(3, stateful=True)(inputs)).to_json())


MHA = L.MultiHeadAttention

REFUSED = [
    (lambda: sequential_config(L.Bidirectional(L.LSTM(3), merge_mode=None)), "merge_mode=None (the two directions'"),
    (lambda: sequential_config(L.Bidirectional(L.LSTM(3), backward_layer=L.LSTM(4, go_backwards=True))),
     "its backward_layer is not the mirror of the layer it wraps: units=4 (forward: 3)"),
    (lambda: sequential_config(L.Bidirectional(L.LSTM(3), backward_layer=L.LSTM(3, go_backwards=True,
                                                                                  activation="relu"))),
     "activation='relu' (forward: 'tanh')"),
    (lambda: sequential_config(L.Bidirectional(L.LSTM(3), backward_layer=L.GRU(3, go_backwards=True))),
     "its backward_layer is a GRU, not the LSTM it wraps run backward"),
    (lambda: sequential_config(L.Bidirectional(L.LSTM(3, dropout=0.2))), "'forward_lstm' (LSTM): dropout=0.2"),
    (lambda: sequential_config(L.LSTM(3, dropout=0.2)), "dropout=0.2 cannot be expressed"),
    (lambda: sequential_config(L.GRU(3, recurrent_dropout=0.1)), "recurrent_dropout=0.1 cannot be expressed"),
    (lambda: sequential_config(L.SimpleRNN(3, recurrent_regularizer="l2")), "recurrent_regularizer='L2'"),
    (lambda: sequential_config(L.LSTM(3, bias_regularizer="l1")), "bias_regularizer='L1'"),
    (lambda: sequential_config(L.GRU(3, activity_regularizer="l2")), "activity_regularizer"),
    (lambda: sequential_config(L.LSTM(3, kernel_constraint="non_neg")), "kernel_constraint"),
    (lambda: sequential_config(L.LSTM(3, recurrent_constraint="non_neg")), "recurrent_constraint"),
    (lambda: sequential_config(L.GRU(3, bias_constraint="non_neg")), "bias_constraint"),
    (lambda: sequential_config(L.LSTM(3, zero_output_for_mask=True)), "zero_output_for_mask=True"),
    (stateful_config, "stateful=True cannot be expressed"),
    (lambda: functional_config(lambda x: L.LSTM(3, return_state=True)(x)[0]), "return_state=True"),
    (lambda: functional_config(lambda x: MHA(2, 3)(x, L.Dense(4)(x))),
     "reads query 'input_layer', value 'dense': cross-attention cannot be expressed"),
    (lambda: functional_config(lambda x: MHA(2, 3)(x, x, key=L.Dense(4)(x))), "cross-attention"),
    (lambda: functional_config(lambda x: MHA(2, 3)(x, x, use_causal_mask=True)), "use_causal_mask=True"),
    (lambda: functional_config(lambda x: MHA(2, 3)(x, x, return_attention_scores=True)[0]),
     "return_attention_scores=True"),
    (lambda: functional_config(lambda x: MHA(2, 3, output_shape=6)(x, x)), "output_shape=(6,) cannot be expressed"),
    (lambda: functional_config(lambda x: MHA(2, 3, attention_axes=(1, 2))(x, x), shape=(3, 5, 4)),
     "attention_axes=(1, 2) cannot be expressed"),
    (lambda: functional_config(lambda x: MHA(2, 3, kernel_regularizer="l2")(x, x)), "kernel_regularizer"),
    (lambda: functional_config(lambda x: MHA(2, 3, bias_constraint="non_neg")(x, x)), "bias_constraint"),
    (lambda: functional_config(lambda x: MHA(2, 3, use_gate=True)(x, x)), "use_gate=True"),
]


@pytest.mark.parametrize("build, message", REFUSED, ids=[m for _, m in REFUSED])
def test_what_a_spec_cannot_hold_is_named(build, message, tmp_path, capsys):
    config = build()
    with pytest.raises(UnsupportedError) as raised:
        convert(config)
    assert message in str(raised.value), str(raised.value)
    (tmp_path / "m.json").write_text(json.dumps(config))
    assert main(["import", str(tmp_path / "m.json")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
