"""The language of sequences: integer inputs, embedding, conv1d, 1-D pooling, layernorm,
reshape, and embedding's mask (parsing, shapes, errors, fmt, advice).

Shapes and counts here are worked by hand from Keras's rules (keras/src/ops/operation_utils.py:
'valid' floor((n - d(k-1) - 1) / s) + 1, 'same' and 'causal' ceil(n / s)); tests/test_keras_sequences.py
compares the same specs, and every random one (tests/specgen.py), with real Keras.
"""

from __future__ import annotations

import pytest

import modelspec as ms
from modelspec.diagnostics import SpecError
from modelspec.nodes import INITIALIZER_ARGS
from modelspec.printer import to_text

# The issue's three examples
TEXT_CLASSIFIER = "input 20 int; embedding 1000 16; globalavgpool1d; dense 1 sigmoid"
CONV_TEXT = ("input 40 int; embedding 500 8; conv1d 16 5 relu; maxpool1d 2; conv1d 16 3 padding=same relu; "
             "globalmaxpool1d; dense 3 softmax")
RESHAPED = "input 784; reshape 28x28x1; conv2d 4 3x3 relu; globalmaxpool2d; dense 10 softmax"


def rows(text: str) -> list[tuple[str, tuple, int]]:
    return [(r.name, r.output_shape, r.params) for r in ms.check(text).layers]


def test_the_issues_examples():
    assert rows(TEXT_CLASSIFIER) == [("embedding", (None, 20, 16), 16_000),
                                     ("global_average_pooling1d", (None, 16), 0), ("dense", (None, 1), 17)]
    assert rows(CONV_TEXT) == [
        ("embedding", (None, 40, 8), 4_000), ("conv1d", (None, 36, 16), 5 * 8 * 16 + 16),
        ("max_pooling1d", (None, 18, 16), 0), ("conv1d_1", (None, 18, 16), 3 * 16 * 16 + 16),
        ("global_max_pooling1d", (None, 16), 0), ("dense", (None, 3), 51)]
    assert rows(RESHAPED) == [("reshape", (None, 28, 28, 1), 0), ("conv2d", (None, 26, 26, 4), 40),
                              ("global_max_pooling2d", (None, 4), 0), ("dense", (None, 10), 50)]
    spec = ms.parse(TEXT_CLASSIFIER)
    assert spec.input_dtype == "int32" and spec.id_limit == 1000
    assert ms.parse(RESHAPED).input_dtype == "float32" and ms.parse(RESHAPED).id_limit is None


@pytest.mark.parametrize("layer, steps, out", [
    # (T=11) valid: floor((11 - d(k-1) - 1)/s) + 1; same and causal: ceil(11/s)
    ("conv1d 2 4", 11, 8), ("conv1d 2 4 stride=2", 11, 4), ("conv1d 2 3 dilation=3", 11, 5),
    ("conv1d 2 4 padding=same", 11, 11), ("conv1d 2 4 padding=same stride=3", 11, 4),
    ("conv1d 2 3 padding=causal dilation=2", 11, 11), ("conv1d 2 2 padding=causal strides=2", 11, 6),
    ("maxpool1d", 11, 5), ("maxpool1d 3 stride=1", 11, 9), ("maxpool1d 2 padding=same", 11, 6),
    ("avgpool1d 4 stride=3", 11, 3), ("avgpool1d pool_size=3 strides=2 padding=same", 11, 6),
])
def test_window_lengths(layer, steps, out):
    assert ms.check(f"input {steps}x2; {layer}").layers[0].output_shape[1] == out


