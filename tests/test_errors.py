"""Every error modelspec raises on purpose is a ModelspecError, so a library user catches
them all with one clause."""

from __future__ import annotations

import ast
import importlib

import pytest

import modelspec as ms
from test_import_cycles import modules


def _public_errors() -> list[tuple[str, str]]:
    """(module, class) for each public class of modelspec and its backends that derives from
    an exception: found in the source, so that a new one cannot be missed."""
    out = []
    for name, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = [ast.unparse(b).rpartition(".")[2] for b in node.bases]
            if any(b.endswith(("Error", "Exception")) for b in bases):
                out.append((name, node.name))
    return out


def test_the_errors_are_found():
    found = {cls for _, cls in _public_errors()}
    assert {"SpecError", "BackendError", "DataError", "CommandError", "UnsupportedError"} <= found


@pytest.mark.parametrize(("module", "cls"), _public_errors())
def test_every_public_error_is_a_modelspec_error(module, cls):
    assert issubclass(getattr(importlib.import_module(module), cls), ms.ModelspecError)


def test_the_importer_error_is_still_a_value_error():
    from modelspec.keras_import import UnsupportedError

    assert issubclass(UnsupportedError, ValueError)


def test_one_clause_catches_a_spec_error_and_a_backend_error():
    with pytest.raises(ms.ModelspecError):
        ms.parse("dense")
    with pytest.raises(ms.ModelspecError):
        ms.build("dense 1 in 1", backend="no-such-backend")
