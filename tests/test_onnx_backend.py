"""The onnx backend (issue 17): a spec exported to ONNX and run by onnxruntime, inference only.

Its predictions and layer outputs are held to the numpy backend's with the same weights (1e-5
relative, as crosscheck's floor), its evaluate to the numpy backend's loss and metrics; fit,
`modelspec train` and `modelspec compile` refuse it with one clear line. Every layer kind's
forward pass and the save/load round trip are in the conformance suite's onnx column.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import modelspec as ms  # noqa: E402
from corpus import ROOT, modelspec_cli  # noqa: E402
from modelspec import backends  # noqa: E402
from modelspec.backends import BackendError, InferenceOnly, NoSource  # noqa: E402

MLP = ("model mlp\ninput 6\ndense 8 relu l2=0.01\ndense 7 tanh l1=0.02\ndense 4 softmax\n"
       "optimizer adam\nloss categorical_crossentropy\nmetrics accuracy top_k_categorical_accuracy k=2")
CNN = ROOT / "specs" / "cnn.ms"


def relative(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref|, as the issue and crosscheck measure it."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def pair(spec, seed: int = 3):
    """The same spec on onnx and on numpy, with the same weights moved off their initial values."""
    onnx, numpy = ms.build(spec, backend="onnx", seed=seed), ms.build(spec, backend="numpy", seed=seed)
    rng = np.random.default_rng(seed)
    weights = [(w + 0.1 * rng.standard_normal(w.shape)).astype(np.float32) for w in numpy.get_weights()]
    onnx.set_weights(weights)
    numpy.set_weights(weights)
    return onnx, numpy


def samples(model, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *model.input_shape[1:])).astype(np.float32)


@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_predictions_and_layer_outputs_equal_the_numpy_backend(spec):
    onnx, numpy = pair(spec)
    for n, batch in ((1, 32), (37, 16)):  # one sample, and several batches with a short last one
        x = samples(numpy, n, seed=n)
        got = onnx.predict(x, batch_size=batch)
        assert got.dtype == np.float32 and got.shape == (n, *numpy.output_shape[1:])
        assert relative(got, numpy.predict(x)) <= 1e-5
    x = samples(numpy, 5)
    rows = onnx.engine.layer_outputs(x)
    assert len(rows) == len(numpy.report.layers)
    for row, got, ref in zip(numpy.report.layers, rows, numpy.engine.layer_outputs(x)):
        assert got.dtype == np.float32
        assert relative(got, ref) <= 1e-5, row.name


@pytest.mark.parametrize("output, loss, metrics", [
    ("dense 4 softmax", "categorical_crossentropy", "accuracy top_k_categorical_accuracy k=2"),  # from the logits
    ("dense 4\nsoftmax", "sparse_categorical_crossentropy", "accuracy"),  # a softmax layer's logits
    ("dense 4 sigmoid", "binary_crossentropy label_smoothing=0.2", "binary_accuracy"),
    ("dense 4\nsigmoid", "binary_crossentropy", "binary_accuracy"),  # an activation layer's logits
    ("dense 4 softplus", "categorical_crossentropy", "categorical_accuracy"),  # clipped probabilities
    ("dense 4", "categorical_crossentropy from_logits label_smoothing=0.1", "accuracy"),  # the output as logits
    ("dense 4", "mse", "mae mse"),
    ("dense 4 tanh", "huber delta=0.5", "mae"),
])
def test_evaluate_gives_the_numpy_backends_loss_with_penalties_and_metrics(output, loss, metrics):
    spec = f"input 5\ndense 6 relu l1=0.01 l2=0.02\n{output}\nloss {loss}\nmetrics {metrics}"
    onnx, numpy = pair(spec)
    rng = np.random.default_rng(1)
    x = samples(numpy, 23)
    name = loss.split()[0]
    if name == "sparse_categorical_crossentropy":
        y = rng.integers(0, 4, 23)
    elif name in ("categorical_crossentropy", "binary_crossentropy"):
        y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 23)] if name.startswith("cat") else \
            (rng.random((23, 4)) < 0.5).astype(np.float32)
    else:
        y = rng.normal(size=(23, 4)).astype(np.float32)
    got, expected = onnx.evaluate(x, y, batch_size=8), numpy.evaluate(x, y, batch_size=8)
    assert list(got) == list(expected)
    assert expected["loss"] > 0.03  # the penalties alone are more than float32 noise would hide
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_weights_set_are_the_ones_exported_and_come_back_as_copies():
    onnx, numpy = pair(MLP)
    x = samples(numpy, 4)
    before = onnx.predict(x)
    weights = onnx.get_weights()
    weights[0][...] = 0  # a copy: the model keeps its weights
    np.testing.assert_array_equal(onnx.predict(x), before)
    onnx.set_weights(weights)  # a new session from the new weights
    numpy.set_weights(weights)
    assert not np.allclose(onnx.predict(x), before)
    assert relative(onnx.predict(x), numpy.predict(x)) <= 1e-5
    for got, ref in zip(onnx.get_weights(), weights):
        assert got.tobytes() == ref.tobytes()


def test_load_model_runs_weights_trained_elsewhere(tmp_path):
    trained = ms.build(MLP, backend="numpy", seed=2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 40)]
    trained.fit(x, y, epochs=2, batch_size=8, verbose=0)
    trained.save(tmp_path / "w.safetensors")
    model = ms.load_model(tmp_path / "w.safetensors", backend="onnx")
    assert model.backend.name == "onnx"
    assert type(model.native).__name__ == "InferenceSession"
    assert relative(model.predict(x), trained.predict(x)) <= 1e-5
    assert model.evaluate(x, y) == pytest.approx(trained.evaluate(x, y), rel=1e-5)


def test_fit_refuses_before_anything_happens():
    model = ms.build(MLP, backend="onnx")
    weights = model.get_weights()
    x, y = np.zeros((4, 6), np.float32), np.zeros((4, 4), np.float32)
    with pytest.raises(InferenceOnly, match=r"^the onnx backend runs inference only \(predict, evaluate\); train "
                                            r"with numpy, torch or keras, then .*load_model\(path, backend='onnx'\)"):
        model.fit(x, y, verbose=0)
    assert isinstance(InferenceOnly("onnx", ""), (BackendError, ms.ModelspecError))
    for got, ref in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(got, ref)
    for method in ("train_epoch", "step", "get_state", "next_learning_rate"):  # the engine itself refuses too
        with pytest.raises(InferenceOnly):
            getattr(model.engine, method)()
    assert backends.get("onnx").trains is False and backends.get("numpy").trains is True


def test_options_the_backend_cannot_take():
    with pytest.raises(BackendError, match=r"the onnx backend runs on the CPU only .*received device='cuda'"):
        ms.build(MLP, backend="onnx", device="cuda")
    with pytest.raises(TypeError, match="unknown option for the onnx backend: dtype"):
        ms.build(MLP, backend="onnx", dtype=np.float64)
    threads = ms.build(MLP, backend="onnx", threads=1)
    x = samples(threads, 3)
    np.testing.assert_array_equal(threads.predict(x), ms.build(MLP, backend="onnx").predict(x))


# ---------------------------------------------------------------------------------------
# The command line


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """specs/digits.ms trained 2 epochs with numpy: its folder."""
    folder = tmp_path_factory.mktemp("run")
    done = modelspec_cli("train", ROOT / "specs" / "digits.ms", "--epochs", 2, "--out", folder / "run", "--json",
                         cwd=folder, timeout=300)
    assert done.returncode == 0, done.stderr
    return folder / "run"


def test_cli_evaluate_and_predict_with_onnx_equal_numpy(trained_run, tmp_path):
    weights = trained_run / "weights.safetensors"
    spec = ROOT / "specs" / "digits.ms"
    results = {}
    for backend in ("numpy", "onnx"):
        done = modelspec_cli("evaluate", spec, "--weights", weights, "--backend", backend, "--json")
        assert done.returncode == 0, done.stderr
        results[backend] = json.loads(done.stdout)
    assert results["onnx"]["backend"] == "onnx"
    assert results["onnx"]["metrics"] == pytest.approx(results["numpy"]["metrics"], rel=1e-5)
    assert results["onnx"]["metrics"]["categorical_accuracy"] > 0.5
    x = np.random.default_rng(0).integers(0, 17, size=(5, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    probabilities = {}
    for backend in ("numpy", "onnx"):
        done = modelspec_cli("predict", spec, "--weights", weights, "--input", tmp_path / "x.npy", "--backend",
                             backend, "--json")
        assert done.returncode == 0, done.stderr
        probabilities[backend] = np.array([row["probabilities"] for row in json.loads(done.stdout)["predictions"]])
    assert relative(probabilities["onnx"], probabilities["numpy"]) <= 1e-5


def test_cli_train_and_compile_refuse_onnx_in_one_line(tmp_path):
    spec = ROOT / "specs" / "digits.ms"
    for command in (("train", spec, "--out", tmp_path / "run"), ("compare", spec, spec, "--out", tmp_path / "cmp")):
        done = modelspec_cli(*command, "--backend", "onnx", cwd=tmp_path)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith("modelspec: error: the onnx backend runs inference only (predict, evaluate); "
                                      "train with numpy, torch or keras, then predict or evaluate its weights here "
                                      "with --backend onnx --weights W")
        assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    done = modelspec_cli("compile", spec, "--backend", "onnx", "-o", tmp_path / "model.py")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("modelspec: error: the onnx backend emits no source code") \
        and "modelspec export" in done.stderr
    assert not (tmp_path / "model.py").exists()
    with pytest.raises(NoSource):
        backends.get("onnx").emit(ms.parse(spec), ms.check(ms.parse(spec)))


# ---------------------------------------------------------------------------------------
# Crosscheck


def test_crosscheck_judges_onnx_on_the_forward_pass_only(monkeypatch):
    from modelspec.backends.onnx.engine import OnnxEngine
    from modelspec.crosscheck import crosscheck

    spec = ms.parse(MLP)
    result = crosscheck(spec, ["numpy", "onnx"], steps=3, batch_size=8)
    assert result.ok and result.forward_only == ["onnx"] and result.trained == ["numpy"]
    assert all("onnx" in row.errors and row.excess["onnx"] <= 1 for row in result.layers)
    assert all(set(row.errors) == {"numpy"} for row in result.gradients) and result.gradients
    assert list(result.losses) == ["numpy"]
    assert any("onnx: forward only" in note for note in result.notes)
    doc = result.to_dict()
    assert doc["forward_only"] == ["onnx"] and list(doc["training"]["left_band_at"]) == ["numpy"]

    # and it is judged: a second layer 1e-4 off is caught there
    real = OnnxEngine.layer_outputs

    def off(self, x):
        rows = real(self, x)
        rows[1] = rows[1] * np.float32(1 + 1e-4)
        return rows

    monkeypatch.setattr(OnnxEngine, "layer_outputs", off)
    broken = crosscheck(spec, ["onnx"], steps=3, batch_size=8)
    assert not broken.ok and broken.first_divergence[0].name == "dense_1" and broken.first_divergence[1] == "onnx"
    assert broken.gradients == [] and broken.losses == {}


def test_cli_crosscheck_says_forward_only(tmp_path):
    spec = tmp_path / "mlp.ms"
    spec.write_text(MLP)
    done = modelspec_cli("crosscheck", spec, "--backends", "numpy,onnx", "--steps", 2)
    assert done.returncode == 0, done.stderr
    assert "onnx: forward only" in done.stdout
    assert "onnx: agrees in the forward pass" in done.stdout and "it does not train" in done.stdout
