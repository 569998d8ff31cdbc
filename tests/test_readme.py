"""The README's library snippet runs as written (from the repository root), with the torch
line's backend swapped for numpy where torch is missing."""

from __future__ import annotations

import os

import pytest

from corpus import ROOT


def test_the_library_snippet_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Library\n\n```python\n", 1)[1].split("```", 1)[0]
    pytest.importorskip("torch")
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(block.replace('"digits.safetensors"', repr(os.fspath(tmp_path / "d.safetensors"))),
                 "README.md", "exec"), namespace)
    assert namespace["model"].evaluate(namespace["x_test"], namespace["y_test"])["categorical_accuracy"] > 0.8
    assert (tmp_path / "d.safetensors").exists()
