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
RUN_FILES = ("weights.safetensors", "history.json", "history.csv", "loss.png", "accuracy.png", RUN)
LOCK = ".modelspec-run.lock"


# ---------------------------------------------------------------------------------------
# Loading


def load_spec(path: str) -> tuple[Any, Any]:
    """(spec, report); an invalid spec raises SpecError, which the CLI renders."""
    from .. import check, parse

    spec = parse(Path(path))
    return spec, check(spec)


def check_backend(name: str) -> None:
    """Fail early, before any data is read, for an unknown or uninstalled backend."""
    from .. import backends

    try:
        backends.get(name)
    except backends.BackendError as e:
        raise CommandError(str(e)) from None


def build(spec: Any, args: argparse.Namespace, seed: int | None = None) -> Any:
    from .. import backends, build as ms_build

    options = {} if args.device == "auto" else {"device": args.device}
    try:
        return ms_build(spec, backend=args.backend, seed=0 if seed is None else seed, **options)
    except backends.BackendError as e:
        raise CommandError(str(e)) from None
    except (ValueError, RuntimeError, TypeError) as e:
        if not options:
            raise
        raise CommandError(f"cannot build on device '{args.device}' with the {args.backend} backend: "
                           f"{one_line(e)}") from None


def load_data(args: argparse.Namespace) -> Any:
    from ..data import DataError, load

    try:
        return load(args.data, data_dir=args.data_dir, label_column=args.label_column)
    except DataError as e:
        raise CommandError(str(e)) from None


def prepare(dataset: Any, spec: Any, report: Any, scale: float | None) -> Any:
    from ..data import DataError, prepare as prepare_arrays

    try:
        return prepare_arrays(dataset, report, spec.loss.name if spec.loss else None, scale)
    except DataError as e:
        raise CommandError(str(e)) from None


def trained_scale(weights: str) -> float | None:
    """The scale `modelspec train` recorded in the run.json beside the weights, if any."""
    try:
        return float(json.loads((Path(weights).parent / RUN).read_text())["data"]["scale"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
    test: dict[str, float] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return finite({
            "model": self.name, "spec": self.spec, "backend": self.model.backend.name,
            "params": self.model.report.total_params, "data": self.data, "epochs": len(self.history.get("loss", [])),
            "stopped": self.stopped, "interrupted": self.interrupted, "history": self.history,
            "test": self.test, "out": str(self.out), "files": self.files,
        })


def train_and_save(model: Any, spec_path: str, arrays: Any, args: argparse.Namespace, out: Path,
                   interrupt: StopOnInterrupt, stream: Any, data: dict[str, Any]) -> Trained:
    """Fit (stoppable with Ctrl-C), save weights, history and plots, evaluate on the test set,
    then write run.json. Files are written atomically, one at a time."""
    interrupt.model = model
    try:
        hist = model.fit(arrays.x_train, arrays.y_train, batch_size=args.batch, epochs=args.epochs,
                         validation_split=args.validation, seed=args.seed, verbose=1, stream=stream)
    except ValueError as e:
        raise CommandError(one_line(e)) from None
    finally:
        interrupt.model = None
    interrupted = interrupt.requested
    stopped = None if interrupted else hist.stopped
    shuffle_seed = args.seed if args.seed is not None else (model.spec.fit and model.spec.fit.seed)
    data = {**data, "validation": hist.params.get("validation_split", 0.0),
            "batch_size": hist.params.get("batch_size"),
            "seed": {"weights": model.seed, "shuffle": model.seed if shuffle_seed is None else shuffle_seed}}
    run = Trained(model.name, spec_path, out, model, hist.history, stopped, interrupted, data)
    run.files = save_training(out, model, hist.history)
    run.test = model.evaluate(arrays.x_test, arrays.y_test, batch_size=args.batch)
    write(out / RUN, json.dumps(run.to_dict(), indent=2) + "\n")
    run.files.append(RUN)
    return run


def save_training(out: Path, model: Any, history: dict[str, list[float]]) -> list[str]:
    """Weights, history.json, history.csv and the loss and accuracy curves."""
    try:
        model.save(out / WEIGHTS)
    except OSError as e:
        raise CommandError(f"cannot write {out / WEIGHTS}: {e.strerror or e}") from None
    files = [WEIGHTS]
    write(out / "history.json", json.dumps(finite(history), indent=2) + "\n")
    write(out / "history.csv", history_csv(history))
    files += ["history.json", "history.csv"]
    for key, label in (("loss", "Loss"), (accuracy_key(history), "Accuracy")):
        if key is None:
            continue
        name = "loss.png" if key == "loss" else "accuracy.png"
        write(out / name, curves_png(history, key, label))
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