def test_options_and_defaults_are_keras():
    conv, pool, avg, ln, emb = ms.parse(
        "input 9x4; conv1d 8 3; maxpool1d; avgpool1d 3; layernorm; dense 2").layers[:4] + ms.parse(
        "input 3 int; embedding 5 2").layers[:1]
    assert (conv.strides, conv.padding, conv.dilation_rate, conv.activation, conv.use_bias) == (1, "valid", 1, "linear", True)
    assert (pool.pool_size, pool.resolved_strides, pool.padding) == (2, 2, "valid")
    assert (avg.pool_size, avg.resolved_strides) == (3, 3)
    assert ln.epsilon == 1e-3
    assert (emb.mask_zero, emb.embeddings_initializer.name) == (False, "random_uniform")  # Keras's 'uniform'
    assert INITIALIZER_ARGS["random_uniform"] == {"minval": -0.05, "maxval": 0.05}
    assert ms.check("input 3 int; embedding 5 2").layers[0].weights[0].path == "sequential/embedding/embeddings"
    ln_weights = [w.path.rpartition("/")[2] for w in ms.check("input 4; layernorm").layers[0].weights]
    assert ln_weights == ["gamma", "beta"]


def test_spellings():
    a = ms.parse("input 20 int; embedding 100 8 mask_zero uniform l2=0.01")
    b = ms.parse("embedding input_dim=100 output_dim=8 mask_zero=true embeddings_initializer=random_uniform l2=0.01 "
                 "in 20 int")
    assert a.layers == b.layers and a.input_dtype == b.input_dtype == "int32"
    assert ms.parse("input (6, 3); reshape (-1, 2)").layers[0].target_shape == (-1, 2)
    assert ms.parse("input 6x3; reshape -1x2").layers[0].target_shape == (-1, 2)
    assert ms.parse("input 6 float; dense 2").input_dtype == "float32"


@pytest.mark.parametrize("text", [TEXT_CLASSIFIER, CONV_TEXT, RESHAPED,
                                  "input 20 int\nembedding 100 8 mask_zero he_normal(seed=3) l1=0.01\nlayernorm eps=0.1\n"
                                  "conv1d 4 3 padding=causal dilation=2 nobias\navgpool1d 3 stride=2 padding=same\n"
                                  "reshape -1x2\nglobalmaxpool1d\ndense 2"])
def test_fmt_round_trips(text):
    spec = ms.parse(text)
    again = ms.parse(to_text(spec))
    assert again == spec and again.input_dtype == spec.input_dtype
    assert to_text(again) == to_text(spec)


def test_masks_follow_keras_compute_mask():
    report = ms.check("input 10 int\ne = embedding 50 4 mask_zero\nlayernorm\nh = dense 4 relu\nadd e\ndropout 0.1\n"
                      "globalavgpool1d\ndense 2")
    by_kind = {r.kind: (r.mask_in, r.masked) for r in report.layers}
    assert by_kind == {"embedding": (False, True), "layernorm": (True, True), "dense": (False, False),
                       "add": (True, True), "dropout": (True, True), "globalavgpool1d": (True, False)} | {
        "dense": by_kind["dense"]}
    dense_rows = [(r.mask_in, r.masked) for r in report.layers if r.kind == "dense"]
    assert dense_rows == [(True, True), (False, False)]  # the masked relu layer; the head after pooling
    # a merge's output is masked only when every input is (base_merge.py); conv1d drops it
    dropped = ms.check("input 10 int\nembedding 50 4 mask_zero\nconv1d 4 3\nglobalavgpool1d\ndense 2")
    assert [(r.mask_in, r.masked) for r in dropped.layers][1:3] == [(True, False), (False, False)]
    mixed = ms.check("input 10 int\ne = embedding 50 4 mask_zero\nf = embedding 50 4 from=in\nadd e f\n"
                     "globalavgpool1d\ndense 2")
    assert [r.masked for r in mixed.layers if r.kind == "add"] == [False]


def test_a_dropped_mask_is_advice():
    report = ms.check("input 10 int\nembedding 50 4 mask_zero\nconv1d 4 3\nglobalavgpool1d\ndense 2")
    (warning,) = [d for d in report.warnings if d.code == "mask"]
    assert "conv1d drops the mask of embedding" in warning.message and warning.line == 3
    assert not [d for d in ms.check(TEXT_CLASSIFIER).warnings if d.code == "mask"]


