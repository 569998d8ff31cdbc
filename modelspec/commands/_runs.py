"""What train, evaluate, predict and compare do with a run: load the spec, the backend and the
data, train (stoppable with Ctrl-C), and write the run's folder (weights, history, plots,
run.json). Like the commands, it imports nothing heavy at import time.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import one_line
from . import CommandError
from ._output import finite
from ._plots import curves_png

WEIGHTS = "weights.safetensors"
RUN = "run.json"
CHECKPOINT = "checkpoint"  # the folder `train --resume` continues from (modelspec.checkpoint)
RUN_FILES = ("weights.safetensors", "history.json", "history.csv", "loss.png", "accuracy.png", "mse.png", "mae.png",
             RUN)
METRIC_LABELS = {"loss": "Loss", "mse": "Mean squared error", "mae": "Mean absolute error"}
LOCK = ".modelspec-run.lock"


# ---------------------------------------------------------------------------------------
# Loading


def load_spec(path: str) -> tuple[Any, Any]:
    """(spec, report); an invalid spec raises SpecError, which the CLI renders."""
    from .. import check, parse

    spec = parse(Path(path))
    return spec, check(spec)


def check_backend(name: str, training: bool = False) -> None:
    """Fail early, before any data is read, for an unknown or uninstalled backend, and with
    `training` for one that runs inference only."""
    from .. import backends

    try:
        backend = backends.get(name)
    except backends.BackendError as e:
        raise CommandError(str(e)) from None
    if training and not backend.trains:
        raise CommandError(str(backends.InferenceOnly(name, f", then predict or evaluate its weights here with "
                                                            f"--backend {name} --weights W, or export them with "
                                                            "`modelspec export SPEC --weights W -o FILE.onnx`")))


def build(spec: Any, args: argparse.Namespace, seed: int | None = None, group: Any = None) -> Any:
    """The model on args.backend and args.device; one of `group`'s data-parallel workers when
    given (on its local rank's GPU for --device cuda)."""
    from .. import backends, build as ms_build

    # as NCCL expects: one GPU per worker, its local rank's
    device = f"cuda:{group.local_rank}" if group is not None and args.device == "cuda" else args.device
    options: dict[str, Any] = {} if device == "auto" else {"device": device}
    if group is not None:
        options["distributed"] = group
    try:
        return ms_build(spec, backend=args.backend, seed=0 if seed is None else seed, **options)
    except backends.BackendError as e:
        raise CommandError(str(e)) from None
    except (ValueError, RuntimeError, TypeError) as e:
        if "device" not in options:
            raise
        raise CommandError(f"cannot build on device '{device}' with the {args.backend} backend: "
                           f"{one_line(e)}") from None


def load_data(args: argparse.Namespace) -> Any:
    from ..data import DataError, load

    try:
        return load(args.data, data_dir=args.data_dir, label_column=args.label_column)
    except DataError as e:
        raise CommandError(str(e)) from None


@dataclass(frozen=True)
class Scaling:
    """What the samples are divided by before the model sees them, and why, in words. A spec
    whose input goes through `rescale` or `normalize` takes its samples raw (scale 1)."""

    scale: float
    why: str
    guessed: bool = False  # predict's or evaluate's fallback, for weights that do not record training's

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "scaling": self.why}


def scaling(spec: Any, given: float | None, default: float, default_why: str) -> Scaling:
    """--scale if given, else `default`; raw samples for a spec that scales its own input,
    where --scale would scale them twice and is refused, and for a spec whose input is
    integer token ids, which are never scaled (--scale is refused there too)."""
    if spec.input_dtype == "int32":
        span = spec.statement_spans.get("input")
        where = f" at line {span.line}" if span is not None else ""
        if given is not None:
            raise CommandError(f"--scale {given:g}: the spec's input is integer token ids (`input ... int`{where}), "
                               "which are never scaled; drop --scale")
        return Scaling(1.0, f"integer token ids (the spec's input{where}), never scaled")
    own = next((layer for layer in spec.layers if layer.scales_input), None)
    if own is not None:
        where = f" at line {own.span.line}" if own.span is not None else ""
        if given is not None:
            raise CommandError(f"--scale {given:g}: the spec scales its own input (`{own.kind}`{where}), so "
                               "the samples go in raw; drop --scale, or change the spec's scaling")
        return Scaling(1.0, f"the spec's {own.kind}{where} scales the raw samples")
    if given is not None:
        return Scaling(given, "--scale")
    return Scaling(default, default_why)


