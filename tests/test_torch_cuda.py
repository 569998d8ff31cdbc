"""The torch backend on a CUDA GPU (skipped without one): the captured, sync-free training
loop gives the CPU's numbers, keeps the last good weights on a non-finite step, and falls
back cleanly when a step cannot be captured."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import modelspec as ms  # noqa: E402
from corpus import ROOT  # noqa: E402

pytestmark = [pytest.mark.torch,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SPECS = ["mnist", "digits_b", "digits_cnn"]


def dataset(spec, n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, *spec.input_shape), dtype=np.float32)
    classes = ms.check(spec).output_shape[-1]
    ids = rng.integers(0, classes, n)
    y = ids if spec.loss.name == "sparse_categorical_crossentropy" else np.eye(classes, dtype=np.float32)[ids]
    return x, y


def test_auto_takes_cuda():
    assert ms.build(ROOT / "specs" / "mnist.ms", backend="torch").engine.device.type == "cuda"


@pytest.mark.parametrize("name", SPECS)
def test_the_captured_loop_gives_the_cpu_numbers(name):
    spec = ms.parse(ROOT / "specs" / f"{name}.ms")
    x, y = dataset(spec)
    runs = {}
    for device in ("cpu", "cuda"):
        model = ms.build(spec, backend="torch", device=device, seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a capture that fails would warn
            history = model.fit(x, y, epochs=3, batch_size=32, seed=2, verbose=0).history  # shuffled, partial batch
        runs[device] = (history, model.get_weights(), model.predict(x), model.evaluate(x, y))
    (h_cpu, w_cpu, p_cpu, e_cpu), (h_gpu, w_gpu, p_gpu, e_gpu) = runs["cpu"], runs["cuda"]
    for key in h_cpu:
        np.testing.assert_allclose(h_gpu[key], h_cpu[key], rtol=1e-4, err_msg=key)
    np.testing.assert_allclose(p_gpu, p_cpu, rtol=1e-3, atol=1e-5)
    for a, b in zip(w_gpu, w_cpu):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    for key in e_cpu:
        assert e_gpu[key] == pytest.approx(e_cpu[key], rel=1e-4)


def test_the_step_is_captured_and_replayed():
    spec = ms.parse(ROOT / "specs" / "mnist.ms")
    x, y = dataset(spec, n=100)
    model = ms.build(spec, backend="torch", device="cuda")
    model.fit(x, y, epochs=0, verbose=0)
    engine = model.engine
    data = engine.prepare(x, y)
    engine.train_epoch(data, np.arange(100), 32)
    graphs = list(data.graphs.values())
    assert len(graphs) == 2 and all(isinstance(g, torch.cuda.CUDAGraph) for g in graphs)  # full, and the tail
    before = [w.copy() for w in model.get_weights()]
    totals = engine.train_epoch(data, np.arange(100), 32)
    assert totals.count == 100 and totals.stopped_at is None
    assert any((a != b).any() for a, b in zip(model.get_weights(), before))


@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_a_non_finite_step_keeps_the_last_good_weights_on_the_device(cuda_graphs):
    spec = ms.parse("input 4\ndense 6 relu\nbatchnorm\ndense 3 softmax\noptimizer adam\nloss categorical_crossentropy")
    x, y = dataset(spec, n=40)
    x[25] = 3e38  # in the fourth batch of 8
    clean = ms.build(spec, backend="torch", device="cuda", cuda_graphs=cuda_graphs)
    clean.fit(x[:24], y[:24], epochs=1, batch_size=8, shuffle=False, verbose=0)
    model = ms.build(spec, backend="torch", device="cuda", cuda_graphs=cuda_graphs)
    model.fit(x, y, epochs=0, verbose=0)
    totals = model.engine.train_epoch(model.engine.prepare(x, y), np.arange(40), 8)
    assert totals.stopped_at == 3 and totals.count == 32 and not np.isfinite(totals.loss_sum)
    for a, b in zip(model.get_weights(), clean.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert int(model.engine.optimizer_state()[0]) == 3


def test_dropout_models_train_on_cuda():
    spec = ms.parse(ROOT / "specs" / "cnn.ms")
    x, y = dataset(spec, n=64)
    a, b = (ms.build(spec, backend="torch", device="cuda", seed=3) for _ in range(2))
    ha = a.fit(x, y, epochs=2, batch_size=16, verbose=0).history
    hb = b.fit(x, y, epochs=2, batch_size=16, verbose=0).history
    assert np.isfinite(ha["loss"]).all()
    for key in ha:  # the same masks, from the engine's seeded generator (cuDNN may reorder sums)
        np.testing.assert_allclose(ha[key], hb[key], rtol=1e-5, err_msg=key)
