"""Backends, discovered through the `modelspec.backends` entry-point group and imported lazily.

Adding a backend is one module (a `Backend` subclass) plus one entry-point line in
pyproject.toml. Nothing here imports a framework: a backend's module is imported only
when that backend is asked for, so an absent framework costs nothing until it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import ModelspecError

if TYPE_CHECKING:
    from .base import Backend

GROUP = "modelspec.backends"
# Used when the package metadata is not installed (running from a source tree).
BUILTIN = {
    "numpy": "modelspec.backends.numpy:NumpyBackend",
    "torch": "modelspec.backends.torch:TorchBackend",
    "keras": "modelspec.backends.keras:KerasBackend",
    "onnx": "modelspec.backends.onnx.backend:OnnxBackend",
}
# name -> (the framework's top-level modules, the pip extra that installs them)
FRAMEWORKS = {"torch": (("torch",), "torch"), "keras": (("keras", "tensorflow", "jax"), "keras"),
              "onnx": (("onnx", "onnxruntime"), "onnx")}


class BackendError(ModelspecError):
    """An unknown backend, or one whose framework is not installed."""


class InferenceOnly(BackendError):
    """Training asked of a backend that runs inference only (its `trains` is False)."""

    def __init__(self, backend: str, instead: str) -> None:
        super().__init__(f"the {backend} backend runs inference only (predict, evaluate); train with numpy, "
                         f"torch or keras{instead}")


class NoSource(BackendError):
    """Source code asked of a backend that emits none (its `emits_source` is False)."""


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    return {**BUILTIN, **found}


def names() -> list[str]:
    """Every registered backend, installed or not."""
    return sorted(_entry_points())


def get(name: str) -> "Backend":
    """The backend called `name`, its framework imported. Raises BackendError."""
    table = _entry_points()
    if name not in table:
        import difflib

        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; expected one of: {', '.join(sorted(table))}"
        raise BackendError(f"unknown backend '{name}'{hint}")
    module_name, _, attr = table[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        missing = (getattr(e, "name", None) or "").partition(".")[0]
        modules, extra = FRAMEWORKS.get(name, ((), name))
        if missing not in modules:
            raise  # a bug in the backend, not a missing framework
        raise BackendError(
            f"the {name} backend needs {missing}, which is not installed: "
            f"pip install 'modelspec[{extra}]'") from None
    return getattr(module, attr)()


def installed() -> list[str]:
    """The backends whose frameworks import on this machine."""
    out = []
    for name in names():
        try:
            get(name)
        except BackendError:
            continue
        out.append(name)
    return out
