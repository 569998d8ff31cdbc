"""`modelspec crosscheck`: one spec, the same numbers in every backend — judged against float64.

Each backend builds the spec from one set of initial weights (drawn once in NumPy). Three
things are compared, each against the NumPy engine run in float64 from the same weights and
data — the truth up to float64 rounding — with the NumPy engine in float32 as the measure of
what float32 alone does to that truth (the noise floor):

- forward: one batch, every layer's output;
- gradients: one training step of plain SGD from the same weights (the gradient, per layer);
- training: N steps of the spec's own optimizer on identical batches (the loss before each),
  with the learning rate of each step: modelspec.schedules' next to Keras's own schedule
  object at the same steps, and the rate each engine used.

A backend that runs inference only (its `trains` is False: onnx) is judged on the forward
pass alone (`CrossCheck.forward_only`).

A backend agrees when its distance from float64 stays within NOISE_FACTOR times the float32
reference's own distance, and within a fixed floor wherever that distance is smaller (where
float32 stays close to float64, a backend must too). So a real 1e-5 error on a calm spec is
caught, and float32 noise that an adaptive optimizer turns into full steps (a gradient that
cancels to 1e-9 in one summation order and to 0 in another, then divided by its own running
magnitude) is not called a bug. Dropout masks cannot agree across frameworks, so the
comparison runs with every dropout rate set to 0 (and says so).

Errors are relative to the float64 value's largest magnitude in the layer: max|a - t| / max|t|,
so a layer whose values are all tiny is not judged by the noise in its zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from . import ir
from .checker import Report, check
from .training import synthetic_ids, synthetic_labels

FORWARD_TOLERANCE = 1e-5  # the floors: where float32 itself stays closer to float64 than this
GRADIENT_TOLERANCE = 1e-6  # relative to the layer's largest gradient, element by element
TRAINING_TOLERANCE = 1e-6
NOISE_FACTOR = 10.0  # how much farther from float64 than the float32 reference a backend may be
CALM = 1e-5  # float32 within this of float64 (relative): a calm step
ILL_CONDITIONED = 1e-5  # a layer's gradient whose float32 error is more than this (relative): cancellation
GRADIENT_STEP = 4096.0  # SGD's learning rate for the gradient probe: a power of two, so w - lr·g
# scales exactly and the probe's rounding is float32's on lr·g, not on w


def noise_bands(noise: Sequence[float], floor: float, factor: float = NOISE_FACTOR) -> list[float]:
    """What each position allows: `factor` times the float32 reference's largest distance
    from float64 so far, never less than `floor`. The largest so far: in a trajectory or a
    stack of layers, noise once made stays (a later step that happens to land near float64
    again does not make the next one calm)."""
    bands, worst = [], 0.0
    for n in noise:
        worst = max(worst, float(n) if np.isfinite(n) else float("inf"))
        bands.append(max(floor, factor * worst))
    return bands


def first_outside(gaps: Sequence[float], bands: Sequence[float]) -> int | None:
    """The first index whose gap is outside its band (NaN is outside), or None."""
    for i, (gap, band) in enumerate(zip(gaps, bands)):
        if not gap <= band:
            return i
    return None


def trajectory_verdict(truth: Sequence[float], members: Sequence[Sequence[float]], got: Sequence[float],
                       floor: float = TRAINING_TOLERANCE) -> int | None:
    """The first step (1-based) at which the losses `got` leave the noise band around the
    float64 losses `truth`: NOISE_FACTOR times the float32 `members`' largest relative distance
    so far, at least `floor`. None: the run agrees. (A run shorter than `truth` leaves the band
    where it stops.)"""
    i = first_outside(loss_gaps(truth, got), noise_bands(trajectory_noise(truth, members), floor))
    return None if i is None else i + 1


def loss_gaps(truth: Sequence[float], losses: Sequence[float]) -> list[float]:
    """Each step's relative distance of `losses` from the float64 `truth`; a run that stopped
    early is infinitely far at the steps it did not take."""
    t, g = np.asarray(truth, np.float64), np.asarray(losses, np.float64)
    n = min(len(g), len(t))
    gaps = np.abs(g[:n] - t[:n]) / np.maximum(np.abs(t[:n]), 1e-12)
    return [float(v) for v in gaps] + [float("inf")] * (len(t) - n)


def trajectory_noise(truth: Sequence[float], members: Sequence[Sequence[float]]) -> list[float]:
    """What float32 alone does, per step: the float32 members' largest distance from float64."""
    runs = [loss_gaps(truth, m) for m in members]
    return [max(step) for step in zip(*runs)] if runs else [0.0] * len(truth)