def prepare(dataset: Any, spec: Any, report: Any, scale: Scaling) -> Any:
    from ..data import DataError, prepare as prepare_arrays

    try:
        return prepare_arrays(dataset, report, spec.loss.name if spec.loss else None, scale.scale)
    except DataError as e:
        raise CommandError(str(e)) from None


INPUTS = "modelspec.inputs"  # the weights file's metadata entry: training's scale and raw value range


def inputs_record(scale: Scaling, value_range: tuple[float, float]) -> dict[str, str]:
    """The metadata `modelspec train` writes into the weights file: how the samples were
    scaled and the range of the raw training values, so that predict and evaluate scale as
    training did and notice data that was not."""
    return {INPUTS: json.dumps({**scale.to_dict(), "min": value_range[0], "max": value_range[1]})}


def recorded_inputs(weights: str) -> dict[str, Any]:
    """What `inputs_record` wrote into a weights file; {} for a file without it."""
    from safetensors import safe_open

    try:
        with safe_open(weights, "np") as f:
            record = json.loads((f.metadata() or {}).get(INPUTS, "{}"))
        return record if isinstance(record, dict) else {}
    except Exception:  # an unreadable file: load_weights reports it, with its reason
        return {}


def trained_scaling(spec: Any, given: float | None, weights: str, fallback: float, fallback_why: str) -> Scaling:
    """predict's and evaluate's scaling: as training scaled (recorded in the weights file),
    else the fallback, a guess (`note_guess` says so once the weights have loaded)."""
    record = recorded_inputs(weights)
    if isinstance(record.get("scale"), (int, float)) and record["scale"] > 0:
        return scaling(spec, given, float(record["scale"]), f"as in training ({record.get('scaling', '')})")
    chosen = scaling(spec, given, fallback, fallback_why)
    return Scaling(chosen.scale, chosen.why, guessed=chosen.why == fallback_why)


def note_guess(scale: Scaling, weights: str) -> None:
    if scale.guessed and scale.scale != 1:
        print(f"modelspec: note: {weights} does not record how training scaled its samples; dividing them by "
              f"{scale.scale:g} ({scale.why}); pass --scale N to choose", file=sys.stderr)


def warn_if_out_of_range(weights: str, what: str, values: Any) -> None:
    """One line of warning when the raw samples' range does not fit what training saw: samples
    scaled already (digits divided by 16 for a model trained on 0-16) would otherwise give
    wrong answers without a sign."""
    record = recorded_inputs(weights)
    if not all(isinstance(record.get(k), (int, float)) for k in ("min", "max")) or values.size == 0:
        return
    lo, hi, low, high = float(record["min"]), float(record["max"]), float(values.min()), float(values.max())
    span = hi - lo
    if span <= 0:
        return
    if low < lo - 0.1 * span or high > hi + 0.1 * span or high - low < 0.25 * span:
        print(f"modelspec: warning: {what} holds values from {low:g} to {high:g}, but the training samples ran "
              f"from {lo:g} to {hi:g}; give the samples as training had them (raw, before any scaling), or "
              "the predictions are not the model's", file=sys.stderr)


