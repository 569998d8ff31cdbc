"""One test per kind of error: its exact line and column, what was expected and what was
received, and the hint where there is one. Errors come from ms.check on spec text, which
parses first, so syntax, meaning and shape errors all arrive as SpecError."""

from __future__ import annotations

import pytest

import modelspec as ms


def errors(text: str) -> list[ms.Diagnostic]:
    with pytest.raises(ms.SpecError) as caught:
        ms.check(text)
    err = caught.value
    # the library raises SpecError with the diagnostics and nothing else: no chained exception
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    assert all(d.severity == "error" for d in err.diagnostics)
    return err.diagnostics


def error(text: str) -> ms.Diagnostic:
    (d,) = errors(text)
    return d


def where(d: ms.Diagnostic) -> tuple[int, int, int, int]:
    return tuple(d.span)


# ---------------------------------------------------------------------------------------
# Statements


@pytest.mark.parametrize("text, hint", [
    ("input 784\ndens 64 relu\ndense 10", "did you mean 'dense'?"),
    ("input 784\nDense 64\ndense 10", "did you mean 'dense'?"),
    ("input 784\nBatchNormalization\ndense 10", "did you mean 'batchnorm'?"),
    ("input 784\noptimiser adam\ndense 10", "did you mean 'optimizer'?"),
])
def test_unknown_statement_suggests_the_keyword(text, hint):
    d = error(text)
    assert where(d)[:2] == (2, 1)
    assert d.message.startswith(f"unknown statement '{text.split()[2]}'; expected a layer (dense, conv2d")
    assert d.hint == hint


def test_unknown_word_in_a_layer_is_named_and_suggested():
    d = error("input 784\ndense 64 rleu\n")
    assert where(d) == (2, 10, 2, 14)
    assert d.message == ("unknown word 'rleu' in dense; expected an activation (relu, softmax, ...), "
                         "an initializer (he_normal, ...), nobias, l1 or l2")
    assert d.hint == "did you mean 'relu'?"


def test_unknown_activation():
    d = error("input 784\ndense 64 activation=rleu\n")
    assert where(d) == (2, 21, 2, 25)
    assert d.message.startswith("unknown activation 'rleu'; expected 'linear', 'relu', 'sigmoid'")
    assert d.hint == "did you mean 'relu'?"


def test_unknown_initializer():
    d = error("input 784\ndense 64 he_normall(seed=1)\n")
    assert where(d) == (2, 10, 2, 28)
    assert d.message.startswith("unknown initializer 'he_normall'; expected 'glorot_uniform', ")
    assert "'he_normal'" in d.message
    assert d.hint == "did you mean 'he_normal'?"


def test_unknown_initializer_argument():
    d = error("input 3\ndense 3 he_normal(sed=1)\n")
    assert where(d)[:2] == (2, 19)
    assert d.message == "he_normal() has no argument 'sed'; expected 'seed'"
    assert d.hint == "did you mean 'seed'?"


def test_unknown_option():
    d = error("input 784\ndense 64 relu unitz=3\n")
    assert where(d) == (2, 15, 2, 20)
    assert d.message.startswith("unknown option 'unitz'; dense takes 'activation', ")
    assert d.hint == "did you mean 'units'?"


def test_option_given_twice():
    d = error("input 3\ndense 3 l2=0.1 l2=0.2\n")
    assert where(d)[:2] == (2, 16)
    assert d.message == "'l2' is given twice"
    assert d.hint == "first given at column 9"


# ---------------------------------------------------------------------------------------
# Numbers


def test_fractional_units():
    d = error("input 784\ndense 6.5\n")
    assert where(d) == (2, 7, 2, 10)
    assert d.message == "the number of units must be a whole number; received '6.5'"


@pytest.mark.parametrize("token", ["64x", "1.2.3", "3x3x", "-x", "2e"])
def test_malformed_number(token):
    d = error(f"input 784\ndense {token} relu\n")
    assert where(d) == (2, 7, 2, 7 + len(token))
    assert d.message == (f"malformed number '{token}'; expected a number such as 64, 0.5 or 1e-3, "
                         "or a shape such as 28x28")


