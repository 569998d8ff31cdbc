"""modelspec's summary table against Keras's own `model.summary()`, character for character."""

from __future__ import annotations

import pytest

import modelspec as ms
from corpus import SPEC_FILES, VARIED

# Long layer names (wrapped at spaces, or cut with an ellipsis), wide characters, long shapes.
AWKWARD = {
    "long_names": """
        input 28x28x3
        conv2d 4 3x3 name=a_really_long_layer_name_that_cannot_possibly_fit_in_the_first_column_at_all
        dense 3 name="a name with many short words that wraps across several lines of the table cell"
        dense 2 name="x y"
    """,
    "long_shapes": """
        input 123456789x987654321x12345
        maxpool2d 1x1
        conv2d 7 1x1 padding=same name=b
        avgpool2d 3x3 stride=2 padding=same
    """,
    "wide_characters": """
        model "宽字符"
        input 4
        dense 3 name="稠密层稠密层稠密层稠密层稠密层稠密层稠密层稠密层稠密层稠密层"
        dense 2 name="éééééééééééééééééééééééééééééééééééééééééééééééééé"
    """,
}
# Normalization's count is an int64: 8 bytes in the totals, where every other weight has 4.
PREPROCESSING = {
    "rescale_normalize": """
        input 28x28x3
        rescale 1/127.5 offset=-1
        normalize
        normalize name=again
        flatten
        dense 10 softmax
    """,
}
CASES = ([pytest.param(path, id=path.stem) for path in SPEC_FILES]
         + [pytest.param(text, id=name) for name, text in {**VARIED, **AWKWARD, **PREPROCESSING}.items()])

# Keras 3.15's model.summary(line_length=76) for this model, captured once.
MODEL1_WITH_BATCHNORM = "dense 512 in 784; dense 64 relu; batchnorm; dense 10 softmax"
KERAS_SUMMARY_76 = """\
Model: "model1"
┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━┓
┃ Layer (type)                    ┃ Output Shape           ┃       Param # ┃
┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━┩
│ dense (Dense)                   │ (None, 512)            │       401,920 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ dense_1 (Dense)                 │ (None, 64)             │        32,832 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ batch_normalization             │ (None, 64)             │           256 │
│ (BatchNormalization)            │                        │               │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ dense_2 (Dense)                 │ (None, 10)             │           650 │
└─────────────────────────────────┴────────────────────────┴───────────────┘
 Total params: 435,658 (1.66 MB)
 Trainable params: 435,530 (1.66 MB)
 Non-trainable params: 128 (512.00 B)
"""


def test_summary_matches_a_captured_keras_summary():
    report = ms.check(ms.parse(MODEL1_WITH_BATCHNORM, name="model1"))
    assert report.summary(line_length=76) == KERAS_SUMMARY_76


def test_tutorial_totals_line():
    summary = ms.check(ms.parse("specs/model1.ms")).summary(line_length=88)
    assert " Total params: 435,402 (1.66 MB)\n" in summary
    assert "│ dense (Dense)                        │ (None, 512)                 │         401,920 │" in summary


def test_absurd_sizes_are_summarised():
    report = ms.check(ms.parse("dense 1" + "0" * 400 + " in 784"))
    summary = report.summary(line_length=88)
    assert f" Total params: {784 * 10**400 + 10**400:,} (" in summary
    assert summary.count("PB)") == 2  # total and trainable


@pytest.mark.keras
@pytest.mark.parametrize("line_length", [76, 88, 100])
@pytest.mark.parametrize("source", CASES)
def test_summary_equals_keras(source, line_length, monkeypatch):
    pytest.importorskip("keras")
    import keras_reference as kr

    # rich crops Keras's capture at the terminal's width; give it room for the widest table
    monkeypatch.setenv("COLUMNS", "200")
    spec = ms.parse(source)
    assert ms.check(spec).summary(line_length=line_length) == kr.summary(kr.model(spec), line_length)


@pytest.mark.keras
@pytest.mark.parametrize("source", [pytest.param("specs/model_b.ms", id="model_b"),
                                    pytest.param(VARIED["every_layer"], id="every_layer")])
def test_summary_equals_keras_at_every_width(source, monkeypatch):
    """Narrow tables wrap the header too (rich aligns it to the bottom) and cut numbers with '…'."""
    pytest.importorskip("keras")
    import keras_reference as kr

    monkeypatch.setenv("COLUMNS", "200")
    spec = ms.parse(source)
    report, model = ms.check(spec), kr.model(spec)
    differ = [n for n in range(16, 121) if report.summary(line_length=n) != kr.summary(model, n)]
    assert differ == []


def test_narrowest_summary():
    """16 columns is the narrowest table Keras draws (each column needs 4 characters)."""
    report = ms.check(ms.parse("specs/model1.ms"))
    assert report.summary(line_length=16).startswith('Model: "model1"\n┏')
    with pytest.raises(ValueError, match="Insufficient console width"):
        report.summary(line_length=15)


# Graphs: the InputLayer row and the "Connected to" column, whose cells wrap one input a line
GRAPHS = {
    "inception": """
        input 8x8x3
        a = conv2d 4 1x1 relu padding=same
        b = conv2d 4 3x3 relu padding=same from=in
        c = maxpool2d 3x3 stride=1 padding=same from=in
        concat a b c
    """,
    "long_names": """
        input 6
        first = dense 4 name=a_rather_long_layer_name_for_the_connected_to_column
        second = dense 4 from=in name="a name with spaces"
        third = dense 4 tanh from=in
        average first second third
        dense 2
    """,
    "rank_broadcast": """
        input 4x4x3
        x = conv2d 5 1x1
        globalavgpool2d
        dense 5
        add x
    """,
}


@pytest.mark.keras
@pytest.mark.parametrize("source", GRAPHS.values(), ids=GRAPHS.keys())
def test_graph_summary_equals_keras_at_every_width(source, monkeypatch):
    """A functional model's table, from the narrowest Keras draws to a wide one."""
    pytest.importorskip("keras")
    import keras_reference as kr
    from test_keras_graph import functional

    monkeypatch.setenv("COLUMNS", "200")
    spec = ms.parse(source)
    report, model = ms.check(spec), functional(spec)

    def table(summary, n):  # too narrow for four columns: Keras's ValueError, and ours
        try:
            return summary(n)
        except ValueError as e:
            return str(e)

    differ = [n for n in range(16, 121)
              if table(lambda n: report.summary(line_length=n), n) != table(lambda n: kr.summary(model, n), n)]
    assert differ == []
    assert table(lambda n: report.summary(line_length=n), 20) == "Insufficient console width to print summary."
