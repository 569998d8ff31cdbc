"""The language of recurrent layers and attention: lstm, gru, simple_rnn, bidirectional and
attention (parsing, every option's spelling, fmt, shapes and counts, errors, masks, check --json).

Counts are worked by hand from Keras's weights (keras/src/layers/rnn/lstm.py, gru.py,
simple_rnn.py: a kernel (in, g·U), a recurrent kernel (U, g·U) and a bias (g·U,) with g = 4, 3
or 1 gates, GRU's reset_after bias (2, 3·U); bidirectional.py: a forward and a backward copy;
keras/src/layers/attention/multi_head_attention.py: query/key (D, H, K) + (H, K), value
(D, H, V) + (H, V), output (H, V, D) + (D,)). tests/test_keras_checker.py compares these specs'
kinds, on random specs (tests/specgen.py), with real Keras.
"""

from __future__ import annotations

import json

import pytest

import modelspec as ms
from modelspec.cli import main
from modelspec.diagnostics import SpecError
from modelspec.printer import to_text

from corpus import TRANSFORMER

# The issue's examples
EXAMPLES = {
    "lstm": "input 30 int; embedding 2000 32; lstm 24; dense 1 sigmoid",
    "lstm-gru": "input 25 int; embedding 300 12; lstm 16 return_sequences; gru 8; dense 4 softmax",
    "bidirectional": "input 15 int; embedding 100 8; bidirectional gru 6; dense 2 softmax",
    "simple_rnn": "input 30x4; simple_rnn 16; dense 1",
}



def lstm_params(d: int, u: int) -> int:
    return 4 * (d * u + u * u + u)


def gru_params(d: int, u: int, reset_after: bool = True) -> int:
    return 3 * (d * u + u * u) + (2 if reset_after else 1) * 3 * u


def rnn_params(d: int, u: int) -> int:
    return d * u + u * u + u


def mha_params(d: int, h: int, k: int, v: int | None = None, bias: bool = True) -> int:
    v = v or k
    return 2 * d * h * k + d * h * v + h * v * d + (bias and 2 * h * k + h * v + d)


def rows(text: str) -> list[tuple[str, tuple, int]]:
    return [(r.name, r.output_shape, r.params) for r in ms.check(text).layers]


def test_the_issues_examples_check():
    assert rows(EXAMPLES["lstm"]) == [("embedding", (None, 30, 32), 64_000), ("lstm", (None, 24), lstm_params(32, 24)),
                                      ("dense", (None, 1), 25)]
    assert rows(EXAMPLES["lstm-gru"]) == [
        ("embedding", (None, 25, 12), 3_600), ("lstm", (None, 25, 16), lstm_params(12, 16)),
        ("gru", (None, 8), gru_params(16, 8)), ("dense", (None, 4), 36)]
    assert rows(EXAMPLES["bidirectional"]) == [("embedding", (None, 15, 8), 800),
                                               ("bidirectional", (None, 12), 2 * gru_params(8, 6)),
                                               ("dense", (None, 2), 26)]
    assert rows(EXAMPLES["simple_rnn"]) == [("simple_rnn", (None, 16), rnn_params(4, 16)), ("dense", (None, 1), 17)]
    assert all(ms.parse(text).is_chain for text in EXAMPLES.values())


def test_the_transformer_block():
    report = ms.check(TRANSFORMER)
    assert report.functional
    assert [(r.name, r.output_shape, r.params) for r in report.layers] == [
        ("embedding", (None, 16, 32), 6_400), ("multi_head_attention", (None, 16, 32), mha_params(32, 4, 8)),
        ("add", (None, 16, 32), 0), ("layer_normalization", (None, 16, 32), 64), ("dense", (None, 16, 64), 2_112),
        ("dense_1", (None, 16, 32), 2_080), ("add_1", (None, 16, 32), 0), ("layer_normalization_1", (None, 16, 32), 64),
        ("global_average_pooling1d", (None, 32), 0), ("dense_2", (None, 2), 66)]
    # self-attention reads its input twice, mha(x, x): the summary's "Connected to" lists it twice
    attention = report.layers[1]
    assert attention.inputs == ("embedding", "embedding")
    assert report.total_params == 15_010


