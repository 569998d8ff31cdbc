"""The language of graphs: references, merges, repeat and blocks (parsing, errors, fmt, advice).

Layer orders and summaries are Keras's: tests/test_keras_checker.py builds every random
graph (tests/specgen.py) in real Keras and compares; the orders here are the examples of
keras/src/ops/function.py's rule worked by hand (depth from the output, ties by the order a
depth-first walk from the output reaches them).
"""

from __future__ import annotations

import json

import pytest

import modelspec as ms
from modelspec.cli import main
from modelspec.diagnostics import SpecError
from modelspec.printer import to_text
from corpus import TINY_RESNET


def names_and_sources(text: str) -> list[tuple[str, tuple[str, ...]]]:
    return [(row.name, row.inputs) for row in ms.check(text).layers]


# ---------------------------------------------------------------------------------------
# The examples parse, and mean what they say


def test_the_tiny_resnet():
    spec = ms.parse(TINY_RESNET)
    assert [layer.kind for layer in spec.layers] == [
        "conv2d", *["conv2d", "conv2d", "batchnorm", "add", "activation"] * 2, "globalavgpool2d", "dense"]
    # each `add in` reads the block's input: the layer before the block
    assert spec.connections[4] == (3, 0) and spec.connections[9] == (8, 5)
    report = ms.check(spec)
    assert report.functional and report.total_params == 224 + 2 * (584 + 584 + 32) + 90
    assert [u.block for u in spec.blocks] == ["residual", "residual"]
    assert [(u.start, u.stop, u.arguments) for u in spec.blocks] == [(1, 6, (("filters", "8"),)),
                                                                      (6, 11, (("filters", "8"),))]


@pytest.mark.parametrize("text, connections", [
    ("input 8; h = dense 64 relu; dense 64 relu; add h", ((-1,), (0,), (1, 0))),
    ("input 16x16x3; skip = conv2d 8 1x1 stride=2; conv2d 8 3x3 stride=2 padding=same relu from=in; "
     "conv2d 8 3x3 padding=same; add skip", ((-1,), (-1,), (1,), (2, 0))),
    ("input 8x8x3\na = conv2d 4 1x1 relu padding=same\nb = conv2d 4 3x3 relu padding=same from=in\n"
     "c = maxpool2d 3x3 stride=1 padding=same from=in\nconcat a b c", ((-1,), (-1,), (-1,), (0, 1, 2))),
    ("input 8; a = dense 4; b = dense 4 from=in; subtract a b", ((-1,), (-1,), (0, 1))),
    ("input 8; a = dense 4; dense 4; maximum a", ((-1,), (0,), (1, 0))),
    ("input 8; a = dense 4; add a a", ((-1,), (0, 0))),  # one output twice
])
def test_references_and_merges(text, connections):
    assert ms.parse(text).connections == connections


def test_a_chain_stays_sequential_however_written():
    spec = ms.parse("input 8; h = dense 4 relu; dense 2 from=h; repeat 2 { dense 2 }")
    assert spec.connections == () and not ms.check(spec).functional
    assert "Connected to" not in ms.check(spec).summary(line_length=88)
    # `in` followed by a shape is still the first layer's input clause
    assert ms.parse("dense 512 in 784; dense 10").input_shape == (784,)


def test_repeat_expands_in_place_with_keras_names():
    rows = names_and_sources("input 4; dense 3; repeat 3 { dense 4 relu; dropout 0.1 }; dense 2")
    assert [name for name, _ in rows] == ["dense", "dense_1", "dropout", "dense_2", "dropout_1", "dense_3",
                                          "dropout_2", "dense_4"]


def test_references_inside_a_repeat_are_the_latest_binding():
    spec = ms.parse("input 4; h = dense 4; repeat 2 { dense 4 relu; add h; h = relu }")
    # the first add reads the dense before the repeat; the second, the first repeat's relu
    assert spec.connections[2] == (1, 0) and spec.connections[5] == (4, 3)


