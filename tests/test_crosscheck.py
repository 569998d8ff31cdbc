"""`modelspec crosscheck`: it finds agreement where there is agreement, and names the first
layer and the backend where there is not (a deliberately broken backend proves that)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

import numpy as np

import modelspec as ms
from corpus import ROOT, VARIED
from modelspec import backends
from modelspec.backends.numpy import NumpyBackend, NumpyEngine
from modelspec.crosscheck import crosscheck, explain

SPEC = """
model probe
input 6x6x1
conv2d 4 3x3 padding=same relu he_normal(seed=1)
batchnorm
maxpool2d 2x2
flatten
dropout 0.3
dense 5 softmax
optimizer adam
loss categorical_crossentropy
metrics accuracy
"""


class _OffByOneLayer(NumpyEngine):
    """A numpy engine with a bug in its third layer's output and a different learning rate."""

    def layer_outputs(self, x):
        outputs = super().layer_outputs(x)
        outputs[2] = outputs[2] + 1e-3
        return outputs

    def set_training(self, config):
        hyper = {**config.hyper, "learning_rate": config.hyper["learning_rate"] * 1.5}
        super().set_training(dataclasses.replace(config, hyper=hyper))


class BrokenBackend(NumpyBackend):
    name = "broken"

    def engine(self, spec, report, device=None, **options):
        return _OffByOneLayer(spec, report, **options)


@pytest.fixture
def with_broken_backend(monkeypatch):
    table = dict(backends.BUILTIN, broken=f"{__name__}:BrokenBackend")
    monkeypatch.setattr(backends, "_entry_points", lambda: table)


def test_a_broken_backend_is_caught_at_its_first_wrong_layer(with_broken_backend):
    result = crosscheck(ms.parse(SPEC), ["numpy", "broken"], steps=4, batch_size=8)
    layer, backend = result.first_divergence
    assert (layer.name, backend) == ("max_pooling2d", "broken")
    assert result.layers[0].errors["broken"] == result.layers[0].errors["numpy"]  # before the bug: identical
    assert result.left_band_at("broken") == 2  # the learning rate shows from step 2 on
    assert result.losses["numpy"][0] == result.losses["broken"][0]  # step 1's loss precedes any update
    assert not result.ok
    assert "dropout rates were set to 0" in result.notes[0]


# Subtle bugs, each planted in a copy of the numpy backend: crosscheck must see every one on a
# calm spec and on a chaotic one (where float32 itself leaves float64 after a few steps), and
# say where.
CALM = """
model calm
input 8x8
flatten
dense 16 relu he_normal(seed=1)
batchnorm
dense 10 softmax
optimizer adam lr=0.001
loss categorical_crossentropy
"""
# the tutorial's model B on inputs in [0, 1) (its spec rescales raw pixels): RMSprop over three
# batchnorms, chaotic after step 1
CHAOTIC = "\n".join(line for line in (ROOT / "specs" / "model_b.ms").read_text().splitlines()
                    if not line.startswith("rescale"))


class _GradientOff(NumpyEngine):
    """dense_1's kernel gradient 1e-5 too large (relative): the fifth trainable weight, after
    dense's kernel and bias and batchnorm's gamma and beta, in both specs."""

    def gradients(self, x, y):
        out = super().gradients(x, y)
        self.net.grads[4] *= np.float32(1 + 1e-5)
        return out


class _BatchnormEpsilon(NumpyEngine):
    """batchnorm's epsilon 1e-4 instead of Keras's 1e-3."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for layer in self.net.layers:
            if hasattr(layer, "epsilon"):
                layer.epsilon = 1e-4


class _EpsilonInsideTheRoot(NumpyEngine):
    """Adam and RMSprop with ε inside the square root where Keras has it outside, and the
    other way round: the step's denominator moves by about ε/(2√v) relative."""

    def set_training(self, config):
        super().set_training(config)
        opt = self.optimizer
        if hasattr(opt, "epsilon"):
            opt.epsilon = opt.epsilon * 30  # the size of the change the misplaced ε makes on these specs


def _planted(engine_class):
    class Planted(NumpyBackend):
        name = "planted"

        def engine(self, spec, report, device=None, **options):
            return engine_class(spec, report, **options)

    return Planted


@pytest.mark.parametrize("text", [CALM, CHAOTIC], ids=["calm", "chaotic"])
@pytest.mark.parametrize("engine, where", [(_GradientOff, "gradient"), (_BatchnormEpsilon, "forward"),
                                           (_EpsilonInsideTheRoot, "training")],
                         ids=["gradient-1e-5", "batchnorm-epsilon", "optimizer-epsilon"])