def test_weights_are_keras_s():
    lstm = ms.check("input 5x3; lstm 4").layers[0]
    assert [(w.path, w.shape) for w in lstm.weights] == [
        ("sequential/lstm/lstm_cell/kernel", (3, 16)), ("sequential/lstm/lstm_cell/recurrent_kernel", (4, 16)),
        ("sequential/lstm/lstm_cell/bias", (16,))]
    gru, gru_before = ms.check("input 5x3; gru 4 return_sequences; gru 2 reset_after=false").layers
    assert [w.shape for w in gru.weights] == [(3, 12), (4, 12), (2, 12)]
    assert [w.shape for w in gru_before.weights] == [(4, 6), (2, 6), (6,)]
    (bi,) = ms.check("input 5x3; bidirectional simple_rnn 2 nobias").layers
    assert [(w.path, w.shape) for w in bi.weights] == [
        ("sequential/bidirectional/forward_simple_rnn/simple_rnn_cell/kernel", (3, 2)),
        ("sequential/bidirectional/forward_simple_rnn/simple_rnn_cell/recurrent_kernel", (2, 2)),
        ("sequential/bidirectional/backward_simple_rnn/simple_rnn_cell/kernel", (3, 2)),
        ("sequential/bidirectional/backward_simple_rnn/simple_rnn_cell/recurrent_kernel", (2, 2))]
    (mha,) = ms.check("input 5x6; attention heads=2 key_dim=3 value_dim=4").layers
    assert [(w.path, w.shape) for w in mha.weights] == [
        ("multi_head_attention/query/kernel", (6, 2, 3)), ("multi_head_attention/query/bias", (2, 3)),
        ("multi_head_attention/key/kernel", (6, 2, 3)), ("multi_head_attention/key/bias", (2, 3)),
        ("multi_head_attention/value/kernel", (6, 2, 4)), ("multi_head_attention/value/bias", (2, 4)),
        ("multi_head_attention/attention_output/kernel", (2, 4, 6)),
        ("multi_head_attention/attention_output/bias", (6,))]
    (plain,) = ms.check("input 5x6; attention heads=2 key_dim=3 nobias").layers
    assert [w.path.rpartition("/")[0].rpartition("/")[2] for w in plain.weights] == [
        "query", "key", "value", "attention_output"]
    assert plain.params == mha_params(6, 2, 3, bias=False)


def test_a_wrapped_layer_takes_its_name_as_if_it_stood_alone():
    # Keras makes the wrapped layer first (keras/src/layers/rnn/bidirectional.py): `lstm` here,
    # so the plain lstm after it is lstm_1
    report = ms.check("input 5x3; bidirectional lstm 2 return_sequences; lstm 2")
    assert [r.name for r in report.layers] == ["bidirectional", "lstm_1"]
    assert report.layers[0].weights[0].path == "sequential/bidirectional/forward_lstm/lstm_cell/kernel"


@pytest.mark.parametrize("layer, shape, out, params", [
    ("lstm 4", (7, 3), (4,), lstm_params(3, 4)),
    ("lstm 4 return_sequences", (7, 3), (7, 4), lstm_params(3, 4)),
    ("lstm 4 go_backwards nobias", (7, 3), (4,), lstm_params(3, 4) - 16),
    ("gru 5 return_sequences go_backwards", (7, 3), (7, 5), gru_params(3, 5)),
    ("gru 5 reset_after=false", (7, 3), (5,), gru_params(3, 5, reset_after=False)),
    ("simple_rnn 2 relu", (7, 3), (2,), rnn_params(3, 2)),
    ("bidirectional lstm 4", (7, 3), (8,), 2 * lstm_params(3, 4)),
    ("bidirectional lstm 4 return_sequences merge=sum", (7, 3), (7, 4), 2 * lstm_params(3, 4)),
    ("bidirectional gru 3 return_sequences", (7, 3), (7, 6), 2 * gru_params(3, 3)),
    ("bidirectional simple_rnn 3 merge=mul", (7, 3), (3,), 2 * rnn_params(3, 3)),
    ("bidirectional gru 6 reset_after=false merge=ave", (7, 3), (6,), 2 * gru_params(3, 6, reset_after=False)),
    ("attention heads=2 key_dim=3", (7, 5), (7, 5), mha_params(5, 2, 3)),
    ("attention heads=1 key_dim=2 value_dim=4 nobias", (7, 5), (7, 5), mha_params(5, 1, 2, 4, bias=False)),
])
def test_shapes_and_counts(layer, shape, out, params):
    (row,) = ms.check(f"input {'x'.join(map(str, shape))}; {layer}").layers
    assert (row.output_shape, row.params) == ((None, *out), params)