def test_parameters_stand_anywhere_a_value_can():
    spec = ms.parse("""input 16x16x3
block unit(f, k=3x3, s=1, act=relu, init=he_normal, rate=0.1, scale=1/2) {
  conv2d f k stride=s act init padding=same
  dropout rate
  rescale scale
  act
}
unit 4
unit f=2 k=1 s=2 act=tanh init=glorot_normal(seed=3) rate=0.5 scale=2
""")
    a, _, r, act, b, drop, *_ = spec.layers
    assert (a.filters, a.kernel_size, a.strides, a.activation, a.kernel_initializer.name) == (4, (3, 3), (1, 1), "relu", "he_normal")
    assert (r.scale, act.activation) == (0.5, "relu")
    assert (b.filters, b.kernel_size, b.strides, b.activation, b.kernel_initializer.seed, drop.rate) == (
        2, (1, 1), (2, 2), "tanh", 3, 0.5)
    assert spec.blocks[0].params_of[0] == (0, (("filters", "f"), ("kernel_size", "k"), ("strides", "s"),
                                               ("activation", "act"), ("kernel_initializer", "init")))


def test_blocks_use_blocks_and_bind_their_output():
    spec = ms.parse("""input 8
block pair(n) {
  dense n relu
  dense n
}
block res(n) {
  pair n
  add in
}
out = res 8
dense 8 from=in
add out
""")
    assert spec.connections == ((-1,), (0,), (1, -1), (-1,), (3, 2))
    assert [(u.block, u.start, u.stop, u.parent) for u in spec.blocks] == [("res", 0, 3, None), ("pair", 0, 2, 0)]


def test_a_block_reads_from_a_reference():
    spec = ms.parse("input 8; a = dense 8; dense 8; block b() { dense 8; add in }; b from=a; add a")
    assert spec.connections == ((-1,), (0,), (0,), (2, 0), (3, 0))


def test_keras_layer_order_a_skip_branch_written_first_comes_after_the_main_path():
    # keras/src/ops/function.py: skip has depth 1, the main path's first dense depth 2
    text = "input 8; skip = dense 4 from=in; h = dense 6 from=in; dense 4; add {}"
    assert [n for n, _ in names_and_sources(text.format("skip"))] == ["dense_1", "dense_2", "dense", "add"]
    # the merge's list order breaks the tie at depth 1
    spec_text = "input 8; skip = dense 4 from=in; h = dense 6 from=in; h2 = dense 4; add skip h2"
    assert [n for n, _ in names_and_sources(spec_text)] == ["dense_1", "dense", "dense_2", "add"]
    report = ms.check(spec_text)
    assert [w.path for w in report.weights][:2] == ["dense_1/kernel", "dense_1/bias"]  # no model prefix
    assert [row.sources for row in report.layers] == [(-1,), (-1,), (0,), (1, 2)]


def test_check_json_gives_each_layers_inputs(tmp_path, capsys):
    path = tmp_path / "g.ms"
    path.write_text("input 8\nh = dense 4\ndense 4 relu\nadd h\n")
    assert main(["check", "--json", str(path)]) == 0
    layers = json.loads(capsys.readouterr().out)["files"][0]["report"]["layers"]
    assert [(row["name"], row["inputs"]) for row in layers] == [
        ("dense", ["input_layer"]), ("dense_1", ["dense"]), ("add", ["dense_1", "dense"])]


