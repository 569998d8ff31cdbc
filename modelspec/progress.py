"""Keras's training progress display (keras/src/utils/progbar.py), re-created.

    Epoch 3/30
    23/23 ━━━━━━━━━━━━━━━━━━━━ 0s 4ms/step - categorical_accuracy: 0.9123 - loss: 0.2951 - val_...

verbose=1 shows a live bar on a terminal and one line per epoch when output is piped;
verbose=2 prints Keras's one-line form `23/23 - 0s - 4ms/step - ...`. Keys are sorted
alphabetically, as Keras's pythonify_logs sorts them; values print as %.4f, or %.4e
when |v| <= 1e-3.
"""

from __future__ import annotations

import sys
import time
from typing import IO

BAR_WIDTH = 20


def format_value(v: float) -> str:
    return f"{v:.4f}" if abs(v) > 1e-3 else f"{v:.4e}"


def format_logs(logs: dict[str, float]) -> str:
    return "".join(f" - {k}: {format_value(logs[k])}" for k in sorted(logs))


def format_step_time(seconds: float) -> str:
    if seconds >= 1 or seconds == 0:
        return f"{seconds:.0f}s/step"
    if seconds >= 1e-3:
        return f"{seconds * 1000:.0f}ms/step"
    return f"{seconds * 1e6:.0f}us/step"


class Progress:
    """One epoch's display."""

    def __init__(self, steps: int, verbose: int = 1, stream: IO[str] | None = None,
                 live: bool | None = None, interval: float = 0.05) -> None:
        self.steps = steps
        self.verbose = verbose
        self.stream = stream or sys.stdout
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.live = (isatty() if live is None else live) and verbose == 1
        self.color = self.live
        self.interval = interval
        self.start = time.perf_counter()
        self._last = 0.0
        self._width = 0

    @staticmethod
    def epoch_header(epoch: int, epochs: int, verbose: int, stream: IO[str] | None = None) -> None:
        if verbose:
            print(f"Epoch {epoch}/{epochs}", file=stream or sys.stdout, flush=True)

    def _line(self, step: int, logs: dict[str, float], final: bool) -> str:
        now = time.perf_counter()
        elapsed = now - self.start
        per_step = elapsed / step if step else 0.0
        digits = len(str(self.steps))
        count = f"{step:>{digits}}/{self.steps}"
        if self.verbose == 2:
            return f"{count} - {elapsed:.0f}s - {format_step_time(per_step)}{format_logs(logs)}"
        done = int(BAR_WIDTH * step / self.steps) if self.steps else BAR_WIDTH
        if self.color:
            bar = f"\x1b[1m{count}\x1b[0m \x1b[32m{'━' * done}\x1b[0m\x1b[37m{'━' * (BAR_WIDTH - done)}\x1b[0m"
        else:
            bar = f"{count} {'━' * BAR_WIDTH}" if final else f"{count} {'━' * done}{' ' * (BAR_WIDTH - done)}"
        if final:
            timing = f"{elapsed:.0f}s"
        else:
            eta = per_step * (self.steps - step)
            timing = (f"{int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}" if eta > 3600
                      else f"{int(eta // 60)}:{int(eta % 60):02d}" if eta > 60 else f"{eta:.0f}s")
        if self.color:
            timing = f"\x1b[1m{timing}\x1b[0m"
        return f"{bar} {timing} {format_step_time(per_step)}{format_logs(logs)}"

    def update(self, step: int, logs: dict[str, float]) -> None:
        """A live update mid-epoch (only drawn on a terminal, at most every `interval` s)."""
        if not self.live:
            return
        now = time.perf_counter()
        if now - self._last < self.interval:
            return
        self._last = now
        self._draw(self._line(step, logs, final=False), end="")

    def finish(self, step: int, logs: dict[str, float]) -> None:
        if not self.verbose:
            return
        self._draw(self._line(step, logs, final=True), end="\n")

    def _draw(self, text: str, end: str) -> None:
        if self.live:
            visible = len(text) - _ansi_length(text)
            pad = " " * max(0, self._width - visible)
            self.stream.write("\r" + text + pad + end)
            self._width = 0 if end else visible
        else:
            self.stream.write(text + end)
        self.stream.flush()


def _ansi_length(text: str) -> int:
    import re

    return sum(len(m) for m in re.findall(r"\x1b\[[0-9;]*m", text))
