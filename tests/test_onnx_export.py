"""ONNX export: onnxruntime's numbers are the NumPy engine's, to float32 round-off, on every
conformance case and every spec in specs/; the file is checked, carries its metadata, has
a dynamic batch axis, and is written atomically or not at all; `modelspec export`.

Expected values come from the NumPy backend (the project's reference) run on the same
weights: the seeded initial weights moved off their initial values (layer_test.case_weights:
moving statistics and variances not 0 or 1).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).parent / "conformance"))

import modelspec as ms  # noqa: E402
from corpus import modelspec_cli  # noqa: E402
from layer_test import case_weights, inputs  # noqa: E402
from modelspec.backends.onnx import export as onnx_export  # noqa: E402
from modelspec.backends.onnx.export import LAYER_OUTPUT, ExportError, model_proto  # noqa: E402
from modelspec.checker import check  # noqa: E402
from test_layers import GRAPH_SPECS, LAYERS, NORMALIZE_SPECS, SEQUENCE_SPECS, TRAINING_SPECS  # noqa: E402

ROOT = Path(__file__).parents[1]
SPEC_FILES = {p.stem: ms.parse(p) for p in sorted((ROOT / "specs").glob("*.ms"))}  # dropout as written
CASES = {**{f"layer:{p.id}": p.values[0].spec() for p in LAYERS}, **{f"spec:{k}": v for k, v in SPEC_FILES.items()},
         **{f"training:{k}": v for k, v in TRAINING_SPECS.items()},
         **{f"normalize:{k}": v for k, v in NORMALIZE_SPECS.items()},
         **{f"graph:{k}": v for k, v in GRAPH_SPECS.items()}, **{f"sequence:{k}": v for k, v in SEQUENCE_SPECS.items()}}
TOLERANCE = 1e-5  # max abs error / max abs value: float32 round-off (issue 17)


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    assert got.shape == expected.shape
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    err = float(np.abs(got.astype(np.float64) - expected).max()) if expected.size else 0.0
    return err / scale if scale else err


def numpy_model(spec: ms.Spec) -> tuple[object, list[np.ndarray]]:
    model = ms.build(spec, backend="numpy", seed=0)
    weights = case_weights(spec, model.report)
    model.set_weights(weights)
    return model, model.get_weights()


def session(proto) -> "ort.InferenceSession":
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", CASES)
def test_onnxruntime_agrees_with_numpy(name):
    spec = CASES[name]
    model, weights = numpy_model(spec)
    proto = model_proto(model.spec, model.report, weights, layer_outputs=True)
    sess = session(proto)
    rng = np.random.default_rng(7)
    for n in (1, 5):  # one sample, and a batch of several: the batch axis is dynamic
        x = inputs(model.spec, n, rng)
        outputs = sess.run(None, {"input": x})
        expected = model.predict(x)
        assert relative_error(outputs[0], expected) <= TOLERANCE, name
        rows = model.engine.layer_outputs(x)
        assert len(outputs) == 1 + len(rows) == 1 + len(model.report.layers)
        for row, got, want in zip(model.report.layers, outputs[1:], rows):
            assert relative_error(got, want) <= TOLERANCE, (name, row.name)
