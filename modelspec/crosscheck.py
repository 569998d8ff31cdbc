"""`modelspec crosscheck`: one spec, the same numbers in every backend — measured.

Each backend builds the spec from one set of initial weights (drawn once in NumPy). One
batch goes forward, and every layer's output is compared with the reference backend's
(the first one named, NumPy by default); then each trains N steps on identical batches
and the per-step losses are compared. Dropout masks cannot agree across frameworks, so
the comparison runs with every dropout rate set to 0 (and says so).

Errors are relative to the reference layer's largest magnitude: max|a - r| / max|r|,
so a layer whose values are all tiny is not judged by the noise in its zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import ir
from .checker import Report, check
from .training import synthetic_labels

FORWARD_TOLERANCE = 1e-5
TRAINING_TOLERANCE = 1e-4


@dataclass
class LayerComparison:
    name: str
    kind: str
    errors: dict[str, tuple[float, float]]  # backend -> (max abs error, max relative error)


@dataclass
class CrossCheck:
    spec: ir.Spec
    reference: str
    backends: list[str]
    batch_size: int
    steps: int
    loss: str
    forward_tolerance: float
    training_tolerance: float
    weights_identical: dict[str, bool] = field(default_factory=dict)
    layers: list[LayerComparison] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def first_divergence(self) -> tuple[LayerComparison, str] | None:
        """The first layer (and backend) beyond the forward tolerance."""
        for layer in self.layers:
            for backend, (_, rel) in layer.errors.items():
                if not rel <= self.forward_tolerance:  # NaN counts as divergent
                    return layer, backend
        return None

    def training_gap(self, backend: str) -> float:
        ref = np.asarray(self.losses[self.reference], np.float64)
        got = np.asarray(self.losses[backend], np.float64)
        if len(ref) != len(got) or not len(ref):
            return float("inf")
        return float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-12)))

    @property
    def ok(self) -> bool:
        others = [b for b in self.backends if b != self.reference]
        return (self.first_divergence is None and all(self.weights_identical.values())
                and all(self.training_gap(b) <= self.training_tolerance for b in others))

    def to_dict(self) -> dict[str, Any]:
        others = [b for b in self.backends if b != self.reference]
        first = self.first_divergence
        return {
            "model": self.spec.name, "reference": self.reference, "backends": self.backends,
            "batch_size": self.batch_size, "steps": self.steps, "loss": self.loss,
            "tolerances": {"forward": self.forward_tolerance, "training": self.training_tolerance},
            "initial_weights_identical": self.weights_identical,
            "forward": [{"layer": c.name, "kind": c.kind,
                         "errors": {b: {"max_abs": a, "max_rel": r} for b, (a, r) in c.errors.items()}}
                        for c in self.layers],
            "first_divergence": None if first is None else {"layer": first[0].name, "backend": first[1]},
            "training": {"losses": self.losses, "max_rel_gap": {b: self.training_gap(b) for b in others}},
            "notes": self.notes, "ok": self.ok,
        }


# ---------------------------------------------------------------------------------------


def without_dropout(spec: ir.Spec) -> ir.Spec:
    """The spec with every dropout rate set to 0 (the layer stays and drops nothing): dropout
    masks cannot agree across frameworks, so backends are compared without them."""
    layers = tuple(layer.model_copy(update={"rate": 0.0}) if layer.kind == "dropout" else layer
                   for layer in spec.layers)
    return spec.model_copy(update={"layers": layers})


def default_loss(spec: ir.Spec) -> str:
    """The spec's loss, or the one its output layer suggests."""
    if spec.loss is not None:
        return spec.loss.name
    last = spec.layers[-1]
    act = getattr(last, "activation", "linear")
    return {"softmax": "categorical_crossentropy", "sigmoid": "binary_crossentropy"}.get(act, "mse")