def test_defaults_are_keras_s():
    lstm, gru, rnn, bi, mha = ms.parse(
        "input 5x3; lstm 2 return_sequences; gru 2 return_sequences; simple_rnn 2 return_sequences; "
        "bidirectional lstm 2 return_sequences; attention heads=1 key_dim=2").layers
    for layer in (lstm, gru, rnn):
        assert (layer.activation, layer.kernel_initializer.name, layer.recurrent_initializer.name,
                layer.bias_initializer.name, layer.use_bias, layer.go_backwards) == (
            "tanh", "glorot_uniform", "orthogonal", "zeros", True, False)
    assert (lstm.recurrent_activation, lstm.unit_forget_bias) == ("sigmoid", True)
    assert (gru.recurrent_activation, gru.reset_after) == ("sigmoid", True)
    assert bi.merge_mode == "concat" and bi.layer == lstm
    assert (mha.value_dim, mha.resolved_value_dim, mha.dropout, mha.use_bias, mha.seed) == (None, 2, 0.0, True, None)
    assert (mha.kernel_initializer.name, mha.bias_initializer.name) == ("glorot_uniform", "zeros")


def test_spellings():
    same = [("lstm 4 return_sequences go_backwards relu he_normal recurrent_init=zeros nobias",
             "lstm units=4 return_sequences=true go_backwards=true activation=relu kernel_initializer=he_normal "
             "recurrent_initializer=zeros use_bias=false"),
            ("gru 3 reset_after=false recurrent_activation=tanh",
             "gru units=3 reset_after=false recurrent_activation=tanh"),
            ("bidirectional lstm 2 merge=sum", "bidirectional lstm units=2 merge_mode=sum"),
            ("attention heads=2 key_dim=3", "attention num_heads=2 key_dim=3"),
            ("lstm 2 l2=0.01", "lstm 2 l2")]
    for a, b in same:
        assert ms.parse(f"input 5x3; {a}").layers == ms.parse(f"input 5x3; {b}").layers, (a, b)
    assert ms.parse("input 5x3; lstm 2 l1=0.01 l2=0.02").layers[0].kernel_regularizer.model_dump(
        include={"l1", "l2"}) == {"l1": 0.01, "l2": 0.02}


ROUND_TRIPS = [
    "lstm 4", "lstm 4 return_sequences", "lstm 4 go_backwards", "lstm 4 return_sequences go_backwards",
    "lstm 4 relu", "lstm 4 recurrent_activation=tanh",
    "lstm 4 he_uniform(seed=3)", "lstm 4 recurrent_init=zeros", "lstm 4 recurrent_init=orthogonal(gain=2.0, seed=5)",
    "lstm 4 recurrent_initializer=glorot_normal", "lstm 4 nobias", "lstm 4 unit_forget_bias=false",
    "lstm 4 unit_forget_bias=true", "lstm 4 l1=0.01", "lstm 4 l2", "lstm 4 l1=0.01 l2=0.02",
    "lstm 4 bias_init=ones", "lstm 4 bias_init=random_normal(stddev=0.3, seed=2) unit_forget_bias=false",
    "lstm 4 name=encoder",
    "gru 3", "gru 3 reset_after=false", "gru 3 reset_after=true", "gru 3 return_sequences go_backwards sigmoid",
    "gru 3 recurrent_activation=relu recurrent_init=he_normal(seed=1) nobias", "gru 3 l2=0.05 bias_init=ones",
    "simple_rnn 2", "simple_rnn 2 return_sequences relu", "simple_rnn 2 go_backwards recurrent_init=lecun_normal",
    "simple_rnn 2 nobias l1", "simple_rnn 2 bias_init=random_uniform(minval=-0.1, maxval=0.1)",
    "bidirectional lstm 4", "bidirectional lstm 4 merge=concat", "bidirectional lstm 4 return_sequences merge=sum",
    "bidirectional gru 6 reset_after=false merge=ave", "bidirectional simple_rnn 2 merge=mul relu",
    "bidirectional lstm 3 unit_forget_bias=false recurrent_init=zeros nobias l2 name=bi",
    "bidirectional gru 2 return_sequences recurrent_activation=tanh bias_init=ones",
    "attention heads=2 key_dim=3", "attention heads=2 key_dim=3 value_dim=5", "attention heads=1 key_dim=2 dropout=0.25",
    "attention heads=1 key_dim=2 dropout=0.1 seed=7", "attention heads=4 key_dim=1 nobias",
    "attention heads=2 key_dim=2 he_normal(seed=4) bias_init=ones", "attention heads=2 key_dim=3 name=self_attention",
    "attention heads=3 key_dim=2 value_dim=1 dropout=0.5 nobias seed=0 glorot_normal",
]


