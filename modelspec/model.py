"""The common Model API, the same for every backend, shaped like Keras's.

    model = ms.build(spec, backend="numpy", seed=0)
    hist = model.fit(x, y, epochs=3)
    model.evaluate(x_test, y_test)        # {'categorical_accuracy': ..., 'loss': ...}

Everything that must be identical across backends lives here, so that one spec gives
the same numbers everywhere: argument checks (before any step runs), the validation
split (the last fraction, taken before shuffling), the order of every epoch (drawn in
NumPy from the fit seed), label alignment, Keras's 'accuracy' resolution and
from-logits rule, history accounting (batch-size-weighted running means including
penalties), the progress display and saving. The backend's Engine does the arithmetic.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import ir
from .shapes import tuple_text
from .training import TrainConfig, resolve_loss, resolve_metric

if TYPE_CHECKING:
    from .backends.base import Backend, Engine
    from .checker import Report

DEFAULT_BATCH_SIZE = 32
FORMAT = "modelspec-weights/1"
_FIT_DEFAULTS = {"batch_size": DEFAULT_BATCH_SIZE, "epochs": 1, "validation_split": 0.0, "shuffle": True}


@dataclass
class History:
    """What fit returns, as Keras's History: per-epoch lists under Keras's (sorted) keys."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None  # why training stopped early (a non-finite loss), if it did

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for key in sorted(logs):
            self.history.setdefault(key, []).append(float(logs[key]))
        self.history = dict(sorted(self.history.items()))


class TrainingStopped(RuntimeWarning):
    """Training stopped early; the weights of the last good step were kept."""


# ---------------------------------------------------------------------------------------
# Training settings


def _as_optimizer(value: Any) -> ir.Optimizer:
    if isinstance(value, ir.Optimizer):
        return value
    if isinstance(value, str):
        from .ir import OPTIMIZER_ALIASES

        return ir.Optimizer(name=OPTIMIZER_ALIASES.get(value, value.lower()))
    if isinstance(value, dict):
        return ir.Optimizer(**value)
    raise TypeError(f"optimizer must be a name, a dict or an ir.Optimizer; received {type(value).__name__}")


def _as_loss(value: Any) -> ir.Loss:
    if isinstance(value, ir.Loss):
        return value
    if isinstance(value, str):
        from .ir import LOSS_ALIASES

        return ir.Loss(name=LOSS_ALIASES.get(value, value))
    if isinstance(value, dict):
        return ir.Loss(**value)
    raise TypeError(f"loss must be a name, a dict or an ir.Loss; received {type(value).__name__}")


# ---------------------------------------------------------------------------------------
# Input checks: every problem is a ValueError that names what was expected and received


def check_x(x: Any, input_shape: tuple[int, ...], what: str = "x", dtype: str = "float32",
            id_limit: int | None = None) -> np.ndarray:
    """x with shape (N, *input_shape), or a ValueError: float32 for a float input; for an
    integer input (`dtype` "int32", token ids) int32 whole numbers, each in [0, id_limit)
    (see `check_ids`)."""
    try:
        arr = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"{what} must be an array of numbers; received {type(x).__name__} ({e})") from None
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{what} must hold numbers; received an array of dtype {arr.dtype}")
    expected = (None, *input_shape)
    if arr.ndim != len(expected) or tuple(arr.shape[1:]) != tuple(input_shape):
        hint = ""
        if arr.ndim >= 1 and math.prod(arr.shape[1:]) == math.prod(input_shape):
            hint = f"; reshape it with {what}.reshape(-1, {', '.join(map(str, input_shape))})"
        raise ValueError(f"{what} has shape {tuple_text(arr.shape)}, but the model's input is "
                         f"{tuple_text(expected)}{hint}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what} is empty: expected at least one sample of shape {tuple_text(expected)}")
    if dtype == "int32":
        return check_ids(arr, id_limit, what)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        count = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{what} holds {count} NaN or infinite value(s), the first at index "
                         f"{tuple(int(i) for i in bad)}; expected finite numbers")
    return arr


INT32_LIMIT = 2**31  # Keras's Input(dtype="int32"): ids beyond it do not exist


