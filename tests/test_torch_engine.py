"""The torch backend through the common Model API and its Engine: devices and options, bad
input, saving, a non-finite step, dropout, and the sync-free (CUDA) training loop run on a
CPU, where it must agree with the plain loop."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import modelspec as ms  # noqa: E402
from corpus import ROOT  # noqa: E402
from modelspec.backends import BackendError  # noqa: E402
from modelspec.backends.torch import TorchBackend  # noqa: E402
from modelspec.backends.torch.engine import TorchEngine  # noqa: E402
from modelspec.model import Model  # noqa: E402

pytestmark = pytest.mark.torch

SMALL = """model small
input 4
dense 6 relu he_normal(seed=1)
batchnorm
dense 3 softmax
optimizer adam learning_rate=0.01
loss categorical_crossentropy
metrics accuracy
"""


def data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype(np.float32), np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]


def engine_model(text=SMALL, seed=0, **options):
    """A Model over a TorchEngine made with internal options (sync_free), from NumPy's weights."""
    spec = ms.parse(text)
    report = ms.check(spec)
    model = Model(spec, report, TorchBackend(), TorchEngine(spec, report, device="cpu", **options), seed)
    model.set_weights(ms.build(spec, backend="numpy", seed=seed).get_weights())
    return model


# -- the lowering ----------------------------------------------------------------------------


def test_the_supported_kinds_are_the_lowering_methods():
    """One method per IR kind, which the live module and the emitted program both read."""
    from modelspec import ir
    from modelspec.backends.torch import TorchBackend
    from modelspec.backends.torch.lowering import Lowering

    assert TorchBackend.layer_kinds == set(ir.LAYER_CLASSES)
    assert all(callable(getattr(Lowering, kind)) for kind in TorchBackend.layer_kinds)


def test_the_live_module_is_plain_torch_modules():
    """Layers that are one module's call are that module; the others bind their torch calls
    once, and show them."""
    model = ms.build("input 6x6x2\nconv2d 3 3x3 padding=same relu\nmaxpool2d 2\nflatten\ndropout 0.5\ndense 2",
                     backend="torch", device="cpu")
    layers = dict(model.native.layers.named_children())
    assert list(layers) == ["to_nchw", "conv2d", "max_pooling2d", "to_nhwc", "flatten", "dropout", "dense"]
    assert isinstance(layers["dense"], torch.nn.Linear) and isinstance(layers["conv2d"].module, torch.nn.Conv2d)
    assert layers["dropout"].generator is not None
    assert "F.max_pool2d(x, (2, 2), (2, 2))" in repr(layers["max_pooling2d"])


# -- devices and options ---------------------------------------------------------------------