def test_the_functional_summary(monkeypatch):
    report = ms.check("model functional; input 8; skip = dense 4 from=in; h = dense 6 from=in; dense 4; add skip")
    # Keras 3.15.1's model.summary() of the same model, piped (76 columns)
    assert report.summary(line_length=76) == """\
Model: "functional"
┏━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━┓
┃ Layer (type)        ┃ Output Shape      ┃    Param # ┃ Connected to      ┃
┡━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━┩
│ input_layer         │ (None, 8)         │          0 │ -                 │
│ (InputLayer)        │                   │            │                   │
├─────────────────────┼───────────────────┼────────────┼───────────────────┤
│ dense_1 (Dense)     │ (None, 6)         │         54 │ input_layer[0][0] │
├─────────────────────┼───────────────────┼────────────┼───────────────────┤
│ dense_2 (Dense)     │ (None, 4)         │         28 │ dense_1[0][0]     │
├─────────────────────┼───────────────────┼────────────┼───────────────────┤
│ dense (Dense)       │ (None, 4)         │         36 │ input_layer[0][0] │
├─────────────────────┼───────────────────┼────────────┼───────────────────┤
│ add (Add)           │ (None, 4)         │          0 │ dense_2[0][0],    │
│                     │                   │            │ dense[0][0]       │
└─────────────────────┴───────────────────┴────────────┴───────────────────┘
 Total params: 118 (472.00 B)
 Trainable params: 118 (472.00 B)
 Non-trainable params: 0 (0.00 B)
"""
    monkeypatch.setenv("COLUMNS", "200")  # four columns are 108 wide at most, three 88
    assert len(report.summary().split("\n")[1]) == 108
    assert len(ms.check("input 8; dense 4").summary().split("\n")[1]) == 88


# ---------------------------------------------------------------------------------------
# Merge shapes, as keras/src/layers/merging/base_merge.py computes them


@pytest.mark.parametrize("text, shape", [
    ("input 3x4; a = dense 4 from=in; flatten; dense 4; add a", (None, 3, 4)),  # (B,4) meets (B,3,4) as (B,1,4)
    ("input 3x1; a = dense 4 from=in; dense 1 from=in; multiply a", (None, 3, 4)),  # a 1 broadcasts
    ("input 4x4x3; a = conv2d 2 1x1; b = conv2d 5 1x1 from=in; concat a b", (None, 4, 4, 7)),
    ("input 4x4x3; a = conv2d 2 1x1; b = conv2d 2 1x1 stride=2x1 from=in; concat a b axis=1", (None, 6, 4, 2)),
    ("input 4x4x3; a = conv2d 2 1x1; b = conv2d 2 1x1 from=in; c = conv2d 2 1x1 from=in; average a b c",
     (None, 4, 4, 2)),
])
def test_merge_shapes(text, shape):
    assert ms.check(text).output_shape == shape


# ---------------------------------------------------------------------------------------
# Errors: each at its line and column, with a hint


