"""`modelspec crosscheck`: it finds agreement where there is agreement, and names the first
layer and the backend where there is not (a deliberately broken backend proves that)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

import modelspec as ms
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
    assert result.layers[0].errors["broken"] == (0.0, 0.0)  # before the bug: identical
    assert result.training_gap("broken") > 1e-4  # the learning rate shows from step 2 on
    assert result.losses["numpy"][0] == result.losses["broken"][0]  # step 1's loss precedes any update
    assert not result.ok
    assert "dropout rates were set to 0" in result.notes[0]


def test_keras_agrees_with_numpy_on_the_cli():
    pytest.importorskip("keras")
    out = subprocess.run([sys.executable, "-m", "modelspec", "crosscheck", "specs/digits_cnn.ms",
                          "--backends", "numpy,keras", "--steps", "6", "--json", "--explain"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] and doc["first_divergence"] is None
    assert doc["initial_weights_identical"] == {"numpy": True, "keras": True}
    assert len(doc["training"]["losses"]["keras"]) == 6
    assert doc["training"]["max_rel_gap"]["keras"] < 1e-4
    assert all(row["errors"]["keras"]["max_rel"] < 1e-5 for row in doc["forward"])
    assert {row["topic"] for row in doc["explain"]} >= {"batchnorm", "'same' padding", "optimizer"}


def test_explain_lists_only_what_the_spec_uses():
    topics = [t for t, _ in explain(ms.parse("dense 4 relu in 3\ndense 2 softmax"), ["numpy", "torch"])]
    assert "batchnorm" not in topics and "'same' padding" not in topics
    assert "initial weights" in topics


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
