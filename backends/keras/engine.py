"""The Keras engine: the spec as a keras.Sequential (a chain) or a functional model, trained
by Keras's own pieces.

Keras is the reference semantics, so the arithmetic is Keras's: the model's forward pass,
`model.compute_loss` (the compiled loss plus every regularization penalty), Keras's
optimizers and metric classes. What the engine adds is the loop the common Model asks
for: batches in the order it passes, Keras's accounting (a batch-size-weighted mean of the
pre-update loss) and a stop before a non-finite step is applied.

On TensorFlow (Keras's default backend) a whole epoch runs inside one tf.function, a
`tf.while_loop` over `tf.gather`ed batches, with the non-finite check in the graph: no
Python runs per step, so it keeps pace with `model.fit`. On other Keras backends
(KERAS_BACKEND=torch or jax) a slower loop of `train_on_batch` calls does the same job.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from modelspec.backends.base import BatchCallback, Engine, EpochTotals
from modelspec.training import TrainConfig

from . import lowering


def _import_keras() -> Any:
    """keras, with TensorFlow's start-up chatter (written by its C++ logger straight to file
    descriptor 2, before any Python setting applies) kept off the user's terminal."""
    if "keras" in sys.modules:
        import keras

        return keras
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_silenced():
        import keras
    return keras


@contextmanager
def _stderr_silenced():
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (some notebooks): nothing to silence
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


keras = _import_keras()
ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
if ON_TENSORFLOW:
    import tensorflow as tf


def build_model(spec: Any, report: Any, seed: int) -> Any:
    """The spec as a built Keras model, layers named as the checker names them: a
    keras.Sequential for a chain, else the functional model `keras.Model(inputs, outputs)`,
    its layers created in the order they were written (Keras then lists them in its own order,
    which the checker's report.layers follows).

    A wrapped layer (bidirectional's) is named as the checker names it too, as Keras would in
    a fresh session: its name is in its clones' weight paths (forward_gru/gru_cell/kernel).

    A dropout layer, or attention with dropout, without a seed gets one derived from `seed`,
    so that an engine's masks depend on its seed only, never on Keras's global random state."""
    from modelspec.checker import layer_names

    names = {row.index: row.name for row in report.layers}
    _, inners = layer_names(spec, inner=True)
    built = []
    for index, node in enumerate(spec.layers):
        call = lowering.layer(node, names[index], inners[index])
        if (node.kind == "dropout" or (node.kind == "attention" and node.dropout)) and node.seed is None:
            call = replace(call, kwargs={**call.kwargs, "seed": (seed * 1_000_003 + index) % 2**31})
        built.append(lowering.make(call, keras))
    if spec.is_chain:
        return keras.Sequential([lowering.make(lowering.model_input(spec), keras), *built], name=spec.name)
    from modelspec.checker import INPUT_LAYER

    # named as in a fresh session, whatever this session has named before
    inputs = lowering.make(lowering.model_input(spec, INPUT_LAYER), keras)
    outputs: list[Any] = []
    for index, (node, layer) in enumerate(zip(spec.layers, built)):
        tensors = [inputs if s < 0 else outputs[s] for s in spec.sources(index)]
        outputs.append(layer(*lowering.arguments(node, tensors)))
    return keras.Model(inputs, outputs[-1], name=spec.name)


@dataclass
class _Data:
    x: Any
    y: Any
    n: int