@pytest.mark.parametrize("layer", ROUND_TRIPS)
def test_fmt_round_trips_every_option(layer):
    spec = ms.parse(f"input 6x5\n{layer}\nflatten\ndense 2")
    text = to_text(spec)
    again = ms.parse(text)
    assert again == spec, text
    assert to_text(again) == text  # canonical text is a fixed point
    assert ms.Spec.model_validate_json(spec.model_dump_json()) == spec  # and JSON


@pytest.mark.parametrize("text", [*EXAMPLES.values(), TRANSFORMER])
def test_the_examples_round_trip(text):
    spec = ms.parse(text)
    assert ms.parse(to_text(spec)) == spec


def test_canonical_text_leaves_defaults_out():
    spec = ms.parse("input 6x5\nlstm units=4 activation=tanh recurrent_activation=sigmoid unit_forget_bias=true "
                    "use_bias=true recurrent_initializer=orthogonal return_sequences=false\n"
                    "bidirectional gru 2 reset_after=true merge_mode=concat\n"
                    "attention num_heads=2 key_dim=3 dropout=0.0")
    assert to_text(spec).splitlines()[2:] == ["lstm 4", "bidirectional gru 2", "attention heads=2 key_dim=3"]


ERRORS = [
    # a recurrent layer (or attention) needs (steps, features)
    ("input 20\nlstm 4", (2, 1), "lstm needs an input of rank 2 (steps, features); received (None, 20)",
     "`reshape 20x1`"),
    ("input 4x4x2\ngru 3", (2, 1), "gru needs an input of rank 2 (steps, features); received (None, 4, 4, 2)",
     "`reshape 4x8`"),
    ("input 8\ndense 4\nsimple_rnn 3", (3, 1), "simple_rnn needs an input of rank 2 (steps, features)", None),
    ("input 8x3\nlstm 3\nlstm 3", (3, 1), "lstm needs an input of rank 2 (steps, features); received (None, 3)",
     None),
    ("input 8\nbidirectional lstm 3", (2, 1), "lstm needs an input of rank 2 (steps, features)", None),
    ("input 8\nattention heads=2 key_dim=3", (2, 1), "attention needs an input of rank 2 (steps, features)", None),
    # units, heads and sizes
    ("input 8x3\nlstm", (2, 1), "lstm needs a number of units; received nothing", "lstm 32"),
    ("input 8x3\ngru 0", (2, 5), "the number of units must be at least 1; received 0", None),
    ("input 8x3\nattention heads=0 key_dim=4", (2, 17), "the number of heads must be at least 1; received 0", None),
    ("input 8x3\nattention heads=2", (2, 1), "attention needs key_dim=D, each head's query and key size; received "
     "nothing", "attention heads=4 key_dim=16"),
    ("input 8x3\nattention key_dim=2", (2, 1), "attention needs heads=H, the number of heads; received nothing", None),
    ("input 8x3\nattention heads=2 key_dim=0", (2, 27), "key_dim must be at least 1; received 0", None),
    ("input 8x3\nattention heads=2 key_dim=3 value_dim=0", (2, 39), "value_dim must be at least 1; received 0", None),
    ("input 8x3\nattention heads=2 key_dim=3 dropout=1.5", (2, 37), "the dropout rate must be at least 0 and at "
     "most 1; received 1.5", None),
    # bidirectional wraps exactly one recurrent layer
    ("input 8x3\nbidirectional dense 4", (2, 15), "bidirectional needs a recurrent layer: lstm, gru or simple_rnn; "
     "received 'dense'", "bidirectional lstm 32"),
    ("input 8x3\nbidirectional", (2, 1), "bidirectional needs a recurrent layer: lstm, gru or simple_rnn; received "
     "nothing", "bidirectional lstm 32"),
    ("input 8x3\nbidirectional 4", (2, 1), "bidirectional needs a recurrent layer", None),
    ("input 8x3\nbidirectional bidirectional lstm 3", (2, 15), "received 'bidirectional'", None),
    ("input 8x3\nbidirectional lstm 4 merge=max", (2, 28),
     "unknown merge mode 'max'; expected 'concat', 'sum', 'mul' or 'ave'", None),
    ("input 8x3\nbidirectional lstm 3 merge=sum merge=ave", (2, 32), "'merge' is given twice", None),
    ("input 8x3\nbidirectional lstm 4 reset_after=false", (2, 22), "unknown option 'reset_after'", None),
    # options of one kind on another, and their values
    ("input 8x3\nlstm 3 reset_after=false", (2, 8), "unknown option 'reset_after'; lstm takes", None),
    ("input 8x3\nsimple_rnn 3 unit_forget_bias=false", (2, 14), "unknown option 'unit_forget_bias'", None),
    ("input 8x3\nlstm 3 unit_forget_bias=maybe", (2, 25), "unit_forget_bias must be true or false; received 'maybe'",
     None),
    ("input 8x3\ngru 3 reset_after=2", (2, 19), "reset_after must be true or false", None),
    ("input 8x3\nlstm 3 recurrent_activation=foo", (2, 29), "unknown activation 'foo'", None),
    # orthogonal needs a matrix: never a bias (a recurrent kernel may take it)
    ("input 8x3\nlstm 4 bias_init=orthogonal", (2, 18), "orthogonal needs a weight of rank 2 or more; a bias is a "
     "vector", "use zeros"),
    ("input 8x3\nbidirectional gru 2 bias_init=orthogonal", (2, 31), "orthogonal needs a weight of rank 2", None),
    ("input 8x3\nattention heads=1 key_dim=2 bias_init=orthogonal", (2, 39), "orthogonal needs a weight of rank 2",
     None),
    # a masked output: no masked loss yet
    ("input 5 int\nembedding 9 3 mask_zero\nlstm 3 return_sequences", (3, 1),
     "the model's output (lstm) carries the mask of embedding", "globalavgpool1d"),
    ("input 5 int\nembedding 9 3 mask_zero\nbidirectional gru 3 return_sequences", (3, 1),
     "the model's output (bidirectional) carries the mask", None),
    ("input 5 int\nembedding 9 4 mask_zero\nattention heads=1 key_dim=2", (3, 1),
     "the model's output (multi_head_attention) carries the mask", None),
]