def test_number_too_large_to_read():
    d = error("input 784\ndense " + "9" * 5000 + "\n")
    assert where(d)[:2] == (2, 7)
    assert d.message.startswith("the number of units is too large to be a number; received '999")


@pytest.mark.parametrize("units", ["0", "-5"])
def test_units_below_one(units):
    d = error(f"input 784\ndense {units}\n")
    assert where(d) == (2, 7, 2, 7 + len(units))
    assert d.message == f"the number of units must be at least 1; received {units}"


@pytest.mark.parametrize("rate", ["1.5", "-0.1"])
def test_dropout_rate_out_of_range(rate):
    d = error(f"input 784\ndense 10\ndropout {rate}\n")
    assert where(d) == (3, 9, 3, 9 + len(rate))
    assert d.message == f"the dropout rate must be at least 0 and at most 1; received {rate}"


def test_non_finite_number():
    d = error("input 3\ndense 3 l2=1e400\n")
    assert where(d)[:2] == (2, 12)
    assert d.message == "l2 must be a finite number; received '1e400'"


@pytest.mark.parametrize("text, span, message", [
    ("rescale 1/0", (2, 9, 2, 12), "the scale divides by zero; received '1/0'"),
    ("rescale abc", (2, 9, 2, 12), "the scale must be a number or a fraction such as 1/255; received 'abc'"),
    ("rescale 1/255 offset=x", (2, 22, 2, 23), "the offset must be a number or a fraction such as 1/255; received 'x'"),
    ("rescale 1/0.0", (2, 9, 2, 14), "the scale divides by zero; received '1/0.0'"),
    ("rescale inf", (2, 9, 2, 12), "the scale must be a finite number; received 'inf'"),
    ("rescale 1/255/3", (2, 10, 2, 11), "unexpected character '/'"),
    ("dense 1/2", (2, 7, 2, 10), "the number of units must be a whole number; received '1/2'"),
])
def test_fractions(text, span, message):
    d = error(f"input 4\n{text}\n")
    assert where(d) == span
    assert d.message.startswith(message), d.message


def test_missing_scale():
    d = error("input 4\nrescale\n")
    assert where(d) == (2, 1, 2, 8)
    assert d.message == "rescale needs a scale; received nothing"
    assert d.hint == "for example: rescale 1/255"


# ---------------------------------------------------------------------------------------
# Missing and misplaced pieces


def test_missing_units_is_one_error():
    d = error("input 784\ndense relu\n")
    assert where(d)[:2] == (2, 1)
    assert d.message == "dense needs a number of units; received nothing"
    assert d.hint == "for example: dense 64 relu"


def test_missing_input():
    d = error("dense 64 relu\ndense 10\n")
    assert where(d) == (1, 1, 1, 14)
    assert d.message.startswith("the model has no input shape; expected `input SHAPE` or `in SHAPE`")
    assert d.hint == "for example `input 784`, `input 28x28` or `dense 512 in 784`"


@pytest.mark.parametrize("text", ["input ()\ndense 3", "input 3.0\ndense 3", "dense 3 in 3.0\ndense 2",
                                  "dense 3 in\n", "dense relu in 784\ndense 3"])
def test_an_invalid_input_is_not_also_reported_missing(text):
    d = error(text)
    assert "no input shape" not in d.message
    assert where(d)[0] == 1


def test_empty_tuple_has_a_position():
    d = error("input ()\ndense 3")
    assert where(d) == (1, 7, 1, 9)
    assert d.message == "expected a shape such as 784, 28x28 or (28, 28); received '()'"


def test_no_layers():
    d = error("model empty\ninput 3\n")
    assert where(d)[:2] == (2, 1)
    assert d.message == "the spec has no layers; expected at least one, such as `dense 10 softmax`"


def test_in_on_a_later_layer():
    d = error("dense 64 in 784\ndense 10 in 64\n")
    assert where(d) == (2, 10, 2, 15)
    assert d.message == "only the first layer may declare its input with 'in'"
    assert d.hint == "give the input once, on the first layer or as an `input` statement"


