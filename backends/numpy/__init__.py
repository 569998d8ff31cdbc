"""The NumPy backend: the project's reference numerics (Keras 3, TensorFlow backend, float32).

Entry point `modelspec.backends.numpy:NumpyBackend`. kernels.py holds the numbers,
engine.py drives them for the Model API, emit.py writes standalone NumPy code.
"""

from __future__ import annotations

from typing import Any, ClassVar

from modelspec.backends.base import Backend

from .engine import NumpyEngine

__all__ = ["NumpyBackend", "NumpyEngine"]


class NumpyBackend(Backend):
    name: ClassVar[str] = "numpy"
    extra: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ("numpy",)

    def engine(self, spec, report, **options: Any) -> NumpyEngine:
        """Options: seed (initial weights and dropout masks; default the spec's fit seed)."""
        return NumpyEngine(spec, report, **options)

    def emit(self, spec, report) -> str:
        from .emit import emit

        return emit(spec, report)
