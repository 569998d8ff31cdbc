"""What train, evaluate, predict and compare share: options, loading, training, saving, plots.

Not a command itself (it is not in COMMANDS). Like the commands, it imports nothing heavy
at import time.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import CommandError

WEIGHTS = "weights.safetensors"
RUN = "run.json"


# ---------------------------------------------------------------------------------------
# Options


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", "-b", default="numpy", help="numpy (default), torch or keras")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto (default: the backend's choice), cpu or cuda")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document on standard output (progress goes to standard error)")


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", metavar="DATA",
                   help="digits (default: scikit-learn's 8x8 digits), mnist (local files), FILE.npz or FILE.csv")
    p.add_argument("--data-dir", metavar="DIR",
                   help="where to look for MNIST first (then $MODELSPEC_DATA, then ~/.keras/datasets)")
    p.add_argument("--label-column", metavar="NAME|INDEX",
                   help="a .csv file's label column (default: the one named 'label', else the last)")
    p.add_argument("--scale", type=positive_float, metavar="N",
                   help="divide samples by N (default: 16 for digits, 255 for MNIST and 8-bit pixels, "
                        "1 for values already in [0, 1]; evaluate: the training run's, from run.json "
                        "beside the weights)")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=natural, metavar="N", help="default: the spec's `fit epochs=`")
    p.add_argument("--batch", type=positive_int, metavar="N", help="batch size (default: the spec's, else 32)")
    p.add_argument("--validation", type=fraction, metavar="F",
                   help="validation fraction, the last samples of the training set (default: the spec's)")
    p.add_argument("--seed", type=int, metavar="N",
                   help="seed of the initial weights and the shuffling (default: 0 and the spec's fit seed)")


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def natural(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer, 0 or more")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < math.inf, "a positive number")


def fraction(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def _number(text: str, kind: type, ok: Any, expected: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}; received '{text}'")
    return value


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
    try:
        model.load_weights(path)
    except ValueError as e:
        raise CommandError(one_line(e)) from None


def one_line(e: Any) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# ---------------------------------------------------------------------------------------
# Training


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
    data = {**data, "validation": hist.params.get("validation_split", 0.0)}
    run = Trained(model.name, spec_path, out, model, hist.history, stopped, interrupted, data)
    run.files = save_training(out, model, hist.history)
    run.test = model.evaluate(arrays.x_test, arrays.y_test, batch_size=args.batch)
    write(out / RUN, json.dumps(run.to_dict(), indent=2) + "\n")
    run.files.append(RUN)
    return run


def save_training(out: Path, model: Any, history: dict[str, list[float]]) -> list[str]:
    """Weights, history.json, history.csv and the curves, as Keras's tutorial plots them."""
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
    return files


def write(path: Path, data: str | bytes) -> None:
    from ..fileio import write_atomic

    try:
        write_atomic(path, data)
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror or e}") from None


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out}: exists and is not a folder")


def history_csv(history: dict[str, list[float]]) -> str:
    """As Keras's CSVLogger writes it: an `epoch` column (from 0), then the keys, sorted."""
    keys = sorted(history)
    epochs = len(history.get("loss", []))
    lines = [",".join(["epoch", *keys])]
    for i in range(epochs):
        lines.append(",".join([str(i), *(repr(history[k][i]) if i < len(history[k]) else "" for k in keys)]))
    return "\n".join(lines) + "\n"


def accuracy_key(history: dict[str, Any]) -> str | None:
    """The first metric with 'acc' in its name (accuracy, categorical_accuracy, ...)."""
    return next((k for k in sorted(history) if "acc" in k and not k.startswith("val_")), None)


def finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------
# Plots (matplotlib's Agg renderer, never a display; rendered to bytes, then written atomically)


def curves_png(history: dict[str, list[float]], key: str, label: str) -> bytes:
    """Training (dots) and validation (line) curves of one quantity, as the tutorial plots them."""
    fig, ax = _figure()
    train = history.get(key, [])
    epochs = range(1, len(train) + 1)
    ax.plot(epochs, train, "bo", label=f"Training {label.lower()}")
    if f"val_{key}" in history:
        ax.plot(epochs, history[f"val_{key}"], "b", label=f"Validation {label.lower()}")
    ax.set_title(f"Training and validation {label.lower()}")
    ax.set_xlabel("Epochs")
    ax.set_ylabel(label)
    ax.legend()
    return _png(fig)


def comparison_png(curves: dict[str, list[float]], title: str, ylabel: str) -> bytes:
    """One line per model."""
    fig, ax = _figure()
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set_title(title)
    ax.set_xlabel("Epochs")
    ax.set_ylabel(ylabel)
    ax.legend()
    return _png(fig)


def _figure() -> tuple[Any, Any]:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    ax = fig.subplots()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    return fig, ax


def _png(fig: Any) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
# Output


def console() -> Any:
    return console_on(None)


def console_on(stream: Any) -> Any:
    from rich.console import Console

    return Console(file=stream, highlight=False)


def metrics_table(title: str, metrics: dict[str, float]) -> Any:
    from rich.table import Table

    from ..progress import format_value

    table = Table(title=title, title_justify="left", min_width=len(title))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        table.add_row(key, format_value(metrics[key]))
    return table


def print_json(doc: Any) -> None:
    print(json.dumps(finite(doc), indent=2))
