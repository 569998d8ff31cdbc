"""The training-control statements of the language: learning-rate schedules, clipping, the
newer optimizers, loss options, top-k metrics, early_stopping and reduce_lr_on_plateau, and
the softmax layer with an axis. The issue's examples parse; what they mean is Keras's (its
classes' own defaults are the expected values); every bad argument is an error at its line;
`fmt` writes back what parses to the same spec."""

from __future__ import annotations

import inspect

import pytest

import modelspec as ms
from modelspec import ir
from modelspec.printer import to_text

MODEL = "input 4\ndense 8 relu\ndense 3 softmax\n"


def spec(training: str) -> ir.Spec:
    return ms.parse(MODEL + training)


def error(training: str) -> ms.Diagnostic:
    with pytest.raises(ms.SpecError) as caught:
        ms.check(MODEL + training)
    (d,) = caught.value.diagnostics
    return d


# The issue's examples, as written there.
ISSUE_EXAMPLES = [
    "optimizer sgd lr=exponential_decay(0.1, decay_steps=100, decay_rate=0.96) momentum=0.9",
    "optimizer adam lr=cosine_decay(0.01, decay_steps=1000, alpha=0.1)",
    "optimizer adam lr=cosine_decay(0.01, decay_steps=1000, warmup_target=0.1, warmup_steps=100)",
    "optimizer sgd lr=piecewise_constant_decay(boundaries=[100, 200], values=[0.1, 0.01, 0.001])",
    "optimizer sgd lr=inverse_time_decay(0.1, decay_steps=10, decay_rate=0.5)",
    "optimizer sgd lr=polynomial_decay(0.1, decay_steps=10)",
    "fit validation=0.2\nearly_stopping monitor=val_loss min_delta=0.001 patience=3 mode=min baseline=0.9 "
    "restore_best_weights start_from_epoch=2",
    "fit validation=0.2\nreduce_lr_on_plateau monitor=val_loss factor=0.5 patience=2 mode=auto min_delta=0.01 "
    "cooldown=1 min_lr=0.00001",
    "optimizer adadelta", "optimizer adamax", "optimizer lion",
    "optimizer adam clipnorm=1.0", "optimizer sgd clipvalue=0.5", "optimizer rmsprop global_clipnorm=2",
    "loss sparse_categorical_crossentropy from_logits", "loss categorical_crossentropy label_smoothing=0.1",
    "loss binary_crossentropy from_logits=true label_smoothing=0.2",
    "metrics top_k_categorical_accuracy k=2", "metrics sparse_top_k_categorical_accuracy",
]


@pytest.mark.parametrize("text", ISSUE_EXAMPLES)
def test_the_issues_examples_parse_and_print_back_to_the_same_spec(text):
    s = spec(text)
    assert ms.parse(to_text(s)) == s


def test_a_schedule_is_the_optimizers_learning_rate_with_the_initial_rate_first():
    opt = spec(ISSUE_EXAMPLES[0]).optimizer
    assert opt.schedule == ir.Schedule(name="exponential_decay", initial_learning_rate=0.1, decay_steps=100,
                                       decay_rate=0.96)
    assert opt.config()["learning_rate"].config() == {"initial_learning_rate": 0.1, "decay_steps": 100,
                                                      "decay_rate": 0.96, "staircase": False}
    # Keras's class names, and positional arguments in Keras's order
    assert spec("optimizer sgd lr=ExponentialDecay(0.1, 100, 0.96)").optimizer == opt.model_copy(
        update={"momentum": None})


def test_the_callbacks_take_kerass_defaults():
    s = spec("fit validation=0.1\nearly_stopping\nreduce_lr_on_plateau")
    assert s.early_stopping == ir.EarlyStopping()
    assert s.reduce_lr_on_plateau == ir.ReduceLROnPlateau()
    assert (s.early_stopping.monitor, s.early_stopping.patience, s.reduce_lr_on_plateau.patience) == ("val_loss", 0, 10)


def test_softmax_with_an_axis_is_kerass_softmax_layer_and_a_bare_softmax_its_activation():
    text = "input 4x5\ndense 3\nsoftmax axis=1\nsoftmax\nsoftmax axis=-1\n"
    report = ms.check(text)
    assert [(row.name, row.layer.keras_class) for row in report.layers] == [
        ("dense", "Dense"), ("softmax", "Softmax"), ("activation", "Activation"), ("softmax_1", "Softmax")]
    assert [row.layer.axis for row in report.layers if row.kind == "softmax"] == [1, -1]
    assert to_text(ms.parse(text)).splitlines()[-3:] == ["softmax axis=1", "softmax", "softmax axis=-1"]


def test_softmax_over_the_batch_axis_or_past_the_last_is_a_shape_error():
    with pytest.raises(ms.SpecError) as caught:
        ms.check("input 4x5\ndense 3\nsoftmax axis=3\n")
    (d,) = caught.value.diagnostics
    assert tuple(d.span)[:2] == (3, 1)
    assert "axis=3 is not an axis of its input (None, 4, 3): expected 1 to 2 (or -2 to -1 from the end)" in d.message