def test_the_model_api_with_native_module():
    model = ms.build(SMALL, backend="torch", device="cpu")
    assert isinstance(model.native, torch.nn.Module)
    x, y = data()
    history = model.fit(x, y, epochs=2, verbose=0)
    assert sorted(history.history) == ["accuracy", "loss"] and len(history.history["loss"]) == 2
    out = model.native.eval()(torch.from_numpy(x))
    np.testing.assert_allclose(out.detach().numpy(), model.predict(x), rtol=1e-6)
    assert set(model.evaluate(x, y)) == {"accuracy", "loss"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_auto_takes_the_cpu_and_cuda_without_cuda_is_a_clear_error():
    assert ms.build(SMALL, backend="torch").engine.device.type == "cpu"  # device="auto"
    for device in ("cuda", "cuda:0"):
        with pytest.raises(BackendError, match="CUDA is not available.*device='cpu'"):
            ms.build(SMALL, backend="torch", device=device)


def test_bad_options_are_named():
    with pytest.raises(TypeError, match="unknown option for the torch backend: devise"):
        ms.build(SMALL, backend="torch", devise="cpu")
    with pytest.raises(TypeError, match="unknown options for the torch backend: a, b"):
        ms.build(SMALL, backend="torch", b=1, a=2)
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda'; received 'gpu0'"):
        ms.build(SMALL, backend="torch", device="gpu0")
    with pytest.raises(ValueError, match="runs on 'cpu' or 'cuda'"):
        ms.build(SMALL, backend="torch", device="meta")


# -- bad input -------------------------------------------------------------------------------


def test_inputs_of_the_wrong_shape_or_dtype_are_clear_errors():
    model = ms.build(SMALL, backend="torch", device="cpu")
    with pytest.raises(ValueError, match=r"x has shape \(5, 3\), but the model's input is \(None, 4\)"):
        model.predict(np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match="must hold numbers"):
        model.predict(np.array([["a"] * 4]))
    native = model.native
    with pytest.raises(ValueError, match=r"expected float32 inputs of shape \(batch, 4\); received "
                                         r"torch.float32 \(2, 5\)"):
        native(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="received torch.float64"):
        native(torch.zeros(2, 4, dtype=torch.float64))


# -- saving ----------------------------------------------------------------------------------


def test_save_and_load_through_safetensors(tmp_path):
    model = ms.build(ROOT / "specs" / "digits_cnn.ms", backend="torch", device="cpu")
    x = np.random.default_rng(0).normal(size=(6, 8, 8, 1)).astype(np.float32)
    model.fit(x, np.arange(6) % 10, epochs=1, verbose=0, validation_split=0.0)
    model.save(tmp_path / "w.safetensors")
    for backend in ("torch", "numpy"):
        again = ms.load_model(tmp_path / "w.safetensors", backend=backend)
        np.testing.assert_allclose(again.predict(x), model.predict(x), rtol=1e-5, atol=1e-6)
    assert ms.load_model(tmp_path / "w.safetensors").backend.name == "torch"


# -- a non-finite step -----------------------------------------------------------------------


@pytest.mark.parametrize("sync_free", [False, True])
def test_a_non_finite_loss_stops_before_its_update(sync_free):
    """The third batch overflows: the epoch stops there, with the weights (moving statistics
    included) of a run over the first two batches only, and the failed batch in the mean."""
    x, y = data(12)
    x[9] = 3e38
    clean = engine_model(sync_free=sync_free, cuda_graphs=False)
    clean._training_config(y.shape)
    clean.engine.train_epoch(clean.engine.prepare(x[:8], y[:8]), np.arange(8), 4)
    model = engine_model(sync_free=sync_free, cuda_graphs=False)
    model._training_config(y.shape)
    totals = model.engine.train_epoch(model.engine.prepare(x, y), np.arange(12), 4)
    assert totals.stopped_at == 2 and totals.count == 12 and not np.isfinite(totals.loss_sum)
    for path, ours, reference in zip(model.weight_paths, model.get_weights(), clean.get_weights()):
        np.testing.assert_array_equal(ours, reference, err_msg=path)
    assert int(model.engine.optimizer_state()[0]) == 2


@pytest.mark.parametrize("sync_free", [False, True])
def test_a_non_finite_gradient_stops_too(sync_free):
    """Huge inputs to a zero kernel: the loss is finite, the kernel's gradient overflows."""
    model = engine_model("input 2\ndense 1\noptimizer sgd\nloss mse", sync_free=sync_free, cuda_graphs=False)
    model.set_weights([np.zeros((2, 1), np.float32), np.ones(1, np.float32)])
    x, y = np.full((2, 2), 3e38, np.float32), np.zeros((2, 1), np.float32)
    model._training_config(y.shape)
    totals = model.engine.train_epoch(model.engine.prepare(x, y), np.arange(2), 2)
    assert np.isfinite(totals.loss_sum) and totals.stopped_at == 0
    np.testing.assert_array_equal(model.get_weights()[1], [1.0])


@pytest.mark.parametrize("sync_free", [False, True])
def test_huge_but_finite_gradients_do_not_stop(sync_free):
    """Gradients of 1e20 overflow a squared norm, not float32: training goes on."""
    model = engine_model("input 2\ndense 1\noptimizer sgd learning_rate=1e-30\nloss mse", sync_free=sync_free,
                         cuda_graphs=False)
    model.set_weights([np.zeros((2, 1), np.float32), np.full(1, 5.0, np.float32)])
    x, y = np.full((2, 2), 1e19, np.float32), np.zeros((2, 1), np.float32)
    model._training_config(y.shape)
    totals = model.engine.train_epoch(model.engine.prepare(x, y), np.arange(2), 2)
    assert totals.stopped_at is None and totals.loss_sum == pytest.approx(2 * 25.0)
    assert model.get_weights()[0][0, 0] == pytest.approx(-1e-30 * 2 * 5 * 1e19, rel=1e-5)


def test_fit_reports_the_stop(capsys):
    model = ms.build("input 2\ndense 1\noptimizer sgd learning_rate=1e30\nloss mse", backend="torch", device="cpu")
    x = np.ones((8, 2), np.float32)
    with pytest.warns(RuntimeWarning, match="NaN or infinite at epoch 1, step 2"):
        history = model.fit(x, np.full((8, 1), 1e10, np.float32), batch_size=4, epochs=3, verbose=0)
    assert len(history.history["loss"]) == 1 and history.stopped


# -- the sync-free loop (CUDA's) on the CPU ----------------------------------------------------


SPECS = {
    "batchnorm_rmsprop": "input 5\ndense 8 relu l2=0.01\nbatchnorm\ndense 3 softmax\n"
                         "optimizer rmsprop momentum=0.5 centered=true\nloss categorical_crossentropy\nmetrics accuracy",
    "conv_nadam": "input 6x6x1\nconv2d 4 3x3 padding=same relu\nbatchnorm\navgpool2d 2 stride=1 padding=same\n"
                  "flatten\ndense 3 softmax\noptimizer nadam learning_rate=0.01\nloss categorical_crossentropy\n"
                  "metrics accuracy mse",
    "adagrad_sgd_free": "input 5\ndense 4 tanh l1=0.01\ndense 3 softmax\noptimizer adagrad learning_rate=0.1\n"
                        "loss categorical_crossentropy\nmetrics categorical_accuracy",
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_sync_free_loop_computes_what_the_plain_loop_does(name):
    spec = ms.parse(SPECS[name])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(23, *spec.input_shape)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 23)]
    runs = []
    for sync_free in (False, True):
        model = engine_model(SPECS[name], sync_free=sync_free, cuda_graphs=False)
        history = model.fit(x, y, epochs=3, batch_size=5, verbose=0, seed=3)  # shuffled, a partial batch
        runs.append((history.history, model.get_weights(), model.engine.optimizer_state()))
    (h0, w0, s0), (h1, w1, s1) = runs
    assert h0 == h1
    for a, b in zip(w0 + s0, w1 + s1):
        np.testing.assert_array_equal(a, b)


