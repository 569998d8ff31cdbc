"""The numpy engine: a checked spec as kernels.py layers, trained step by step as Keras trains.

One step (Keras's train_step): forward in training mode, the batch loss plus every weight
penalty computed from the weights before the update, the backward pass, then batchnorm's
moving statistics and the optimizer step, unless the loss or a gradient is not finite.
Arrays are float32 throughout (a float64 engine exists only for gradient checks).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelspec import ir
from modelspec.backends.base import BatchCallback, Engine, EpochTotals, TrainConfig
from modelspec.checker import Report
from modelspec.initializers import initial_weights

from . import kernels as K

OPTIMIZERS = {"sgd": K.SGD, "rmsprop": K.RMSprop, "adam": K.Adam, "adamw": K.AdamW,
              "adagrad": K.Adagrad, "nadam": K.Nadam}
METRICS = {"categorical_accuracy": K.categorical_accuracy,
           "sparse_categorical_accuracy": K.sparse_categorical_accuracy,
           "binary_accuracy": K.binary_accuracy, "mse": K.mse_metric, "mae": K.mae_metric}
CROSSENTROPIES = ("categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy")


def activation(name: str, **options: Any) -> list[K.Layer]:
    """The kernels for an activation name; `linear` is no layer at all."""
    if name == "linear":
        return []
    return [K.Activation(getattr(K, name), getattr(K, f"{name}_grad"), **options)]


def dropout_rng(seed: int | None, model_seed: int | None, index: int) -> np.random.Generator:
    """The layer's own seed fixes its masks; otherwise the model seed and the layer's index do."""
    if seed is not None:
        key = [2, seed % 2**64]
    elif model_seed is not None:
        key = [3, model_seed % 2**128, index]
    else:
        key = None
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


@dataclass
class Dataset:
    """A prepared dataset: x in the engine's dtype, labels aligned with the model's output."""

    x: np.ndarray
    y: np.ndarray | None

    def __len__(self) -> int:
        return len(self.x)


def _all_finite(arrays: list[np.ndarray]) -> bool:
    # A sum is one cheap pass and is finite whenever every element is; only a non-finite
    # sum (or an overflowing one) needs the element-wise look.
    return all(np.isfinite(np.sum(a)) or np.isfinite(a).all() for a in arrays)


class NumpyEngine(Engine):
    """A spec in NumPy. `seed` draws the initial weights (unless set_weights comes first) and
    the dropout masks; it defaults to the spec's `fit seed=`."""

    def __init__(self, spec: ir.Spec, report: Report, seed: int | None = None, dtype: Any = np.float32) -> None:
        self.spec, self.report, self.dtype = spec, report, np.dtype(dtype)
        self.seed = seed if seed is not None else (spec.fit.seed if spec.fit else None)
        self.weights = [np.zeros(w.shape, self.dtype) for w in report.weights]
        self._drawn = False  # weights are drawn on first use unless set_weights comes first
        self.layers: list[K.Layer] = []
        self.penalties: list[tuple[np.ndarray, np.ndarray, float, float]] = []
        supply = iter(self.weights)
        for index, layer_report in enumerate(report.layers):
            weights = [next(supply) for _ in layer_report.weights]
            self.layers += getattr(self, layer_report.kind)(layer_report.layer, weights, index)
        self.native = self.layers
        self.params = [p for layer in self.layers for p in layer.params]
        self.grads = [g for layer in self.layers for g in layer.grads]
        self.batchnorms = [layer for layer in self.layers if isinstance(layer, K.BatchNorm)]
        self.config: TrainConfig | None = None
        self.optimizer: K.Optimizer | None = None

    # -- one method per layer kind: the IR layer and its weights -> kernel layers ----------

    def _regularize(self, layer: Any, kernel_layer: K.Layer) -> None:
        reg = layer.kernel_regularizer
        if reg is not None and (reg.l1 or reg.l2):
            self.penalties.append((kernel_layer.params[0], kernel_layer.grads[0], reg.l1, reg.l2))

    def dense(self, layer: ir.Dense, w: list[np.ndarray], index: int) -> list[K.Layer]:
        dense = K.Dense(w[0], w[1] if layer.use_bias else None)
        self._regularize(layer, dense)
        return [dense, *activation(layer.activation)]

    def conv2d(self, layer: ir.Conv2D, w: list[np.ndarray], index: int) -> list[K.Layer]:
        conv = K.Conv2D(w[0], w[1] if layer.use_bias else None, layer.strides, layer.padding)
        self._regularize(layer, conv)
        return [conv, *activation(layer.activation)]

    def flatten(self, layer: ir.Flatten, w: list[np.ndarray], index: int) -> list[K.Layer]:
        return [K.Flatten()]

    def dropout(self, layer: ir.Dropout, w: list[np.ndarray], index: int) -> list[K.Layer]:
        return [K.Dropout(layer.rate, dropout_rng(layer.seed, self.seed, index))]

    def batchnorm(self, layer: ir.BatchNorm, w: list[np.ndarray], index: int) -> list[K.Layer]:
        return [K.BatchNorm(*w, momentum=layer.momentum, epsilon=layer.epsilon)]

    def maxpool2d(self, layer: ir.MaxPool2D, w: list[np.ndarray], index: int) -> list[K.Layer]:
        return [K.MaxPool2D(layer.pool_size, layer.resolved_strides, layer.padding)]

    def avgpool2d(self, layer: ir.AvgPool2D, w: list[np.ndarray], index: int) -> list[K.Layer]:
        return [K.AvgPool2D(layer.pool_size, layer.resolved_strides, layer.padding)]

    def globalavgpool2d(self, layer: ir.GlobalAvgPool2D, w: list[np.ndarray], index: int) -> list[K.Layer]:
        return [K.GlobalAvgPool2D()]

    def activation(self, layer: ir.Activation, w: list[np.ndarray], index: int) -> list[K.Layer]:
        return activation(layer.activation)

    def leaky_relu(self, layer: ir.LeakyReLU, w: list[np.ndarray], index: int) -> list[K.Layer]:
        return activation("leaky_relu", negative_slope=layer.negative_slope)

    # -- training configuration ------------------------------------------------------------

    def set_training(self, config: TrainConfig) -> None:
        loss = config.loss
        options: dict[str, Any] = {}
        if loss.name in CROSSENTROPIES:
            options["from_logits"] = loss.from_logits
        if loss.name == "huber":
            options["delta"] = loss.delta
        head = self.layers[-1] if self.layers else None
        # Keras's TensorFlow backend reads the logits cached on any softmax or sigmoid output
        # (`_keras_logits`), for all three cross-entropies: sigmoid + categorical too.
        if loss.from_logits and not (loss.name in CROSSENTROPIES and isinstance(head, K.Activation)
                                     and head.fn in (K.softmax, K.sigmoid)):
            raise ValueError(f"{loss.name} from logits needs a cross-entropy loss and a model whose "
                             "output layer ends in softmax or sigmoid")
        self.config = config
        self.loss_fn = functools.partial(getattr(K, loss.name), **options)
        # From logits, the loss sees the values before the output activation; the activation
        # still runs, for the metrics.
        self.head = head if loss.from_logits else None
        self.body = self.layers[:-1] if loss.from_logits else self.layers
        with_params = [i for i, layer in enumerate(self.body) if layer.params]
        self.first = with_params[0] if with_params else len(self.body)  # backward stops here
        self.metric_fns = [METRICS[m.kind] for m in config.metrics]
        self.optimizer = OPTIMIZERS[config.optimizer](**config.hyper)

    def _require_training(self) -> None:
        if self.config is None:
            raise RuntimeError("the engine has no loss or optimizer yet: call set_training first")

    # -- data ------------------------------------------------------------------------------

    def prepare(self, x: np.ndarray, y: np.ndarray | None) -> Dataset:
        """x converted once to the engine's dtype (no copy when it already is). Labels follow
        Keras's alignment: a trailing axis of 1 is added or removed to match the output, and
        class indices (one axis fewer than a multi-unit output) become int64."""
        return Dataset(np.asarray(x, dtype=self.dtype), None if y is None else self._labels(np.asarray(y)))

    def _labels(self, y: np.ndarray) -> np.ndarray:
        out = self.report.output_shape  # (None, ..., units)
        rank, units = len(out), out[-1]
        if y.ndim == rank and units > 1 and y.shape[-1] == 1 and not self._dense_labels():
            y = y[..., 0]  # class indices written as a column
        if y.ndim == rank - 1 and units > 1:
            labels = y.astype(np.int64)
            if labels.size and (labels.min() < 0 or labels.max() >= units or (labels != y).any()):
                raise ValueError(f"class indices must be integers in [0, {units}); "
                                 f"received values from {y.min()} to {y.max()}")
            return labels
        if y.ndim == rank - 1 and units == 1:
            y = y[..., None]
        elif y.ndim == rank + 1 and y.shape[-1] == 1:
            y = y[..., 0]
        return np.asarray(y, dtype=self.dtype)

    def _dense_labels(self) -> bool:
        """True when a (n, 1) label column is one value per sample, not a class index."""
        return self.config is not None and self.config.loss.name != "sparse_categorical_crossentropy" \
            and all(m.kind != "sparse_categorical_accuracy" for m in self.config.metrics)

    # -- weights ---------------------------------------------------------------------------

    def _ensure_weights(self) -> None:
        if not self._drawn:
            for dst, src in zip(self.weights, initial_weights(self.spec, self.report, self.seed)):
                dst[...] = src
            self._drawn = True

    def get_weights(self) -> list[np.ndarray]:
        self._ensure_weights()
        return [w.copy() for w in self.weights]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        for dst, src in zip(self.weights, weights, strict=True):
            dst[...] = src  # in place: the layers hold these very arrays
        self._drawn = True

    def optimizer_state(self) -> list[np.ndarray]:
        """Keras's optimizer variables (iteration int64, learning_rate float32, the slots),
        once built by a first training step, as Keras builds them; before that, none."""
        opt = self.optimizer
        if opt is None or not opt.built:
            return []
        return [np.array(opt.iterations, np.int64), np.array(opt.learning_rate, np.float32),
                *(s.copy() for s in opt.slots())]

    # -- passes ----------------------------------------------------------------------------

    def _forward(self, x: np.ndarray, training: bool, layers: list[K.Layer]) -> np.ndarray:
        for layer in layers:
            x = layer.forward(x, training)
        return x

    def _penalty(self) -> Any:
        """Σ l1·Σ|w| + l2·Σw² over the regularized kernels, from the current weights."""
        total = 0
        for kernel, _, l1, l2 in self.penalties:
            if l1:
                total = total + l1 * np.abs(kernel).sum()
            if l2:
                total = total + l2 * np.vdot(kernel, kernel)
        return total

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
        """One training-mode forward and backward on a batch: (total loss, predictions);
        the gradients are left in self.grads (the order of self.params). Nothing is updated."""
        self._require_training()
        self._ensure_weights()
        z = self._forward(x, True, self.body)
        outputs = self.head.forward(z) if self.head is not None else z
        loss, dy = self.loss_fn(y, z)
        loss = loss + self._penalty()
        for i in range(len(self.body) - 1, self.first - 1, -1):
            dy = self.body[i].backward(dy, need_dx=i > self.first)
        for kernel, grad, l1, l2 in self.penalties:
            if l1:
                grad += l1 * np.sign(kernel)
            if l2:
                grad += (2 * l2) * kernel
        return loss, outputs

    def train_epoch(self, data: Dataset, order: np.ndarray, batch_size: int,
                    on_batch: BatchCallback | None = None) -> EpochTotals:
        self._require_training()
        order = np.asarray(order)
        if order.size and (order.min() < 0 or order.max() >= len(data)):
            raise IndexError(f"order holds indices outside [0, {len(data)})")
        totals = EpochTotals(metric_sums=[0.0] * len(self.metric_fns))
        # Batches are gathered into one reused buffer: no per-step copy of the dataset.
        buffer = np.empty((min(batch_size, len(order)), *data.x.shape[1:]), data.x.dtype)
        for step, start in enumerate(range(0, len(order), batch_size)):
            index = order[start:start + batch_size]
            x = np.take(data.x, index, axis=0, out=buffer[:len(index)], mode="clip")
            y = data.y[index]
            loss, outputs = self.gradients(x, y)
            good = np.isfinite(loss) and _all_finite(self.grads)
            if good:
                for bn in self.batchnorms:
                    bn.update_moving()
                self.optimizer.step(self.params, self.grads)
            self._accumulate(totals, loss, y, outputs)
            if on_batch is not None:
                on_batch(step, totals.count, totals.loss_sum, list(totals.metric_sums))
            if not good:
                totals.stopped_at = step
                break
        return totals

    def _accumulate(self, totals: EpochTotals, loss: Any, y: np.ndarray, outputs: np.ndarray) -> None:
        n = len(y)
        totals.loss_sum += float(loss) * n
        for i, metric in enumerate(self.metric_fns):
            totals.metric_sums[i] += float(metric(y, outputs).sum())
        totals.count += n

    def evaluate(self, data: Dataset, batch_size: int) -> EpochTotals:
        self._require_training()
        self._ensure_weights()
        totals = EpochTotals(metric_sums=[0.0] * len(self.metric_fns))
        penalty = self._penalty()  # the weights do not change while evaluating
        for start in range(0, len(data), batch_size):
            x, y = data.x[start:start + batch_size], data.y[start:start + batch_size]
            z = self._forward(x, False, self.body)
            outputs = self.head.forward(z) if self.head is not None else z
            self._accumulate(totals, self.loss_fn(y, z)[0] + penalty, y, outputs)
        return totals

    def predict(self, data: Dataset, batch_size: int) -> np.ndarray:
        self._ensure_weights()
        out = np.empty((len(data), *self.report.output_shape[1:]), self.dtype)
        for start in range(0, len(data), batch_size):
            out[start:start + batch_size] = self._forward(data.x[start:start + batch_size], False, self.layers)
        return out
