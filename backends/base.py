"""What a backend is: a name, what it supports, a way to build an Engine, a code emitter.

The common Model API (modelspec.model.Model) owns everything that must be identical
across backends: argument checks, the validation split, the shuffle order of every
epoch, label alignment, Keras's history accounting, the progress bar, saving. A backend
supplies an `Engine`, which owns the numbers: the forward and backward pass, the loss,
the metrics and the optimizer step, in its framework. Initial weights are not drawn by
the engine: the Model draws them once in NumPy (modelspec.initializers) and hands them
to `set_weights`, so every backend starts from the same values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

from modelspec import ir

if TYPE_CHECKING:
    import numpy as np

    from modelspec.checker import Report
    from modelspec.diagnostics import Diagnostic
    from modelspec.training import TrainConfig


@dataclass
class EpochTotals:
    """Sums over the samples an engine has seen; the Model turns them into Keras's means.

    loss_sum is Σ_b n_b · L_b, where L_b is the batch's total loss (data loss averaged over
    the batch, plus every weight penalty), computed before that batch's update.
    metric_sums[i] is Σ over samples of metric i (matches for accuracies, the per-sample
    mean error for mse/mae). count is the number of samples.
    stopped_at is the 0-based step at which a non-finite loss or gradient appeared; that
    step's update was not applied, so the weights are those of the last good step.
    """

    loss_sum: float = 0.0
    metric_sums: list[float] = field(default_factory=list)
    count: int = 0
    stopped_at: int | None = None

    def add(self, loss: float, n: int, metric_sums: Sequence[float]) -> None:
        """One batch of n samples: its total loss L_b and each metric's sum over its samples."""
        self.loss_sum += loss * n
        for i, value in enumerate(metric_sums):
            self.metric_sums[i] += value
        self.count += n


# on_batch(step, samples_seen, loss_sum, metric_sums): called after each step when the Model
# shows a live progress bar; None otherwise (engines may then avoid per-step host syncs).
BatchCallback = Callable[[int, int, float, list[float]], None]


class Engine:
    """A model built in one framework. Arrays in and out are NumPy, float32 (labels int64)."""

    native: Any = None  # the framework's own model object
    config: TrainConfig | None = None  # set by set_training

    def set_training(self, config: TrainConfig) -> None:
        """Set (or replace) the optimizer, loss and metrics. Resets the optimizer state."""
        raise NotImplementedError

    def require_training(self) -> TrainConfig:
        if self.config is None:
            raise RuntimeError("the engine has no loss or optimizer yet: call set_training first")
        return self.config

    def prepare(self, x: "np.ndarray", y: "np.ndarray | None") -> Any:
        """Convert a dataset once (to tensors, to the device); the result goes to the calls below."""
        raise NotImplementedError

    def train_epoch(self, data: Any, order: "np.ndarray", batch_size: int,
                    on_batch: BatchCallback | None = None) -> EpochTotals:
        """One epoch: batches are data[order[i:i + batch_size]], the last one partial, each
        one `step`. A step whose loss or gradients are not finite is not applied and ends
        the epoch; its batch still counts, so that the epoch's mean shows it, as Keras's
        history does. Engines with a faster loop of their own (a TF graph, CUDA graphs)
        override this and keep its accounting."""
        config = self.require_training()
        index = self.epoch_index(data, order, batch_size)
        totals = EpochTotals(metric_sums=[0.0] * len(config.metrics))
        for step, start in enumerate(range(0, len(index), batch_size)):
            batch = index[start:start + batch_size]
            loss, metric_sums, applied = self.step(data, batch)
            totals.add(loss, len(batch), metric_sums)
            if on_batch is not None:
                on_batch(step, totals.count, totals.loss_sum, list(totals.metric_sums))
            if not applied:
                totals.stopped_at = step
                break
        return totals

    def epoch_index(self, data: Any, order: "np.ndarray", batch_size: int) -> Any:
        """`order` in the form `step` takes slices of (a tensor on the device, say); called at
        the start of each epoch."""
        return order

    def step(self, data: Any, index: Any) -> tuple[float, Sequence[float], bool]:
        """One training step on the batch data[index]: (its total loss, computed before the
        update; each metric's sum over its samples; whether the update was applied, which it
        is unless the loss or a gradient is not finite)."""
        raise NotImplementedError

    def evaluate(self, data: Any, batch_size: int) -> EpochTotals:
        """Loss (with penalties) and metric sums in inference mode, in order, in batches."""
        raise NotImplementedError

    def predict(self, data: Any, batch_size: int) -> "np.ndarray":
        raise NotImplementedError

    def layer_outputs(self, x: "np.ndarray") -> list["np.ndarray"]:
        """Every layer's output for one batch in inference mode, in the canonical (channels-last)
        layout, float32: what `modelspec crosscheck` compares layer by layer."""
        raise NotImplementedError

    def get_weights(self) -> list["np.ndarray"]:
        """Every weight in the canonical (Keras) layout and order, float32 copies."""
        raise NotImplementedError

    def set_weights(self, weights: list["np.ndarray"]) -> None:
        """Weights in the canonical layout, already checked for count and shapes."""
        raise NotImplementedError

    def optimizer_state(self) -> list["np.ndarray"]:
        """The optimizer's variables as Keras counts them (iteration, learning rate, slots)."""
        return []

    def set_learning_rate(self, value: float) -> None:
        """ReduceLROnPlateau's new constant rate, float32 as Keras stores it in its optimizer's
        learning_rate variable, from the next step on (only for a constant rate: a schedule's
        rate cannot be set, as in Keras)."""
        raise NotImplementedError

    def next_learning_rate(self) -> float:
        """The rate the next training step will use: a schedule's value at the optimizer's step
        counter, else the constant rate (float32), as Keras's `optimizer.learning_rate` reads."""
        raise NotImplementedError

    def get_state(self) -> dict[str, "np.ndarray"]:
        """Everything besides the weights that the next training steps depend on, as named
        arrays (safetensors-ready): the optimizer's variables (its step counter, learning rate
        and slots, built or not) and the state of every random generator (dropout). With
        `set_state` on an engine of the same spec and backend, after `set_training` with the
        same config, training continues exactly as if never interrupted (the exact resume of
        `modelspec train --resume`)."""
        raise NotImplementedError

    def set_state(self, state: dict[str, "np.ndarray"]) -> None:
        """Restore what `get_state` returned (a ValueError if it does not fit this engine)."""
        raise NotImplementedError


