"""rescale and normalize (Keras's Rescaling and Normalization) against real Keras: forward
values on every backend, Model.adapt against Keras's adapt, fit's automatic adapt, and the
NumPy kernels' gradients against float64 finite differences."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

import keras_reference as kr  # noqa: E402
from test_numpy_gradients import check_layer, rand  # noqa: E402

import modelspec as ms  # noqa: E402
from modelspec.backends.numpy import kernels as K  # noqa: E402

pytestmark = [pytest.mark.keras, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]
BACKENDS = ["numpy", "torch", "keras"]


def pixels(shape, seed=0):
    """Image-like data far from mean 0 and variance 1, a different range per channel."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 255, shape) * np.linspace(0.2, 1.0, shape[-1])).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Gradients (float64 finite differences)


@pytest.mark.parametrize("scale, offset", [(1 / 255, 0.0), (1 / 127.5, -1.0), (-2.0, 0.25)])
def test_rescale_gradient(scale, offset):
    check_layer(K.Rescale(scale, offset), rand(3, 4, 5))


@pytest.mark.parametrize("x_shape", [(6, 4), (2, 3, 3, 4)], ids=["vector", "image"])
def test_normalize_gradient(x_shape):
    check_layer(K.Normalize(rand(4, seed=2), np.array([0.5, 2.0, 0.1, 3.0])), rand(*x_shape, scale=2.0))


def test_normalize_gradient_below_epsilon():
    # variances whose square roots are below keras.backend.epsilon(): divided by 1e-7 instead
    # (inputs of that size keep the outputs near 1, where the differences are accurate)
    check_layer(K.Normalize(np.zeros(4), np.array([1e-16, 0.0, 4e-15, 1e-20])), rand(5, 4, scale=1e-7))


