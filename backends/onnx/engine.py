"""The onnx engine: a checked spec exported to ONNX (export.model_proto) and run by onnxruntime
on the CPU. Inference only: predict, evaluate and layer_outputs; training raises InferenceOnly.

The weights live in a NumPy engine of the same spec (`reference`), in the canonical layout:
it draws the initial weights, and evaluate takes its loss, weight penalties and metrics from
onnxruntime's outputs, so those numbers come from the same formulas as the numpy backend's.
Each set of weights is exported once, into a session built on first use (the model's output;
the output and its logits for a loss that reads them; every layer's output).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from modelspec import ir
from modelspec.backends import InferenceOnly
from modelspec.backends.base import Engine, EpochTotals
from modelspec.checker import Report
from modelspec.training import TrainConfig

from ..numpy.engine import Dataset, NumpyEngine
from ..numpy.lowering import reads_before_output
from .export import model_proto

# Nodes that only move values between the output activation and the graph's output; the
# logits go through the same ones (a softmax over another axis, transposed around it).
_LAYOUT_OPS = frozenset({"Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"})
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """onnxruntime's defaults (every graph optimization, its own thread pool), quiet: its
    warnings go to the log, not to the user. `threads`: the intra-op threads (0: one per core)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads = threads
    return options


def expose_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with a second output, the values before its output's softmax or sigmoid (what a
    cross-entropy reads, modelspec.training.LossConfig), through the same layout nodes as the
    output. A model whose output ends otherwise is a bug in the caller: the loss reads logits
    only where the output layer ends in softmax or sigmoid."""
    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    after: list[onnx.NodeProto] = []
    node = producer.get(graph.output[0].name)
    while node is not None and node.op_type in _LAYOUT_OPS:
        after.append(node)
        node = producer.get(node.input[0])
    logits = _activation_input(node, producer)
    if logits is None:
        raise RuntimeError(f"the exported model's output does not end in a softmax or a sigmoid "
                           f"({node.op_type if node is not None else 'no node'}): it has no logits to read")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for k, layout in enumerate(reversed(after)):
        copy = out.graph.node.add()
        copy.CopyFrom(layout)
        copy.name = f"{layout.name or layout.op_type}_logits_{k}"
        copy.input[0] = logits
        del copy.output[:]
        logits = f"modelspec_logits_{k}"
        copy.output.append(logits)
    out.graph.output.append(onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None))
    return out


def _activation_input(node: onnx.NodeProto | None, producer: dict[str, onnx.NodeProto]) -> str | None:
    """The input of the output's activation: a Softmax node's, or the x of export's sigmoid
    (graph.Graph.sigmoid: max(e, x >= 0) / (1 + e), e = exp(-|x|), a Div), which its Abs and
    its GreaterOrEqual both read; None for anything else."""
    if node is None:
        return None
    if node.op_type in ("Softmax", "Sigmoid"):
        return node.input[0]
    if node.op_type != "Div":
        return None
    seen, todo = {}, [(node, 0)]
    while todo:  # the Div's ancestors within the sigmoid's few nodes
        current, depth = todo.pop()
        seen.setdefault(current.op_type, set()).add(current.input[0])
        if depth < 4:
            todo += [(producer[name], depth + 1) for name in current.input if name in producer]
    reads = seen.get("Abs", set())
    return next(iter(reads)) if len(reads) == 1 and reads == seen.get("GreaterOrEqual") else None


class Session:
    """One onnxruntime session and the names of its input and outputs."""

    def __init__(self, model: onnx.ModelProto, threads: int | None) -> None:
        self.run_session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                                providers=["CPUExecutionProvider"])
        inp = self.run_session.get_inputs()[0]
        self.input, self.dtype = inp.name, _NUMPY_TYPES[inp.type]
        self.outputs = [o.name for o in self.run_session.get_outputs()]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.run_session.run(self.outputs, {self.input: np.ascontiguousarray(x, dtype=self.dtype)})


class OnnxEngine(Engine):
    """A spec in onnxruntime. `seed` draws the initial weights (unless set_weights comes first),
    as the numpy engine's; `threads` sets onnxruntime's intra-op threads (default: its own)."""

    def __init__(self, spec: ir.Spec, report: Report, seed: int | None = None, threads: int | None = None) -> None:
        self.spec, self.report, self.threads = spec, report, threads
        self.reference = NumpyEngine(spec, report, seed=seed)
        self._sessions: dict[str, Session] = {}

    @property
    def native(self) -> Any:
        """The onnxruntime InferenceSession of the model's output (built on first use)."""
        return self._session("output").run_session

    def _session(self, kind: str) -> Session:
        """"output": the model's output; "logits": the output, then its logits; "layers": the
        output, then every layer's output."""
        if kind not in self._sessions:
            model = model_proto(self.spec, self.report, self.reference.get_weights(),
                                layer_outputs=kind == "layers")
            if kind == "logits":
                model = expose_logits(model)
            self._sessions[kind] = Session(model, self.threads)
        return self._sessions[kind]

    # -- weights ---------------------------------------------------------------------------

    def get_weights(self) -> list[np.ndarray]:
        return self.reference.get_weights()

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.reference.set_weights(weights)
        self._sessions.clear()  # each is exported with the weights it was built from

    # -- inference -------------------------------------------------------------------------

    def set_training(self, config: TrainConfig) -> None:
        """The loss and metrics evaluate computes (the optimizer is never used)."""
        self.reference.set_training(config)
        self.config = config

    def prepare(self, x: np.ndarray, y: np.ndarray | None) -> Dataset:
        return self.reference.prepare(x, y)

    def predict(self, data: Dataset, batch_size: int) -> np.ndarray:
        session = self._session("output")
        out = np.empty((len(data), *self.report.output_shape[1:]), np.float32)
        for start in range(0, len(data), batch_size):
            out[start:start + batch_size] = session(data.x[start:start + batch_size])[0]
        return out

    def evaluate(self, data: Dataset, batch_size: int) -> EpochTotals:
        """Loss (with penalties) and metric sums, each batch's as the numpy engine computes them
        (kernels.Network.evaluate) from onnxruntime's outputs, or its logits for a cross-entropy
        that reads them."""
        config = self.require_training()
        reference = self.reference
        logits = reads_before_output(config.loss)
        session = self._session("logits" if logits else "output")
        net = reference.net
        totals = EpochTotals(metric_sums=[0.0] * len(reference.metric_fns))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # non-finite losses are reported
            for start in range(0, len(data), batch_size):
                x, y = data.x[start:start + batch_size], data.y[start:start + batch_size]
                values = session(x)
                outputs = values[0]
                loss, _ = net.loss(y, values[1] if logits else outputs)
                totals.add(float(loss + net.penalty()), len(y), reference._metric_sums(y, outputs))
        return totals

    def layer_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        values = self._session("layers")(self.reference.input_array(x))
        rows = values[len(values) - len(self.report.layers):]
        return [np.asarray(v, dtype=np.float32) for v in rows]

    # -- training: none --------------------------------------------------------------------

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise InferenceOnly("onnx", ": this engine predicts and evaluates")

    train_epoch = step = set_learning_rate = next_learning_rate = get_state = set_state = _refuse