def kinds_implemented(implementation: Any) -> frozenset[str]:
    """The IR layer kinds that `implementation` (a class with one method per kind, named as
    the kind, or a table keyed by kind) has an entry for: what a backend supports is what it
    implements, never a list kept by hand."""
    if isinstance(implementation, Mapping):
        return frozenset(kind for kind in ir.LAYER_CLASSES if kind in implementation)
    return frozenset(kind for kind in ir.LAYER_CLASSES if callable(getattr(implementation, kind, None)))


class Backend:
    """A backend's declaration. Subclasses set the class attributes and implement build/emit."""

    name: ClassVar[str] = ""
    # The layer kinds this backend implements, as kinds_implemented(...) of its per-kind
    # methods; anything else is reported against the spec line.
    layer_kinds: ClassVar[frozenset[str]] = frozenset()
    activations: ClassVar[frozenset[str]] = frozenset(
        {"linear", "relu", "sigmoid", "tanh", "softmax", "elu", "selu", "gelu", "swish", "softplus",
         "relu6", "leaky_relu"})
    # False for a backend that runs inference only: Model.fit and `modelspec train` refuse it
    # (InferenceOnly) before anything happens; evaluate still takes the loss and metrics.
    trains: ClassVar[bool] = True
    # False for a backend with no program to write: `emit` raises NoSource, which `modelspec
    # compile` reports.
    emits_source: ClassVar[bool] = True
    optimizers: ClassVar[frozenset[str]] = frozenset(ir.OPTIMIZERS)
    losses: ClassVar[frozenset[str]] = frozenset(
        {"categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy", "mse",
         "mae", "huber"})

    def unsupported(self, spec: "ir.Spec") -> list["Diagnostic"]:
        """A diagnostic for every part of the spec this backend cannot run."""
        from modelspec.diagnostics import Diagnostic

        out = []
        for layer in spec.layers:
            if layer.kind not in self.layer_kinds:
                out.append(Diagnostic("error", f"the {self.name} backend does not support {layer.kind} layers",
                                      layer.span, code="backend"))
            act = getattr(layer, "activation", None)
            if act is not None and act not in self.activations:
                out.append(Diagnostic("error", f"the {self.name} backend does not support the {act} activation",
                                      layer.span, code="backend"))
        if spec.optimizer is not None and spec.optimizer.name not in self.optimizers:
            out.append(Diagnostic("error", f"the {self.name} backend does not support the "
                                  f"{spec.optimizer.name} optimizer", spec.optimizer.span, code="backend"))
        if spec.loss is not None and spec.loss.name not in self.losses:
            out.append(Diagnostic("error", f"the {self.name} backend does not support the {spec.loss.name} loss",
                                  spec.loss.span, code="backend"))
        return out

    def engine(self, spec: "ir.Spec", report: "Report", **options: Any) -> Engine:
        """A fresh engine for a checked spec. Options: `seed` (dropout masks), and backend-specific
        ones such as device='cuda'."""
        raise NotImplementedError

    def emit(self, spec: "ir.Spec", report: "Report") -> str:
        """Readable, standalone source code for the spec in this backend's framework."""
        raise NotImplementedError
