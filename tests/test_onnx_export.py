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


# Embedding's mask, with many ids 0: leading and trailing runs and scattered ones (every row
# keeps one id that is not 0; an all-masked row is NaN in Keras's masked mean), into every
# kind that reads it, attention's einsum path (dropout) included
MASKED = {name: spec for name, spec in SEQUENCE_SPECS.items() if getattr(spec.layers[0], "mask_zero", False)}
MASKED["attention-dropout-mask"] = ms.parse(
    "input 6 int\nembedding 10 4 mask_zero\nattention heads=2 key_dim=2 dropout=0.3\nglobalavgpool1d\ndense 2")


def masked_ids(vocab: int, n: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    ids = rng.integers(1, vocab, (n, steps)).astype(np.int32)
    ids[rng.random((n, steps)) < 0.4] = 0
    ids[0, :steps // 2] = 0  # leading ids masked
    ids[1, steps // 2:] = 0  # trailing ones
    for row in ids:
        if not row.any():
            row[-1] = 1
    return ids


@pytest.mark.parametrize("name", MASKED)
def test_masks_agree(name):
    spec = MASKED[name]
    model, weights = numpy_model(spec)
    sess = session(model_proto(model.spec, model.report, weights, layer_outputs=True))
    x = masked_ids(spec.layers[0].input_dim, 7, model.report.input_shape[1], np.random.default_rng(3))
    assert (x == 0).mean() > 0.3
    outputs = sess.run(None, {"input": x})
    assert relative_error(outputs[0], model.predict(x)) <= TOLERANCE
    for row, got, want in zip(model.report.layers, outputs[1:], model.engine.layer_outputs(x)):
        assert relative_error(got, want) <= TOLERANCE, row.name


@pytest.mark.parametrize("activation", ["sigmoid", "softplus", "gelu", "swish", "tanh", "elu", "selu", "relu6",
                                        "leaky_relu 0.1", "relu", "linear"])
def test_activations_agree_value_for_value_in_their_tails(activation):
    """Each value to float32 round-off, relative to itself: near 0 (elu's expm1, not exp(x) - 1)
    and far out (a sigmoid of -17 is 4e-8, not onnxruntime's Sigmoid's 9e-8)."""
    model = ms.build(f"input 1\n{activation}")
    magnitudes = np.logspace(-30, 2, 3000)
    x = np.concatenate([-magnitudes, magnitudes, [0.0, -0.0]]).astype(np.float32)[:, None]
    got = session(model_proto(model.spec, model.report, [])).run(None, {"input": x})[0]
    expected = model.predict(x)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("opset", [13, 17, 25])
@pytest.mark.parametrize("name", ["spec:digits_cnn", "spec:digits_transformer", "sequence:transformer-block-mask",
                                  "sequence:bidirectional-mask-sequences", "layer:globalavgpool2d",
                                  "sequence:embedding-mask-average", "layer:lstm 4"])
def test_other_opsets(name, opset):
    """Opsets before 18 take the reductions' axes as an attribute, before 15 Shape has no start."""
    model, weights = numpy_model(CASES[name])
    proto = model_proto(model.spec, model.report, weights, opset=opset)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    x = inputs(model.spec, 3, np.random.default_rng(5))
    assert relative_error(session(proto).run(None, {"input": x})[0], model.predict(x)) <= TOLERANCE


def test_an_opset_out_of_range_is_an_error_naming_the_range():
    model, weights = numpy_model(SPEC_FILES["mnist"])
    for opset in (12, onnx.defs.onnx_opset_version() + 1):
        with pytest.raises(ExportError, match=f"cannot export to ONNX opset {opset}: expected 13 to"):
            model_proto(model.spec, model.report, weights, opset=opset)


def test_the_file_is_checked_and_carries_the_spec_name_and_version(tmp_path):
    from modelspec.printer import to_text
    from modelspec.version import __version__

    spec = SPEC_FILES["digits_resnet"]
    model = ms.build(spec, seed=3)
    path = tmp_path / "resnet.onnx"
    model.export(path)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["modelspec.model"] == model.name == "digits_resnet"
    assert meta["modelspec.version"] == __version__
    assert meta["modelspec.spec"] == to_text(spec, spec.source)
    assert "block" in meta["modelspec.spec"]  # the file's own text, blocks and all
    assert ms.parse(meta["modelspec.spec"]) == spec
    assert proto.producer_name == "modelspec" and proto.graph.name == "digits_resnet"
    # an initializer named by a Keras path holds that weight as it is (one in ONNX's layout, a
    # conv's kernel, has a name of its own)
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    weights = dict(zip(model.weight_paths, model.get_weights()))
    assert sum(p in stored for p in weights) >= len(weights) // 2
    for path_, value in weights.items():
        if path_ in stored:
            np.testing.assert_array_equal(stored[path_], value)


def test_named_input_and_output_with_a_dynamic_batch_axis():
    for name, elem in (("mnist", onnx.TensorProto.FLOAT), ("digits_tokens", onnx.TensorProto.INT32)):
        model = ms.build(SPEC_FILES[name])
        proto = model_proto(model.spec, model.report, model.get_weights())
        (inp,), (out,) = proto.graph.input, proto.graph.output
        assert (inp.name, out.name) == ("input", "output")
        assert inp.type.tensor_type.elem_type == elem
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert dims == ["batch", *model.report.input_shape[1:]]
        out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
        assert out_dims == ["batch", *model.output_shape[1:]]
        sess = session(proto)
        for n in (1, 2, 33):
            assert sess.run(None, {"input": inputs(model.spec, n, np.random.default_rng(n))})[0].shape[0] == n


def test_layer_outputs_are_named_by_row_in_report_order():
    model = ms.build(GRAPH_SPECS["skip-written-first"])
    proto = model_proto(model.spec, model.report, model.get_weights(), layer_outputs=True)
    assert [o.name for o in proto.graph.output] == ["output"] + [LAYER_OUTPUT + r.name for r in model.report.layers]


class WithoutLSTM(onnx_export.Lowering):
    lstm = None  # not a method: kinds_implemented leaves it out


def test_a_kind_that_cannot_be_exported_is_an_error_at_its_line_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "Lowering", WithoutLSTM)
    spec = SPEC_FILES["digits_lstm"]
    model = ms.build(spec)
    target = tmp_path / "m.onnx"
    with pytest.raises(ExportError) as caught:
        model.export(target)
    (diag,) = caught.value.diagnostics
    assert diag.message == "lstm layers cannot be exported to ONNX yet"
    lstm_line = next(i for i, line in enumerate(spec.source.splitlines(), 1) if line.lstrip().startswith("lstm"))
    assert diag.line == lstm_line
    assert "digits_lstm.ms:" in caught.value.render()
    assert list(tmp_path.iterdir()) == []


def test_an_activation_that_cannot_be_exported_names_it(monkeypatch):
    from modelspec.backends.onnx import graph

    real = graph.Graph.activation

    def without_gelu(self, name, x, **options):
        if name == "gelu":
            raise graph.Unsupported("the gelu activation")
        return real(self, name, x, **options)

    monkeypatch.setattr(graph.Graph, "activation", without_gelu)
    spec = ms.parse("input 4\ndense 3 relu\ndense 2 gelu\n")
    model = ms.build(spec)
    with pytest.raises(ExportError, match="the gelu activation cannot be exported to ONNX yet") as caught:
        model.export("never.onnx")
    assert caught.value.diagnostics[0].line == 3
    assert not Path("never.onnx").exists()


def test_a_failed_export_leaves_a_file_already_there_unchanged(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"the previous export")
    model = ms.build(SPEC_FILES["mnist"])
    with pytest.raises(ExportError):
        model.export(target, opset=7)
    assert target.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left
    model.export(target)
    assert onnx.load(target).graph.output[0].name == "output"


def test_the_exported_weights_are_the_models_current_ones(tmp_path):
    model = ms.build(SPEC_FILES["regression_one_layer"], seed=1)
    x = inputs(model.spec, 4, np.random.default_rng(0))
    model.set_weights([w * 2 + 0.5 for w in model.get_weights()])
    model.export(tmp_path / "m.onnx")
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x})[0]
    assert relative_error(got, model.predict(x)) <= TOLERANCE