@pytest.mark.parametrize("text, where, message, hint", ERRORS, ids=[e[2][:50] for e in ERRORS])
def test_errors(text, where, message, hint):
    with pytest.raises(SpecError) as e:
        ms.check(text)
    first = e.value.diagnostics[0]
    assert (first.line, first.column) == where, str(e.value)
    assert message in first.message, str(e.value)
    if hint is not None:
        assert first.hint and hint in first.hint, str(e.value)


def test_orthogonal_is_fine_for_a_recurrent_kernel():
    layer = ms.parse("input 8x3\nlstm 4 orthogonal recurrent_init=orthogonal(gain=0.5)").layers[0]
    assert (layer.kernel_initializer.name, layer.recurrent_initializer.gain) == ("orthogonal", 0.5)


def masks(text: str) -> list[tuple[str, bool, bool]]:
    return [(r.name, r.mask_in, r.masked) for r in ms.check(text).layers]


def test_which_layers_carry_the_mask():
    # Keras's compute_mask (keras/src/layers/rnn/rnn.py): with return_sequences the output keeps
    # the input's mask, without it the mask ends at the layer (which reads it either way)
    assert masks("input 6 int\nembedding 9 3 mask_zero\nlstm 4 return_sequences\ngru 3\ndense 2") == [
        ("embedding", False, True), ("lstm", True, True), ("gru", True, False), ("dense", False, False)]
    assert masks("input 6 int\nembedding 9 3 mask_zero\nsimple_rnn 4 go_backwards\ndense 2") == [
        ("embedding", False, True), ("simple_rnn", True, False), ("dense", False, False)]
    # bidirectional does what its layer does
    assert masks("input 6 int\nembedding 9 3 mask_zero\nbidirectional lstm 4 return_sequences merge=sum\n"
                 "bidirectional simple_rnn 2\ndense 2") == [
        ("embedding", False, True), ("bidirectional", True, True), ("bidirectional_1", True, False),
        ("dense", False, False)]
    # attention reads it (query and key) and its output keeps the query's mask
    assert masks("input 6 int\nembedding 9 4 mask_zero\nattention heads=2 key_dim=3\nglobalavgpool1d\ndense 2") == [
        ("embedding", False, True), ("multi_head_attention", True, True), ("global_average_pooling1d", True, False),
        ("dense", False, False)]
    # the transformer block passes it through attention, add, layernorm and dense to the pooling
    with_mask = ms.check(TRANSFORMER.replace("embedding 200 32", "embedding 200 32 mask_zero"))
    assert [r.name for r in with_mask.layers if r.mask_in] == [
        "multi_head_attention", "add", "layer_normalization", "dense", "dense_1", "add_1", "layer_normalization_1",
        "global_average_pooling1d"]
    assert not [d for d in with_mask.warnings if d.code == "mask"]
    # a layer that drops it after a recurrent one: the usual warning
    report = ms.check("input 6 int\nembedding 9 4 mask_zero\nlstm 3 return_sequences\nconv1d 2 2\nglobalavgpool1d\n"
                      "dense 2")
    (warning,) = [d for d in report.warnings if d.code == "mask"]
    assert "conv1d drops the mask of embedding" in warning.message and warning.line == 4