# ---------------------------------------------------------------------------------------
# Forward values against Keras


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text", ["rescale 1/255", "rescale 1/127.5 offset=-1", "rescale -2 offset=0.25"])
def test_rescale_is_keras_rescaling(backend, text):
    spec = ms.parse(f"input 4x4x3\n{text}")
    x = pixels((5, 4, 4, 3))
    expected = keras.ops.convert_to_numpy(kr.model(spec)(x))
    got = ms.build(spec, backend=backend, seed=0).predict(x)
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_normalize_is_keras_normalization(backend):
    spec = ms.parse("input 3x3x4\nnormalize")
    rng = np.random.default_rng(1)
    mean = rng.normal(size=4).astype(np.float32)
    variance = np.array([0.25, 4.0, 0.0, 1e-20], np.float32)  # the last two: max(sqrt(v), epsilon)
    reference = kr.model(spec)
    reference.set_weights([mean, variance, np.int64(0)])
    reference.layers[0].finalize_state()  # Keras's set_weights leaves the divisor's copies stale
    x = rng.normal(size=(6, 3, 3, 4)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(reference(x))
    model = ms.build(spec, backend=backend, seed=0)
    model.set_weights([mean, variance, np.float32(0)])
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------
# adapt


ADAPT = [
    "input 6x6x3\nrescale 1/255\nmaxpool2d 2x2\nnormalize\nflatten\ndense 2",
    "input 5\nnormalize\ndense 2",
    "input 4x5\nrescale 1/127.5 offset=-1\nnormalize\nnormalize\nflatten\ndense 3",
    "input 4x4x2\nflatten\nnormalize\ndropout 0.5\nrelu\nnormalize\ndense 2",
    # a graph: each normalize adapts to what reaches it along its own path, in Keras's order
    "input 5\nn = normalize\nh = dense 5 relu\nm = normalize from=n\nk = normalize from=in\nj = relu\nadd h m j",
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text", ADAPT, ids=range(len(ADAPT)))
def test_adapt_is_keras_adapt(backend, text):
    """Each normalize layer's mean and variance after Model.adapt(x) are those Keras's
    Normalization.adapt computes from the data reaching it (Keras's own layers before it,
    Keras's adapt of each in turn)."""
    spec = ms.parse(text)
    x = pixels((40, *spec.input_shape), seed=3)
    reference = kr.model(spec)
    expected = []
    for layer in reference.layers:
        if isinstance(layer, keras.layers.Normalization):
            if layer.input is reference.inputs[0]:
                layer.adapt(x)
            else:  # the model up to the layer's input, its earlier normalizations adapted already
                before = keras.Model(reference.inputs, layer.input)
                layer.adapt(keras.ops.convert_to_numpy(before(x, training=False)))
            expected += [np.asarray(layer.adapt_mean.value), np.asarray(layer.adapt_variance.value)]
    model = ms.build(spec, backend=backend, seed=0)
    model.adapt(x)
    got = [w for path, w in zip(model.weight_paths, model.get_weights()) if path.endswith(("/mean", "/variance"))]
    assert len(got) == len(expected) == 2 * text.count("normalize")
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adapt_after_predicting(backend):
    """Statistics set after a prediction are the ones the next prediction uses (Keras's
    Normalization divides by copies of its variables, which a traced function would keep)."""
    spec = ms.parse("input 3\nnormalize")
    x = pixels((8, 3), seed=9)
    model = ms.build(spec, backend=backend, seed=0)
    np.testing.assert_array_equal(model.predict(x), x)  # mean 0, variance 1
    model.adapt(x)
    reference = kr.model(spec)
    reference.layers[0].adapt(x)
    np.testing.assert_allclose(model.predict(x), keras.ops.convert_to_numpy(reference(x)), rtol=1e-6, atol=1e-6)


def test_adapt_needs_a_normalize_layer():
    with pytest.raises(ValueError, match="adapt sets the statistics of normalize layers; this model has none"):
        ms.build("input 3\ndense 2", backend="numpy").adapt(np.zeros((4, 3)))


FIT = "input 4x4x3\nrescale 1/255\nnormalize\nflatten\ndense 2\nloss mse\noptimizer sgd lr=0.01"


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_adapts_on_its_x_once(backend):
    """fit adapts normalize to all of the x it is given, validation split included, as
    Keras users call norm.adapt(x_train): the layer's outputs on that x have mean 0 and
    standard deviation 1 per channel. A second fit does not adapt again."""
    model = ms.build(FIT, backend=backend, seed=0)
    x, y = pixels((64, 4, 4, 3), seed=5), np.random.default_rng(6).normal(size=(64, 2)).astype(np.float32)
    model.fit(x, y, epochs=1, batch_size=16, validation_split=0.25, verbose=0)
    out = model.engine.layer_outputs(x)[1]
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1, rtol=1e-4)
    adapted = model.get_weights()[:3]
    model.fit(x * 2 + 7, y, epochs=1, verbose=0)
    for before, after in zip(adapted, model.get_weights()[:3]):
        np.testing.assert_array_equal(before, after)


def test_fit_keeps_statistics_that_were_set_or_loaded(tmp_path):
    """set_weights and load_weights give normalize its statistics: fit leaves them."""
    x, y = pixels((32, 4, 4, 3), seed=7), np.zeros((32, 2), np.float32)
    model = ms.build(FIT, backend="numpy", seed=0)
    weights = model.get_weights()
    weights[0][:], weights[1][:] = 0.5, 0.25
    model.set_weights(weights)
    model.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(model.get_weights()[0], 0.5)
    model.save(tmp_path / "m.safetensors")
    loaded = ms.load_model(tmp_path / "m.safetensors")
    loaded.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(loaded.get_weights()[1], 0.25)
    fresh = ms.build(FIT, backend="numpy", seed=0)  # build's initial weights are no adaptation
    fresh.fit(x, y, epochs=1, verbose=0)
    assert not np.array_equal(fresh.get_weights()[0], 0.0)


def test_the_count_is_a_whole_number():
    model = ms.build("input 3\nnormalize", backend="numpy")
    with pytest.raises(ValueError, match=r"normalization/count holds whole numbers \(Keras's int64\); received 0.5"):
        model.set_weights([np.zeros(3), np.ones(3), np.float32(0.5)])


@pytest.mark.parametrize("backend", ["numpy", "torch", "keras"])
@pytest.mark.parametrize("text", [
    "input 4x3\nrescale 1/8 offset=1\nnormalize\nnormalize\nflatten\ndense 2\nloss mse\nfit epochs=1",
    "input 4x3\nr = rescale 1/8 offset=1\nn = normalize from=in\nrelu\nnormalize\nadd r\nflatten\ndense 2\n"
    "loss mse\nfit epochs=1",
], ids=["chain", "graph"])
def test_emitted_programs_adapt_as_fit_does(tmp_path, backend, text):
    """A spec with normalize: the emitted program's training adapts the statistics to its x
    before the first step, as modelspec's fit does, so the program and `modelspec train`
    start from the same model (a rescale before it, and a second normalize after it; in a
    graph, each on its own path)."""
    import importlib.util

    pytest.importorskip({"numpy": "numpy", "torch": "torch", "keras": "keras"}[backend])
    spec = ms.parse(text)
    x = pixels((40, 4, 3), seed=5)
    model = ms.build(spec)
    model.adapt(x)
    expected = [w for w, path in zip(model.get_weights(), model.weight_paths) if "normalization" in path]
    path = tmp_path / f"program_{backend}.py"
    path.write_text(ms.backends.get(backend).emit(spec, ms.check(spec)))
    loader = importlib.util.spec_from_file_location(f"adapt_program_{backend}_{len(text)}", path)
    program = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(program)
    if backend == "numpy":
        weights = program.initial_weights()
        program.adapt_normalization(program.network(weights), x)
    elif backend == "torch":
        import torch

        net = next(v for v in vars(program).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)
                   and v.__module__ == program.__name__ and hasattr(v, "keras_weights"))()
        program.adapt_normalization(net, torch.from_numpy(x))
        weights = [w.numpy() for w in net.keras_weights().values()]
    else:
        net = program.build_model()
        program.adapt_normalization(net, x)
        weights = net.get_weights()
    got = [np.asarray(w) for w in weights if np.ndim(w) == 1 and len(w) == 3]  # the two layers' mean, variance
    assert len(got) == 4 == len([w for w in expected if np.ndim(w) == 1])
    for g, e in zip(got, [w for w in expected if np.ndim(w) == 1]):
        np.testing.assert_allclose(g, e, rtol=2e-6, atol=1e-6)