ERRORS = [
    ("input 20\nembedding 100 8\nglobalavgpool1d", (2, 1),
     "embedding reads integer ids (token ids), but its input holds numbers", "`input 20 int`"),
    ("input 20 int\ndense 8", (2, 1), "dense reads the model's integer input (token ids", "embedding VOCAB DIM"),
    ("input 20 int\nh = embedding 10 4\nconv1d 4 3 from=in", (3, 1), "conv1d reads the model's integer input", None),
    ("input 30\nreshape 4x8", (2, 1), "has 30 values, but the target shape 4x8 has 32", "-1"),
    ("input 30\nreshape -1x4", (2, 1), "30 is not a multiple of 4", None),
    ("input 30\nreshape -1x-1", (2, 9), "only one dimension may be -1", None),
    ("input 30\nreshape 0x30", (2, 9), "at least 1, or -1", None),
    ("input 9x2\nconv1d 4 3 stride=2 dilation=2", (2, 1), "a stride above 1 cannot go with a dilation above 1", None),
    ("input 9\nconv1d 4 3", (2, 1), "conv1d needs an input of rank 2 (steps, features); received (None, 9)",
     "`reshape 9x1`"),
    ("input 8x8x1\nglobalavgpool1d", (2, 1), "needs an input of rank 2", "`reshape 8x8`"),
    ("input 4x2\nconv1d 4 5", (2, 1), "window of 5 steps is longer than its input (None, 4, 2)", "padding=same"),
    ("input 4x2\nconv1d 4 3 dilation=2", (2, 1), "window of 5 steps", None),
    ("input 4x2\nconv1d 4 3 padding=full", (2, 20), "unknown padding 'full'; expected 'valid', 'same' or 'causal'",
     None),
    ("input 4x2\nmaxpool1d padding=causal", (2, 19), "unknown padding 'causal'; expected 'valid' or 'same'", None),
    ("input 20 int\nembedding 100", (2, 1), "an embedding dimension", "embedding 1000 16"),
    ("input 20 int\nembedding 100 8 mask_zero\ndense 2", (3, 1), "the model's output (dense) carries the mask",
     "globalavgpool1d"),
    ("input 6 int\ne = embedding 9 2 mask_zero\nf = dense 2\nmaximum e f\nglobalavgpool1d\ndense 2", (4, 1),
     "maximum reads the mask of embedding", None),
    ("input 6 int\ne = embedding 9 2 mask_zero\nf = embedding 9 2 from=in\nmultiply e f\nglobalavgpool1d\ndense 2",
     (4, 1), "multiply reads the mask of embedding", None),
    ("input 20 int\nembedding 100 8 mask_zero\nbatchnorm\nglobalavgpool1d\ndense 2", (3, 1),
     "batch_normalization reads the mask of embedding", "drop mask_zero"),
    ("input 6 int\ne = embedding 9 2 mask_zero\nf = dense 2\nconcat e f axis=1\nglobalavgpool1d\ndense 2", (4, 1),
     "the mask of a concat", None),
    ("input 6 int\ne = embedding 9 2 mask_zero\nf = dense 2\nconcat e f\nglobalavgpool1d\ndense 2", (4, 1),
     "the mask of a concat", None),
    ("input 20 integer\nembedding 10 2", (1, 10), "unknown word 'integer' in input", "'int'"),
    ("input 20 int\nlayernorm epsilon=0\nflatten", (2, 19), "epsilon", None),
]


@pytest.mark.parametrize("text, where, message, hint", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_sequence_errors(text, where, message, hint):
    with pytest.raises(SpecError) as e:
        ms.check(text)
    first = e.value.diagnostics[0]
    assert (first.line, first.column) == where, str(e.value)
    assert message in first.message, str(e.value)
    if hint is not None:
        assert first.hint and hint in first.hint, str(e.value)


def test_check_json_has_the_input_dtype_and_int_inputs_cost_no_bytes():
    # Keras counts weights only: an int32 input changes no total (its InputLayer has no weights)
    ints, floats = ms.check("input 10 int; embedding 100 8; globalavgpool1d; dense 1"), ms.check(
        "input 10x8; globalavgpool1d; dense 1")
    assert ints.total_params == 809 and ints.summary(line_length=80).count("3.16 KB") == 2
    assert floats.bytes == 9 * 4