@pytest.mark.parametrize("training, where, message", [
    ("early_stopping patience=2", (4, 1), "early_stopping monitors 'val_loss', but training has no validation data"),
    ("fit validation=0.2\nearly_stopping monitor=val_acc", (5, 24),
     "early_stopping monitors 'val_acc', which training does not report; expected 'loss' or 'val_loss'"),
    ("metrics accuracy\nreduce_lr_on_plateau monitor=accurcy", (5, 30),
     "reduce_lr_on_plateau monitors 'accurcy', which training does not report"),
    ("reduce_lr_on_plateau monitor=loss factor=1.5", (4, 42), "factor must be at least 0 and below 1; received 1.5"),
    ("optimizer sgd lr=exponential_decay(0.1, decay_steps=100)", (4, 18),
     "exponential_decay() needs decay_rate; received no value for it"),
    ("optimizer sgd lr=exponential_decay(0.1, decay_steps=100, decay_rate=0.5)\nreduce_lr_on_plateau monitor=loss",
     (5, 1), "reduce_lr_on_plateau sets the learning rate, but the optimizer's is a schedule (exponential_decay)"),
    ("optimizer sgd lr=piecewise_constant_decay(boundaries=[100, 200], values=[0.1, 0.01])", (4, 18),
     "piecewise_constant_decay(): one value more than the boundaries is needed"),
    ("optimizer sgd lr=piecewise_constant_decay(boundaries=[200, 100], values=[0.1, 0.01, 0.1])", (4, 18),
     "piecewise_constant_decay(): the boundaries must increase; received [200, 100]"),
    ("optimizer sgd lr=expo_decay(0.1)", (4, 18), "unknown learning-rate schedule 'expo_decay'"),
    ("optimizer sgd lr=exponential_decay(0.1, 100, 0.9, true, 5)", (4, 57), "exponential_decay() takes at most 4 values"),
    ("optimizer sgd lr=cosine_decay(0.1, decay_steps=0)", (4, 48), "decay_steps must be at least 1; received 0"),
    ("optimizer sgd lr=cosine_decay(0.1, decay_step=10)", (4, 36), "cosine_decay() has no argument 'decay_step'"),
    ("optimizer sgd lr=piecewise_constant_decay(boundaries=100, values=[0.1])", (4, 54),
     "piecewise_constant_decay(): boundaries must be a list such as [100, 200]; received '100'"),
    ("optimizer sgd clipnorm=1 clipvalue=2", (4, 1), "only one of clipnorm, clipvalue and global_clipnorm can be set"),
    ("optimizer sgd clipnorm=0", (4, 24), "clipnorm must be above 0; received 0"),
    ("optimizer lion rho=0.9", (4, 16), "lion has no hyperparameter 'rho'"),
    ("loss mse label_smoothing=0.1", (4, 10), "unknown option 'label_smoothing'; loss takes no options"),
    ("loss categorical_crossentropy label_smoothing=2", (4, 47), "label_smoothing must be at least 0 and at most 1"),
    ("metrics accuracy k=3", (4, 18), "k is the option of the top-k metrics, and none is listed"),
    ("metrics top_k_categorical_accuracy k=0", (4, 38), "k, the number of top classes must be at least 1"),
    ("fit validation=0.2\nearly_stopping mode=up", (5, 21), "unknown mode 'up'; expected 'auto', 'min' or 'max'"),
    ("early_stopping monitor=loss\nearly_stopping monitor=loss", (5, 1), "'early_stopping' is given twice"),
])
def test_bad_training_arguments_are_errors_at_their_place(training, where, message):
    d = error(training)
    assert tuple(d.span)[:2] == where, d
    assert d.message.startswith(message), d.message


def test_an_unknown_statement_suggests_the_callback_keyword():
    with pytest.raises(ms.SpecError) as caught:
        ms.check(MODEL + "EarlyStopping patience=2")
    assert caught.value.diagnostics[0].hint == "did you mean 'early_stopping'?"


def test_from_logits_on_a_softmax_output_is_a_warning_that_says_what_keras_does():
    report = ms.check(MODEL + "loss categorical_crossentropy from_logits")
    (w,) = [w for w in report.warnings if w.code == "loss"]
    assert "uses the values before the softmax" in w.message
    assert not [w for w in ms.check("input 4\ndense 3\nloss categorical_crossentropy from_logits\n").warnings
                if w.code == "loss"]


# ---------------------------------------------------------------------------------------
# Keras's own signatures are the reference for every default


keras = pytest.importorskip("keras", reason="the defaults are compared with Keras's classes")


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.keras
@pytest.mark.parametrize("name", ir.SCHEDULES)
def test_schedule_defaults_are_kerass(name):
    theirs = _defaults(getattr(keras.optimizers.schedules, ir.SCHEDULE_CLASSES[name]).__init__)
    ours = {k: v for k, v in ir.SCHEDULE_ARGS[name].items() if v is not ir.REQUIRED}
    assert ours == {k: theirs[k] for k in ours}
    required = [k for k, p in inspect.signature(getattr(keras.optimizers.schedules, ir.SCHEDULE_CLASSES[name])).parameters.items()
                if p.default is inspect.Parameter.empty]
    assert required == [k for k, v in ir.SCHEDULE_ARGS[name].items() if v is ir.REQUIRED]


@pytest.mark.keras
@pytest.mark.parametrize("name", ["adadelta", "adamax", "lion"])
def test_new_optimizer_defaults_are_kerass(name):
    theirs = _defaults(getattr(keras.optimizers, {"adadelta": "Adadelta", "adamax": "Adamax", "lion": "Lion"}[name]))
    assert ir.OPTIMIZER_DEFAULTS[name] == {k: theirs[k] for k in ir.OPTIMIZER_DEFAULTS[name]}
    assert all(theirs[k] is None for k in ir.CLIPPING)


@pytest.mark.keras
@pytest.mark.parametrize("node, cls", [(ir.EarlyStopping, "EarlyStopping"), (ir.ReduceLROnPlateau, "ReduceLROnPlateau")])
def test_callback_defaults_are_kerass(node, cls):
    theirs = _defaults(getattr(keras.callbacks, cls))
    ours = {k: f.default for k, f in node.model_fields.items() if k != "span"}
    assert ours == {k: theirs[k] for k in ours}