def test_exporting_the_mnist_mlp_takes_under_a_second():
    model = ms.build(SPEC_FILES["mnist"])
    weights = model.get_weights()
    model_proto(model.spec, model.report, weights)  # imports and caches warmed
    start = time.perf_counter()
    model_proto(model.spec, model.report, weights).SerializeToString()
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------------
# modelspec export


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path)).run(None, {"input": x})[0]


def test_cli_exports_the_seeded_initial_weights(tmp_path):
    spec = ROOT / "specs" / "digits_cnn.ms"
    done = modelspec_cli("export", spec, "-o", tmp_path / "a.onnx", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and "wrote" in done.stderr
    seeded = modelspec_cli("export", spec, "--seed", "5", "-o", tmp_path / "b.onnx", "--opset", "17", cwd=tmp_path)
    assert seeded.returncode == 0, seeded.stderr
    assert onnx.load(tmp_path / "b.onnx").opset_import[0].version == 17
    x = inputs(SPEC_FILES["digits_cnn"], 3, np.random.default_rng(0))
    for name, seed in (("a.onnx", 0), ("b.onnx", 5)):
        expected = ms.build(SPEC_FILES["digits_cnn"], seed=seed).predict(x)
        assert relative_error(run_ort(tmp_path / name, x), expected) <= TOLERANCE


def test_cli_exports_trained_weights(tmp_path):
    spec = ROOT / "specs" / "digits_tokens.ms"
    model = ms.build(SPEC_FILES["digits_tokens"], seed=2)
    model.set_weights(case_weights(model.spec, model.report))
    model.save(tmp_path / "w.safetensors")
    done = modelspec_cli("export", spec, "--weights", tmp_path / "w.safetensors", "-o", tmp_path / "t.onnx",
                         cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    x = inputs(model.spec, 4, np.random.default_rng(1))
    assert relative_error(run_ort(tmp_path / "t.onnx", x), model.predict(x)) <= TOLERANCE


@pytest.mark.parametrize("args, message", [
    (["{spec}", "-o", "{spec}"], "modelspec: error: -o {spec}: that is the input {spec}; an output never replaces"),
    (["{spec}", "-w", "{weights}", "-o", "{weights}"], "modelspec: error: -o {weights}: that is the input"),
    (["{spec}", "-w", "{weights}", "--seed", "3", "-o", "m.onnx"], "modelspec: error: --seed draws initial weights"),
    (["{spec}", "-w", "missing.safetensors", "-o", "m.onnx"], "modelspec: error: cannot read the weights file"),
    (["{spec}", "-o", "m.onnx", "--opset", "9"], "{spec}: error: cannot export to ONNX opset 9: expected 13 to"),
    (["{spec}", "-o", "."], "modelspec: error: -o .: is a folder"),
    (["nothing.ms", "-o", "m.onnx"], "nothing.ms"),
], ids=["output-is-spec", "output-is-weights", "seed-and-weights", "missing-weights", "opset", "folder", "no-spec"])
def test_cli_errors_are_one_clear_message(tmp_path, args, message):
    spec = tmp_path / "s.ms"
    spec.write_text("input 4\ndense 2\n")
    weights = tmp_path / "w.safetensors"
    ms.build(ms.parse(spec)).save(weights)
    before = weights.read_bytes()
    names = {"spec": "s.ms", "weights": "w.safetensors"}
    done = modelspec_cli("export", *(a.format(**names) for a in args), cwd=tmp_path)
    assert done.returncode == 1
    assert message.format(**names) in done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert not (tmp_path / "m.onnx").exists()
    assert weights.read_bytes() == before and spec.read_text() == "input 4\ndense 2\n"


def test_cli_reports_an_unexportable_kind_at_its_line(tmp_path, monkeypatch, capsys):
    from modelspec.cli import main

    monkeypatch.setattr(onnx_export, "Lowering", WithoutLSTM)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.ms").write_text("input 6x3\nlstm 4\ndense 2\n")
    assert main(["export", "r.ms", "-o", "r.onnx"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("r.ms:2:1: error: lstm layers cannot be exported to ONNX yet")
    assert not (tmp_path / "r.onnx").exists()


def test_the_exporter_imports_no_framework_and_needs_no_onnxruntime():
    import subprocess

    code = ("import sys\nsys.modules['onnxruntime'] = None  # as if not installed\n"
            "import modelspec as ms\nm = ms.build('input 6 int\\nembedding 9 4 mask_zero\\nlstm 3\\ndense 2')\n"
            "import tempfile, os\nm.export(os.path.join(tempfile.mkdtemp(), 'm.onnx'))\n"
            "print(sorted(k for k in ('tensorflow', 'torch', 'keras', 'jax') if k in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_layer_kind_is_exportable():
    from modelspec import ir

    assert onnx_export.EXPORTABLE_KINDS == frozenset(ir.LAYER_CLASSES)
    # and the conformance cases reach every kind
    kinds = {row.kind for spec in CASES.values() for row in check(spec).layers}
    assert kinds == set(ir.LAYER_CLASSES)


def test_without_onnx_installed_export_says_which_extra(tmp_path):
    import subprocess

    code = ("import sys\nsys.modules['onnx'] = None  # as if not installed\nfrom modelspec.cli import main\n"
            "sys.exit(main(['export', sys.argv[1], '-o', sys.argv[2]]))")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT / "specs" / "mnist.ms"), str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == ("modelspec: error: exporting to ONNX needs onnx, which is not installed: "
                                   "pip install 'modelspec[onnx]'")
    assert not (tmp_path / "m.onnx").exists()


def test_a_model_over_protobufs_limit_is_refused_before_anything_is_built(tmp_path):
    spec = ms.parse("input 30000\ndense 20000\n")
    report = check(spec)
    weights = [np.broadcast_to(np.float32(0), w.shape) for w in report.weights]  # no memory taken
    with pytest.raises(ExportError, match="the model's weights take 2,400,080,000 bytes; an ONNX file holds at most"):
        onnx_export.export(spec, report, weights, tmp_path / "big.onnx")
    assert not (tmp_path / "big.onnx").exists()


def test_a_long_sequence_is_one_loop_per_recurrent_layer():
    """The graph does not grow with the steps, and the numbers hold over 300 of them, masked."""
    text = "input {} int\nembedding 20 4 mask_zero\nbidirectional gru 3 return_sequences\nlstm 2 go_backwards\ndense 2"
    short, long = (ms.build(text.format(steps)) for steps in (6, 300))
    sizes = [len(model_proto(m.spec, m.report, m.get_weights()).graph.node) for m in (short, long)]
    assert sizes[0] == sizes[1]
    model, weights = numpy_model(long.spec)
    x = masked_ids(20, 3, 300, np.random.default_rng(4))
    got = session(model_proto(model.spec, model.report, weights)).run(None, {"input": x})[0]
    assert relative_error(got, model.predict(x)) <= TOLERANCE
