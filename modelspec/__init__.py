"""modelspec: a declarative model-spec compiler for neural networks.

    import modelspec as ms
    spec = ms.parse("dense 512 in 784; dense 64 relu; dense 10 softmax")
    print(ms.check(spec).summary())

Everything modelspec raises on purpose is an `ms.ModelspecError`.
"""

from .diagnostics import Diagnostic, SpecError
from .errors import ModelspecError
from .ir import Spec
from .parser import parse
from .version import __version__

__all__ = ["parse", "check", "build", "load_model", "Spec", "ModelspecError", "SpecError", "Diagnostic", "__version__"]


def check(spec, *, strict: bool = False):
    """Shapes, parameters, bytes and FLOPs of a spec, as Keras would report them."""
    from .checker import check as _check

    return _check(spec, strict=strict)


def build(spec, backend: str = "numpy", seed: int = 0, **options):
    """Build a spec in a backend; see modelspec.api.build."""
    from .api import build as _build

    return _build(spec, backend=backend, seed=seed, **options)


def load_model(path, backend=None, **options):
    """Load a model written by Model.save; see modelspec.api.load_model."""
    from .api import load_model as _load

    return _load(path, backend=backend, **options)
