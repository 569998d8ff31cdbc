"""The workflow with every other installed backend (`--backend keras|torch`): train, then
evaluate the saved weights with the NumPy backend and get the same test metrics."""

from __future__ import annotations

import json

import pytest

from corpus import ROOT, modelspec_cli

SPEC = ROOT / "specs" / "digits_c.ms"  # dense, batchnorm and leaky_relu: layouts that must travel


def installed(name: str) -> bool:
    from modelspec import backends

    try:
        backends.get(name)
    except (backends.BackendError, ImportError):
        return False
    return True


@pytest.mark.parametrize("backend", [pytest.param("keras", marks=pytest.mark.keras),
                                     pytest.param("torch", marks=pytest.mark.torch)])
def test_train_with_a_backend_and_evaluate_its_weights_with_numpy(backend, tmp_path):
    if not installed(backend):
        pytest.skip(f"the {backend} backend is not installed")
    done = modelspec_cli("train", SPEC, "--backend", backend, "--epochs", 2, "--out", "run", "--json",
                         cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["backend"] == backend and doc["epochs"] == 2
    assert doc["test"]["categorical_accuracy"] > 0.5  # far above chance (0.1) after 2 epochs
    again = modelspec_cli("evaluate", SPEC, "--weights", tmp_path / "run" / "weights.safetensors",
                          "--backend", "numpy", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["metrics"] == pytest.approx(doc["test"], rel=1e-4)