def test_in_as_well_as_input():
    d = error("input 784\ndense 64 in 784\n")
    assert where(d) == (2, 10, 2, 16)
    assert d.message == "the input shape is already given by the `input` statement"
    assert d.hint == "remove one of them (the `input` statement is on line 1)"


def test_input_after_the_first_layer():
    diags = errors("input 3\ndense 3\ninput 3\n")
    assert [(where(d)[:2], d.message) for d in diags] == [((3, 1), "the input shape is given twice")]


@pytest.mark.parametrize("text, line, message", [
    ("model a\nmodel b\ndense 1 in 3\n", 2, "'model' is given twice"),
    ("input 3\ninput 4\ndense 1\n", 2, "the input shape is given twice"),
    ("input 3\ndense 1\noptimizer adam\noptimizer sgd\n", 4, "'optimizer' is given twice"),
    ("input 3\ndense 1\nloss mse\nloss mae\n", 4, "'loss' is given twice"),
    ("input 3\ndense 1\nmetrics mae\nmetrics mse\n", 4, "'metrics' is given twice"),
    ("input 3\ndense 1\nfit epochs=1\nfit epochs=2\n", 4, "'fit' is given twice"),
], ids=["model", "input", "optimizer", "loss", "metrics", "fit"])
def test_duplicate_statement(text, line, message):
    d = error(text)
    assert where(d)[:2] == (line, 1)
    assert d.message == message
    assert d.hint == f"first given on line {line - 1}"


# ---------------------------------------------------------------------------------------
# Syntax


def test_unterminated_string():
    d = error('input 3\ndense 1 name="abc\n')
    assert where(d) == (2, 14, 2, 15)
    assert d.message == 'unterminated string: expected a closing "'
    assert d.hint == 'end the string with " on the same line'


def test_unexpected_character():
    d = error("input 3\ndense 1 @\n")
    assert where(d) == (2, 9, 2, 10)
    assert d.message.startswith("unexpected character '@'; expected ")


def test_unprintable_character_is_escaped_once():
    d = error("input 3\u00a0\ndense 3\n")
    assert where(d)[:2] == (1, 8)
    assert d.message.startswith("unexpected character '\\xa0'; expected ")


def test_unclosed_call():
    d = error("input 3\ndense 1 he_normal(seed=1\n")
    assert where(d)[:2] == (2, 25)
    assert d.message == "unexpected end of statement; expected ')' or ','"
    assert d.hint == "close the parenthesis: he_normal(seed=2024)"


# ---------------------------------------------------------------------------------------
# Training


def test_hyperparameter_of_another_optimizer():
    d = error("input 3\ndense 1\noptimizer adam momentum=0.9\n")
    assert where(d) == (3, 16, 3, 24)
    assert d.message == "adam has no hyperparameter 'momentum'"
    assert d.hint == ("adam takes 'learning_rate', 'beta_1', 'beta_2', 'epsilon', 'weight_decay', 'clipnorm', "
                      "'clipvalue' or 'global_clipnorm'")


def test_misspelt_hyperparameter():
    d = error("input 3\ndense 1\noptimizer sgd learning_rat=0.1\n")
    assert where(d)[:2] == (3, 15)
    assert d.message == "sgd has no hyperparameter 'learning_rat'"
    assert d.hint == "did you mean 'learning_rate'?"


def test_hyperparameter_out_of_range():
    d = error("input 3\ndense 1\noptimizer adam beta_1=1\n")
    assert where(d)[:2] == (3, 23)
    assert d.message == "beta_1 must be at least 0 and below 1; received 1"


def test_unknown_optimizer_and_loss():
    opt, loss = errors("input 3\ndense 1\noptimizer adamm\nloss cross_entropy\n")
    assert (where(opt)[:2], where(loss)[:2]) == ((3, 11), (4, 6))
    assert opt.message.startswith("unknown optimizer 'adamm'; expected 'sgd', 'rmsprop', 'adam'")
    assert opt.hint == "did you mean 'adam'?"
    assert loss.message.startswith("unknown loss 'cross_entropy'; expected 'categorical_crossentropy'")


# ---------------------------------------------------------------------------------------
# Shapes and names (the checker)


