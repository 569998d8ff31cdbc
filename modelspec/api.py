"""Building and loading models: `modelspec.build` and `modelspec.load_model`."""

from __future__ import annotations

import os
from typing import Any

from . import ir
from .diagnostics import SpecError


def _spec(spec: Any) -> ir.Spec:
    if isinstance(spec, ir.Spec):
        return spec
    from .parser import parse

    return parse(spec)


def build(spec: Any, backend: str = "numpy", seed: int = 0, distributed: Any = None, **options: Any) -> "Any":
    """Build a spec (IR, text or path) in a backend, with Keras-exact initial weights drawn
    once in NumPy from `seed`, so every backend starts from the same values.

    distributed: train data-parallel across processes (modelspec.distributed): True reads
    the worker's place from torchrun's environment, a `Group` gives it; None or False (the
    default), or a group of one worker, is one process. Only the torch backend trains so.

    Raises SpecError for an invalid spec or one the backend cannot run, BackendError for an
    unknown backend or a missing framework, DistributedError for a distributed run that
    cannot start. Options go to the backend (device="cuda"...).
    """
    from . import backends
    from .checker import infer, refuse_oversized
    from .distributed import resolve
    from .initializers import initial_weights
    from .model import Model

    group = resolve(distributed)
    spec = _spec(spec)
    report = infer(spec)
    refuse_oversized(report, (spec.fit and spec.fit.batch_size) or 32, spec.optimizer or ir.Optimizer(name="rmsprop"))
    be = backends.get(backend)
    if group is not None:
        refuse_single_process(be.name)
        options["distributed"] = group
    problems = be.unsupported(spec)
    if problems:
        raise SpecError([d.with_file(spec.path) for d in problems], spec.source)
    engine = be.engine(spec, report, seed=seed, **options)
    model = Model(spec, report, be, engine, seed)
    model.distributed = group
    model.set_weights(initial_weights(spec, report, seed))
    model.adapted = not report.adapts  # Keras's initial 0 and 1 are not
    return model


def refuse_single_process(backend: str) -> None:
    """A DistributedError unless `backend` trains data-parallel across processes (torch only)."""
    if backend != "torch":
        from .distributed import DistributedError

        raise DistributedError(f"the {backend} backend trains in one process only; distributed training across "
                               "processes runs on the torch backend (--backend torch); Keras 3's own "
                               "keras.distribution runs only on its JAX backend")


def load_model(path: str | os.PathLike, backend: str | None = None, **options: Any) -> "Any":
    """A model saved with `Model.save`: its spec and weights, on `backend` (default: the one
    it was saved from)."""
    from .model import FORMAT, read_weights_file

    tensors, metadata = read_weights_file(path)
    if metadata.get("format") != FORMAT or "spec" not in metadata:
        raise ValueError(f"{os.fspath(path)} holds no modelspec spec; expected a file written by Model.save "
                         f"(format {FORMAT})")
    try:
        spec = ir.Spec.model_validate_json(metadata["spec"])
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: its spec is invalid: {e}") from None
    model = build(spec, backend=backend or metadata.get("backend", "numpy"), **options)
    model.set_weights([tensors[p] if p in tensors else _missing(path, p) for p in model.weight_paths])
    return model


def _missing(path: Any, weight: str) -> Any:
    raise ValueError(f"{os.fspath(path)} lacks the weight {weight}")