class KerasEngine(Engine):
    def __init__(self, spec: Any, report: Any, seed: int = 0, device: str = "auto") -> None:
        self._device = _device_scope(device)
        self._ids = spec.input_dtype == "int32"  # token ids reach the model as int32, as keras.Input says
        with self._device:
            self.native = build_model(spec, report, seed)
        self._optimizer: Any = None
        self._loss_tracker: Any = None
        self._metrics: list[Any] = []
        self._functions: dict[str, Any] = {}
        self._eager_variables: list[Any] = []  # off TensorFlow: what a failed step restores

    # -- settings and data ---------------------------------------------------------------

    def set_training(self, config: TrainConfig) -> None:
        with self._device:
            self._optimizer = lowering.make(lowering.optimizer(config.optimizer, config.hyper), keras)
            # from_logits where the output itself is the logits: an output softmax's or sigmoid's
            # own logits Keras finds by itself (training.LossConfig)
            loss = lowering.make(lowering.loss(config.loss.name, config.loss.delta, config.loss.output_logits,
                                               config.loss.label_smoothing), keras)
            self._metrics = [lowering.make(lowering.metric(m.name, m.kind, m.k), keras) for m in config.metrics]
            self._loss_tracker = keras.metrics.Mean(name="loss")
            self.native.compile(optimizer=self._optimizer, loss=loss, metrics=list(self._metrics))
        self._functions = {}  # traced with the old optimizer and metrics
        self.config = config

    def _x(self, x: np.ndarray) -> np.ndarray:
        """x in the model's input dtype: token ids as int32, the dtype of its keras.Input (one
        dtype, so one trace of each tf.function); anything else as it comes."""
        if self._ids and np.asarray(x).dtype != np.int32:
            return np.asarray(x).astype(np.int32)
        return x

    def prepare(self, x: np.ndarray, y: np.ndarray | None) -> _Data:
        x = self._x(x)
        if not ON_TENSORFLOW:
            return _Data(x, y, len(x))
        with self._device:
            return _Data(tf.constant(x), None if y is None else tf.constant(y), len(x))

    # -- train, evaluate, predict --------------------------------------------------------

    def _reset(self) -> None:
        self._loss_tracker.reset_state()
        for m in self._metrics:
            m.reset_state()

    def _totals(self, count: int, stopped_at: int | None = None) -> EpochTotals:
        """Keras's own float32 sums: the loss tracker's Σ n_b·L_b and each metric's total."""
        if not count:
            return EpochTotals(0.0, [0.0] * len(self._metrics), 0, stopped_at)
        return EpochTotals(float(self._loss_tracker.total.numpy()),
                           [float(m.total.numpy()) for m in self._metrics], count, stopped_at)

    def train_epoch(self, data: _Data, order: np.ndarray, batch_size: int,
                    on_batch: BatchCallback | None = None) -> EpochTotals:
        if not self._optimizer.built:
            with self._device:
                self._optimizer.build(self.native.trainable_variables)
        self._reset()
        if not ON_TENSORFLOW:
            return super().train_epoch(data, order, batch_size, on_batch)
        n = len(order)  # an epoch may visit a subset (or repeats) of the data
        steps = -(-n // batch_size)
        run = self._function("train", self._train_steps)
        with self._device:
            order_t = tf.constant(order, dtype=tf.int32)
        size = tf.constant(batch_size, tf.int32)
        step, chunk = 0, steps if on_batch is None else 1
        while step < steps:
            stop = min(steps, step + chunk)
            started = time.perf_counter()
            # tensors, not Python ints, so that no value of them retraces the function
            done = int(run(data.x, data.y, order_t, size, tf.constant(step, tf.int32), tf.constant(stop, tf.int32)))
            if done < stop:  # a non-finite loss or gradient: that step was not applied, but counts
                totals = self._totals(min((done + 1) * batch_size, n), stopped_at=done)
                if on_batch is not None:
                    on_batch(done, totals.count, totals.loss_sum, totals.metric_sums)
                return totals
            if on_batch is not None:
                seen = min(stop * batch_size, n)
                totals = self._totals(seen)
                on_batch(stop - 1, seen, totals.loss_sum, totals.metric_sums)
                # a live progress bar needs a refresh every few tens of milliseconds, not every step
                per_step = (time.perf_counter() - started) / (stop - step)
                chunk = max(1, int(0.05 / max(per_step, 1e-6)))
            step = stop
        return self._totals(n)

    def evaluate(self, data: _Data, batch_size: int) -> EpochTotals:
        self._reset()
        if not ON_TENSORFLOW:
            for lo in range(0, data.n, batch_size):
                xb, yb = data.x[lo:lo + batch_size], data.y[lo:lo + batch_size]
                y_pred = self.native(xb, training=False)
                self._update_trackers(xb, yb, y_pred, training=False)
        else:
            self._function("evaluate", self._evaluate_steps)(data.x, data.y, tf.constant(batch_size, tf.int32))
        return self._totals(data.n)

    def predict(self, data: _Data, batch_size: int) -> np.ndarray:
        if not ON_TENSORFLOW:
            return np.concatenate([_numpy(self.native(data.x[lo:lo + batch_size], training=False))
                                   for lo in range(0, data.n, batch_size)]).astype(np.float32)
        return self._function("predict", self._predict_steps)(data.x, tf.constant(batch_size, tf.int32)).numpy()

    def layer_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        """Every layer's output in inference mode, through a functional view of the model."""
        with self._device:
            if "layers" not in self._functions:
                # a functional model's layers start with its InputLayer, which has no row
                rows = [layer for layer in self.native.layers if not isinstance(layer, keras.layers.InputLayer)]
                self._functions["layers"] = keras.Model(self.native.inputs[0], [layer.output for layer in rows])
            outputs = self._functions["layers"](self._x(x), training=False)
        if not isinstance(outputs, (list, tuple)):  # Keras returns a one-layer model's output bare
            outputs = [outputs]
        return [_numpy(o).astype(np.float32) for o in outputs]

    # -- weights -------------------------------------------------------------------------

    def get_weights(self) -> list[np.ndarray]:
        return [_numpy(v.value).astype(np.float32) for v in self.native.weights]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        for variable, value in zip(self.native.weights, weights):
            variable.assign(value)
        # Normalization divides by tensors that finalize_state copies from its variables (as
        # its load_own_variables and adapt do, keras/src/layers/preprocessing/normalization.py),
        # and a traced function holds the copies as constants: refresh both.
        stale = [layer for layer in self.native.layers if isinstance(layer, keras.layers.Normalization)]
        for layer in stale:
            layer.finalize_state()
        if stale:
            self._functions.clear()
            self.native.train_function = self.native.test_function = self.native.predict_function = None

    def optimizer_state(self) -> list[np.ndarray]:
        if self._optimizer is None or not self._optimizer.built:
            return []
        return [_numpy(v.value) for v in self._optimizer.variables]

    # -- the state of training besides the weights ----------------------------------------

    def set_learning_rate(self, value: float) -> None:
        # what ReduceLROnPlateau does: `optimizer.learning_rate = new_lr`, a float32 variable
        # read by the next step (keras/src/callbacks/reduce_lr_on_plateau.py)
        if self.require_training().schedule is not None:
            raise ValueError("the learning rate follows a schedule; it cannot be set to a constant")
        self._optimizer.learning_rate.assign(np.float32(value))

    def next_learning_rate(self) -> float:
        self.require_training()
        return float(np.asarray(self._optimizer.learning_rate))  # a schedule's value at `iterations`

    def _state_variables(self) -> dict[str, Any]:
        """The variables `get_state` saves, named by kind, position and Keras's name: the
        optimizer's (built here if it is not yet, so that its slots exist) and every
        SeedGenerator's state (dropout's, attention's own dropout's), which Keras lists among a
        model's variables but not its weights (keras/src/layers/layer.py, `variables`)."""
        self.require_training()
        optimizer = self._optimizer
        if not optimizer.built:
            with self._device:
                optimizer.build(self.native.trainable_variables)
        weights = {id(v) for v in self.native.weights}
        rng = [v for v in self.native.variables if id(v) not in weights]
        return {**{f"optimizer.{i}.{v.name}": v for i, v in enumerate(optimizer.variables)},
                **{f"rng.{i}.{v.name}": v for i, v in enumerate(rng)}}

    def get_state(self) -> dict[str, np.ndarray]:
        return {key: _numpy(v.value) for key, v in self._state_variables().items()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        variables = self._state_variables()
        missing, unknown = sorted(set(variables) - set(state)), sorted(set(state) - set(variables))
        if missing or unknown:
            found = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"unknown {', '.join(unknown)}"] if unknown else [])
            raise ValueError(f"the saved training state does not fit this model and optimizer: {'; '.join(found)}")
        for key, v in variables.items():
            value = np.asarray(state[key])
            if value.shape != tuple(v.shape) or value.dtype != np.dtype(v.dtype):
                raise ValueError(f"the saved training state's {key} is {value.dtype}{list(value.shape)}; "
                                 f"this model's is {np.dtype(v.dtype)}{list(v.shape)}")
        for key, v in variables.items():
            v.assign(state[key])

    # -- the TensorFlow graph ------------------------------------------------------------

    def _function(self, key: str, python_function: Any) -> Any:
        if key not in self._functions:
            function = tf.function(python_function, reduce_retracing=True)
            # Every engine traces its own functions once or twice (a new dataset shape); TF
            # counts traces per source line across all engines and would warn of "frequent
            # retracing" once a session builds a few models.
            function._omit_frequent_tracing_warning = True
            self._functions[key] = function
        return self._functions[key]

    def _update_trackers(self, x: Any, y: Any, y_pred: Any, loss: Any = None, training: bool = True) -> None:
        if loss is None:
            loss = self.native.compute_loss(x=x, y=y, y_pred=y_pred, training=training)
        self._loss_tracker.update_state(loss, sample_weight=keras.ops.shape(x)[0])
        for m in self._metrics:
            m.update_state(y, y_pred)

    def _train_step(self, x: Any, y: Any) -> Any:
        """One step; returns False, having changed no weight, if the loss or a gradient is not
        finite. Its batch still counts in the epoch's sums, so that the epoch's mean shows the
        failure, as Keras's history does (and the other backends)."""
        model = self.native
        trainable = model.trainable_variables
        frozen = model.non_trainable_variables  # BN moving statistics, updated by the forward pass
        saved = [tf.identity(v.value) for v in frozen]
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        grads = tape.gradient(loss, trainable)
        # g * 0 is 0 for every finite g and NaN otherwise: one sum tells whether all are finite.
        # An embedding's gradient is sparse (tf.IndexedSlices: a row per id read), as in fit(), and
        # so is the optimizer's update of it: Adam's second moment sums each occurrence's square
        # (keras/src/backend/tensorflow/optimizer.py, assign_add of IndexedSlices).
        probe = tf.add_n([loss * 0.0] + [tf.reduce_sum(_dense_part(g) * 0.0) for g in grads if g is not None])
        finite = tf.math.is_finite(probe)

        def apply() -> Any:
            self._optimizer.apply(grads, trainable)
            return tf.constant(True)

        def undo() -> Any:
            for v, value in zip(frozen, saved):
                v.assign(value)
            return tf.constant(False)

        applied = tf.cond(finite, apply, undo)
        self._update_trackers(x, y, y_pred, loss)
        return applied

    def _train_steps(self, x: Any, y: Any, order: Any, batch_size: Any, start: Any, stop: Any) -> Any:
        """Steps start..stop-1 of an epoch; returns the first step not applied (stop if all were)."""
        n = tf.shape(order)[0]

        def body(step: Any, ok: Any) -> Any:
            idx = order[step * batch_size: tf.minimum((step + 1) * batch_size, n)]
            ok = self._train_step(tf.gather(x, idx), tf.gather(y, idx))
            return step + tf.cast(ok, tf.int32), ok

        step, _ = tf.while_loop(lambda step, ok: tf.logical_and(step < stop, ok), body, (start, tf.constant(True)))
        return step

    def _evaluate_steps(self, x: Any, y: Any, batch_size: Any) -> Any:
        n = tf.shape(x)[0]

        def body(lo: Any) -> Any:
            xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
            self._update_trackers(xb, yb, self.native(xb, training=False), training=False)
            return (lo + batch_size,)

        return tf.while_loop(lambda lo: lo < n, body, (tf.constant(0),))

    def _predict_steps(self, x: Any, batch_size: Any) -> Any:
        n = tf.shape(x)[0]
        steps = (n + batch_size - 1) // batch_size
        out = tf.TensorArray(tf.float32, size=steps, infer_shape=False)

        def body(i: Any, out: Any) -> Any:
            xb = x[i * batch_size:(i + 1) * batch_size]
            return i + 1, out.write(i, tf.cast(self.native(xb, training=False), tf.float32))

        _, out = tf.while_loop(lambda i, out: i < steps, body, (tf.constant(0), out))
        return out.concat()

    # -- other Keras backends: Engine.train_epoch over these ------------------------------

    def epoch_index(self, data: _Data, order: np.ndarray, batch_size: int) -> np.ndarray:
        self._eager_variables = list(self.native.variables) + list(self._optimizer.variables)
        return order

    def step(self, data: _Data, idx: np.ndarray) -> tuple[float, list[float], bool]:
        """Keras's own train_on_batch, which reports that batch's loss and metric means. The
        state before the step is kept, so that a step whose loss is not finite can be undone
        (a non-finite gradient under a finite loss goes unnoticed here)."""
        before = [_numpy(v.value) for v in self._eager_variables]
        logs = self.native.train_on_batch(data.x[idx], data.y[idx], return_dict=True)
        applied = math.isfinite(logs["loss"])
        if not applied:
            for v, value in zip(self._eager_variables, before):
                v.assign(value)
        return logs["loss"], [len(idx) * logs[m.name] for m in self._metrics], applied


