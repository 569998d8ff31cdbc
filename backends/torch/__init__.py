"""The PyTorch backend: a spec as an nn.Module with Keras's numbers, live or as source code.

    model = ms.build(spec, backend="torch", device="auto")   # model.native is the nn.Module
    modelspec compile spec.ms --backend torch -o model.py      # a standalone module

Pieces: `keras_ops` (Keras's layers, losses and optimizers in plain torch, shared by both),
`plan` (names and layouts, shared by both), `lowering` (one method per layer kind, as data
both read), `build` (the live module), `engine` (training on CPU or CUDA), `emit` (the
source code).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch  # noqa: F401  (the registry reports a missing framework from this import)

from modelspec.backends.base import Backend, kinds_implemented

from .lowering import Lowering

if TYPE_CHECKING:
    from modelspec import ir
    from modelspec.checker import Report

    from .engine import TorchEngine


class TorchBackend(Backend):
    name: ClassVar[str] = "torch"
    layer_kinds: ClassVar[frozenset[str]] = kinds_implemented(Lowering)

    def engine(self, spec: "ir.Spec", report: "Report", seed: int = 0, device: Any = "auto",
               cuda_graphs: bool = True, distributed: Any = None, **unknown: Any) -> "TorchEngine":
        """Options: `seed` (dropout masks), `device` ('auto' takes CUDA when present, 'cpu',
        'cuda', 'cuda:N'; distributed, 'auto' and 'cuda' take the worker's GPU, cuda:LOCAL_RANK),
        `cuda_graphs` (capture the training step on CUDA; default on; off when distributed) and
        `distributed` (as modelspec.build's: True, a modelspec.distributed.Group, or None)."""
        if unknown:
            raise TypeError(f"unknown option{'s' if len(unknown) > 1 else ''} for the torch backend: "
                            f"{', '.join(sorted(unknown))}; expected seed, device, cuda_graphs or distributed")
        from modelspec.distributed import resolve

        from .engine import TorchEngine

        return TorchEngine(spec, report, seed=seed, device=device, cuda_graphs=cuda_graphs,
                           distributed=resolve(distributed))

    def emit(self, spec: "ir.Spec", report: "Report") -> str:
        from modelspec.diagnostics import Diagnostic, SpecError

        from .emit import emit

        opt = spec.optimizer
        if opt is not None and opt.clipvalue and any(
                layer.kind == "embedding" and layer.embeddings_regularizer is None for layer in spec.layers):
            raise SpecError([Diagnostic(
                "error", "the emitted PyTorch program does not clip an embedding's sparse gradient by value (Keras "
                "clips each gathered row before it sums an id's rows); the torch backend's engine does",
                opt.span, hint="train with --backend torch, or use clipnorm or global_clipnorm",
                code="backend").with_file(spec.path)], spec.source)
        return emit(spec, report)
