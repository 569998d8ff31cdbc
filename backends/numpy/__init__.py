"""The NumPy backend: the project's reference numerics (Keras 3, TensorFlow backend, float32).

Entry point `modelspec.backends.numpy:NumpyBackend`. kernels.py holds the numbers,
engine.py drives them for the Model API, emit.py writes standalone NumPy code.
"""

from __future__ import annotations

from typing import Any, ClassVar

from modelspec.backends.base import Backend, kinds_implemented

from .engine import NumpyEngine
from .lowering import Lowering

__all__ = ["NumpyBackend", "NumpyEngine"]


class NumpyBackend(Backend):
    name: ClassVar[str] = "numpy"
    layer_kinds: ClassVar[frozenset[str]] = kinds_implemented(Lowering)

    def engine(self, spec, report, device: str | None = None, **options: Any) -> NumpyEngine:
        """Options: seed (initial weights and dropout masks; default the spec's fit seed);
        device 'auto' or 'cpu' (NumPy runs on the CPU only)."""
        if device not in (None, "auto", "cpu"):
            from modelspec.backends import BackendError

            raise BackendError(f"the numpy backend runs on the CPU only; received device={device!r} "
                               "(use --backend torch or keras for a GPU)")
        return NumpyEngine(spec, report, **options)

    def emit(self, spec, report) -> str:
        from .emit import emit

        return emit(spec, report)