@pytest.mark.parametrize("text, received, hint", [
    ("input 784\nconv2d 32 3x3\n", "(None, 784)",
     "images are (height, width, channels): declare `input 28x28x1`, or remove the layer that flattened them"),
    ("input 28x28\nconv2d 32 3x3\n", "(None, 28, 28)", "add a channel axis: `input 28x28x1`"),
])
def test_conv2d_needs_an_image(text, received, hint):
    d = error(text)
    assert where(d) == (2, 1, 2, 14)
    assert d.message == f"conv2d: conv2d needs an input of rank 3 (height, width, channels); received {received}"
    assert d.hint == hint


@pytest.mark.parametrize("text, line, before", [
    ("input 4\ndense 3\nnormalize\n", 3, "dense at line 2"),
    ("input 4x4x1\nrescale 1/255\nconv2d 2 3x3\nflatten\nnormalize\n", 5, "conv2d at line 3"),
    ("input 4\nnormalize\nbatchnorm name=bn\nrelu\nnormalize\n", 5, "bn at line 3"),
])
def test_normalize_after_a_layer_with_weights(text, line, before):
    d = error(text)
    assert where(d)[:2] == (line, 1)
    assert d.message == f"normalize adapts to the data that reaches it before training; {before} before it has weights"
    assert d.hint == f"put normalize before {before.split()[0]}"


def test_pooling_after_flatten():
    d = error("input 28x28x1\nflatten\nmaxpool2d 2x2\n")
    assert where(d)[:2] == (3, 1)
    assert d.message == ("max_pooling2d: maxpool2d needs an input of rank 3 (height, width, channels); "
                         "received (None, 784)")


def test_kernel_larger_than_input():
    d = error("input 2x2x1\nconv2d 32 3x3\n")
    assert where(d) == (2, 1, 2, 14)
    assert d.message == ("conv2d: conv2d's window 3x3 is larger than its input (None, 2, 2, 1) (height 2 < 3); "
                         "the output would have no rows")
    assert d.hint == "use padding=same, a smaller window, or a larger input"


def test_duplicate_layer_names():
    d = error("input 3\ndense 4 name=a\ndense 5 name=a\n")
    assert where(d)[:2] == (3, 1)
    assert d.message == "the layer name 'a' is used twice; Keras needs unique names"
    assert d.hint == "first used on line 2"


def test_invalid_layer_name():
    d = error('input 3\ndense 3 name="a/b"\n')
    assert where(d)[:2] == (2, 14)
    assert d.message == "a layer name must be non-empty and may not contain '/'; received '\"a/b\"'"


# ---------------------------------------------------------------------------------------
# Several errors; encodings; rendering


def test_every_error_is_reported_in_order():
    text = "input 784\ndense 0\ndense 64 rleu\nfoo 3\ndense 10 @\nflatten 3\noptimizer adam rho=0.9\n"
    assert [where(d)[:2] for d in errors(text)] == [(2, 7), (3, 10), (4, 1), (5, 10), (6, 9), (7, 16)]


def test_errors_on_one_line_are_in_column_order():
    text = "input 3\ndense 0 rleu l9=1 nobias\n"
    assert [where(d)[:2] for d in errors(text)] == [(2, 7), (2, 9), (2, 14)]


def test_binary_bytes():
    d = error(b"input 3\ndense \xff\xfe 3\n")  # type: ignore[arg-type]
    assert where(d)[:2] == (2, 7)
    assert d.message == "expected UTF-8 text; received the byte 0xff"
    assert d.hint == "is this a binary file? A spec is plain text."


def test_nul_byte():
    d = error(b"input 3\ndense\x00 3\n")  # type: ignore[arg-type]
    assert where(d)[:2] == (2, 6)
    assert d.message == "expected text; received a NUL byte"


def test_errors_carry_the_file(tmp_path):
    path = tmp_path / "spec.ms"
    path.write_text("input 784\ndense 64 relu\ndense 64 rleu\ndense 0\n")
    with pytest.raises(ms.SpecError) as caught:
        ms.parse(path)
    assert [(d.file, d.line, d.column) for d in caught.value.diagnostics] == [
        (str(path), 3, 10), (str(path), 4, 7)]