def test_subtle_bugs_are_caught_on_calm_and_chaotic_specs(monkeypatch, text, engine, where):
    Planted = _planted(engine)
    monkeypatch.setitem(sys.modules[__name__].__dict__, "Planted", Planted)
    table = dict(backends.BUILTIN, planted=f"{__name__}:Planted")
    monkeypatch.setattr(backends, "_entry_points", lambda: table)
    spec = ms.parse(text)
    result = crosscheck(spec, ["numpy", "planted"], steps=8, batch_size=16)
    assert not result.ok
    if where == "gradient":
        layer, backend = result.first_gradient_divergence
        assert backend == "planted" and layer.name == "dense_1"
        assert result.first_divergence is None
    elif where == "forward":
        layer, backend = result.first_divergence
        assert backend == "planted" and layer.kind == "batchnorm"
    else:
        assert result.first_divergence is None and result.first_gradient_divergence is None
        assert result.left_band_at("planted") == 2  # the first step that follows an update
    assert result.left_band_at("numpy") is None


def test_keras_agrees_with_numpy_on_the_cli():
    pytest.importorskip("keras")
    out = subprocess.run([sys.executable, "-m", "modelspec", "crosscheck", "specs/digits_cnn.ms",
                          "--backends", "numpy,keras", "--steps", "6", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] and doc["first_divergence"] is None and doc["first_gradient_divergence"] is None
    assert doc["initial_weights_identical"] == {"numpy": True, "keras": True}
    assert len(doc["training"]["losses"]["keras"]) == len(doc["training"]["float64"]) == 6
    assert doc["training"]["left_band_at"] == {"numpy": None, "keras": None}
    assert all(row["errors"]["keras"]["max_rel"] <= row["band"] for row in doc["forward"])
    assert [row["layer"] for row in doc["gradients"]] == ["conv2d", "batch_normalization", "conv2d_1", "dense"]


def test_explain_only_explains(tmp_path):
    """--explain compares nothing, so a spec whose comparison would fail still exits 0."""
    (tmp_path / "wild.ms").write_text("input 4\ndense 3 relu\ndense 2 softmax\noptimizer sgd lr=1e30\n"
                                      "loss categorical_crossentropy\n")
    out = subprocess.run([sys.executable, "-m", "modelspec", "crosscheck", str(tmp_path / "wild.ms"), "--json",
                          "--explain"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] and "forward" not in doc and {row["topic"] for row in doc["explain"]} >= {"optimizer"}


def test_explain_lists_only_what_the_spec_uses():
    topics = [t for t, _ in explain(ms.parse("dense 4 relu in 3\ndense 2 softmax"), ["numpy", "torch"])]
    assert "batchnorm" not in topics and "'same' padding" not in topics
    assert "initial weights" in topics


def test_explain_says_how_every_backend_realises_every_topic():
    from modelspec.crosscheck import _TOPICS

    for topic, _, text in _TOPICS:
        assert set(text) == {"keras", *backends.names()}, topic


def test_cli_errors_are_one_line(tmp_path):
    spec = tmp_path / "m.ms"
    spec.write_text("dense 2 softmax in 3\n")
    out = subprocess.run([sys.executable, "-m", "modelspec", "crosscheck", str(spec), "--backends", "numpy,nump"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip() == "modelspec: error: unknown backend 'nump'; did you mean 'numpy'?"


def test_the_table_never_cuts_a_layer_name_or_a_number(tmp_path):
    """Output piped (80 columns): long layer names and every figure are shown whole."""
    from corpus import modelspec_cli

    body = "\n".join(["dense 16 relu\nbatchnorm"] * 11)
    (tmp_path / "deep.ms").write_text(f"model deep\ninput 8x8\nflatten\n{body}\ndense 10 softmax\n"
                                      "optimizer adam\nloss categorical_crossentropy\n")
    done = modelspec_cli("crosscheck", tmp_path / "deep.ms", "--steps", 1)
    assert done.returncode == 0, done.stderr
    assert "│ batch_normalization_10 (batchnorm) │" in done.stdout
    assert "…" not in done.stdout


CIFAR10_CNN = """
# the Keras examples' CIFAR-10 CNN (keras/examples/cifar10_cnn.py), as public code writes it
model cifar10_cnn
input 32x32x3
conv2d 32 3x3 padding=same relu
conv2d 32 3x3 relu
maxpool2d 2x2
dropout 0.25
conv2d 64 3x3 padding=same relu
conv2d 64 3x3 relu
maxpool2d 2x2
dropout 0.25
flatten
dense 512 relu
dropout 0.5
dense 10 softmax
optimizer rmsprop lr=0.0001
loss categorical_crossentropy
"""


def test_a_real_chaotic_model_agrees_within_float32s_own_spread():
    """20 steps of RMSprop through max pooling: float32 itself leaves float64 by about 1e-3 (a
    near-tie in a max pool broken the other way by a few ulps' difference), and a backend that
    lands on that other branch is not called wrong; the regime and its causes are said."""
    pytest.importorskip("keras")
    pytest.importorskip("torch")
    result = crosscheck(ms.parse(CIFAR10_CNN), ["numpy", "torch", "keras"], steps=20)
    assert result.ok, result.to_dict()
    assert max(result.noise) > 1e-4  # chaotic: a fixed 1e-4 tolerance would cry wolf here
    assert result.regime().startswith("chaotic after step")
    assert "rmsprop divides each gradient" in result.regime() and "ties in max pooling" in result.regime()
    assert result.advice().startswith("for a tight comparison use `optimizer sgd`")


def test_a_residual_network_with_its_own_settings_agrees_within_float32s_own_spread():
    """specs/digits_resnet.ms as written (Adam, batchnorm, merges, a concat with a max pool):
    chaotic in float32, so the conformance suite trains it with SGD (tests/conformance/
    test_training.py, CHAOTIC); here every backend, every layer, every gradient and its own
    training are judged against float64."""
    pytest.importorskip("keras")
    pytest.importorskip("torch")
    result = crosscheck(ms.parse("specs/digits_resnet.ms"), ["numpy", "torch", "keras"], steps=12)
    assert result.ok, result.to_dict()
    assert [row.name for row in result.layers][:3] == ["rescaling", "conv2d", "conv2d_1"]


def test_sequences_on_token_ids_agree_within_float32s_own_spread():
    """specs/digits_tokens.ms as written (embedding, conv1d, pooling) and a text classifier whose
    embedding masks the ids 0 for a layernorm, a dense layer and the masked mean: every backend,
    layer, gradient (the embedding's sparse one included) and training step against float64."""
    pytest.importorskip("keras")
    pytest.importorskip("torch")
    result = crosscheck(ms.parse("specs/digits_tokens.ms"), ["numpy", "torch", "keras"], steps=8)
    assert result.ok, result.to_dict()
    assert result.layers[0].name == "embedding" and result.gradients[0].name.startswith("embedding")
    result = crosscheck(ms.parse(VARIED["text_classifier"]), ["numpy", "torch", "keras"], steps=8)
    assert result.ok, result.to_dict()
    assert [row.name for row in result.layers][-2:] == ["masked_mean", "dense_1"]


def test_one_backend_is_judged_on_its_own():
    """Every backend is judged against float64, so one is enough (and no longer refused)."""
    pytest.importorskip("torch")
    out = subprocess.run([sys.executable, "-m", "modelspec", "crosscheck", "specs/digits_a.ms", "--backends", "torch",
                          "--steps", "3", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] and doc["backends"] == ["torch"] and list(doc["training"]["losses"]) == ["torch"]
    assert len(doc["training"]["float64"]) == 3 and doc["training"]["left_band_at"] == {"torch": None}


def test_the_learning_rate_of_each_step_is_shown_side_by_side(tmp_path):
    """A schedule's rates: modelspec.schedules', Keras's own schedule object's (to a float32 ulp,
    when Keras is installed) and the numpy engine's, in --json and in the text."""
    text = ("model sched\ninput 4\ndense 3 softmax\nloss categorical_crossentropy\n"
            "optimizer sgd lr=cosine_decay(0.1, decay_steps=4, alpha=0.1, warmup_target=0.2, warmup_steps=2)\n")
    path = tmp_path / "sched.ms"
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "modelspec", "crosscheck", str(path), "--backends", "numpy",
                           "--steps", "8", "--json"], capture_output=True, text=True)
    rates = json.loads(done.stdout)["training"]["learning_rates"]
    expected = [0.1, 0.15, 0.2, 0.2 * (0.9 * 0.5 * (1 + np.cos(np.pi / 4)) + 0.1)]
    np.testing.assert_allclose(rates["modelspec"][:4], expected, rtol=1e-6)
    assert rates["numpy"] == rates["modelspec"] and rates["modelspec"][6:] == [rates["modelspec"][6]] * 2
    if "keras_schedule" in rates:
        np.testing.assert_allclose(rates["keras_schedule"], rates["modelspec"], rtol=2e-7)
    shown = subprocess.run([sys.executable, "-m", "modelspec", "crosscheck", str(path), "--backends", "numpy",
                            "--steps", "8"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    assert "Learning rate of each step" in shown.stdout and "0.15" in shown.stdout