def load_weights(model: Any, path: str) -> None:
    """The weights into the model; a spec that differs from the one they were trained with
    is one line of warning."""
    import warnings

    from ..model import SpecMismatch

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SpecMismatch)
            model.load_weights(path)
    except ValueError as e:
        raise CommandError(one_line(e)) from None
    for w in caught:
        if issubclass(w.category, SpecMismatch):
            print(f"modelspec: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


# ---------------------------------------------------------------------------------------
# Training and the run's folder


class StopOnInterrupt:
    """While a model trains (`.model` is set), the first Ctrl-C asks fit to stop after the
    current epoch. A second one, or one while nothing trains, raises KeyboardInterrupt at
    once; files are written atomically, so none is left half-written."""

    def __init__(self) -> None:
        self.model: Any = None
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested or self.model is None:
            raise KeyboardInterrupt
        self.requested = True
        self.model.stop_training = True
        newline = "\n" if sys.stderr.isatty() else ""  # end a live progress bar's line first
        print(f"{newline}modelspec: stopping after this epoch and saving what was trained (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> "StopOnInterrupt":
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGINT, self._previous)


@dataclass
class Trained:
    """One model trained and saved: what `train --json` prints and run.json holds."""

    name: str
    spec: str
    out: Path
    model: Any = field(repr=False)
    history: dict[str, list[float]]
    stopped: str | None
    interrupted: bool
    data: dict[str, Any] = field(default_factory=dict)
    resumed_from: int | None = None  # the epochs the checkpoint held, for a resumed run
    workers: int = 1  # the data-parallel processes that trained it
    test: dict[str, float] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return finite({
            "model": self.name, "spec": self.spec, "backend": self.model.backend.name,
            "params": self.model.report.total_params, "data": self.data, "epochs": len(self.history.get("loss", [])),
            "stopped": self.stopped, "interrupted": self.interrupted, "resumed_from": self.resumed_from,
            "workers": self.workers,
            "history": self.history,
            "test": self.test, "out": str(self.out), "files": self.files,
        })


def train_and_save(model: Any, spec_path: str, arrays: Any, args: argparse.Namespace, out: Path,
                   interrupt: StopOnInterrupt, stream: Any, data: dict[str, Any], metadata: dict[str, str],
                   checkpoint: Any = None, resume: bool = False, group: Any = None) -> Trained:
    """Fit (stoppable with Ctrl-C; with a `checkpoint` at each epoch's end, which `resume`
    continues), save weights (with `metadata`), history and plots, evaluate on the test set,
    then write run.json. Files are written atomically, one at a time. With a `group` of
    data-parallel workers, every rank trains and evaluates, and rank 0 alone writes."""
    interrupt.model = model
    progress = checkpoint_progress(checkpoint) if resume else None
    resumed_from = progress[0] if progress else None
    try:
        hist = model.fit(arrays.x_train, arrays.y_train, batch_size=args.batch, epochs=args.epochs,
                         validation_split=args.validation, seed=args.seed, verbose=1, stream=stream,
                         checkpoint=checkpoint, resume=resume)
    except OSError as e:  # the checkpoint's folder
        raise CommandError(f"cannot write the checkpoint in {checkpoint.path}: {e.strerror or e}") from None
    except ValueError as e:
        raise CommandError(one_line(e)) from None
    finally:
        interrupt.model = None
    # the workers agree on a stop at an epoch's end, whichever of them Ctrl-C reached
    interrupted = interrupt.requested or (group is not None and hist.stopped is not None
                                          and hist.stopped.startswith("stopped on request"))
    stopped = None if interrupted else hist.stopped
    shuffle_seed = args.seed if args.seed is not None else (model.spec.fit and model.spec.fit.seed)
    data = {**data, "validation": hist.params.get("validation_split", 0.0),
            "batch_size": hist.params.get("batch_size"),
            "seed": {"weights": model.seed, "shuffle": model.seed if shuffle_seed is None else shuffle_seed}}
    run = Trained(model.name, spec_path, out, model, hist.history, stopped, interrupted, data, resumed_from,
                  workers=1 if group is None else group.world_size)
    if group is None:
        run.files = save_training(out, model, hist.history, metadata)
        run.test = model.evaluate(arrays.x_test, arrays.y_test, batch_size=args.batch)
    else:  # the evaluation is collective: no rank waits in it while rank 0 writes
        run.test = model.evaluate(arrays.x_test, arrays.y_test, batch_size=args.batch)
        if group.rank != 0:
            return run
        run.files = save_training(out, model, hist.history, metadata)
    write(out / RUN, json.dumps(run.to_dict(), indent=2) + "\n")
    run.files.append(RUN)
    return run


def checkpoint_progress(checkpoint: Any) -> tuple[int, bool] | None:
    """(completed epochs, whether the run is finished) by a checkpoint's state.json; None where
    it cannot be read (fit then says why)."""
    try:
        state = json.loads(checkpoint.state_file.read_text())
        return int(state["epoch"]), bool(state.get("finished"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_training(out: Path, model: Any, history: dict[str, list[float]], metadata: dict[str, str]) -> list[str]:
    """Weights (with `metadata` in the file), history.json, history.csv and the loss and metric curves."""
    try:
        model.save(out / WEIGHTS, metadata)
    except OSError as e:
        raise CommandError(f"cannot write {out / WEIGHTS}: {e.strerror or e}") from None
    files = [WEIGHTS]
    write(out / "history.json", json.dumps(finite(history), indent=2) + "\n")
    write(out / "history.csv", history_csv(history))
    files += ["history.json", "history.csv"]
    for key in ("loss", metric_key(history)):
        if key is None:
            continue
        name = "accuracy.png" if key == accuracy_key(history) else f"{key}.png"
        write(out / name, curves_png(history, key, metric_label(key)))
        files.append(name)
    for stale in set(RUN_FILES) - set(files) - {RUN}:  # an earlier run's, which would mislead
        (out / stale).unlink(missing_ok=True)
    return files


def write(path: Path, data: str | bytes) -> None:
    from ..fileio import write_atomic

    try:
        write_atomic(path, data)
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror or e}") from None


def check_out(out: Path) -> None:
    """The run folder is found unusable before any work, not after training."""
    from ..fileio import writable_folder

    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out}: exists and is not a folder")
    if not writable_folder(out):
        raise CommandError(f"--out {out}: cannot write there")


class RunLock:
    """One run at a time in a folder: a second `train` or `compare` into the same --out is
    refused at once instead of mixing its files with the first's. A lock left by a run that
    died (its process is gone) is taken over."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK

    def __enter__(self) -> "RunLock":
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _lock_owner(self.path)
                if pid is not None and _alive(pid):
                    raise CommandError(f"--out {self.path.parent}: another run (process {pid}) is writing "
                                       "there; wait for it, or choose another --out") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise CommandError(f"--out {self.path.parent}: cannot take its lock {self.path}")

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)


def drop_stale_lock(out: Path) -> None:
    """Remove the lock of a run whose process is gone (a worker killed while it held it)."""
    path = out / LOCK
    pid = _lock_owner(path)
    if path.exists() and (pid is None or not _alive(pid)):
        path.unlink(missing_ok=True)


def _lock_owner(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_out(name: str) -> Path:
    """runs/NAME, with the model's name made a safe folder name: a name is never a path."""
    import re

    safe = re.sub(r"[^\w.-]+", "_", name).strip(".") or "model"
    return Path("runs") / safe


def history_csv(history: dict[str, list[float]]) -> str:
    """As Keras's CSVLogger (keras/src/callbacks/csv_logger.py) writes it: an `epoch` column
    (from 0), then the keys, sorted."""
    keys = sorted(history)
    epochs = len(history.get("loss", []))
    lines = [",".join(["epoch", *keys])]
    for i in range(epochs):
        lines.append(",".join([str(i), *(repr(history[k][i]) if i < len(history[k]) else "" for k in keys)]))
    return "\n".join(lines) + "\n"


def accuracy_key(history: dict[str, Any]) -> str | None:
    """The first metric with 'acc' in its name (accuracy, categorical_accuracy, ...)."""
    return next((k for k in sorted(history) if "acc" in k and not k.startswith("val_")), None)


def metric_key(history: dict[str, Any]) -> str | None:
    """The metric a run reports besides its loss: an accuracy, else the first other (mae, mse)."""
    return accuracy_key(history) or next(
        (k for k in sorted(history) if k in METRIC_LABELS and k != "loss"), None)


def report_metric(con: Any, metrics: dict[str, float]) -> None:
    """The line under a test table: the accuracy as a percentage, or the regression metric."""
    key = metric_key(metrics)
    if key is not None:
        value = metrics[key]
        con.print(f"Test accuracy: {value:.2%}" if key == accuracy_key(metrics) else f"Test {metric_label(key).lower()}: {value:.4g}")


def metric_label(key: str) -> str:
    return "Accuracy" if "acc" in key else METRIC_LABELS.get(key, key)