def check_ids(arr: np.ndarray, id_limit: int | None, what: str = "x") -> np.ndarray:
    """Token ids (N, ...) as C-contiguous int32, or a ValueError naming the first bad value
    (in sample order, then step order), its sample and step, and the valid range: ids are
    whole numbers (integers, or floats without a fraction) in [0, id_limit), the smallest
    vocabulary of the embeddings that read them. Keras does not check them alike on every
    device: Embedding.call is ops.take, whose TensorFlow version wraps a negative id around
    the table (keras/src/backend/tensorflow/numpy.py, take: fix_negative_indices) and whose
    gather raises for an id past it on the CPU but returns zeros on a GPU; torch's embedding
    raises. So ids are refused here, before any step."""
    limit = INT32_LIMIT if id_limit is None else id_limit
    valid = f"[0, {limit})" + ("" if id_limit is None else f", the embedding's vocabulary of {id_limit}")
    if arr.dtype.kind == "f":
        whole = np.isfinite(arr) & (np.mod(arr, 1) == 0)  # NaN and inf are not whole
        if not whole.all():
            raise ValueError(f"{what} holds {_value(arr, ~whole)} at {_position(~whole)}; the model's input is "
                             f"integer token ids: expected whole numbers in {valid}")
    bad = (arr < 0) | (arr >= limit)
    if bad.any():
        raise ValueError(f"{what} holds the id {_value(arr, bad)} at {_position(bad)}; expected ids in {valid}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _value(arr: np.ndarray, bad: np.ndarray) -> str:
    value = arr.reshape(-1)[int(np.argmax(bad.reshape(-1)))]
    return f"{int(value)}" if arr.dtype.kind in "biu" or (np.isfinite(value) and value % 1 == 0) else f"{value:g}"


def _position(bad: np.ndarray) -> str:
    """Where the first True of `bad` (N, ...) is, in words: "sample 3, step 5" for sequences,
    "sample 3, position (1, 2)" for ids of more axes."""
    index = np.unravel_index(int(np.argmax(bad.reshape(-1))), bad.shape)
    sample, rest = int(index[0]), tuple(int(i) for i in index[1:])
    if len(rest) == 1:
        return f"sample {sample}, step {rest[0]}"
    return f"sample {sample}, position {rest}"


def check_y(y: Any, n: int, out_shape: tuple[Any, ...], loss: str, what: str = "y") -> np.ndarray:
    """y aligned with the model's output as Keras aligns it, or a ValueError.

    sparse_categorical_crossentropy takes integer class ids, (N,) or (N, 1), returned as
    int64 (N,). Every other loss takes y of the output's shape, or one trailing axis of 1
    less or more (Keras squeezes or expands it), returned as float32 of the output's shape.
    """
    try:
        arr = np.asarray(y)
    except Exception as e:
        raise ValueError(f"{what} must be an array of numbers; received {type(y).__name__} ({e})") from None
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{what} must hold numbers; received an array of dtype {arr.dtype}")
    if arr.ndim == 0 or arr.shape[0] != n:
        got = arr.shape[0] if arr.ndim else "a scalar"
        raise ValueError(f"x has {n} samples but {what} has {got}; expected one label per sample")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{what} holds NaN or infinite values; expected finite labels")
    classes = out_shape[-1]
    if loss == "sparse_categorical_crossentropy":
        expected = tuple(out_shape[1:-1])  # one class id per output position
        if arr.shape[1:] == expected + (1,):
            arr = arr[..., 0]
        if tuple(arr.shape[1:]) != expected:
            want = tuple_text((None, *expected))
            raise ValueError(f"sparse_categorical_crossentropy takes integer class ids of shape {want}"
                             f"{' or (N, 1)' if not expected else ''}; {what} has shape {tuple_text(arr.shape)}"
                             + ("; these look one-hot: use categorical_crossentropy"
                                if arr.shape[-1] == classes and arr.ndim == len(out_shape) else ""))
        if arr.dtype.kind == "f" and not np.equal(np.mod(arr, 1), 0).all():
            raise ValueError(f"sparse_categorical_crossentropy takes whole-number class ids; {what} holds fractions")
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi >= classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{what} holds the class id {bad:g}, but the model has {classes} output units; "
                             f"expected ids from 0 to {classes - 1}")
        return arr.astype(np.int64)
    target = tuple(out_shape[1:])
    shape = tuple(arr.shape[1:])
    if shape != target:
        if shape + (1,) == target:
            arr = arr[..., None]
        elif shape == target + (1,):
            arr = arr[..., 0]
        else:
            hint = ""
            if arr.ndim == 1 and classes > 1 and loss == "categorical_crossentropy":
                hint = ("; these look like integer class ids: one-hot encode them, or use "
                        "sparse_categorical_crossentropy")
            raise ValueError(f"{what} has shape {tuple_text(arr.shape)}, but the model's output is "
                             f"{tuple_text(out_shape)}{hint}")
    if loss in ("categorical_crossentropy", "binary_crossentropy"):
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"{loss} takes labels between 0 and 1; {what} holds values from {lo:g} to {hi:g}")
    return np.ascontiguousarray(arr, dtype=np.float32)


# ---------------------------------------------------------------------------------------
# The model


