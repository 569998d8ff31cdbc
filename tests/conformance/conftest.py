"""The conformance suite runs once per registered backend (the ibis pattern).

`backend` is parametrized over `modelspec.backends.names()`: a backend whose framework is
not installed is a skip that says which extra to install, never a silent absence.

A backend's known gap is declared in the shared test, next to the case it affects:

    @pytest.mark.notimpl(["keras"], reason="TensorFlow's name scopes refuse spaces", raises=SpecError)

For the named backends only, it becomes `xfail(strict=True, reason=..., raises=...)`: the
test must fail there, with that exception. A gap that gets fixed turns into an XPASS, which
strict mode reports as a failure, until the marker is removed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/ itself, for the shared corpus (corpus.py) and the Keras reference (keras_reference.py),
# when the suite runs on its own
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from modelspec import backends

BACKENDS = backends.names()


@pytest.fixture(params=BACKENDS, scope="session")
def backend(request) -> str:
    """A backend's name; skipped, with the pip extra to install, where its framework is missing."""
    try:
        backends.get(request.param)
    except backends.BackendError as e:
        pytest.skip(str(e))
    return request.param


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        markers = list(item.iter_markers(name="notimpl"))
        if not markers:
            continue
        name = getattr(item, "callspec", None) and item.callspec.params.get("backend")
        if name is None:
            raise pytest.UsageError(f"{item.nodeid}: notimpl needs a test that takes the `backend` fixture")
        for marker in markers:
            xfail = notimpl_to_xfail(marker, item.nodeid)
            if name in marker.args[0]:
                item.add_marker(xfail)


def notimpl_to_xfail(marker: pytest.Mark, where: str) -> pytest.MarkDecorator:
    """`notimpl(names, reason=..., raises=...)` as the strict xfail it stands for; a marker
    without a reason, or naming a backend that does not exist, is a usage error."""
    if len(marker.args) != 1 or isinstance(marker.args[0], str):
        raise pytest.UsageError(f"{where}: notimpl takes a list of backend names, e.g. notimpl(['keras'], ...)")
    unknown = sorted(set(marker.args[0]) - set(BACKENDS))
    if unknown:
        raise pytest.UsageError(f"{where}: notimpl names unknown backends {unknown}; expected some of {BACKENDS}")
    reason = marker.kwargs.get("reason")
    if not reason:
        raise pytest.UsageError(f"{where}: notimpl needs a reason")
    extra = sorted(set(marker.kwargs) - {"reason", "raises"})
    if extra:
        raise pytest.UsageError(f"{where}: notimpl takes reason= and raises= only; received {extra}")
    return pytest.mark.xfail(strict=True, reason=reason, raises=marker.kwargs.get("raises"))
