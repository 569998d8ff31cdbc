"""A checked spec and its weights as an ONNX model, written directly from the IR with the
`onnx` package (no TensorFlow, no PyTorch).

The graph reads `input`: float32, or int32 ids for an `input ... int` spec (what the NumPy
engine feeds an embedding), with a dynamic batch axis `batch`, and writes `output`. With
`layer_outputs`, every report row's output follows, channels-last, in `report.layers` order,
named `layer_output/<row name>` (what Engine.layer_outputs returns, for crosscheck). With
`logits`, an output `logits` follows `output`: the values before the output layer's softmax or
sigmoid, which a cross-entropy reads (modelspec.training.loss_from_logits). Every
model passes onnx.checker's full check and strict shape inference before it is returned.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from modelspec.backends.base import kinds_implemented
from modelspec.diagnostics import Diagnostic

from .graph import INPUT, OUTPUT, ExportError, Graph, Unsupported, value_info
from .lowering import Lowering

__all__ = ["DEFAULT_OPSET", "EXPORTABLE_KINDS", "INPUT", "LAYER_OUTPUT", "LOGITS", "MIN_OPSET", "OUTPUT", "ExportError",
           "export", "model_proto"]

EXPORTABLE_KINDS: frozenset[str] = kinds_implemented(Lowering)
DEFAULT_OPSET = 21  # onnx 1.23 and onnxruntime 1.32 both run it, and both run 13 to 28
# Softmax over one axis (before 13, over every axis from `axis` on, a 2-D coercion) and
# Unsqueeze's and Squeeze's axes as an input come with opset 13
MIN_OPSET = 13
PROTOBUF_LIMIT = 2**31 - 2**24  # protobuf's 2 GiB, less room for the graph itself
LAYER_OUTPUT = "layer_output/"  # the prefix of each row's output with layer_outputs=True
LOGITS = "logits"  # the output before the output layer's softmax or sigmoid, with logits=True


def _error(message: str, span: Any, spec: Any, hint: str | None = None) -> ExportError:
    return ExportError([Diagnostic("error", message, span, hint=hint, code="export", file=spec.path)], spec.source)


def _check_opset(spec: Any, opset: int) -> None:
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, int) and not isinstance(opset, bool) and MIN_OPSET <= opset <= newest:
        return
    why = (f"onnx {onnx.__version__} knows opsets up to {newest}" if isinstance(opset, int) and opset > newest else
           f"opset {MIN_OPSET} is the first whose Softmax normalizes over one axis, as Keras's does (before it, over "
           "every axis from `axis` on), and whose Unsqueeze takes its axes as an input")
    raise _error(f"cannot export to ONNX opset {opset}: expected {MIN_OPSET} to {newest}; {why}", None, spec,
                 hint=f"the default is {DEFAULT_OPSET}")


def _check_kinds(spec: Any, report: Any, kinds: frozenset[str]) -> None:
    problems = [Diagnostic("error", f"{row.kind} layers cannot be exported to ONNX yet", row.layer.span,
                           code="export", file=spec.path)
                for row in report.layers if row.kind not in kinds]
    if problems:
        raise ExportError(problems, spec.source)


def _check_weights(spec: Any, report: Any, weights: list[np.ndarray]) -> None:
    if len(weights) != len(report.weights):
        raise ValueError(f"expected {len(report.weights)} weights (the model's, in Keras's order); received "
                         f"{len(weights)}")
    for decl, value in zip(report.weights, weights):
        if tuple(np.shape(value)) != tuple(decl.shape):
            raise ValueError(f"weight {decl.path} has shape {tuple(decl.shape)}; received {tuple(np.shape(value))}")
    size = sum(4 * int(np.prod(decl.shape)) for decl in report.weights)
    if size > PROTOBUF_LIMIT:
        raise _error(f"the model's weights take {size:,} bytes; an ONNX file holds at most {PROTOBUF_LIMIT:,} "
                     "(protobuf's limit) unless its weights are kept in external data files, which export does not "
                     "write yet", None, spec)


def model_proto(spec: Any, report: Any, weights: list[np.ndarray], *, opset: int | None = None,
                layer_outputs: bool = False, logits: bool = False) -> onnx.ModelProto:
    """The ONNX model of a checked spec with `weights` (Model.get_weights's order and layout).
    ExportError for a part that cannot be exported (its spec line) or an opset out of range;
    nothing is built then."""
    opset = DEFAULT_OPSET if opset is None else opset
    _check_opset(spec, opset)
    lowering = Lowering()
    _check_kinds(spec, report, kinds_implemented(type(lowering)))
    _check_weights(spec, report, weights)
    g = Graph(opset)
    g.reserve(INPUT)
    g.reserve(OUTPUT)
    g.reserve(LOGITS)
    names = [g.reserve(LAYER_OUTPUT + row.name) for row in report.layers] if layer_outputs else []
    values: dict[int, str] = {-1: INPUT}
    g.shapes[-1] = report.input_shape
    offset = 0
    for i, row in enumerate(report.layers):
        w = [np.asarray(a) for a in weights[offset:offset + len(row.weights)]]
        offset += len(row.weights)
        reads = [values[s] for s in row.sources]
        try:
            values[i] = getattr(lowering, row.kind)(g, row, reads if row.layer.merges else reads[0], w)
        except Unsupported as e:
            raise _error(f"{e} cannot be exported to ONNX yet ({row.kind} layer {row.name})", row.layer.span,
                         spec) from None
        g.shapes[i] = row.output_shape
    last = values[len(report.layers) - 1] if report.layers else INPUT
    g.nodes.append(helper.make_node("Identity", [last], [OUTPUT], name="node/output"))
    outputs = [value_info(OUTPUT, report.output_shape)]
    if logits:
        if last not in g.logits_of:  # the caller's mistake: the loss reads logits only after a softmax or sigmoid
            raise ValueError(f"the model's output layer ({report.layers[-1].kind}) does not end in a softmax or a "
                             "sigmoid: it has no logits to export")
        g.nodes.append(helper.make_node("Identity", [g.logits_of[last]], [LOGITS], name="node/logits"))
        outputs.append(value_info(LOGITS, report.output_shape))
    for i, name in enumerate(names):
        g.nodes.append(helper.make_node("Identity", [values[i]], [name], name=f"node/{name}"))
        outputs.append(value_info(name, report.layers[i].output_shape))
    elem = TensorProto.INT32 if spec.input_dtype == "int32" else TensorProto.FLOAT
    graph = helper.make_graph(g.nodes, _graph_name(report), [value_info(INPUT, report.input_shape, elem)],
                              outputs, initializer=g.initializers)
    model = _with_metadata(graph, spec, report, opset)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    return model


def _graph_name(report: Any) -> str:
    return report.model or "model"


def _with_metadata(graph: onnx.GraphProto, spec: Any, report: Any, opset: int) -> onnx.ModelProto:
    from modelspec.printer import to_text
    from modelspec.version import __version__

    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="modelspec", producer_version=__version__,
                              doc_string=f"{report.model}: exported by modelspec {__version__}")
    # the oldest IR version that holds this opset: the runtimes that run the opset read it
    model.ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    helper.set_model_props(model, {"modelspec.spec": to_text(spec, spec.source), "modelspec.model": report.model,
                                   "modelspec.version": __version__})
    return model


def export(spec: Any, report: Any, weights: list[np.ndarray], path: str | os.PathLike, *,
           opset: int | None = None) -> None:
    """The ONNX model written to `path` atomically, once built and checked: a failure leaves
    no file, and a file already there unchanged."""
    from modelspec.fileio import write_atomic

    write_atomic(path, model_proto(spec, report, weights, opset=opset).SerializeToString())
