"""A training run's checkpoint: a folder replaced at the end of every epoch, from which
`Model.fit(..., checkpoint=DIR, resume=True)` (and `modelspec train --resume`) continues
exactly as the uninterrupted run would have.

    DIR/state.json                  {"format", "epoch", "arrays", "sha256", "run", ...}
    DIR/arrays-000007.safetensors   weights, the engine's state, the callbacks' arrays

A kill at any moment leaves a readable checkpoint: the arrays are written first under a new
name (atomically, fsync'd), then state.json (atomically) naming them with their sha256,
then older arrays files are deleted. state.json always names a complete file; the reader
checks its digest all the same, so that a damaged checkpoint is refused, never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelspecError

FORMAT = "modelspec-checkpoint/1"
STATE = "state.json"

# what each identity entry is called in a refusal
_LABELS = {"spec": "spec", "backend": "backend", "optimizer": "optimizer", "loss": "loss", "metrics": "metrics",
           "batch_size": "batch size", "validation_split": "validation split", "shuffle": "shuffle",
           "weights_seed": "seed of the initial weights", "shuffle_seed": "shuffle seed",
           "train": "training data", "validation": "validation data", "early_stopping": "early_stopping",
           "reduce_lr_on_plateau": "reduce_lr_on_plateau", "data": "data"}


class CheckpointError(ModelspecError, ValueError):
    """A checkpoint that is absent, damaged or of another run."""


def digest(*arrays: np.ndarray) -> str:
    """sha256 of arrays' shapes, dtypes and bytes: what identifies a run's data."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a, order="C")
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Make the folder's renames durable (a machine that goes away keeps them in order)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Checkpoint:
    """The checkpoint folder `path`. `about` adds entries to what identifies the run (the
    CLI's data set name), compared on resume as the rest is."""

    def __init__(self, path: str | os.PathLike, about: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.about = dict(about or {})

    def __repr__(self) -> str:
        return f"Checkpoint({os.fspath(self.path)!r})"

    @property
    def state_file(self) -> Path:
        return self.path / STATE

    def exists(self) -> bool:
        return self.state_file.is_file()

    def clear(self) -> None:
        """Forget an earlier run's checkpoint (state.json first: never a state without its arrays)."""
        self.state_file.unlink(missing_ok=True)
        self._remove_arrays(keep=None)

    def write(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Replace the checkpoint with `state` (JSON values; "epoch" the completed epochs) and
        `arrays`, so that a kill at any moment leaves the old one or the new one."""
        from safetensors.numpy import save

        from .fileio import write_atomic

        data = save({k: np.asarray(v, order="C") for k, v in arrays.items()})  # ascontiguousarray makes 0-d 1-d
        name = f"arrays-{int(state['epoch']):06d}.safetensors"
        write_atomic(self.path / name, data)
        _fsync_dir(self.path)
        record = {"format": FORMAT, **state, "arrays": name, "sha256": hashlib.sha256(data).hexdigest()}
        write_atomic(self.state_file, json.dumps(record, indent=1) + "\n")
        _fsync_dir(self.path)
        self._remove_arrays(keep=name)

    def _remove_arrays(self, keep: str | None) -> None:
        if not self.path.is_dir():
            return
        for p in self.path.iterdir():
            # older arrays, and the temporary files of a write that was killed
            if (p.name.startswith("arrays-") and p.name != keep) or (p.name.startswith(".") and p.name.endswith(".tmp")):
                p.unlink(missing_ok=True)

    def read(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(state, arrays), or a CheckpointError saying what is missing or wrong."""
        from safetensors import SafetensorError
        from safetensors.numpy import load

        where = os.fspath(self.path)
        if not self.exists():
            raise CheckpointError(f"there is no checkpoint to resume from in {where} (a run writes "
                                  f"{STATE} there at the end of each epoch)")
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {self.state_file}: {e}") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("arrays"), str):
            raise CheckpointError(f"{self.state_file} is not a modelspec checkpoint (format {FORMAT})")
        arrays_file = self.path / Path(state["arrays"]).name
        try:
            data = arrays_file.read_bytes()
        except OSError as e:
            raise CheckpointError(f"the checkpoint in {where} is incomplete: cannot read {arrays_file.name} "
                                  f"({e.strerror or e})") from None
        if hashlib.sha256(data).hexdigest() != state.get("sha256"):
            raise CheckpointError(f"the checkpoint in {where} is damaged: {arrays_file.name} does not match the "
                                  f"digest in {STATE}")
        try:
            return state, load(data)
        except SafetensorError as e:
            raise CheckpointError(f"the checkpoint in {where} is damaged: {e}") from None

    def refuse_other_run(self, saved: dict[str, Any], run: dict[str, Any]) -> None:
        """A CheckpointError naming the first setting in which the checkpoint's run differs
        from this one."""
        for key in [*run, *(k for k in saved if k not in run)]:  # a callback only one of them has, too
            if saved.get(key) != run.get(key):
                label = _LABELS.get(key, key)
                theirs, ours = _show(key, saved.get(key)), _show(key, run.get(key))
                detail = f": it was {theirs}, this run's is {ours}" if theirs and ours and theirs != ours else ""
                if key == "spec":
                    detail = _spec_change(saved.get(key), run[key])
                raise CheckpointError(f"the checkpoint in {os.fspath(self.path)} is of another run (its {label} "
                                      f"differs{detail}); resume with the settings it was written with, or "
                                      "train without resuming to start over")


def _spec_change(saved: Any, spec: str) -> str:
    from . import ir
    from .printer import differences

    try:
        changed = differences(ir.Spec.model_validate_json(saved), ir.Spec.model_validate_json(spec))
    except (TypeError, ValueError):
        return ""
    return f": {changed[0]}" if changed else ""


def _show(key: str, value: Any) -> str:
    """A setting in a message, when it is short enough to read on one line."""
    if key == "spec":
        return ""
    if key in ("train", "validation"):
        return f"{value['samples']} samples" if isinstance(value, dict) else json.dumps(value)
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else ""