def test_rendering(tmp_path):
    path = tmp_path / "spec.ms"
    path.write_text("model m\ninput 784\ndense 64 rleu\ndense 0\n")
    with pytest.raises(ms.SpecError) as caught:
        ms.parse(path)
    assert str(caught.value) == caught.value.render() == "\n".join([
        f"{path}:3:10: error: unknown word 'rleu' in dense; expected an activation (relu, softmax, ...), "
        "an initializer (he_normal, ...), nobias, l1 or l2",
        "  dense 64 rleu",
        "           ^^^^",
        "  hint: did you mean 'relu'?",
        f"{path}:4:7: error: the number of units must be at least 1; received 0",
        "  dense 0",
        "        ^",
    ])


def test_rendering_of_text_without_a_file():
    with pytest.raises(ms.SpecError) as caught:
        ms.parse("dense 10 in 0")
    assert caught.value.render().splitlines()[0] == (
        "<spec>:1:13: error: every dimension of a shape must be at least 1; received '0'")


def test_a_flood_of_errors_is_cut_short():
    with pytest.raises(ms.SpecError) as caught:
        ms.parse("input 3\n" + "dense 0\n" * 500)
    assert len(caught.value.diagnostics) == 500
    rendered = caught.value.render()
    assert rendered.count(": error: ") == 100
    assert rendered.endswith("\n... and 400 more")


def test_spec_error_is_an_exception_with_the_first_message():
    with pytest.raises(ms.SpecError) as caught:
        ms.parse("input 3\ndense 0\ndense -1")
    assert caught.value.args == ("the number of units must be at least 1; received 0",)
    assert isinstance(caught.value, Exception)


# ---------------------------------------------------------------------------------------
# Numbers that are not finite, missing files, limits


@pytest.mark.parametrize("text, where_, message", [
    ("input 4\ndense nan\n", (2, 7), "the number of units must be a whole number; received 'nan'"),
    ("input 4\nleaky_relu nan\n", (2, 12), "the negative slope must be a finite number; received 'nan'"),
    ("input 4\ndropout inf\n", (2, 9), "the dropout rate must be a finite number; received 'inf'"),
    ("input 4\nbatchnorm momentum=NaN\n", (2, 20), "momentum must be a finite number; received 'NaN'"),
])
def test_a_number_that_is_not_finite_is_named(text, where_, message):
    d = error(text)
    assert where(d)[:2] == where_
    assert d.message == message


@pytest.mark.parametrize("name", ["missing.ms", "no/such/dir/spec.ms", "missing_dir/spec"])
def test_a_missing_file_is_reported_as_missing(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ms.SpecError) as caught:
        ms.parse(name)
    (d,) = caught.value.diagnostics
    assert d.file == name and d.message == "cannot read the spec: No such file or directory"


def test_reading_stops_at_the_size_limit():
    from modelspec.parser import MAX_SPEC_BYTES

    with pytest.raises(ms.SpecError) as caught:
        ms.parse("/dev/zero")  # endless: only the limit ends the read
    (d,) = caught.value.diagnostics
    assert d.message == f"expected a spec of at most {MAX_SPEC_BYTES:,} bytes (2 MiB); received more"
    with pytest.raises(ms.SpecError):
        ms.parse("input 4\n" + "#" * MAX_SPEC_BYTES)


def test_the_layer_count_is_limited():
    from modelspec.parser import MAX_LAYERS

    ms.parse("input 4\n" + "relu\n" * MAX_LAYERS)
    d = error("input 4\n" + "relu\n" * (MAX_LAYERS + 1))
    assert where(d)[:2] == (MAX_LAYERS + 2, 1)
    assert d.message == f"the spec has more than {MAX_LAYERS:,} layers, the limit"
    d = error("input 4\nrepeat 1000 {\n  repeat 1000 { relu }\n}")  # expansion stops at the limit
    assert where(d)[:2] == (3, 17) and d.message == f"the spec has more than {MAX_LAYERS:,} layers, the limit"