def relative_error(got: Any, truth: Any, scale: float | None = None) -> tuple[float, float]:
    """(max |got - truth|, that relative to `scale`, by default max |truth|)."""
    got, truth = np.asarray(got), np.asarray(truth)
    if got.shape != truth.shape:
        return float("inf"), float("inf")
    diff = np.abs(got.astype(np.float64) - truth.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    if scale is None:
        scale = float(np.abs(truth).max()) if truth.size else 0.0
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


@dataclass
class LayerComparison:
    """One layer's forward output or gradient: each backend's error against float64, and how
    that error compares with what float32 alone does (`excess`: at most 1 agrees)."""

    name: str
    kind: str
    errors: dict[str, tuple[float, float]]  # backend -> (max abs error, max relative error)
    noise: float = 0.0  # the float32 reference's largest relative error
    band: float = FORWARD_TOLERANCE  # the relative error a backend may have
    excess: dict[str, float] = field(default_factory=dict)  # backend -> error / what it may have

    def outside(self) -> str | None:
        """The first backend beyond what it may have (NaN counts as beyond)."""
        return next((b for b, e in self.excess.items() if not e <= 1.0), None)


@dataclass
class CrossCheck:
    spec: ir.Spec
    reference: str  # the float32 noise reference: the numpy engine
    backends: list[str]
    batch_size: int
    steps: int
    loss: str
    forward_tolerance: float
    training_tolerance: float
    gradient_tolerance: float = GRADIENT_TOLERANCE
    weights_identical: dict[str, bool] = field(default_factory=dict)
    layers: list[LayerComparison] = field(default_factory=list)
    gradients: list[LayerComparison] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    float64: list[float] = field(default_factory=list)  # the loss before each step, in float64
    noise_runs: list[list[float]] = field(default_factory=list)  # the float32 members' losses
    # the rate of each training step: "modelspec" (modelspec.schedules), "keras_schedule" (Keras's schedule
    # object, when Keras is installed and the rate is a schedule), and each backend's engine (None
    # where it does not tell)
    learning_rates: dict[str, list[float | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    forward_only: list[str] = field(default_factory=list)  # backends that run inference only

    @property
    def trained(self) -> list[str]:
        """The backends judged on gradients and training steps too."""
        return [b for b in self.backends if b not in self.forward_only]

    @property
    def first_divergence(self) -> tuple[LayerComparison, str] | None:
        """The first layer (and backend) whose forward output is outside the noise band."""
        return _first(self.layers)

    @property
    def first_gradient_divergence(self) -> tuple[LayerComparison, str] | None:
        """The first layer (and backend) whose gradient is outside the noise band."""
        return _first(self.gradients)

    def gaps(self, backend: str) -> list[float]:
        """Each step's relative distance of `backend`'s loss from float64's."""
        return loss_gaps(self.float64, self.losses.get(backend, []))

    @property
    def noise(self) -> list[float]:
        """What float32 alone does, per step: the float32 members' largest distance from float64."""
        return trajectory_noise(self.float64, self.noise_runs)

    @property
    def bands(self) -> list[float]:
        return noise_bands(self.noise, self.training_tolerance)

    def training_gap(self, backend: str) -> float:
        """The largest relative distance from the float64 trajectory."""
        gaps = self.gaps(backend)
        return max(gaps) if gaps else float("inf")

    def left_band_at(self, backend: str) -> int | None:
        """The first step (1-based) where `backend` left the noise band, or None."""
        return trajectory_verdict(self.float64, self.noise_runs, self.losses.get(backend, []),
                                  self.training_tolerance)

    @property
    def calm_steps(self) -> int:
        """How many steps, from the first, float32 stays within CALM of float64."""
        i = first_outside(self.noise, [CALM] * len(self.noise))
        return len(self.noise) if i is None else i

    def regime(self) -> str:
        """The trajectory's regime, in words."""
        noise, calm = self.noise, self.calm_steps
        if not noise:
            return "no steps"
        if calm == len(noise):
            return f"calm: float32 within {max(noise):.1e} of float64 through step {len(noise)}"
        when = f"after step {calm}" if calm else "from step 1"
        causes = self.causes()
        return (f"chaotic {when}: float32 itself moved {max(noise):.1e} from float64 by step {len(noise)}"
                + (f" ({'; '.join(causes)})" if causes else ""))

    def causes(self) -> list[str]:
        """What in the spec turns float32 noise into visible steps, where it can tell."""
        found = []
        optimizer = self.spec.optimizer.name if self.spec.optimizer else "rmsprop"
        if optimizer != "sgd":
            found.append(f"{optimizer} divides each gradient by its own running magnitude, so a gradient "
                         "that is rounding noise becomes a full step")
        if any(layer.kind == "maxpool2d" for layer in self.spec.layers):
            found.append("ties in max pooling go to whichever value rounding favours")
        if any(getattr(getattr(layer, "kernel_regularizer", None), "l1", None) for layer in self.spec.layers):
            found.append("L1's gradient is the sign of a weight, and a weight near 0 has the sign of its noise")
        return found

    def advice(self) -> str | None:
        """How to compare the backends tightly when the trajectory is chaotic."""
        if self.calm_steps == len(self.noise):
            return None
        ways = [f"--steps {self.calm_steps}"] if self.calm_steps else []
        if self.spec.optimizer is None or self.spec.optimizer.name != "sgd":
            ways.insert(0, "`optimizer sgd`")
        return "for a tight comparison use " + " or ".join(ways) if ways else None

    @property
    def ok(self) -> bool:
        return (self.first_divergence is None and self.first_gradient_divergence is None
                and all(self.weights_identical.values())
                and all(self.left_band_at(b) is None for b in self.trained))

    def to_dict(self) -> dict[str, Any]:
        first, grad = self.first_divergence, self.first_gradient_divergence

        def rows(comparisons: list[LayerComparison]) -> list[dict[str, Any]]:
            return [{"layer": c.name, "kind": c.kind, "noise": c.noise, "band": c.band,
                     "errors": {b: {"max_abs": a, "max_rel": r, "excess": c.excess.get(b)}
                                for b, (a, r) in c.errors.items()}}
                    for c in comparisons]

        return {
            "model": self.spec.name, "reference": self.reference, "backends": self.backends,
            "batch_size": self.batch_size, "steps": self.steps, "loss": self.loss,
            "tolerances": {"forward": self.forward_tolerance, "gradient": self.gradient_tolerance,
                           "training": self.training_tolerance, "noise_factor": NOISE_FACTOR},
            "initial_weights_identical": self.weights_identical,
            "forward": rows(self.layers),
            "first_divergence": None if first is None else {"layer": first[0].name, "backend": first[1]},
            "gradients": rows(self.gradients),
            "first_gradient_divergence": None if grad is None else {"layer": grad[0].name, "backend": grad[1]},
            "training": {"losses": self.losses, "float64": self.float64, "noise": self.noise,
                         "bands": self.bands, "regime": self.regime(), "advice": self.advice(),
                         "max_rel_gap": {b: self.training_gap(b) for b in self.trained},
                         "left_band_at": {b: self.left_band_at(b) for b in self.trained},
                         "learning_rates": self.learning_rates},
            "forward_only": self.forward_only, "notes": self.notes, "ok": self.ok,
        }


def _first(comparisons: list[LayerComparison]) -> tuple[LayerComparison, str] | None:
    for c in comparisons:
        backend = c.outside()
        if backend is not None:
            return c, backend
    return None


# ---------------------------------------------------------------------------------------


def without_dropout(spec: ir.Spec) -> ir.Spec:
    """The spec with every dropout rate set to 0, attention's on its probabilities too (the
    layer stays and drops nothing): dropout masks cannot agree across frameworks, so backends
    are compared without them."""
    rates = {"dropout": "rate", "attention": "dropout"}
    layers = tuple(layer.model_copy(update={rates[layer.kind]: 0.0}) if layer.kind in rates else layer
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
    """Inputs in [0, 1) (token ids over the whole vocabulary, for integer inputs) and labels that
    fit the loss."""
    rng = np.random.default_rng(seed)
    spec = report.spec
    x = synthetic_ids(spec, n, rng) if spec.input_dtype == "int32" else rng.random((n, *report.input_shape[1:]),
                                                                                  dtype=np.float32)
    return x, synthetic_labels(loss, report.output_shape[1:], n, rng)


def _step_losses(model: Any, x: np.ndarray, y: np.ndarray, batch_size: int,
                 rates: list[float] | None = None) -> list[float]:
    """The training loss of each step (computed before its update), on batches taken in order;
    the learning rate each step takes, as the engine says before it, is appended to `rates` if given. Each step
    is its own one-batch epoch, so no engine needs to report single steps."""
    xs, ys, raw_shape = model._dataset(x, y)
    model._training_config(raw_shape)
    data = model.engine.prepare(xs, ys)
    losses = []
    for start in range(0, len(xs), batch_size):
        order = np.arange(start, min(start + batch_size, len(xs)))
        if rates is not None:
            rates.append(model.engine.next_learning_rate())
        totals = model.engine.train_epoch(data, order, batch_size)
        losses.append(totals.loss_sum / totals.count)
        if totals.stopped_at is not None:
            break
    return losses


def keras_schedule_rates(schedule: ir.Schedule, steps: int) -> list[float] | None:
    """Keras's own schedule object (keras.optimizers.schedules) evaluated at steps 0..steps-1,
    or None without Keras."""
    try:
        from keras.optimizers import schedules as keras_schedules
    except ImportError:
        return None
    cls = getattr(keras_schedules, ir.SCHEDULE_CLASSES[schedule.name])
    made = cls(**schedule.config())
    return [float(np.asarray(made(step))) for step in range(steps)]


def learning_rates(spec: ir.Spec, steps: int) -> dict[str, list[float | None]]:
    """The rate of each of `steps` steps by modelspec.schedules (a constant rate repeated), and
    by Keras's schedule object when the rate is a schedule."""
    from . import schedules

    optimizer = spec.optimizer or ir.Optimizer(name="rmsprop")
    rate = optimizer.config()["learning_rate"]
    if not isinstance(rate, ir.Schedule):
        return {"modelspec": [float(np.float32(rate))] * steps}
    out: dict[str, list[float | None]] = {
        "modelspec": [float(r) for r in schedules.learning_rates(rate, np.arange(steps))]}
    theirs = keras_schedule_rates(rate, steps)
    if theirs is not None:
        out["keras_schedule"] = list(theirs)
    return out


def _gradients(model: Any, start: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Each weight's gradient of the batch's loss at `start`, read off one step of plain SGD
    (w - lr·g) in the model's own engine; the model is left at `start` with its optimizer."""
    optimizer = model._optimizer
    model.compile(optimizer=ir.Optimizer(name="sgd", learning_rate=GRADIENT_STEP))
    model.set_weights(start)
    _step_losses(model, x, y, len(x))
    after = model.get_weights()
    model.compile(optimizer=optimizer)
    model.set_weights(start)
    return [(np.asarray(w0, np.float64) - np.asarray(w1, np.float64)) / GRADIENT_STEP
            for w0, w1 in zip(start, after)]


def ulp_neighbours(weights: list[np.ndarray], ulps: Sequence[int]) -> list[list[np.ndarray]]:
    """Copies of float32 weights, each value moved by ulps[k] units in the last place, up or
    down at random (fixed seeds): starting points within float32's own resolution of
    `weights`, whose trajectories show how far float32 rounding alone can carry a run."""
    out = []
    for k, n in enumerate(ulps):
        rng = np.random.default_rng(1000 + k)
        sign = np.float32(2.0**-24 * n)
        out.append([(w * (1 + sign * rng.choice(np.array([-1, 1], w.dtype), w.shape))).astype(w.dtype)
                    if w.dtype.kind == "f" else w for w in weights])  # (normalize's count is an integer)
    return out


def _forward_rows(report: Report, outputs: dict[str, list[np.ndarray]], members: list[list[np.ndarray]],
                  truth: list[np.ndarray], judged: list[str], floor: float) -> list[LayerComparison]:
    """Each layer's output: every backend's relative error against float64, judged against the
    float32 members' largest (so far: a layer inherits the noise of the layers before it)."""
    rows = []
    for i, row in enumerate(report.layers):
        noise = max(relative_error(m[i], truth[i])[1] for m in members)
        rows.append(LayerComparison(row.name, row.kind, {b: relative_error(outputs[b][i], truth[i]) for b in judged},
                                    noise=noise))
    for c, band in zip(rows, noise_bands([c.noise for c in rows], floor)):
        c.band = band
        c.excess = {b: rel / band for b, (_, rel) in c.errors.items()}
    return rows


def _gradient_rows(report: Report, grads: dict[str, list[np.ndarray]], members: list[list[np.ndarray]],
                   truth: list[np.ndarray], judged: list[str], floor: float) -> list[LayerComparison]:
    """Each layer's gradient (trainable weights): every backend's error against float64,
    element by element, judged against the float32 members' error at that element, so that a
    gradient 1e-5 off is seen even where other elements of the layer are pure rounding noise;
    `floor` (relative to the layer's largest gradient) keeps elements that float32 happens to
    get exact from being judged by nothing."""
    rows, position = [], 0
    for row in report.layers:
        indices = [position + i for i, w in enumerate(row.weights) if w.trainable]
        position += len(row.weights)
        if not indices:
            continue
        scale = max(float(np.abs(truth[i]).max(initial=0.0)) for i in indices)
        noise = {i: np.max([np.abs(m[i] - truth[i]) for m in members], axis=0) for i in indices}
        worst = max(float(noise[i].max(initial=0.0)) for i in indices)
        if worst <= ILL_CONDITIONED * scale and row.kind not in ("batchnorm", "conv2d", "conv1d"):
            # an element whose rounding the float32 runs happened to get nearly exact is judged
            # by a quarter of the layer's largest float32 error at least: a few runs estimate each
            # element's noise, and over thousands of elements some estimates are lucky
            least = 0.25 * worst
        else:
            # a gradient that is mostly cancellation (a batchnorm's gamma and beta under another
            # batchnorm have a true gradient of 0), or batchnorm's own: each framework's fused
            # backward (TF's FusedBatchNormGradV3, torch's native_batch_norm_backward) sums
            # differently from numpy's formula, so only the layer's whole error is judged; so is
            # a convolution's kernel, each element a sum over batch x positions that TF's oneDNN
            # backprop-filter blocks in its own order (6x numpy's float32 error on one element of
            # a fuzzed 3x3 'ones' kernel, 2.7e-5 relative, while no element exceeds the layer's)
            least = worst
        allowed = {i: NOISE_FACTOR * np.maximum(noise[i], least) + floor * scale for i in indices}
        errors, excess = {}, {}
        for b in judged:
            pairs = [relative_error(grads[b][i], truth[i], scale) for i in indices]
            errors[b] = (max(a for a, _ in pairs), max(r for _, r in pairs))
            excess[b] = max(float(np.max(np.abs(grads[b][i] - truth[i]) / np.maximum(allowed[i], 1e-300),
                                         initial=0.0)) for i in indices)
        rows.append(LayerComparison(row.name, row.kind, errors, noise=worst / scale if scale > 0 else worst,
                                    band=floor, excess=excess))
    return rows


# The float32 runs from neighbours of the weights, besides the exact one: their distance in
# units in the last place. A near-tie in a max pool or a ReLU at 0 that another framework's
# summation order breaks the other way is met by some of them (in specs/cnn.ms, one run in 8
# at 1 ulp, half of them at 16 ulps), and 16 ulps (1e-6 relative) is still float32's scale.
ENSEMBLE = (1, 4, 16, 16, 16, 16)


def crosscheck(spec: ir.Spec, backends: list[str], steps: int = 20, batch_size: int = 16, seed: int = 0,
               forward_tolerance: float = FORWARD_TOLERANCE, training_tolerance: float = TRAINING_TOLERANCE,
               gradient_tolerance: float = GRADIENT_TOLERANCE, **options: Any) -> CrossCheck:
    """Judge `backends` on one spec against the numpy engine in float64. What float32 alone
    does is measured by the numpy engine in float32, from the same weights and from neighbours
    of them within a few ulps (ENSEMBLE), summing each batch in order and in reverse: one
    float32 run can be lucky (a near-tie in a max pool that its rounding happens to break as
    float64 does, a sum that its order happens to cancel well), several show float32's spread."""
    from .api import build

    run_spec = without_dropout(spec)
    report = check(run_spec)
    loss = default_loss(spec)
    reference = "numpy"
    result = CrossCheck(spec, reference, list(backends), batch_size, steps, loss,
                        forward_tolerance, training_tolerance, gradient_tolerance)
    if any(layer.kind == "dropout" and layer.rate for layer in spec.layers):
        result.notes.append("dropout rates were set to 0: masks cannot agree across frameworks")
    if spec.loss is None:
        result.notes.append(f"the spec has no loss; {loss} was used")
    callbacks = [key for key in ("early_stopping", "reduce_lr_on_plateau") if getattr(spec, key) is not None]
    if callbacks:
        result.notes.append(f"{' and '.join(callbacks)} act at the end of epochs; the training steps here are "
                            "compared without them (modelspec compare trains with them)")
    models = {name: build(run_spec, backend=name, seed=seed, **options) for name in backends}
    result.forward_only = [name for name in backends if not models[name].backend.trains]
    if result.forward_only:
        result.notes.append(f"{', '.join(result.forward_only)}: forward only (inference only: no gradients or "
                            "training steps to compare)")
    trained = result.trained
    probe = build(run_spec, backend=reference, seed=seed)  # the float32 members run here
    truth = build(run_spec, backend="numpy", seed=seed, dtype=np.float64)
    if spec.loss is None:
        for model in [*models.values(), probe, truth]:
            model.compile(loss=loss)
    start = probe.get_weights()
    for name, model in [*models.items(), ("float64", truth)]:
        model.set_weights(start)
        if name in backends:
            result.weights_identical[name] = all(np.array_equal(a, b) for a, b in zip(model.get_weights(), start))
    starts = [start, *ulp_neighbours(start, ENSEMBLE)]

    x, y = synthetic_data(report, loss, batch_size * (steps + 1), seed)
    x0, y0 = x[:batch_size], y[:batch_size]
    # One step from the weights is calm by nature: its float32 runs start from the weights and
    # their 1-ulp neighbour, each with the batch in order and reversed (another summation order
    # for every sum over the batch, as another framework has); the wider neighbours are for
    # trajectories.
    close = [(weights, flip) for weights, ulps in zip(starts, (0, *ENSEMBLE)) if ulps <= 1 for flip in (False, True)]
    members = []
    for weights, flip in close:
        probe.set_weights(weights)
        outputs = probe.engine.layer_outputs(x0[::-1] if flip else x0)
        members.append([o[::-1] for o in outputs] if flip else outputs)
    result.layers = _forward_rows(report, {b: models[b].engine.layer_outputs(x0) for b in backends}, members,
                                  truth.engine.layer_outputs(x0), backends, forward_tolerance)

    if not trained:  # nothing left to judge
        return result
    members = [_gradients(probe, weights, x0[::-1] if flip else x0, y0[::-1] if flip else y0)
               for weights, flip in close]
    result.gradients = _gradient_rows(report, {b: _gradients(models[b], start, x0, y0) for b in trained}, members,
                                      _gradients(truth, start, x0, y0), trained, gradient_tolerance)

    train_x, train_y = x[batch_size:], y[batch_size:]
    result.float64 = _step_losses(truth, train_x, train_y, batch_size)
    flipped = np.concatenate([np.arange(i, min(i + batch_size, len(train_x)))[::-1]
                              for i in range(0, len(train_x), batch_size)])
    result.noise_runs = []
    for k, weights in enumerate(starts):
        probe.set_weights(weights)
        probe.compile(optimizer=probe._optimizer)  # a fresh optimizer state for each run
        order = flipped if k % 2 else slice(None)  # every other run sums each batch in reverse
        result.noise_runs.append(_step_losses(probe, train_x[order], train_y[order], batch_size))
    for name in trained:
        used: list[float] = []
        result.losses[name] = _step_losses(models[name], train_x, train_y, batch_size, used)
        result.learning_rates[name] = used
    result.learning_rates = {**learning_rates(spec, len(result.float64)), **result.learning_rates}
    return result


# ---------------------------------------------------------------------------------------
# How each convention maps per backend (--explain)

_RECURRENT = ("lstm", "gru", "simple_rnn", "bidirectional")


def _inner(layer: ir.LayerBase) -> ir.LayerBase:
    """The layer itself, or the recurrent layer a bidirectional wraps."""
    return layer.layer if layer.kind == "bidirectional" else layer


_TOPICS: list[tuple[str, Any, dict[str, str]]] = [
    ("initial weights", lambda s: True, {
        "keras": "Keras's initializers (glorot_uniform kernels, zero biases; normal variance-scaling "
                 "truncated at ±2σ with σ = √scale / 0.8796)",
        "numpy": "drawn once in NumPy with Keras's formulas, then loaded into every backend",
        "torch": "loaded from the NumPy draw; torch's defaults (kaiming_uniform, U(±1/√fan_in) biases) "
                 "are never used",
        "onnx": "the NumPy draw (or the weights given), written into the graph as initializers",
    }),
    ("flatten order", lambda s: any(l.kind == "flatten" for l in s.layers) and len(s.input_shape) == 3, {
        "keras": "channels-last: (height, width, channels)",
        "numpy": "NHWC arrays, flattened in the same order",
        "torch": "NCHW internally; permuted to NHWC before flattening",
        "onnx": "channels-last tensors throughout; Flatten(axis=1) in row-major order",
    }),
    ("conv kernel layout", lambda s: any(l.kind == "conv2d" for l in s.layers), {
        "keras": "(kh, kw, in, out), NHWC",
        "numpy": "(kh, kw, in, out), NHWC",
        "torch": "(out, in, kh, kw) = kernel.permute(3, 2, 0, 1), NCHW",
        "onnx": "ONNX Conv reads NCHW: the input transposed around it, the kernel stored as (out, in, kh, kw)",
    }),
    ("conv1d", lambda s: any(l.kind == "conv1d" for l in s.layers), {
        "keras": "kernel (k, in, out) on (batch, steps, channels); 'same' puts the extra zero on the right, "
                 "'causal' every zero on the left",
        "numpy": "the same layout and pads, windows with the dilation's gaps",
        "torch": "F.conv1d with weight = kernel.permute(2, 1, 0) on (batch, channels, steps), after an explicit "
                 "F.pad(left, right) (torch's padding= is symmetric)",
        "onnx": "Conv on (batch, channels, steps) between transposes, the kernel (out, in, k), the pads explicit "
                "(before, after)",
    }),
    ("embedding", lambda s: any(l.kind == "embedding" for l in s.layers), {
        "keras": "Embedding: U(-0.05, 0.05) rows; mask_zero masks the ids 0 for the layers after it, row 0 "
                 "stays an ordinary, trainable row",
        "numpy": "the rows indexed by the ids; the gradient added into the rows used (np.add.at)",
        "torch": "the same rows loaded into an embedding without padding_idx (which would zero and freeze row "
                 "0); the mask is the ids != 0, kept beside the values",
        "onnx": "Gather of the rows by the int32 ids; the mask recomputed from the ids != 0 where a layer reads it",
    }),
    ("masked mean", lambda s: any(l.kind == "globalavgpool1d" for l in s.layers)
        and any(getattr(l, "mask_zero", False) for l in s.layers), {
        "keras": "GlobalAveragePooling1D with a mask: Σ mask·x / Σ mask over the steps",
        "numpy": "the same quotient, the mask from the input's ids",
        "torch": "the same quotient (torch has no masks)",
        "onnx": "Σ where(mask, x, 0) / Σ mask with ReduceSum",
    }),
    ("recurrent layers", lambda s: any(l.kind in _RECURRENT for l in s.layers), {
        "keras": "LSTM (gates i, f, c, o), GRU (z, r, h) and SimpleRNN over the steps from a zero state: kernel "
                 "(in, gates·units), recurrent kernel (units, gates·units) orthogonal as one matrix, LSTM's forget "
                 "bias 1; the last step's output, or every step's (go_backwards: in the reversed order processed)",
        "numpy": "the step loop and backpropagation through time written out, the same weights and gate order",
        "torch": "torch's fused kernels (torch.lstm, torch.gru, torch.rnn_tanh/rnn_relu: what nn.LSTM, nn.GRU "
                 "and nn.RNN call) where they compute Keras's function (no mask, default activations, GRU with "
                 "reset_after): kernels transposed, GRU's blocks z, r, h reordered to torch's r, z, n; the step "
                 "loop written out otherwise",
        "onnx": "a Loop over the steps whose body is one step of the cell, in Keras's weights and gate order (ONNX's "
                "LSTM and GRU order their gates otherwise and know no mask that repeats the previous output)",
    }),
    ("gru reset_after", lambda s: any(_inner(l).kind == "gru" for l in s.layers), {
        "keras": "reset_after=True (default): h̃ = tanh(x·Wh + bx + r ⊙ (h·Uh + bh)), bias (2, 3·units); "
                 "reset_after=False: h̃ = tanh(x·Wh + (r ⊙ h)·Uh + b), bias (3·units,)",
        "numpy": "both formulas written out",
        "torch": "reset_after=True is nn.GRU's formula; reset_after=False has no torch module: the cell "
                 "written out",
        "onnx": "both formulas written out in the Loop body",
    }),
    ("bidirectional", lambda s: any(l.kind == "bidirectional" for l in s.layers), {
        "keras": "Bidirectional: the layer forward and a copy with go_backwards=True; with return_sequences the "
                 "backward outputs flipped back into time order; merge concat [forward, backward], sum, mul or "
                 "ave; the forward layer's weights, then the backward one's",
        "numpy": "the two directions run and merged the same way",
        "torch": "both directions in one module (torch's _reverse weights take the backward ones), merged as "
                 "Keras merges",
        "onnx": "two Loops, the backward one over the steps in reverse; its sequence put back in time order; merged "
                "as Keras merges",
    }),
    ("masked recurrence", lambda s: any(l.kind in _RECURRENT for l in s.layers)
        and any(getattr(l, "mask_zero", False) for l in s.layers), {
        "keras": "a masked step keeps the state and repeats the previous output (0 before the first unmasked "
                 "step; 0 at every masked step in Bidirectional's sequences); the last output is the last "
                 "unmasked step's",
        "numpy": "the same rule in the step loop, the mask from the input's ids",
        "torch": "the same rule in the step loop, the mask from the input's ids (torch has no masks)",
        "onnx": "the same rule in the Loop body, the mask from the input's ids",
    }),
    ("attention", lambda s: any(l.kind == "attention" for l in s.layers), {
        "keras": "MultiHeadAttention as mha(x, x): per head q, k, v projections (EinsumDense kernels (D, H, K), "
                 "glorot with fans (D, H·K)), softmax(q·kᵀ/√key_dim) over the key steps, the output projection "
                 "(H, V, D); with a mask, masked logits become -1e9 (a masked query row attends uniformly); "
                 "dropout on the probabilities while training",
        "numpy": "the same einsums and softmax, backward by hand",
        "torch": "the projections and softmax written out with torch.einsum in Keras's layout (nn."
                 "MultiheadAttention packs its weights, fixes head_dim = D/H and scales by it)",
        "onnx": "MatMuls and a Softmax in Keras's layout; masked logits -1e9; no dropout (inference)",
    }),
    ("layernorm epsilon", lambda s: any(l.kind == "layernorm" for l in s.layers), {
        "keras": "LayerNormalization(epsilon=0.001) over the last axis, biased variance",
        "numpy": "the same",
        "torch": "eps passed explicitly (nn.LayerNorm's default is 1e-5)",
        "onnx": "written out (ReduceMean, the biased variance) with the layer's epsilon",
    }),
    ("'same' padding", lambda s: any(getattr(l, "padding", "valid") == "same" for l in s.layers), {
        "keras": "TF's rule: total = max((⌈n/s⌉-1)·s + k - n, 0), the extra pixel at the bottom/right",
        "numpy": "the same asymmetric pads",
        "torch": "F.pad(left, right, top, bottom) then padding=0 (torch's symmetric padding differs "
                 "when the total is odd)",
        "onnx": "explicit pads attributes (before, after), the extra one after",
    }),
    ("average pooling divisor", lambda s: any(l.kind in ("avgpool2d", "avgpool1d") and l.padding == "same"
                                              for l in s.layers), {
        "keras": "padded cells excluded from the divisor",
        "numpy": "sum of the window ÷ the number of real cells",
        "torch": "zero-padded sum ÷ a pooled ones-mask (count_include_pad=True would be wrong)",
        "onnx": "AveragePool with count_include_pad=0",
    }),
    ("batchnorm", lambda s: any(l.kind == "batchnorm" for l in s.layers), {
        "keras": "BatchNormalization(momentum=0.99, epsilon=0.001): moving = m·moving + (1-m)·batch, "
                 "biased batch variance",
        "numpy": "the same update, biased variance",
        "torch": "custom module: torch's momentum is 1-m (0.01), eps 1e-3, and the moving variance uses "
                 "the biased batch variance (nn.BatchNorm uses the unbiased one)",
        "onnx": "inference only: the moving mean and variance, 1/√(variance + ε) folded in float32",
    }),
    ("leaky_relu slope", lambda s: any(l.kind == "leaky_relu" or getattr(l, "activation", "") == "leaky_relu"
                                       for l in s.layers), {
        "keras": "LeakyReLU layer 0.3; the activation string 'leaky_relu' 0.2",
        "numpy": "the same two slopes",
        "torch": "negative_slope passed explicitly (nn.LeakyReLU's default is 0.01)",
        "onnx": "LeakyRelu with the same alpha",
    }),
    ("L1/L2 penalties", lambda s: any(getattr(l, "kernel_regularizer", None) or getattr(l, "embeddings_regularizer",
                                                                                          None)
                                      for l in s.layers), {
        "keras": "kernel_regularizer=L1L2: l1·Σ|w| + l2·Σw² added to the loss and to history['loss']",
        "numpy": "the same term added to the loss; gradient l1·sign(w) + 2·l2·w",
        "torch": "an explicit loss term, not weight_decay (which is (wd/2)·Σw², coupled, and not reported)",
        "onnx": "evaluate adds the same term, computed as the numpy backend does (the graph has no loss)",
    }),
    ("loss", lambda s: s.loss is not None and s.loss.name.endswith("crossentropy"), {
        "keras": "TF backend: a cross-entropy after softmax/sigmoid is computed from the logits, unclipped; "
                 "otherwise probabilities are clipped to [1e-7, 1-1e-7]",
        "numpy": "the same rule",
        "torch": "CrossEntropy/BCE-with-logits on the pre-activation values; clipped probabilities otherwise",
        "onnx": "evaluate reads the graph's output, and its logits output before the softmax or sigmoid, with the "
                "numpy backend's formulas",
    }),
    ("optimizer", lambda s: True, {
        "keras": "Keras 3's update rules (RMSprop ε inside √; Adam ε on the uncorrected √v; decoupled "
                 "weight_decay)",
        "numpy": "the same rules written out",
        "torch": "custom steps: torch.optim's RMSprop/Adam put ε elsewhere and its weight_decay is coupled L2",
        "onnx": "none: inference only (train with another backend)",
    }),
]


def explain(spec: ir.Spec, backends: list[str]) -> list[tuple[str, dict[str, str]]]:
    """(topic, {"keras": the meaning, backend: how it realises it}) for the spec's features."""
    rows = []
    for topic, applies, text in _TOPICS:
        if applies(spec):
            rows.append((topic, {b: text.get(b, "-") for b in ["keras", *backends]}))
    return rows
