"""The checker, proven against Keras on 200 random specs (tests/specgen.py) and the spec files.

For each spec, Keras builds the model itself (tests/keras_reference.py, Keras's own
auto names) and reports what `modelspec check --json` must report: layer names, classes,
output shapes, parameters (trainable and not), weight paths and shapes, totals and bytes.
modelspec's summary table must equal Keras's `model.summary()` text, and the Keras
backend's model must carry the checker's names and weight paths.
"""

from __future__ import annotations

import json
import random

import pytest

import modelspec as ms
from corpus import SPEC_FILES
from modelspec.cli import main

pytest.importorskip("keras")
import keras_reference as kr  # noqa: E402
import specgen  # noqa: E402

pytestmark = pytest.mark.keras

RANDOM = specgen.spec_texts(200, seed=2024, portable_names=False)


@pytest.mark.parametrize("index", range(len(RANDOM)))
def test_random_spec_checks_as_keras_builds_it(index, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich crops Keras's summary at the terminal's width
    spec = ms.parse(RANDOM[index])
    report, model, pairs = kr.checker_and_keras(spec)
    for mine, keras_s in pairs:
        assert mine == keras_s, RANDOM[index]
    width = random.Random(index).choice((76, 88, 100, 120))
    assert report.summary(line_length=width) == kr.summary(model, width), RANDOM[index]
    if index % 4 == 0:  # the backend's own model, named by the checker (building all 200 doubles the time)
        from modelspec.backends.keras.engine import build_model

        native = build_model(spec, report, seed=0)
        assert [(w.path, tuple(w.shape)) for w in native.weights] == [(w.path, w.shape) for w in report.weights]


def test_check_json_command_on_the_spec_files(capsys):
    assert main(["check", "--json", *map(str, SPEC_FILES)]) == 0
    reports = [f["report"] for f in json.loads(capsys.readouterr().out)["files"]]
    for path, report in zip(SPEC_FILES, reports):
        assert kr.ours(report) == kr.keras_report(kr.model(ms.parse(path))), path.name


def test_the_generator_covers_the_language():
    specs = [ms.parse(text) for text in RANDOM]
    kinds = {layer.kind for spec in specs for layer in spec.layers}
    assert kinds == set(ms.ir.LAYER_CLASSES)
    inits = {layer.kernel_initializer.name for spec in specs for layer in spec.layers if hasattr(layer, "kernel_initializer")}
    assert inits == set(ms.ir.INITIALIZERS)
    activations = {getattr(layer, "activation", None) for spec in specs for layer in spec.layers}
    assert set(ms.ir.ACTIVATIONS) <= activations
    assert {spec.optimizer.name for spec in specs if spec.optimizer} == set(ms.ir.OPTIMIZERS)
    assert {spec.loss.name for spec in specs if spec.loss} == set(ms.ir.LOSSES)
    assert {spec.optimizer.schedule.name for spec in specs if spec.optimizer and spec.optimizer.schedule} >= {
        "exponential_decay", "cosine_decay", "piecewise_constant_decay"}
    assert {k for spec in specs if spec.optimizer for k in ms.ir.CLIPPING if getattr(spec.optimizer, k)} == set(
        ms.ir.CLIPPING)
    assert any(spec.loss.label_smoothing for spec in specs if spec.loss)
    conv = [layer for spec in specs for layer in spec.layers if layer.kind == "conv2d"]
    assert {layer.padding for layer in conv} == {"valid", "same"} and any(layer.strides != (1, 1) for layer in conv)
    assert any(layer.kernel_regularizer for spec in specs for layer in spec.layers if hasattr(layer, "kernel_regularizer"))
    assert any(len(spec.input_shape) == 2 for spec in specs)  # dense on a matrix: the last axis