@dataclass
class _FitRun:
    """What every epoch of one fit call shares."""

    config: TrainConfig
    train: Any  # the engine's prepared training data
    val: Any  # and validation data, or None
    batch_size: int
    steps: int
    verbose: int
    out: Any  # the progress display's stream
    history: History
    callbacks: list[Any]  # modelspec.callbacks
    finished: bool = False  # stopped for good: early stopping, or a non-finite loss (not a stop on request)


class Model:
    """A spec built in one backend. Build it with `modelspec.build`."""

    def __init__(self, spec: ir.Spec, report: "Report", backend: "Backend", engine: "Engine", seed: int) -> None:
        self.spec = spec
        self.report = report
        self.backend = backend
        self.engine = engine
        self.seed = seed
        self.stop_training = False  # set it (e.g. from a signal handler) to stop after this epoch
        self._optimizer = spec.optimizer or ir.Optimizer(name="rmsprop")
        self._loss = spec.loss
        self._metrics: tuple[str, ...] = spec.metrics
        self._config: TrainConfig | None = None
        self._config_key: Any = None
        self._trained = False
        self._shuffle_rng: np.random.Generator | None = None  # one stream across fit calls
        self._learning_rate: float | None = None  # set_learning_rate's, until the optimizer changes
        # whether the normalize layers hold their statistics (adapted, or weights set or loaded):
        # fit adapts them to its x first otherwise. modelspec.build's initial weights don't count.
        self.adapted = not report.adapts
        # the workers of a data-parallel run (modelspec.distributed.Group), or None: one process
        self.distributed: Any = None

    # -- basics --------------------------------------------------------------------------

    @property
    def native(self) -> Any:
        """The backend's own model object (a keras.Model, a torch nn.Module, ...)."""
        return self.engine.native

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_shape(self) -> tuple[Any, ...]:
        return self.report.input_shape

    @property
    def output_shape(self) -> tuple[Any, ...]:
        return self.report.output_shape

    def __repr__(self) -> str:
        return f"<modelspec.Model {self.name!r} on {self.backend.name}: {self.report.total_params:,} params>"

    def summary(self, line_length: int | None = None, print_fn: Callable[[str], Any] | None = None) -> None:
        """Keras's summary; after training it includes the "Optimizer params" line."""
        from .summary import render_summary

        opt_count = opt_bytes = 0
        if self._trained:
            state = self.engine.optimizer_state()
            opt_count = sum(int(a.size) for a in state)
            opt_bytes = sum(int(a.nbytes) for a in state)
        text = render_summary(self.report, line_length=line_length, optimizer_params=opt_count or None,
                              optimizer_bytes=opt_bytes)
        (print_fn or (lambda s: print(s, end="")))(text)

    # -- training settings ----------------------------------------------------------------

    def compile(self, optimizer: Any = None, loss: Any = None, metrics: Any = None) -> "Model":
        """Override the spec's optimizer, loss or metrics (names, dicts or IR nodes)."""
        if optimizer is not None:
            self._optimizer = _as_optimizer(optimizer)
        if loss is not None:
            self._loss = _as_loss(loss)
        if metrics is not None:
            names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
            for m in names:
                if m not in ir.METRICS:
                    raise ValueError(f"unknown metric '{m}'; expected one of {', '.join(ir.METRICS)}")
            self._metrics = names
        self._config = None
        return self

    def _require_loss(self) -> ir.Loss:
        if self._loss is None:
            raise ValueError("the model has no loss: add a `loss` statement to the spec (e.g. "
                             "`loss categorical_crossentropy`) or call model.compile(loss=...)")
        return self._loss

    def _training_config(self, y_shape: tuple[int, ...]) -> TrainConfig:
        loss = self._require_loss()
        metrics = tuple(resolve_metric(m, y_shape, self.output_shape, self.spec.k) for m in self._metrics)
        key = (self._optimizer, loss, metrics)
        if self._config is None or key != self._config_key:
            self._config = TrainConfig(optimizer=self._optimizer.name, hyper=self._optimizer.config(),
                                       loss=resolve_loss(self.spec, loss), metrics=metrics)
            self._config_key = key
            self.engine.set_training(self._config)
            self._learning_rate = None
        return self._config

    def _fit_setting(self, name: str, given: Any) -> Any:
        if given is not None:
            return given
        from_spec = getattr(self.spec.fit, name, None) if self.spec.fit is not None else None
        return from_spec if from_spec is not None else _FIT_DEFAULTS.get(name)

    # -- fit / evaluate / predict -----------------------------------------------------------

    def _check_x(self, x: Any, what: str = "x") -> np.ndarray:
        """x as the model takes it: float32, or int32 token ids checked against the vocabulary."""
        return check_x(x, self.spec.input_shape, what, self.spec.input_dtype, self.spec.id_limit)

    def _dataset(self, x: Any, y: Any, what: str = "") -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
        loss = self._require_loss()
        xs = self._check_x(x, f"{what}x")
        raw_shape = tuple(np.shape(y))
        ys = check_y(y, len(xs), self.output_shape, loss.name, f"{what}y")
        return xs, ys, raw_shape

    def fit(self, x: Any, y: Any, batch_size: int | None = None, epochs: int | None = None,
            validation_split: float | None = None, validation_data: tuple[Any, Any] | None = None,
            shuffle: bool | None = None, verbose: int = 1, seed: int | None = None,
            stream: Any = None, early_stopping: Any = None, reduce_lr_on_plateau: Any = None,
            checkpoint: Any = None, resume: bool = False) -> History:
        """Train as Keras's fit does. Settings not given come from the spec's `fit` statement,
        then Keras's defaults (batch 32, 1 epoch, no validation, shuffled).

        early_stopping, reduce_lr_on_plateau: Keras's callbacks (an ir.EarlyStopping /
        ir.ReduceLROnPlateau or a dict of their fields) in place of the spec's; False for none.
        checkpoint: a folder (or a modelspec.checkpoint.Checkpoint) replaced at the end of
        every epoch with everything the next epochs depend on. resume=True continues the run
        saved there, to exactly the weights and history of an uninterrupted run; `epochs`
        stays the total, as in Keras.

        Built with distributed= (modelspec.distributed), every worker makes this same call
        with all of the data (a DistributedError on every worker otherwise): each trains on its
        share of every global batch of the one shuffled order, and the history returned is the
        same on every worker, one process's. Worker 0 alone prints progress (verbose is 0 on
        the others) and writes the checkpoint; every worker reads it to resume."""
        if not self.backend.trains:
            from .backends import InferenceOnly

            name = self.backend.name
            raise InferenceOnly(name, f", then run the trained model here (model.save(path), then "
                                f"ms.load_model(path, backend={name!r})) or export it (model.export('model.onnx'))")
        batch_size = int(self._fit_setting("batch_size", batch_size))
        epochs = int(self._fit_setting("epochs", epochs))
        split = float(self._fit_setting("validation_split", validation_split))
        shuffle = bool(self._fit_setting("shuffle", shuffle))
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; received {batch_size}")
        if epochs < 0:
            raise ValueError(f"epochs must be at least 0; received {epochs}")
        if not 0 <= split < 1:
            raise ValueError(f"validation_split must be in [0, 1); received {split}")
        store = _as_checkpoint(checkpoint)
        if resume and store is None:
            raise ValueError("resume=True continues the run saved in a checkpoint: give checkpoint=DIR")
        saved = store.read() if resume else None
        if not self._main:  # distributed: worker 0 alone prints and writes the checkpoint
            verbose = 0
        xs, ys, raw_shape = self._dataset(x, y)
        if not self.adapted and saved is None:  # as Keras users call norm.adapt(x_train) on all of it, before the split
            self.adapt(xs)
        xs, ys, val = self._validation(xs, ys, split, validation_data)
        config = self._training_config(raw_shape)
        steps = -(-len(xs) // batch_size)
        if self.distributed is not None:
            self._agree(xs, ys, val, batch_size, epochs, shuffle, seed)
        out = stream or sys.stdout
        callbacks = self._callbacks(config, val is not None, verbose, out, early_stopping, reduce_lr_on_plateau)
        run = _FitRun(config, self.engine.prepare(xs, ys), self.engine.prepare(*val) if val is not None else None,
                      batch_size, steps, verbose, out,
                      History(params={"batch_size": batch_size, "epochs": epochs, "steps": steps,
                                      "validation_split": split, "shuffle": shuffle}), callbacks)
        rng = self._shuffle_stream(seed)
        identity = None
        if store is not None:
            identity = self._run_identity(store, xs, ys, val, batch_size, split, shuffle, seed, callbacks)
            if saved is not None:
                self._restore(store, saved, identity, run)
            elif self._main:
                store.clear()  # an earlier run's checkpoint would be resumed as this one's
        self.stop_training = False
        for epoch in range(len(run.history.epoch), epochs):
            if run.finished:
                break
            order = rng.permutation(len(xs)) if shuffle else np.arange(len(xs))
            go_on = self._fit_epoch(run, epoch, epochs, order)
            if store is not None and self._main:
                self._save_checkpoint(store, run, identity)
            if not go_on:
                break
        for callback in callbacks:
            callback.train_end(self)
        return run.history

    def _callbacks(self, config: TrainConfig, validation: bool, verbose: int, out: Any,
                   early_stopping: Any, reduce_lr_on_plateau: Any) -> list[Any]:
        """Keras's callbacks for this fit, in Keras's order of a list [EarlyStopping,
        ReduceLROnPlateau], checked before any step: fit's own, else the spec's."""
        from . import callbacks as cb

        chosen = []
        for key, given, node_class, callback_class in (
                ("early_stopping", early_stopping, ir.EarlyStopping, cb.EarlyStopping),
                ("reduce_lr_on_plateau", reduce_lr_on_plateau, ir.ReduceLROnPlateau, cb.ReduceLROnPlateau)):
            node = getattr(self.spec, key) if given is None else given
            if node is False or node is None:
                continue
            if isinstance(node, dict):
                node = node_class(**node)
            if not isinstance(node, node_class):
                raise TypeError(f"{key} must be an ir.{node_class.__name__}, a dict of its fields or False; "
                                f"received {type(node).__name__}")
            cb.monitors(key, node.monitor, config.metrics, validation)
            if callback_class is cb.ReduceLROnPlateau:
                rate = config.hyper["learning_rate"]
                if isinstance(rate, ir.Schedule):
                    raise ValueError(f"reduce_lr_on_plateau sets the learning rate, but the optimizer's is a "
                                     f"schedule ({rate.name}); Keras refuses it too (TypeError)")
                chosen.append(callback_class(node, config.metrics, verbose, out,
                                             rate if self._learning_rate is None else self._learning_rate))
            else:
                chosen.append(callback_class(node, config.metrics, verbose, out))
        return chosen

    def set_learning_rate(self, value: float) -> None:
        """A new constant learning rate (float32, as Keras's optimizer variable holds it), from
        the next step on: ReduceLROnPlateau's. It lasts until compile changes the optimizer."""
        self.engine.set_learning_rate(float(np.float32(value)))
        self._learning_rate = float(np.float32(value))

    # -- checkpoints ---------------------------------------------------------------------

    def _run_identity(self, store: Any, xs: np.ndarray, ys: np.ndarray, val: Any, batch_size: int, split: float,
                      shuffle: bool, seed: int | None, callbacks: list[Any]) -> dict[str, Any]:
        """What a checkpoint's run must share with this one for a resume to continue it."""
        from .checkpoint import digest

        shuffle_seed = self._fit_setting("seed", seed)
        return {
            "spec": self.spec.model_dump_json(), "backend": self.backend.name,
            "optimizer": self._optimizer.model_dump(mode="json"),
            "loss": self._require_loss().model_dump(mode="json"), "metrics": list(self._metrics),
            "batch_size": batch_size, "validation_split": split, "shuffle": shuffle,
            "weights_seed": self.seed, "shuffle_seed": self.seed if shuffle_seed is None else shuffle_seed,
            "train": {"samples": len(xs), "sha256": digest(xs, ys)},
            "validation": None if val is None else {"samples": len(val[0]), "sha256": digest(*val)},
            **{c.key: c.node.model_dump(mode="json") for c in callbacks}, **store.about,
        }

    def _save_checkpoint(self, store: Any, run: "_FitRun", identity: dict[str, Any]) -> None:
        arrays = {f"weights/{p}": w for p, w in zip(self.weight_paths, self.get_weights())}
        arrays.update({f"engine/{k}": v for k, v in self.engine.get_state().items()})
        callbacks = {}
        for callback in run.callbacks:
            values, extra = callback.get_state()
            callbacks[callback.key] = values
            arrays.update({f"callbacks/{callback.key}/{k}": v for k, v in extra.items()})
        history = run.history
        store.write({"epoch": len(history.epoch), "finished": run.finished, "stopped": history.stopped
                     if run.finished else None, "run": identity, "history": history.history,
                     "history_epochs": history.epoch, "shuffle_rng": self._shuffle_rng.bit_generator.state,
                     "learning_rate": self._learning_rate, "callbacks": callbacks}, arrays)

    def _restore(self, store: Any, saved: tuple[dict[str, Any], dict[str, np.ndarray]], identity: dict[str, Any],
                 run: "_FitRun") -> None:
        """The state of the checkpoint's run, after checking that it is this run."""
        state, arrays = saved
        store.refuse_other_run(state.get("run", {}), identity)

        def group(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        weights = group("weights/")
        self.set_weights([weights[p] for p in self.weight_paths])
        self.engine.set_state(group("engine/"))
        self._learning_rate = state["learning_rate"]
        if self._learning_rate is not None:
            self.engine.set_learning_rate(self._learning_rate)
        self._shuffle_rng.bit_generator.state = state["shuffle_rng"]
        for callback in run.callbacks:
            callback.set_state(state["callbacks"][callback.key], group(f"callbacks/{callback.key}/"))
        run.history.history = {k: list(v) for k, v in state["history"].items()}
        run.history.epoch = list(state["history_epochs"])
        run.history.stopped = state["stopped"]
        run.finished = bool(state["finished"])
        self._trained = self._trained or bool(run.history.epoch)

    def _validation(self, xs: np.ndarray, ys: np.ndarray, split: float, validation_data: Any,
                    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """(x, y, the validation pair or None): validation_data checked as the training data
        is, or else Keras's split, the last samples before shuffling."""
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (x_val, y_val)")
            vx, vy, _ = self._dataset(validation_data[0], validation_data[1], "validation ")
            return xs, ys, (vx, vy)
        if split > 0:
            split_at = int(len(xs) * (1.0 - split))
            if split_at == 0 or split_at == len(xs):
                raise ValueError(f"validation_split={split} of {len(xs)} samples leaves "
                                 f"{split_at} for training and {len(xs) - split_at} for validation")
            return xs[:split_at], ys[:split_at], (xs[split_at:], ys[split_at:])
        return xs, ys, None

    def _shuffle_stream(self, seed: int | None) -> np.random.Generator:
        """The generator of the epochs' orders. A seed given to fit restarts the stream;
        otherwise each fit continues it, so two fit(epochs=1) calls see different orders, as
        two epochs of one fit would."""
        if seed is not None or self._shuffle_rng is None:
            seed = self._fit_setting("seed", seed)
            self._shuffle_rng = np.random.default_rng(self.seed if seed is None else seed)
        return self._shuffle_rng

    def _fit_epoch(self, run: "_FitRun", epoch: int, epochs: int, order: np.ndarray) -> bool:
        """One epoch of fit, its progress display and its history row; False when training stops."""
        Progress = _progress()
        Progress.epoch_header(epoch + 1, epochs, run.verbose, run.out)
        bar = Progress(run.steps, run.verbose, run.out)
        def on_batch(step: int, seen: int, loss_sum: float, sums: list[float]) -> None:
            bar.update(step + 1, self._logs(run.config, loss_sum, sums, seen))

        totals = self.engine.train_epoch(run.train, order, run.batch_size, on_batch if bar.live else None)
        self._trained = True
        logs = self._logs(run.config, totals.loss_sum, totals.metric_sums, totals.count) if totals.count else {}
        history = run.history
        if totals.stopped_at is not None:
            state = self.engine.optimizer_state()
            never = not state or int(state[0]) == 0  # the iteration count: Keras builds it on the first step
            kept = "the weights it started from were kept: no step was applied" if never else \
                "the weights of the last good step were kept"
            history.stopped = (f"the loss became NaN or infinite at epoch {epoch + 1}, step "
                               f"{totals.stopped_at + 1}; training stopped and {kept}")
            if logs:
                for callback in run.callbacks:
                    callback.annotate(logs)
                history.append(epoch, logs)
            run.finished = True
            if run.verbose:
                print(f"modelspec: {history.stopped}", file=sys.stderr)
            elif self._main:
                import warnings

                warnings.warn(history.stopped, TrainingStopped, stacklevel=3)  # at fit's caller
            return False
        if run.val is not None:
            v = self.engine.evaluate(run.val, run.batch_size)
            logs.update({f"val_{k}": value for k, value in
                         self._logs(run.config, v.loss_sum, v.metric_sums, v.count).items()})
        stop = False
        for callback in run.callbacks:  # Keras calls them all, then History, then the progress bar
            stop = callback.epoch_end(epoch, logs, self) or stop
        history.append(epoch, logs)
        bar.finish(totals.count and run.steps, logs)
        if stop:  # early stopping: a normal end
            run.finished = True
            return False
        if self._stop_requested():
            history.stopped = f"stopped on request after epoch {epoch + 1}"
            return False
        return True

    # -- data-parallel training (modelspec.distributed) ---------------------------------------

    @property
    def _main(self) -> bool:
        """Whether this process prints and writes: one process, or worker 0 of several."""
        return self.distributed is None or self.distributed.is_main

    def _stop_requested(self) -> bool:
        """stop_training, set on this worker or, distributed, on any (the same epoch ends them all)."""
        if self.distributed is None:
            return self.stop_training
        from .distributed import any_worker

        return any_worker(self.stop_training, self.distributed)

    def _agree(self, xs: np.ndarray, ys: np.ndarray, val: Any, batch_size: int, epochs: int, shuffle: bool,
               seed: int | None) -> None:
        """A DistributedError unless every worker called fit alike: each trains on all of the
        data, in the one order drawn from the same seed, and takes its share of each batch."""
        from .distributed import agree

        def sample(a: np.ndarray) -> bytes:  # a strided sample of the data: cheap, and catches other data
            return np.ascontiguousarray(a[:: max(1, len(a) // 512)]).tobytes()

        agree({"samples": len(xs), "validation samples": 0 if val is None else len(val[0]),
               "batch size": batch_size, "epochs": epochs, "shuffle": shuffle,
               "shuffle seed": self._fit_setting("seed", seed) if seed is not None or self._shuffle_rng is None
               else "continued", "weights seed": self.seed,
               "data": sample(xs) + sample(ys) + (b"" if val is None else sample(val[0]) + sample(val[1]))},
              self.distributed)

    @staticmethod
    def _logs(config: TrainConfig, loss_sum: float, sums: list[float], count: int) -> dict[str, float]:
        logs = {"loss": loss_sum / count}
        for metric, total in zip(config.metrics, sums):
            logs[metric.name] = total / count
        return logs

    def evaluate(self, x: Any, y: Any, batch_size: int | None = None, verbose: int = 0) -> dict[str, float]:
        """Loss (with penalties) and metrics in inference mode: {'loss': ..., metric: ...}, sorted.
        Distributed, every worker calls it with all of x and y: each evaluates its share of the
        samples, and every worker returns the figures of the whole (worker 0 alone prints)."""
        batch_size = int(batch_size or DEFAULT_BATCH_SIZE)
        xs, ys, raw_shape = self._dataset(x, y)
        config = self._training_config(raw_shape)
        totals = self.engine.evaluate(self.engine.prepare(xs, ys), batch_size)
        logs = dict(sorted(self._logs(config, totals.loss_sum, totals.metric_sums, totals.count).items()))
        if verbose and self._main:
            steps = -(-len(xs) // batch_size)
            _progress()(steps, verbose).finish(steps, logs)
        return logs

    def predict(self, x: Any, batch_size: int | None = None) -> np.ndarray:
        """The model's outputs in inference mode, float32, batch by batch (32 by default).
        Distributed, each worker predicts all of x itself: no collective, the same outputs."""
        xs = self._check_x(x)
        return self.engine.predict(self.engine.prepare(xs, None), int(batch_size or DEFAULT_BATCH_SIZE))

    # -- adapt ---------------------------------------------------------------------------

    def adapt(self, x: Any) -> None:
        """Set every normalize layer's mean and variance from `x`, as Keras's
        Normalization.adapt does with a NumPy array (keras/src/layers/preprocessing/
        normalization.py): np.mean and np.var (the population variance) over every axis but
        the last, of the data that reaches the layer. The layers before a normalize have no
        weights (the checker says so), so that data is x through the NumPy reference's
        inference pass, the same on every backend. Keras's `count` stays as it is."""
        from .backends.numpy.lowering import lower, make

        adapting = [i for i, row in enumerate(self.report.layers) if row.layer.adapts]
        if not adapting:
            raise ValueError("adapt sets the statistics of normalize layers; this model has none")
        lowered = lower(self.report)
        # each kernel layer's inputs by position (-1: the model's input); a chain's read the one before
        sources = lowered.sources or [(k - 1,) for k in range(len(lowered.calls))]
        values = {-1: self._check_x(x)}
        weights = self.get_weights()
        first = position = 0  # the row's first weight, its first kernel layer
        for row, calls in lowered.groups[:adapting[-1] + 1]:
            n = len(row.weights)
            if row.layer.adapts:
                weights[first:first + n] = row.layer.adapt(values[sources[position][0]], weights[first:first + n])
            for call in calls:  # a later normalize sees this one's output, with its new statistics
                layer = make(call, weights, self.seed)
                reads = sources[position]
                z = [values[s] for s in reads] if getattr(layer, "merges", False) else values[reads[0]]
                values[position] = layer.forward(z, training=False)
                position += 1
            first += n
        self.set_weights(weights)

    # -- weights -------------------------------------------------------------------------

    def get_weights(self) -> list[np.ndarray]:
        """Every weight in Keras's layout and order (see `weight_paths`)."""
        return self.engine.get_weights()

    @property
    def weight_paths(self) -> list[str]:
        return [w.path for w in self.report.weights]

    def set_weights(self, weights: list[Any]) -> None:
        expected = self.report.weights
        weights = list(weights)
        if len(weights) != len(expected):
            raise ValueError(f"expected {len(expected)} weight arrays ({', '.join(w.path for w in expected[:4])}"
                             f"{', ...' if len(expected) > 4 else ''}); received {len(weights)}")
        arrays = []
        for w, value in zip(expected, weights):
            arr = np.asarray(value)
            if tuple(arr.shape) != w.shape:
                raise ValueError(f"{w.path} has shape {tuple_text(w.shape)}; received {tuple_text(arr.shape)}")
            if arr.dtype.kind not in "biuf":
                raise ValueError(f"{w.path} must hold numbers; received dtype {arr.dtype}")
            if w.dtype == "int64" and not np.array_equal(arr, np.round(arr)):  # Keras would truncate it
                raise ValueError(f"{w.path} holds whole numbers (Keras's int64); received {arr.tolist()}")
            arrays.append(np.asarray(arr, dtype=np.float32, order="C"))  # ascontiguousarray makes a 0-d array 1-d
        self.engine.set_weights(arrays)
        self.adapted = True  # weights given are the normalize layers' statistics too

    def _warn_if_trained_otherwise(self, path: Any, saved_json: str | None) -> None:
        if not saved_json:
            return
        try:
            saved = ir.Spec.model_validate_json(saved_json)
        except ValueError:  # a file of another modelspec version: the weights' paths decide
            return
        from .printer import differences

        changed = differences(saved, self.spec)
        if changed:
            import warnings

            warnings.warn(f"{path} was trained with another spec: {'; '.join(changed[:3])}"
                          f"{'; ...' if len(changed) > 3 else ''}", SpecMismatch, stacklevel=3)

    def save(self, path: Any, metadata: dict[str, str] | None = None) -> None:
        """Weights and spec in one safetensors file (nothing in it can execute on load);
        `metadata` adds string entries to the file's header (`modelspec train` records how it
        scaled the samples there)."""
        from safetensors.numpy import save

        from .version import __version__
        from .fileio import write_atomic

        tensors = dict(zip(self.weight_paths, self.get_weights()))
        metadata = {**(metadata or {}), "format": FORMAT, "spec": self.spec.model_dump_json(),
                    "backend": self.backend.name, "modelspec": __version__}
        write_atomic(path, save(tensors, metadata=metadata))

    def export(self, path: Any, opset: int | None = None) -> None:
        """The model and its current weights as an ONNX file (the `onnx` extra), written
        atomically once onnx's checker and shape inference pass; a layer kind that cannot be
        exported is an ExportError at its spec line, and nothing is written."""
        from .backends import BackendError

        try:
            from .backends.onnx.export import export
        except ImportError as e:
            if (getattr(e, "name", None) or "").partition(".")[0] != "onnx":
                raise
            raise BackendError("exporting to ONNX needs onnx, which is not installed: "
                               "pip install 'modelspec[onnx]'") from None
        export(self.spec, self.report, self.get_weights(), path, opset=opset)

    def load_weights(self, path: Any) -> None:
        """Weights from a file written by `save`; they must fit this model's spec. The model's
        name is not part of the weights' meaning: a renamed model loads them. A layer that
        differs from the spec the file was trained with (an activation, say) is a warning."""
        tensors, metadata = read_weights_file(path)
        if not self.report.functional:  # a Sequential's paths start with the model's name (a functional's do not)
            by_layer = {name.partition("/")[2]: value for name, value in tensors.items()}
            shapes = {w.path: w.shape for w in self.report.weights}
            if all(tuple(getattr(by_layer.get(p.partition("/")[2]), "shape", ())) == shapes[p]
                   for p in self.weight_paths):
                tensors = {p: by_layer[p.partition("/")[2]] for p in self.weight_paths}
        self._warn_if_trained_otherwise(path, metadata.get("spec"))
        missing = [p for p in self.weight_paths if p not in tensors]
        if missing:
            have = ", ".join(sorted(tensors)[:3]) or "no weights"
            raise ValueError(f"{path} does not fit this model: it has no {missing[0]} (it holds {have}"
                             f"{', ...' if len(tensors) > 3 else ''})")
        self.set_weights([tensors[p] for p in self.weight_paths])


class SpecMismatch(UserWarning):
    """Weights were trained with a spec whose layers differ from the model's."""


def read_weights_file(path: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a modelspec weights file, or a ValueError saying what is wrong."""
    import json
    import os
    import struct

    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read the weights file {os.fspath(path)}: {e.strerror or e}") from None
    try:
        tensors = load(data)
        header_len = struct.unpack("<Q", data[:8])[0]
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"{os.fspath(path)} is not a modelspec weights file (safetensors): {e}") from None
    return tensors, metadata


def _as_checkpoint(value: Any) -> Any:
    if value is None:
        return None
    from .checkpoint import Checkpoint

    return value if isinstance(value, Checkpoint) else Checkpoint(value)


def _progress():
    from .progress import Progress

    return Progress