ERRORS = [
    ("input 8\nh = dense 4\ndense 4\nadd hh", (4, 5), "unknown reference 'hh'", "did you mean 'h'?"),
    ("input 8\ndense 4\nadd h\nh = dense 4", (3, 5), "'h' is used before it is bound; it is bound on line 4",
     "a layer can only read what comes before it"),
    ("input 8x8x3\nskip = conv2d 8 1x1\nconv2d 16 3x3 padding=same\nadd skip", (4, 1),
     "(None, 8, 8, 16) and (None, 8, 8, 8), do not broadcast", "`conv2d 16 1x1`"),
    ("input 16x16x3\nconv2d 8 1x1 stride=2\nadd in", (3, 1), "(None, 8, 8, 8) and (None, 16, 16, 3)",
     "`conv2d 8 1x1 stride=2`"),
    ("input 8\nh = dense 4\ndense 3\nadd h", (4, 1), "(None, 3) and (None, 4)", "`dense 3`"),
    ("input 8x8x3\na = conv2d 4 3x3\nb = conv2d 4 1x1 from=in\nconcat a b", (4, 1),
     "(None, 6, 6, 4) and (None, 8, 8, 4), differ outside axis -1", "pooling, padding or strides"),
    ("input 8\nh = dense 4\ndense 4\nconcat h axis=3", (4, 1), "axis of inputs of shape (None, 4) is 1 or -1", "axis=-1"),
    ("input 8\nblock b(n, k) {\n  dense n\n}\nb 3", (5, 1), "the block 'b' needs 'k'", "block b(n, k) on line 2"),
    ("input 8\nblock b(n) {\n  dense n\n}\nb 3 4", (5, 5), "the block 'b' takes 1 argument; received 2", "block b(n)"),
    ("input 8\nblock b(n) {\n  dense n\n}\nb 3 m=4", (5, 5), "the block 'b' has no parameter 'm'", "block b(n)"),
    ("input 8\nblock b(nn) {\n  dense nn\n}\nb 3 n=4", (5, 5), "no parameter 'n'", "did you mean 'nn'?"),
    ("input 8\nblock b(n) {\n  dense n\n  b n\n}\nb 3", (4, 3), "the block 'b' uses itself (b -> b)", "repeat"),
    ("input 8\nblock a() {\n  c\n}\nblock c() {\n  a\n}\na", (6, 3), "the block 'a' uses itself (a -> c -> a)", None),
    ("input 8\nrepeat 0 {\n  dense 4\n}", (2, 8), "the number of repeats must be at least 1; received 0", None),
    ("input 8\nrepeat 2 {\n  dense 4\ndense 3", (2, 10), "this '{' of 'repeat' is never closed", "close the body"),
    ("input 8\ndense 4\n}", (3, 1), "unexpected '}': no '{' is open", None),
    ("input 8\ndense 4 {\n}", (2, 9), "unexpected '{' after 'dense'", "repeat 3 { dense 64 relu }"),
    ("input 8\nblock b() {\n  dense 4 name=x\n}\nb\nb", (3, 3), "the layer name 'x' is used twice: its block is used "
     "more than once", "make it a parameter"),
    ("input 8\nh = dense 4 name=x\ndense 4 name=x\nadd h", (3, 1), "the layer name 'x' is used twice", "line 2"),
    ("input 8\na = dense 4\nb = dense 4 from=in\nc = dense 4 from=in\nsubtract a b c", (5, 14),
     "subtract takes exactly 2 inputs; received 3", "a minus b"),
    ("input 8\nh = dense 4\ndense 3 from=in", (2, 1), "the output of dense is never used", "remove it"),
    ("input 8\nblock b(n) {\n  dense n\n}\nb 0", (5, 3), "the number of units must be at least 1; received 0", None),
    ("input 8\nblock b(act) {\n  dense 4 act\n}\nb rleu", (5, 3), "unknown word 'rleu' in dense", "'relu'"),
    ("input 8\nrepeat 2\ndense 4", (2, 1), "repeat needs a body in braces", "repeat 3 {"),
    ("input 8\nh = dense 4\nadd h from=in", (3, 7), "add names its inputs", "add a b"),
    ("input 8\nadd", (2, 1), "add needs the references it merges; received none", "add h"),
    ("input 8\nblock b() {\n  optimizer adam\n}\nb", (3, 3), "'optimizer' is written at the top level", None),
    ("input 8\nin = dense 4", (2, 1), "'in' is the model's input", "choose another name"),
    ("input 8\nh = optimizer adam\ndense 4", (2, 1), "only a layer's or a block's output can be bound", None),
    ("input 8\nblock resid(n) { dense n }\nresidal 4", (3, 1), "unknown statement 'residal'", "'resid'"),
    ("input 8\nblock b {\n dense 4\n}", (2, 7), "a block is defined as `block NAME(PARAMETER, ...)", None),
    ("input 8\nblock dense(n) { dense n }", (2, 7), "a block may not be named 'dense'", None),
    ("input 8\nblock b(n) { dense n }\nblock b(n) { dense n }", (3, 7), "the block 'b' is defined twice",
     "first defined on line 2"),
    ("input 8\nrepeat 2 {\n  block b() { dense 4 }\n}\ndense 2", (3, 3), "a block is defined at the top level", None),
    ("input 8\nh = dense 4\nrepeat 2 { dense 4 }\nadd h\ndense 2 from=3", (5, 14), "from= names a reference", None),
]


