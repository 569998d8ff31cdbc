"""Property-based: whatever the text, ms.parse raises nothing but SpecError; whatever parses
is a valid IR (the parser skips pydantic's validation, so full validation must agree), checks
without any other exception, and survives the JSON and text round trips."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import modelspec as ms
from modelspec import ir
from modelspec.reader import KEYWORDS
from modelspec.printer import to_text

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_spec_error(source):
    try:
        return ms.parse(source)
    except ms.SpecError as e:
        assert e.diagnostics and all(d.severity == "error" for d in e.diagnostics)
        assert all(d.span is None or (d.span.line >= 1 and d.span.column >= 1) for d in e.diagnostics)
        e.render()
        return None


def assert_sound(spec: ir.Spec) -> None:
    dumped = spec.model_dump()
    assert ir.Spec.model_validate(dumped).model_dump() == dumped
    assert ir.Spec.model_validate_json(spec.model_dump_json()) == spec
    assert ms.parse(to_text(spec)) == spec
    try:
        report = ms.check(spec)
    except ms.SpecError as e:
        e.render()
        return
    report.summary(line_length=76)
    json.dumps(report.to_dict())


# ---------------------------------------------------------------------------------------
# Arbitrary text and bytes


@FUZZ
@given(st.text())
@example("")
@example("dense 99999999999")
@example("input ()\ndense 3")
@example("input 3\n@\ndense " + "(" * 3000 + "1" + ")" * 3000)
def test_arbitrary_text(text):
    spec = parse_or_spec_error(text)
    if spec is not None:
        assert_sound(spec)


@settings(max_examples=100, deadline=None)
@given(st.binary())
def test_arbitrary_bytes(data):
    spec = parse_or_spec_error(data)
    if spec is not None:
        assert_sound(spec)


# ---------------------------------------------------------------------------------------
# Text made of the language's own tokens, which gets past the grammar far more often

WORDS = st.sampled_from(sorted(set(KEYWORDS + ir.ACTIVATIONS + ir.INITIALIZERS + ir.OPTIMIZERS + ir.LOSSES
                                   + ir.METRICS) | {"nobias", "l1", "l2", "valid", "same", "in", "true",
                                                    "false", "He_Normal", "silu", "xyzzy"}))
KEYS = st.sampled_from(sorted({
    "units", "rate", "seed", "stride", "strides", "padding", "activation", "kernel_initializer",
    "bias_init", "use_bias", "l1", "l2", "name", "momentum", "epsilon", "eps", "negative_slope", "alpha",
    "lr", "learning_rate", "beta_1", "beta_2", "rho", "centered", "nesterov", "weight_decay",
    "initial_accumulator_value", "batch", "epochs", "validation", "shuffle", "delta", "mean", "stddev",
    "minval", "maxval", "gain", "bogus"}))
NUMBERS = st.one_of(st.integers(-2, 40).map(str), st.sampled_from(
    ["0.5", "1e-3", "1.0", "0.0", "2.5", "+3", "1e400", "99999999999", "0.999", "1", "0"]))
DIMS = st.lists(st.integers(0, 30), min_size=2, max_size=4).map(lambda d: "x".join(map(str, d)))
TUPLES = st.lists(st.integers(0, 30), max_size=4).map(lambda d: "(" + ", ".join(map(str, d)) + ")")
STRINGS = st.sampled_from(['"a b"', "'x'", '""', '"a/b"', '"in"', '"unterminated', '"\\"q\\""'])
VALUES = st.one_of(NUMBERS, DIMS, TUPLES, WORDS, STRINGS)
OPTIONS = st.builds("{}={}".format, KEYS, VALUES)
CALLS = st.builds(lambda name, args: f"{name}({', '.join(args)})",
                  st.sampled_from(ir.INITIALIZERS + ("bogus",)), st.lists(st.one_of(OPTIONS, NUMBERS), max_size=3))
ARGS = st.one_of(VALUES, OPTIONS, CALLS, st.sampled_from(["in 784", "in 8x8x1", "in (4, 5)", "=", ")", "(", ","]))
STATEMENTS = st.builds(lambda kw, args: " ".join([kw, *args]),
                       st.sampled_from(KEYWORDS + ("dens", "Dense", "")), st.lists(ARGS, max_size=4))
SEPARATORS = st.sampled_from(["\n", "; ", "\n\n", "  # a comment\n", "\r\n"])


@st.composite
def token_specs(draw) -> str:
    head = draw(st.sampled_from(["", "input 8x8x1\n", "input 784\n", "input 6\n", "model m\ninput 16x16x3\n"]))
    statements = draw(st.lists(STATEMENTS, min_size=1, max_size=8))
    return head + "".join(s + draw(SEPARATORS) for s in statements)


@FUZZ
@given(token_specs())
def test_text_made_of_tokens(text):
    spec = parse_or_spec_error(text)
    if spec is not None:
        assert_sound(spec)


@st.composite
def layer_stacks(draw) -> str:
    """Mostly valid specs: an image input and layers with plausible arguments."""
    size = draw(st.integers(1, 20))
    lines = [f"input {size}x{draw(st.integers(1, 20))}x{draw(st.integers(1, 4))}"]
    pair = st.builds("{}x{}".format, st.integers(1, 5), st.integers(1, 5))
    layer = st.one_of(
        st.builds("conv2d {} {} stride={} padding={} {}".format, st.integers(1, 8), pair,
                  st.integers(1, 3), st.sampled_from(["valid", "same"]), st.sampled_from(ir.ACTIVATIONS)),
        st.builds("{} {} stride={} padding={}".format, st.sampled_from(["maxpool2d", "avgpool2d"]), pair,
                  st.integers(1, 3), st.sampled_from(["valid", "same"])),
        st.builds("dense {} {} {}".format, st.integers(1, 16), st.sampled_from(ir.ACTIVATIONS),
                  st.sampled_from(ir.INITIALIZERS)),
        st.builds("dropout {}".format, st.sampled_from(["0.0", "0.5", "1.0"])),
        st.sampled_from(["batchnorm", "flatten", "globalavgpool2d", "leaky_relu", "relu", "softmax"]),
    )
    lines += draw(st.lists(layer, min_size=1, max_size=8))
    return "\n".join(lines)


@FUZZ
@given(layer_stacks())
def test_layer_stacks(text):
    spec = parse_or_spec_error(text)
    if spec is not None:
        assert_sound(spec)
