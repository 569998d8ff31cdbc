"""Advice: the warnings about valid specs that are probably not what was meant, and --strict."""

from __future__ import annotations

import pytest

import modelspec as ms


def warnings(text: str, code: str | None = None) -> list[ms.Diagnostic]:
    found = ms.check(ms.parse(text)).warnings
    assert all(w.severity == "warning" for w in found)
    return [w for w in found if code is None or w.code == code]


def test_a_well_made_spec_has_no_warnings():
    assert warnings("input 784\ndense 64 relu he_normal\ndropout 0.2\ndense 10 softmax\n"
                    "loss categorical_crossentropy\nmetrics accuracy\n") == []


# composed dense layers without an activation ----------------------------------------


def test_composed_dense_layers():
    (w,) = warnings("input 784\ndense 512\ndense 64 relu he_normal\n", "composed-affine")
    assert (w.line, w.column) == (2, 1)
    assert "dense and dense_1 have no activation between them" in w.message
    assert "784 -> 64" in w.message
    # 784*512+512 + 512*64+64 spent, 784*64+64 needed
    assert "Their 401,920 + 32,832 parameters could be 50,240 (384,512 buy nothing)" in w.message
    assert w.hint == "give dense an activation (`dense 512 relu`), or replace both with `dense 64`"


@pytest.mark.parametrize("between", ["relu", "batchnorm\nrelu", "leaky_relu"])
def test_an_activation_between_dense_layers_is_enough(between):
    assert warnings(f"input 4\ndense 8 he_normal\n{between}\ndense 3\n", "composed-affine") == []


# initializers ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, line", [
    ("input 4\ndense 8 relu\ndense 1 sigmoid\n", 2),                     # the default glorot_uniform
    ("input 4\ndense 8 elu glorot_normal\ndense 1 sigmoid\n", 2),
    ("input 4\ndense 8\nbatchnorm\nrelu\ndense 1 sigmoid\n", 2),          # the relu acts on dense's output
    ("input 8x8x1\nconv2d 4 3x3 relu\nflatten\ndense 1 sigmoid\n", 2),
])
def test_relu_family_with_glorot_wants_he(text, line):
    (w,) = warnings(text, "initializer")
    assert w.line == line
    assert "glorot" in w.message
    assert w.hint == "use he_normal or he_uniform with relu-family activations"


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_sigmoid_and_tanh_with_he_want_glorot(act):
    (w,) = warnings(f"input 4\ndense 8 {act} he_normal\ndense 1 sigmoid\n", "initializer")
    assert w.line == 2
    assert f"feeds {act} but uses he_normal" in w.message
    assert w.hint == "use glorot_uniform or glorot_normal with sigmoid and tanh"


def test_matching_initializers_have_no_warning():
    assert warnings("input 4\ndense 8 relu he_uniform\ndense 8 tanh\ndense 8 selu lecun_normal\n"
                    "dense 1 sigmoid\n", "initializer") == []


# output layer against the loss --------------------------------------------------------


@pytest.mark.parametrize("output, loss, hint", [
    ("dense 1 sigmoid", "categorical_crossentropy", "one unit wants `sigmoid` with binary_crossentropy"),
    ("dense 1 sigmoid", "sparse_categorical_crossentropy", "one unit wants `sigmoid` with binary_crossentropy"),
    ("dense 1", "binary_crossentropy", "end with `dense 1 sigmoid`"),
    ("dense 1 relu he_normal", "binary_crossentropy", "end with `dense 1 sigmoid`"),
    ("dense 3", "categorical_crossentropy", "end with `dense 3 softmax`"),
    ("dense 3 sigmoid", "sparse_categorical_crossentropy", "end with `dense 3 softmax`"),
    ("dense 3 softmax", "binary_crossentropy", "one class per sample: categorical_crossentropy"),
])
def test_output_layer_disagrees_with_the_loss(output, loss, hint):
    (w,) = warnings(f"input 4\ndense 8 tanh\n{output}\nloss {loss}\n", "loss")
    assert w.line == 3
    assert w.hint.startswith(hint)


