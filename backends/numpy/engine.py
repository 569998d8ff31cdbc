"""The numpy engine: a checked spec as kernels.py layers, trained step by step as Keras trains.

One step (Keras's train_step): forward in training mode, the batch loss plus every weight
penalty computed from the weights before the update, the backward pass, then batchnorm's
moving statistics and the optimizer step, unless the loss or a gradient is not finite.
Arrays are float32 throughout (a float64 engine exists only for gradient checks), except
the ids of an `input ... int` spec, which stay int32 (`input_array`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelspec import ir, schedules
from modelspec.backends.base import Engine, EpochTotals
from modelspec.checker import Report
from modelspec.initializers import initial_weights
from modelspec.training import TrainConfig

from . import kernels as K
from .lowering import OPTIMIZERS, loss_function, lower, make, metric_function, reads_before_output



@dataclass
class Dataset:
    """A prepared dataset: x in the engine's dtype (int32 ids for an integer input), labels
    aligned with the model's output."""

    x: np.ndarray
    y: np.ndarray | None

    def __len__(self) -> int:
        return len(self.x)


# Overflow and NaN are reported the Keras way (a non-finite loss stops training, predictions
# carry the NaN), not as NumPy warnings.
_quiet = np.errstate(over="ignore", invalid="ignore", divide="ignore")


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
        self.lowered = lower(report)
        self.layers: list[K.Layer] = [make(call, self.weights, self.seed) for call in self.lowered.calls]
        self.net = self._network()
        self.native = self.net
        self.optimizer: K.Optimizer | None = None
        self._batch: np.ndarray | None = None  # the epoch's gather buffer

    def set_training(self, config: TrainConfig) -> None:
        loss = config.loss
        head = self.layers[-1] if self.layers else None
        before = reads_before_output(loss)
        if before and not (isinstance(head, K.Softmax) or isinstance(head, K.Activation)
                           and head.fn in (K.softmax, K.sigmoid)):
            raise ValueError(f"{loss.name} from the values before the output's activation needs a model "
                             "whose output layer ends in softmax or sigmoid")
        fn, options = loss_function(loss)
        self.net = self._network(functools.partial(fn, **options), before)
        self.native = self.net
        self.metric_fns = [functools.partial(fn, **options) for fn, options in map(metric_function, config.metrics)]
        hyper = dict(config.hyper)
        if config.schedule is not None:
            hyper["learning_rate"] = functools.partial(schedules.learning_rate, config.schedule)
        self.optimizer = OPTIMIZERS[config.optimizer](**hyper)
        self.config = config

    def _network(self, loss: Any = None, from_logits: bool = False) -> K.Network:
        if self.lowered.sources is None:
            return K.Network(self.layers, loss, from_logits, self.lowered.penalties)
        return K.Graph(self.layers, loss, from_logits, self.lowered.penalties, self.lowered.sources)

    # -- data ------------------------------------------------------------------------------

    def prepare(self, x: np.ndarray, y: np.ndarray | None) -> Dataset:
        """x and y converted once to the engine's dtype (no copy when they already are), class
        ids to int64; the Model has aligned the labels with the output (model.check_y)."""
        if y is not None:
            y = np.asarray(y)
            y = y.astype(np.int64 if y.dtype.kind in "iu" else self.dtype, copy=False)
        return Dataset(self.input_array(x), y)

    def input_array(self, x: Any) -> np.ndarray:
        """x as the first layer reads it: the engine's float dtype, or for an integer input
        int32 ids, floats truncated toward zero as Keras's Embedding casts them (no copy
        when x already is)."""
        if self.spec.input_dtype == "int32":
            return np.ascontiguousarray(x, dtype=np.int32)
        return np.asarray(x, dtype=self.dtype)

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
        """Keras's optimizer variables (iteration int64, learning_rate float32 unless a schedule
        gives it, the slots), once built by a first training step, as Keras builds them; before
        that, none."""
        opt = self.optimizer
        if opt is None or not opt.built:
            return []
        rate = [] if opt.schedule is not None else [np.array(opt.learning_rate, np.float32)]
        return [np.array(opt.iterations, np.int64), *rate, *(s.copy() for s in opt.slots())]

    def set_learning_rate(self, value: float) -> None:
        opt = self._optimizer()
        if opt.schedule is not None:
            raise ValueError("the learning rate is a schedule, which cannot be set")
        opt.learning_rate = np.float32(value)

    def next_learning_rate(self) -> float:
        return float(self._optimizer().rate())

    def _optimizer(self) -> K.Optimizer:
        self.require_training()
        assert self.optimizer is not None
        return self.optimizer

    def _random_layers(self) -> list[tuple[int, np.random.Generator]]:
        """(position, generator) of every kernel layer that draws random numbers (dropout masks)."""
        return [(k, layer.rng) for k, layer in enumerate(self.layers) if getattr(layer, "rng", None) is not None]

    def get_state(self) -> dict[str, np.ndarray]:
        """The optimizer's step counter, learning rate and slots (arrays of the weights' dtype,
        Nadam's u_product included), and each random layer's generator state as the UTF-8 bytes
        of its JSON (a uint8 array)."""
        opt = self._optimizer()
        state = {"optimizer/built": np.array(opt.built, np.uint8),
                 "optimizer/iterations": np.array(opt.iterations, np.int64)}
        if opt.schedule is None:
            state["optimizer/learning_rate"] = np.array(opt.learning_rate, np.float32)
        if opt.built:
            state.update((f"optimizer/slot/{i}", s.copy()) for i, s in enumerate(opt.slots()))
        for k, rng in self._random_layers():
            state[f"rng/{k}"] = np.frombuffer(json.dumps(rng.bit_generator.state).encode(), np.uint8).copy()
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        opt = self._optimizer()
        self._ensure_weights()
        built = bool(state.get("optimizer/built", 0))
        expected = {"optimizer/built", "optimizer/iterations"}
        if opt.schedule is None:
            expected.add("optimizer/learning_rate")
        if built and not opt.built:
            opt.build(self.net.params)
            opt.built = True
        slots = opt.slots() if built else []
        expected.update(f"optimizer/slot/{i}" for i in range(len(slots)))
        expected.update(f"rng/{k}" for k, _ in self._random_layers())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"the state does not fit this model's {self.config.optimizer} training: "
                             f"missing {missing or 'nothing'}, unexpected {extra or 'nothing'}")
        for i, slot in enumerate(slots):
            value = np.asarray(state[f"optimizer/slot/{i}"])
            if value.shape != slot.shape:
                raise ValueError(f"optimizer slot {i} has shape {slot.shape}; the state holds {value.shape}")
            slot[...] = value
        opt.built = built  # an unbuilt state: the next step builds fresh slots, as the first one does
        opt.iterations = int(state["optimizer/iterations"])
        if opt.schedule is None:
            opt.learning_rate = np.float32(state["optimizer/learning_rate"])
        for k, rng in self._random_layers():
            rng.bit_generator.state = json.loads(np.asarray(state[f"rng/{k}"], np.uint8).tobytes().decode())

    # -- passes ----------------------------------------------------------------------------

    @_quiet
    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
        """One training-mode forward and backward on a prepared batch: (total loss, outputs).
        The gradients are left in self.net.grads (the order of self.net.params); nothing is
        updated, not even batchnorm's moving statistics."""
        self.require_training()
        self._ensure_weights()
        return self.net.gradients(x, y)

    def epoch_index(self, data: Dataset, order: np.ndarray, batch_size: int) -> np.ndarray:
        order = np.asarray(order)
        if order.size and (order.min() < 0 or order.max() >= len(data)):
            raise IndexError(f"order holds indices outside [0, {len(data)})")
        # Batches are gathered into one reused buffer: no per-step copy of the dataset.
        self._batch = np.empty((min(batch_size, len(order)), *data.x.shape[1:]), data.x.dtype)
        return order

    @_quiet
    def step(self, data: Dataset, index: np.ndarray) -> tuple[float, list[float], bool]:
        x = np.take(data.x, index, axis=0, out=self._batch[:len(index)], mode="clip")
        y = data.y[index]
        loss, outputs = self.gradients(x, y)
        applied = bool(np.isfinite(loss)) and _all_finite(self.net.grads)
        if applied:
            self.net.apply(self.optimizer)
        return float(loss), self._metric_sums(y, outputs), applied

    def _metric_sums(self, y: np.ndarray, outputs: np.ndarray) -> list[float]:
        return [float(metric(y, outputs).sum()) for metric in self.metric_fns]

    @_quiet
    def evaluate(self, data: Dataset, batch_size: int) -> EpochTotals:
        self.require_training()
        self._ensure_weights()
        totals = EpochTotals(metric_sums=[0.0] * len(self.metric_fns))
        for start in range(0, len(data), batch_size):
            x, y = data.x[start:start + batch_size], data.y[start:start + batch_size]
            loss, outputs, _ = self.net.evaluate(x, y)
            totals.add(float(loss), len(y), self._metric_sums(y, outputs))
        return totals

    @_quiet
    def layer_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        """Each report row's output in inference mode (a row may be several kernel layers)."""
        self._ensure_weights()
        x = self.input_array(x)
        if self.lowered.outputs is not None:
            values = self.net.run(x, len(self.layers))
            return [np.array(values[k], dtype=self.dtype) for k in self.lowered.outputs]
        self.net.feed(x)
        z, outputs, position = x, [], 0
        for _, calls in self.lowered.groups:
            for layer in self.layers[position:position + len(calls)]:
                z = layer.forward(z, False)
            position += len(calls)
            outputs.append(np.array(z, dtype=self.dtype))
        return outputs

    @_quiet
    def predict(self, data: Dataset, batch_size: int) -> np.ndarray:
        self._ensure_weights()
        out = np.empty((len(data), *self.report.output_shape[1:]), self.dtype)
        for start in range(0, len(data), batch_size):
            out[start:start + batch_size] = self.net.forward(data.x[start:start + batch_size])
        return out