def _dense_part(grad: Any) -> Any:
    """The values of a gradient: a sparse one's rows (tf.IndexedSlices.values), else itself."""
    return grad.values if isinstance(grad, tf.IndexedSlices) else grad


def _numpy(tensor: Any) -> np.ndarray:
    """A copy as a NumPy array (keras.ops.convert_to_numpy warns under NumPy 2 on TensorFlow)."""
    if ON_TENSORFLOW:
        return np.array(tensor.numpy())
    return np.array(keras.ops.convert_to_numpy(tensor))


def _device_scope(device: str) -> Any:
    from modelspec.backends import BackendError

    if device in ("auto", None):
        return nullcontext()
    if device == "cpu":
        return tf.device("/CPU:0") if ON_TENSORFLOW else nullcontext()
    if device in ("cuda", "gpu"):
        if not ON_TENSORFLOW:
            raise BackendError(f"device='{device}' is supported with Keras's TensorFlow backend only; "
                               f"KERAS_BACKEND is {keras.backend.backend()}")
        if not tf.config.list_physical_devices("GPU"):
            raise BackendError(f"device='{device}' asked for a GPU, but TensorFlow sees none "
                               "(tensorflow-cpu, or no CUDA driver); use device='cpu' or 'auto'")
        return tf.device("/GPU:0")
    raise BackendError(f"unknown device '{device}'; expected 'auto', 'cpu', 'cuda' or 'gpu'")
