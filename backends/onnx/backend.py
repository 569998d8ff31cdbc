"""The onnx backend's entry in the registry (modelspec.backends): importing this module
imports onnxruntime, whose absence the registry reports as the `onnx` extra to install."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import onnxruntime  # noqa: F401  (the registry reports a missing framework from this import)

from modelspec.backends import BackendError, NoSource
from modelspec.backends.base import Backend

from .engine import OnnxEngine
from .export import EXPORTABLE_KINDS

if TYPE_CHECKING:
    from modelspec import ir
    from modelspec.checker import Report

__all__ = ["OnnxBackend", "OnnxEngine"]


class OnnxBackend(Backend):
    name: ClassVar[str] = "onnx"
    layer_kinds: ClassVar[frozenset[str]] = EXPORTABLE_KINDS
    trains: ClassVar[bool] = False
    emits_source: ClassVar[bool] = False

    def engine(self, spec: "ir.Spec", report: "Report", seed: int | None = None, device: str | None = None,
               threads: int | None = None, **unknown: Any) -> OnnxEngine:
        """Options: `seed` (the initial weights), `device` 'auto' or 'cpu' (onnxruntime's CPU
        provider) and `threads` (its intra-op threads; default one per core)."""
        if unknown:
            raise TypeError(f"unknown option{'s' if len(unknown) > 1 else ''} for the onnx backend: "
                            f"{', '.join(sorted(unknown))}; expected seed, device or threads")
        if device not in (None, "auto", "cpu"):
            raise BackendError(f"the onnx backend runs on the CPU only (onnxruntime's CPUExecutionProvider); "
                               f"received device={device!r}")
        return OnnxEngine(spec, report, seed=seed, threads=threads)

    def emit(self, spec: "ir.Spec", report: "Report") -> str:
        raise NoSource("the onnx backend emits no source code: an ONNX model is a graph with its weights, which "
                       "`modelspec export SPEC [--weights W] -o FILE.onnx` writes (model.export in Python)")