def test_without_mask_nothing_reads_one():
    assert not any(r.mask_in or r.masked for r in ms.check(EXAMPLES["lstm-gru"]).layers)


def test_a_functional_summary_lists_the_mask_where_keras_passes_it():
    # RNN and GlobalAveragePooling1D take `mask=` in call (keras/src/layers/rnn/rnn.py), so
    # Keras's functional summary shows the mask's not_equal as one of their inputs; attention
    # reads the masks of its query and value tensors inside its call, so it lists only them
    report = ms.check("input 6 int\ne = embedding 9 4 mask_zero\nattention heads=1 key_dim=2\nadd e\n"
                      "lstm 3\ndense 2")
    ops = [op for _, op in report.mask_ops]
    # (the add of two masked tensors makes Keras's logical_or of their masks)
    assert [op[0] for op in ops] == ["not_equal (NotEqual)", "logical_or (LogicalOr)"]
    text = report.summary(line_length=120)
    lstm_row = text[text.index("lstm (LSTM)"):]
    assert "logical_or[0][0]" in lstm_row.split("dense (Dense)")[0]
    assert "multi_head_attention" in text and text.count("embedding[0][0]") >= 2


def test_check_json_of_a_recurrent_spec(tmp_path, capsys):
    path = tmp_path / "reviews.ms"
    path.write_text("input 6 int\nembedding 9 3 mask_zero\nbidirectional lstm 4 merge=sum\nh = dense 4 relu he_normal\n"
                    "dense 2 softmax\n")
    assert main(["check", "--json", str(path)]) == 0
    (file,) = json.loads(capsys.readouterr().out)["files"]
    report = file["report"]
    assert [(row["name"], row["kind"], row["output_shape"], row["params"], row["inputs"]) for row in report["layers"]] \
        == [("embedding", "embedding", [None, 6, 3], 27, ["input_layer"]),
            ("bidirectional", "bidirectional", [None, 4], 2 * lstm_params(3, 4), ["embedding"]),
            ("dense", "dense", [None, 4], 20, ["bidirectional"]), ("dense_1", "dense", [None, 2], 10, ["dense"])]
    assert report["total_params"] == 27 + 2 * lstm_params(3, 4) + 30 and report["input_dtype"] == "int32"
    # two directions of 2·T·(D + U)·4U multiply-adds: the FLOPs of the forward pass
    assert report["layers"][1]["flops"] == 2 * 2 * 6 * (3 + 4) * 4 * 4
    assert file["diagnostics"] == [] and report["warnings"] == []