def synthetic_data(report: Report, loss: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs in [0, 1) and labels that fit the loss."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, *report.input_shape[1:]), dtype=np.float32)
    return x, synthetic_labels(loss, report.output_shape[1:], n, rng)


def _errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    if got.shape != ref.shape:
        return float("inf"), float("inf")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


def _step_losses(model: Any, x: np.ndarray, y: np.ndarray, batch_size: int) -> list[float]:
    """The training loss of each step (computed before its update), on batches taken in order.
    Each step is its own one-batch epoch, so no engine needs to report single steps."""
    xs, ys, raw_shape = model._dataset(x, y)
    model._training_config(raw_shape)
    data = model.engine.prepare(xs, ys)
    losses = []
    for start in range(0, len(xs), batch_size):
        order = np.arange(start, min(start + batch_size, len(xs)))
        totals = model.engine.train_epoch(data, order, batch_size)
        losses.append(totals.loss_sum / totals.count)
        if totals.stopped_at is not None:
            break
    return losses


def crosscheck(spec: ir.Spec, backends: list[str], steps: int = 20, batch_size: int = 16, seed: int = 0,
               forward_tolerance: float = FORWARD_TOLERANCE,
               training_tolerance: float = TRAINING_TOLERANCE, **options: Any) -> CrossCheck:
    """Compare `backends` (the first is the reference) on one spec."""
    from .api import build

    run_spec = without_dropout(spec)
    report = check(run_spec)
    loss = default_loss(spec)
    result = CrossCheck(spec, backends[0], list(backends), batch_size, steps, loss,
                        forward_tolerance, training_tolerance)
    if any(layer.kind == "dropout" and layer.rate for layer in spec.layers):
        result.notes.append("dropout rates were set to 0: masks cannot agree across frameworks")
    if spec.loss is None:
        result.notes.append(f"the spec has no loss; {loss} was used")
    models = {name: build(run_spec, backend=name, seed=seed, **options) for name in backends}
    if spec.loss is None:
        for model in models.values():
            model.compile(loss=loss)
    reference = models[backends[0]]
    start = reference.get_weights()
    for name, model in models.items():
        model.set_weights(start)
        result.weights_identical[name] = all(np.array_equal(a, b) for a, b in zip(model.get_weights(), start))

    x, y = synthetic_data(report, loss, batch_size * (steps + 1), seed)
    forward = {name: model.engine.layer_outputs(x[:batch_size]) for name, model in models.items()}
    for i, layer in enumerate(report.layers):
        errors = {name: _errors(forward[name][i], forward[backends[0]][i]) for name in backends[1:]}
        result.layers.append(LayerComparison(layer.name, layer.kind, errors))

    train_x, train_y = x[batch_size:], y[batch_size:]
    for name, model in models.items():
        result.losses[name] = _step_losses(model, train_x, train_y, batch_size)
    return result


# ---------------------------------------------------------------------------------------
# How each convention maps per backend (--explain)

_TOPICS: list[tuple[str, Any, dict[str, str]]] = [
    ("initial weights", lambda s: True, {
        "keras": "Keras's initializers (glorot_uniform kernels, zero biases; normal variance-scaling "
                 "truncated at ±2σ with σ = √scale / 0.8796)",
        "numpy": "drawn once in NumPy with Keras's formulas, then loaded into every backend",
        "torch": "loaded from the NumPy draw; torch's defaults (kaiming_uniform, U(±1/√fan_in) biases) "
                 "are never used",
    }),
    ("flatten order", lambda s: any(l.kind == "flatten" for l in s.layers) and len(s.input_shape) == 3, {
        "keras": "channels-last: (height, width, channels)",
        "numpy": "NHWC arrays, flattened in the same order",
        "torch": "NCHW internally; permuted to NHWC before flattening",
    }),
    ("conv kernel layout", lambda s: any(l.kind == "conv2d" for l in s.layers), {
        "keras": "(kh, kw, in, out), NHWC",
        "numpy": "(kh, kw, in, out), NHWC",
        "torch": "(out, in, kh, kw) = kernel.permute(3, 2, 0, 1), NCHW",
    }),
    ("'same' padding", lambda s: any(getattr(l, "padding", "valid") == "same" for l in s.layers), {
        "keras": "TF's rule: total = max((⌈n/s⌉-1)·s + k - n, 0), the extra pixel at the bottom/right",
        "numpy": "the same asymmetric pads",
        "torch": "F.pad(left, right, top, bottom) then padding=0 (torch's symmetric padding differs "
                 "when the total is odd)",
    }),
    ("average pooling divisor", lambda s: any(l.kind == "avgpool2d" and l.padding == "same" for l in s.layers), {
        "keras": "padded cells excluded from the divisor",
        "numpy": "sum of the window ÷ the number of real cells",
        "torch": "zero-padded sum ÷ a pooled ones-mask (count_include_pad=True would be wrong)",
    }),
    ("batchnorm", lambda s: any(l.kind == "batchnorm" for l in s.layers), {
        "keras": "BatchNormalization(momentum=0.99, epsilon=0.001): moving = m·moving + (1-m)·batch, "
                 "biased batch variance",
        "numpy": "the same update, biased variance",
        "torch": "custom module: torch's momentum is 1-m (0.01), eps 1e-3, and the moving variance uses "
                 "the biased batch variance (nn.BatchNorm uses the unbiased one)",
    }),
    ("leaky_relu slope", lambda s: any(l.kind == "leaky_relu" or getattr(l, "activation", "") == "leaky_relu"
                                       for l in s.layers), {
        "keras": "LeakyReLU layer 0.3; the activation string 'leaky_relu' 0.2",
        "numpy": "the same two slopes",
        "torch": "negative_slope passed explicitly (nn.LeakyReLU's default is 0.01)",
    }),
    ("L1/L2 penalties", lambda s: any(getattr(l, "kernel_regularizer", None) for l in s.layers), {
        "keras": "kernel_regularizer=L1L2: l1·Σ|w| + l2·Σw² added to the loss and to history['loss']",
        "numpy": "the same term added to the loss; gradient l1·sign(w) + 2·l2·w",
        "torch": "an explicit loss term, not weight_decay (which is (wd/2)·Σw², coupled, and not reported)",
    }),
    ("loss", lambda s: s.loss is not None and s.loss.name.endswith("crossentropy"), {
        "keras": "TF backend: a cross-entropy after softmax/sigmoid is computed from the logits, unclipped; "
                 "otherwise probabilities are clipped to [1e-7, 1-1e-7]",
        "numpy": "the same rule",
        "torch": "CrossEntropy/BCE-with-logits on the pre-activation values; clipped probabilities otherwise",
    }),
    ("optimizer", lambda s: True, {
        "keras": "Keras 3's update rules (RMSprop ε inside √; Adam ε on the uncorrected √v; decoupled "
                 "weight_decay)",
        "numpy": "the same rules written out",
        "torch": "custom steps: torch.optim's RMSprop/Adam put ε elsewhere and its weight_decay is coupled L2",
    }),
]


def explain(spec: ir.Spec, backends: list[str]) -> list[tuple[str, dict[str, str]]]:
    """(topic, {"keras": the meaning, backend: how it realises it}) for the spec's features."""
    rows = []
    for topic, applies, text in _TOPICS:
        if applies(spec):
            rows.append((topic, {b: text.get(b, "-") for b in ["keras", *backends]}))
    return rows