@pytest.mark.parametrize("text, where, message, hint", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_graph_errors(text, where, message, hint):
    with pytest.raises(SpecError) as e:
        ms.check(text)
    first = e.value.diagnostics[0]
    assert (first.line, first.column) == where, str(e.value)
    assert message in first.message, str(e.value)
    if hint is not None:
        assert first.hint and hint in first.hint, str(e.value)
    assert "no layers" not in str(e.value)  # nothing follows from the first error


# ---------------------------------------------------------------------------------------
# fmt keeps blocks, references and comments


WRITTEN = """# A tiny residual network
model tiny_resnet
input 16x16x3
conv2d 8 3x3 relu padding=same   # stem

# the block
block residual(filters, act=relu) {
  conv2d   filters 3x3 act padding=same
  conv2d filters 3x3 padding=same  # no activation before the sum
  batchnorm
  add in
  act
}

residual 8
repeat 2 { residual 8; h = dense 8 }
skip = conv2d 8 1x1 stride=2
conv2d 8 3x3 stride=2 padding=same relu from=h
add skip
globalavgpool2d
dense 10 softmax
optimizer adam lr=0.01
"""

FORMATTED = """# A tiny residual network
model tiny_resnet
input 16x16x3
conv2d 8 3x3 padding=same relu  # stem

# the block
block residual(filters, act=relu) {
  conv2d filters 3x3 act padding=same
  conv2d filters 3x3 padding=same  # no activation before the sum
  batchnorm
  add in
  act
}

residual 8
repeat 2 {
  residual 8
  h = dense 8
}
skip = conv2d 8 1x1 stride=2
conv2d 8 3x3 stride=2 padding=same relu from=h
add skip
globalavgpool2d
dense 10 softmax
optimizer adam learning_rate=0.01
"""


def test_fmt_keeps_blocks_references_and_comments():
    spec = ms.parse(WRITTEN)
    text = to_text(spec, spec.source)
    assert text == FORMATTED
    again = ms.parse(text)
    assert again == spec and to_text(again, again.source) == text


def test_a_graph_without_its_source_prints_with_references_of_its_own():
    spec = ms.parse(WRITTEN).model_copy(update={"syntax": None, "blocks": ()})
    text = to_text(spec)
    assert ms.parse(text) == spec
    assert "conv2d_7 = conv2d 8 1x1 stride=2" in text and "add conv2d_7" in text
    assert "conv2d_out = conv2d 8 3x3 padding=same relu" in text  # never a keyword as a reference


# ---------------------------------------------------------------------------------------
# Advice follows the graph


def test_two_linear_dense_layers_do_not_collapse_across_a_merge():
    assert not ms.check("input 8; h = dense 8; dense 8; add h; dense 3 relu he_normal").warnings
    # ...but do when one reads only the other, wherever the rows fall
    report = ms.check("input 8; s = dense 8 relu he_normal from=in; dense 6 from=in; dense 8; add s")
    assert [w.code for w in report.warnings] == ["composed-affine"]


def test_the_initializer_advice_follows_the_layer_that_reads_the_output():
    # dense_1 feeds an add, not the relu listed after it: no activation is known to act on it
    report = ms.check("input 8; h = dense 8 relu he_normal; dense 8; add h; relu")
    assert not [w for w in report.warnings if w.code == "initializer"]


def test_a_thousand_block_uses_expand_and_check():
    text = "input 16\nblock res(n) {\n  dense n relu\n  add in\n}\n" + "res 16\n" * 1000 + "dense 2\n"
    report = ms.check(text)
    assert len(report.layers) == 2001 and len(report.spec.blocks) == 1000