def test_check_json_of_attention_lists_its_input_twice(tmp_path, capsys):
    path = tmp_path / "attend.ms"
    path.write_text("input 6x4\nattention heads=2 key_dim=2\nglobalavgpool1d\ndense 2\n")
    assert main(["check", "--json", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)["files"][0]["report"]
    assert report["layers"][0]["inputs"] == ["input_layer", "input_layer"]
    assert report["layers"][0]["params"] == mha_params(4, 2, 2)


def test_bidirectional_of_a_backwards_layer_is_an_error():
    with pytest.raises(SpecError) as e:
        ms.check("input 8x3\nbidirectional lstm 3 go_backwards\ndense 2")
    first = e.value.diagnostics[0]
    assert (first.line, "go_backwards" in first.message) == (2, True)


def test_crosscheck_compares_attention_without_its_dropout_and_explains_the_new_kinds():
    from modelspec.crosscheck import explain, without_dropout

    spec = ms.parse("input 6 int\nembedding 9 4 mask_zero\nbidirectional gru 3 return_sequences\n"
                    "attention heads=1 key_dim=2 dropout=0.3 seed=1\nglobalavgpool1d\ndense 2")
    quiet = without_dropout(spec)
    assert (quiet.layers[2].dropout, spec.layers[2].dropout, quiet.layers[2].seed) == (0.0, 0.3, 1)
    topics = [topic for topic, _ in explain(spec, ["numpy", "torch"])]
    assert {"recurrent layers", "gru reset_after", "bidirectional", "masked recurrence", "attention"} <= set(topics)
    assert not {"gru reset_after", "masked recurrence", "attention"} & {
        topic for topic, _ in explain(ms.parse("input 6x3\nlstm 2"), ["numpy"])}


ORDER = [
    # attention and a global pooling see no positions: the output depends on which tokens occur
    (TRANSFORMER, 6),
    ("input 10x3\nh = attention heads=1 key_dim=2\nd = dense 3 from=in\nadd h d\nglobalmaxpool1d\ndense 2", 2),
    # something gives the steps an order: a convolution, a recurrent layer, a reshape of tokens
    # into rows, or flatten (the dense after it weighs each position on its own)
    ("input 10 int\nembedding 20 4\nconv1d 4 3 padding=same\nattention heads=1 key_dim=2\nglobalavgpool1d\n"
     "dense 2", None),
    ("input 10 int\nembedding 20 4\nattention heads=1 key_dim=2\nlstm 3 return_sequences\nglobalavgpool1d\ndense 2",
     None),
    ("input 10x3\nh = attention heads=1 key_dim=2\nc = conv1d 3 3 padding=same from=in\nadd h c\nglobalmaxpool1d\n"
     "dense 2", None),
    ("input 10 int\nembedding 20 4\nattention heads=1 key_dim=2\nflatten\ndense 2", None),
    # without attention a pooled embedding is a bag of words on purpose (the text classifier)
    ("input 10 int\nembedding 20 4\nglobalavgpool1d\ndense 2", None),
]


@pytest.mark.parametrize("text, line", ORDER)
def test_advice_on_attention_that_cannot_see_the_order(text, line):
    warnings = [d for d in ms.check(text).warnings if d.code == "order"]
    assert [d.line for d in warnings] == ([line] if line else [])
    if warnings:
        assert "not on their order" in warnings[0].message and "conv1d" in warnings[0].hint


def test_the_real_data_specs_check_without_advice():
    from pathlib import Path

    specs = Path(__file__).parents[1] / "specs"
    for name in ("digits_lstm", "digits_transformer"):
        assert ms.check(ms.parse(specs / f"{name}.ms")).warnings == [], name


def test_attention_takes_a_dropout_name():
    report = ms.check("input 2x5\nattention heads=1 key_dim=2\ndropout 0.25\nglobalavgpool1d\ndense 2")
    assert [r.name for r in report.layers][:2] == ["multi_head_attention", "dropout_1"]
