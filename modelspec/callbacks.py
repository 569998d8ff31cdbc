"""Keras's EarlyStopping and ReduceLROnPlateau, run by the common Model API at the end of each
epoch, so that every backend stops and lowers its rate at the same epochs.

Their decisions follow keras/src/callbacks/monitor_callback.py, early_stopping.py and
reduce_lr_on_plateau.py line for line; their state (counters, best value, best weights, the
current rate) is what a checkpoint saves, so that a resumed run decides as the uninterrupted
one would have (Keras's BackupAndRestore does not save it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import ir
from .training import MetricConfig

if TYPE_CHECKING:
    from .model import Model

# compile_utils.get_metric's objects: MeanSquaredError and MeanAbsoluteError have _direction
# "down" (metrics/regression_metrics.py), every accuracy "up" (metrics/accuracy_metrics.py)
_DOWN_METRICS = ("mse", "mae")


def minimizes(key: str, monitor: str, mode: str, metrics: tuple[MetricConfig, ...]) -> bool:
    """Whether `monitor` improves downwards: mode min or max, or for auto the direction Keras
    infers (monitor_callback.py, _set_monitor_op): loss down, else the metric's own."""
    if mode != "auto":
        return mode == "min"
    name = monitor.removeprefix("val_")
    if name == "loss":
        return True
    kinds = {m.name: m.kind for m in metrics}
    if name not in kinds:  # `monitors` refuses it first; kept for a direct caller
        raise ValueError(f"{key} monitors '{monitor}' with mode=auto, but training does not report it")
    return kinds[name] in _DOWN_METRICS


def monitors(key: str, monitor: str, metrics: tuple[MetricConfig, ...], validation: bool) -> None:
    """A ValueError before any step when training will not report `monitor` (Keras only warns
    at each epoch's end and then ignores the callback)."""
    known = ("loss", *(m.name for m in metrics))
    reported = (*known, *(f"val_{k}" for k in known)) if validation else known
    if monitor in reported:
        return
    if monitor.startswith("val_") and monitor[4:] in known:
        raise ValueError(f"{key} monitors '{monitor}', but this fit has no validation data; give "
                         f"validation_split= or validation_data=, or monitor '{monitor[4:]}'")
    raise ValueError(f"{key} monitors '{monitor}', which training does not report; expected one of "
                     f"{', '.join(reported)}")


class Callback:
    """One of Keras's monitoring callbacks, with its state in plain values and arrays."""

    key = ""

    def __init__(self, node: Any, metrics: tuple[MetricConfig, ...], verbose: int, out: Any) -> None:
        self.node = node
        self.monitor = node.monitor
        self.min_delta = abs(node.min_delta)
        self.less = minimizes(self.key, node.monitor, node.mode, metrics)
        self.verbose, self.out = verbose, out

    def improved(self, value: float, reference: float | None) -> bool:
        """monitor_callback.py _is_improvement: strict, by |min_delta|; `value - min_delta`
        is Python float arithmetic, then ops.less/greater compare float32 tensors."""
        if reference is None:
            return True
        if self.less:
            return bool(np.float32(value + self.min_delta) < np.float32(reference))
        return bool(np.float32(value - self.min_delta) > np.float32(reference))

    def annotate(self, logs: dict[str, float]) -> None:
        """What it adds to an epoch's logs (and so to history) before any decision."""

    def epoch_end(self, epoch: int, logs: dict[str, float], model: "Model") -> bool:
        """Its decision at the end of `epoch` (0-based, counted over every fit of a resumed
        run); True asks training to stop."""
        raise NotImplementedError

    def train_end(self, model: "Model") -> None:
        """At the end of training (also after a stop on request or a non-finite loss)."""

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON values, arrays): what `set_state` restores."""
        raise NotImplementedError

    def set_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, file=self.out, flush=True)


class EarlyStopping(Callback):
    """keras/src/callbacks/early_stopping.py."""

    key = "early_stopping"
    node: ir.EarlyStopping

    def __init__(self, node: ir.EarlyStopping, metrics: tuple[MetricConfig, ...], verbose: int, out: Any) -> None:
        super().__init__(node, metrics, verbose, out)
        self.wait = self.stopped_epoch = self.best_epoch = 0  # on_train_begin
        self.best: float | None = None
        self.best_weights: list[np.ndarray] | None = None

    def epoch_end(self, epoch: int, logs: dict[str, float], model: "Model") -> bool:
        current = logs.get(self.monitor)
        if current is None or epoch < self.node.start_from_epoch:  # the epoch does not count at all
            return False
        if self.node.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = model.get_weights(), epoch
        self.wait += 1
        if self.improved(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.node.restore_best_weights:
                self.best_weights = model.get_weights()
            # an improvement that misses the baseline does not reset the count
            if self.node.baseline is None or self.improved(current, self.node.baseline):
                self.wait = 0
            return False
        if self.wait >= self.node.patience and epoch > 0:
            self.stopped_epoch = epoch
            return True
        return False

    def train_end(self, model: "Model") -> None:
        if self.stopped_epoch > 0:
            self._say(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.node.restore_best_weights and self.best_weights is not None:
            # also without an early stop, as Keras 3 does (Keras 2 restored only on a stop)
            self._say(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            model.set_weights(self.best_weights)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        values = {"wait": self.wait, "stopped_epoch": self.stopped_epoch, "best": self.best,
                  "best_epoch": self.best_epoch, "best_weights": self.best_weights is not None}
        arrays = {str(i): w for i, w in enumerate(self.best_weights or [])}
        return values, arrays

    def set_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.wait, self.stopped_epoch = int(values["wait"]), int(values["stopped_epoch"])
        self.best, self.best_epoch = values["best"], int(values["best_epoch"])
        self.best_weights = [arrays[str(i)] for i in range(len(arrays))] if values["best_weights"] else None


class ReduceLROnPlateau(Callback):
    """keras/src/callbacks/reduce_lr_on_plateau.py. `rate` is the optimizer's current
    learning rate (float32, as Keras's variable holds it); a new rate goes to the engine,
    which uses it from the next step, the first of the next epoch."""

    key = "reduce_lr_on_plateau"
    node: ir.ReduceLROnPlateau

    def __init__(self, node: ir.ReduceLROnPlateau, metrics: tuple[MetricConfig, ...], verbose: int, out: Any,
                 rate: float) -> None:
        super().__init__(node, metrics, verbose, out)
        self.rate = float(np.float32(rate))
        self.best: float | None = None  # _reset at on_train_begin
        self.cooldown_counter = self.wait = 0

    def annotate(self, logs: dict[str, float]) -> None:
        logs["learning_rate"] = self.rate  # the rate used during the epoch

    def epoch_end(self, epoch: int, logs: dict[str, float], model: "Model") -> bool:
        self.annotate(logs)
        current = logs.get(self.monitor)
        if current is None:
            return False
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.improved(current, self.best):
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            # at min_lr already: no reduction, and the count goes on
            if self.wait >= self.node.patience and self.rate > np.float32(self.node.min_lr):
                new = max(self.rate * self.node.factor, self.node.min_lr)  # float64, stored as float32
                model.set_learning_rate(new)
                self.rate = float(np.float32(new))
                self._say(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
                self.cooldown_counter, self.wait = self.node.cooldown, 0
        return False

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"best": self.best, "cooldown_counter": self.cooldown_counter, "wait": self.wait,
                "rate": self.rate}, {}

    def set_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.best, self.rate = values["best"], float(values["rate"])
        self.cooldown_counter, self.wait = int(values["cooldown_counter"]), int(values["wait"])