@pytest.mark.parametrize("output, loss", [
    ("dense 1 sigmoid", "binary_crossentropy"),
    ("dense 3 softmax", "categorical_crossentropy"),
    ("dense 3 softmax", "sparse_categorical_crossentropy"),
    ("dense 3\nsoftmax", "categorical_crossentropy"),
    ("dense 3 softmax\ndropout 0.1", "categorical_crossentropy"),
    ("dense 1", "mse"),
])
def test_output_layer_agrees_with_the_loss(output, loss):
    assert warnings(f"input 4\ndense 8 tanh\n{output}\nloss {loss}\n", "loss") == []


def test_softmax_on_one_unit_is_always_wrong():
    (w,) = warnings("input 4\ndense 1 softmax\n", "softmax")
    assert w.line == 2
    assert "its output is always 1.0" in w.message
    assert w.hint == "for a yes/no output use `dense 1 sigmoid` with binary_crossentropy"


def test_softmax_only_at_the_end():
    (w,) = warnings("input 4\ndense 8 softmax\ndense 3 softmax\n", "softmax")
    assert (w.line, w.column) == (2, 1)
    assert "not the last layer" in w.message
    assert w.hint == "use relu (or another activation) in hidden layers"


def test_dropout_as_the_last_layer():
    (w,) = warnings("input 4\ndense 3 softmax\ndropout 0.5\n", "dropout")
    assert w.line == 3
    assert "is the last layer" in w.message
    assert w.hint == "put dropout between hidden layers, not after the output"


def test_warnings_are_in_source_order():
    found = warnings("input 4\ndense 8 relu\ndense 3\ndense 1 softmax\ndropout 0.5\n")
    lines = [w.line for w in found]
    assert lines == sorted(lines) and len(found) >= 4


# --strict -------------------------------------------------------------------------------


def test_strict_makes_warnings_errors():
    text = "input 4\ndense 8 relu\ndense 3 softmax\ndropout 0.5\n"
    expected = [(w.line, w.column, w.message) for w in warnings(text)]
    with pytest.raises(ms.SpecError) as caught:
        ms.check(ms.parse(text), strict=True)
    assert [(d.severity, d.line, d.column, d.message) for d in caught.value.diagnostics] == [
        ("error", *e) for e in expected]


def test_strict_passes_a_clean_spec():
    assert ms.check(ms.parse("dense 10 softmax in 4"), strict=True).warnings == []


# ---------------------------------------------------------------------------------------
# What training needs, against what the machine has


@pytest.mark.parametrize("text, line", [
    ("dense 10000000 in 784\ndense 10000000\nloss mse\n", 2),
    ("dense 99999999999999999999 in 784\nloss mse\n", 1),
])
def test_a_model_too_large_for_the_machine_is_refused_before_anything_is_allocated(text, line, monkeypatch):
    import modelspec.checker as checker

    monkeypatch.setattr(checker, "machine_memory", lambda: 24 * 1024**3)
    with pytest.raises(ms.SpecError) as caught:
        ms.build(text, "numpy")
    (d,) = caught.value.diagnostics
    assert d.code == "memory" and d.span.line == line
    assert d.message.startswith("training this model needs at least ")
    assert d.message.endswith("; this machine has 24.00 GB")
    assert "weights " in d.message and "optimizer slots " in d.message and "activations of a batch of 32 " in d.message


def test_training_memory_counts_weights_gradients_slots_and_one_batch():
    report = ms.check("dense 10 in 4\nbatchnorm\n")
    adam, sgd = ms.ir.Optimizer(name="adam"), ms.ir.Optimizer(name="sgd")
    # dense: 50 weights; batchnorm: 20 trainable + 20 moving statistics; outputs 10 + 10 per sample
    assert report.training_memory(8, adam) == {"weights": 4 * 90, "gradients": 4 * 70, "optimizer slots": 4 * 140,
                                               "activations of a batch of 8": 4 * 8 * 20}
    assert report.training_memory(8, sgd)["optimizer slots"] == 0
    assert ms.ir.Optimizer(name="rmsprop", momentum=0.9, centered=True).slots() == 3