def test_progress_callbacks_see_running_sums_in_both_loops():
    x, y = data(10)
    seen = {}
    for sync_free in (False, True):
        model = engine_model(sync_free=sync_free, cuda_graphs=False)
        model._training_config(y.shape)
        calls = []
        model.engine.train_epoch(model.engine.prepare(x, y), np.arange(10), 4,
                                 on_batch=lambda step, count, loss, metrics: calls.append((step, count, loss, metrics)))
        assert [(c[0], c[1]) for c in calls] == [(0, 4), (1, 8), (2, 10)]
        seen[sync_free] = calls
    assert seen[False] == seen[True]


def test_when_graph_capture_is_unavailable_training_runs_step_by_step():
    x, y = data(9)
    plain = engine_model(sync_free=True, cuda_graphs=False)
    plain.fit(x, y, epochs=2, batch_size=4, verbose=0, shuffle=False)
    model = engine_model(sync_free=True, cuda_graphs=True)  # no CUDA here: capture fails
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed .* training runs step by step"):
        model.fit(x, y, epochs=1, batch_size=4, verbose=0, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once fallen back, it does not try (and warn) again
        model.fit(x, y, epochs=1, batch_size=4, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)


# -- dropout ------------------------------------------------------------------


def test_the_native_dropout_layer_is_inverted():
    """Kept values are scaled by 1/(1 - rate); about `rate` of them are dropped. (That dropout
    is the identity in inference and follows the model's seed is a conformance test.)"""
    model = ms.build("input 30\ndense 30 relu\ndropout 0.5\ndense 2\noptimizer sgd\nloss mse", backend="torch",
                     device="cpu", seed=1)
    layer = model.native.layers.dropout.train()
    kept = layer(torch.ones(1000, 30))
    assert set(kept.unique().tolist()) == {0.0, 2.0}
    assert 0.45 < (kept == 0).float().mean() < 0.55
