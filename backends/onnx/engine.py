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
from .export import LAYER_OUTPUT, model_proto

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """onnxruntime's defaults (every graph optimization, its own thread pool), quiet: its
    warnings go to the log, not to the user. `threads`: the intra-op threads (0: one per core)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads = threads
    return options


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
                                layer_outputs=kind == "layers", logits=kind == "logits")
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
        session = self._session("layers")
        values = session(self.reference.input_array(x))
        return [np.asarray(v, dtype=np.float32) for name, v in zip(session.outputs, values)
                if name.startswith(LAYER_OUTPUT)]

    # -- training: none --------------------------------------------------------------------

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise InferenceOnly("onnx", ": this engine predicts and evaluates")

    train_epoch = step = set_learning_rate = next_learning_rate = get_state = set_state = _refuse
