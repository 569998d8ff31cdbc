"""The checker against real Keras: for every spec, Keras builds the model and reports the
output shapes, parameter counts, layer names and weight paths; the checker must agree."""

from __future__ import annotations

import pytest

import modelspec as ms
from corpus import SPEC_FILES, VARIED

keras = pytest.importorskip("keras")
import keras_reference as kr  # noqa: E402

pytestmark = pytest.mark.keras

CASES = [pytest.param(path, id=path.stem) for path in SPEC_FILES] + [
    pytest.param(text, id=name) for name, text in VARIED.items()]


@pytest.fixture(params=CASES)
def spec_and_model(request):
    spec = ms.parse(request.param)
    return spec, kr.model(spec)


def test_layers_match_keras(spec_and_model):
    spec, model = spec_and_model
    report = ms.check(spec)
    expected = [(layer.name, tuple(layer.output.shape), layer.count_params(),
                 sum(w.numpy().size for w in layer.trainable_weights),
                 sum(w.numpy().size for w in layer.non_trainable_weights), type(layer).__name__)
                for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    got = [(r.name, r.output_shape, r.params, r.trainable, r.non_trainable, r.keras_class) for r in report.layers]
    assert got == expected


def test_weights_match_keras(spec_and_model):
    spec, model = spec_and_model
    expected = [(w.path, tuple(w.shape), w.trainable) for w in model.weights]
    assert [(w.path, w.shape, w.trainable) for w in ms.check(spec).weights] == expected


def test_totals_match_keras(spec_and_model):
    spec, model = spec_and_model
    report = ms.check(spec)
    trainable = sum(w.numpy().size for w in model.trainable_weights)
    assert (report.total_params, report.trainable_params, report.non_trainable_params) == (
        model.count_params(), trainable, model.count_params() - trainable)
    assert report.output_shape == tuple(model.layers[-1].output.shape)
    assert report.model == model.name


def test_user_named_layers_keep_their_names():
    spec = ms.parse("input 4\ndense 3 name=hidden\nbatchnorm name=bn\ndense 2 name=out")
    model = kr.model(spec)
    assert [r.name for r in ms.check(spec).layers] == [layer.name for layer in model.layers]
    assert [w.path for w in ms.check(spec).weights] == [w.path for w in model.weights]

