"""Keras's `model.summary()` table, reproduced character for character without rich.

Keras draws the summary with rich (`keras/src/utils/summary_utils.py`): a Table with
show_lines, three fixed-width columns at 0.45 / 0.80 / 1.0 of the line length
(min(88, terminal columns - 4)), heavy header box, cells padded by one space, long
text wrapped at spaces and cut with an ellipsis. Importing rich and laying out a
10,000-row table through it costs seconds; this module does the same layout directly
(rich's column-reduction and word-wrap rules, re-implemented) so `modelspec check` stays
instant. tests/test_summary_keras.py compares the output with Keras's own.
"""

from __future__ import annotations

import re
import shutil
import unicodedata
from typing import TYPE_CHECKING, Iterable

from .layers import INPUT_LAYER
from .shapes import fmt_shape

if TYPE_CHECKING:
    from .checker import Report

POSITIONS = (0.45, 0.80, 1.0)
HEADER = ("Layer (type)", "Output Shape", "Param #")
JUSTIFY = ("left", "left", "right")
# a functional model's table (keras/src/utils/summary_utils.py, when not "sequential-like")
FUNCTIONAL_POSITIONS = (0.3, 0.56, 0.74, 1.0)
FUNCTIONAL_HEADER = HEADER + ("Connected to",)
FUNCTIONAL_JUSTIFY = JUSTIFY + ("left",)
_WORD = re.compile(r"\s*\S+\s*")


def keras_line_length(functional: bool = False) -> int:
    """The width Keras uses for a summary on this terminal: 88 at most for three columns,
    108 for four."""
    return min(108 if functional else 88, shutil.get_terminal_size().columns - 4)


def readable_size(nbytes: float) -> str:
    """keras.src.utils.summary_utils.readable_memory_size: 1024-based, two decimals."""
    if nbytes >= 2**1000:  # past a float's range (a mistyped size): whole petabytes, exactly
        return f"{int(nbytes) // 1024**5} PB"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes / 1024 < 1:
            return f"{nbytes:.2f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.2f} PB"


def _cell_len(text: str) -> int:
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _crop(text: str, width: int) -> str:
    out, used = [], 0
    for ch in text:
        w = _cell_len(ch)
        if used + w > width:
            break
        out.append(ch)
        used += w
    return "".join(out) + " " * (width - used)


def _column_widths(line_length: int, positions: tuple[float, ...] = POSITIONS) -> list[int]:
    """Content widths of the columns, as rich lays out Keras's table."""
    widths, current = [], 0
    for pos in positions:
        w = int(pos * line_length) - current
        if w < 4:
            raise ValueError("Insufficient console width to print summary.")
        widths.append(w)
        current += w
    # each column: its width plus one space of padding on either side; the table's four
    # vertical borders also come out of line_length, so rich reduces every column evenly
    # (rich._ratio.ratio_reduce with equal ratios; Python's round() included)
    cells = [w + 2 for w in widths]
    excess = sum(cells) - (line_length - (len(cells) + 1))
    if excess > 0:
        remaining, ratio_left, reduced = excess, len(cells), []
        for c in cells:
            taken = min(c, round(remaining / ratio_left))
            reduced.append(c - taken)
            remaining -= taken
            ratio_left -= 1
        cells = reduced
    return [c - 2 for c in cells]


def _wrap(text: str, width: int, justify: str) -> list[str]:
    """rich's Text.wrap with overflow='ellipsis': break at spaces, cut long words with '…'."""
    if width <= 0:  # a column the table's borders squeezed to nothing: rich leaves it empty
        return [""]
    breaks, offset = [], 0
    for m in _WORD.finditer(text):
        start, word = m.start(), m.group(0)
        length = _cell_len(word.rstrip())
        if width - offset >= length:
            offset += _cell_len(word)
        elif length > width:
            if start:
                breaks.append(start)
            offset = _cell_len(word)
        elif offset and start:
            breaks.append(start)
            offset = _cell_len(word)
    pieces = [text[a:b] for a, b in zip([0] + breaks, breaks + [len(text)])] or [""]
    lines = []
    for piece in pieces:
        if _cell_len(piece) > width:  # Text.rstrip_end: drop trailing spaces beyond the width
            stripped = piece.rstrip()
            excess = _cell_len(piece) - width
            piece = piece[: len(piece) - min(len(piece) - len(stripped), excess)]
        if justify == "right":
            piece = piece.rstrip()
        if _cell_len(piece) > width:
            piece = _crop(piece, width - 1) + "…"
        pad = " " * (width - _cell_len(piece))
        lines.append(pad + piece if justify == "right" else piece + pad)
    return lines


def render_table(rows: Iterable[tuple[str, ...]], line_length: int, functional: bool = False) -> list[str]:
    positions, header, justify = ((FUNCTIONAL_POSITIONS, FUNCTIONAL_HEADER, FUNCTIONAL_JUSTIFY) if functional
                                  else (POSITIONS, HEADER, JUSTIFY))
    widths = _column_widths(line_length, positions)

    def rule(left: str, fill: str, mid: str, right: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + right

    def row(cells: tuple[str, ...], edge: str, header: bool = False) -> list[str]:
        wrapped = [_wrap(c, w, j) for c, w, j in zip(cells, widths, justify)]
        height = max(len(w) for w in wrapped)
        if header:  # rich aligns a wrapped header to the bottom, body cells to the top
            wrapped = [[" " * width] * (height - len(w)) + w for w, width in zip(wrapped, widths)]
        out = []
        for i in range(height):
            parts = [(w[i] if i < len(w) else " " * width) for w, width in zip(wrapped, widths)]
            out.append(edge + edge.join(f" {p} " for p in parts) + edge)
        return out

    lines = [rule("┏", "━", "┳", "┓"), *row(header, "┃", header=True), rule("┡", "━", "╇", "┩")]
    separator = rule("├", "─", "┼", "┤")
    first = True
    for cells in rows:
        if not first:
            lines.append(separator)
        lines.extend(row(cells, "│"))
        first = False
    lines.append(rule("└", "─", "┴", "┘"))
    return lines


def render_summary(report: "Report", line_length: int | None = None, flops: bool = False,
                   optimizer_params: int | None = None, optimizer_bytes: int = 0) -> str:
    """The text Keras's model.summary() prints for this model, plus modelspec's FLOPs line."""
    functional = report.functional
    line_length = line_length or keras_line_length(functional)
    rows: Iterable[tuple[str, ...]]
    if functional:
        layers = [(f"{r.name} ({r.keras_class})", fmt_shape(r.output_shape), f"{r.params:,}",
                   ", ".join(f"{name}[0][0]" for name in (*r.inputs, *([r.mask_input] if r.mask_input else []))))
                  for r in report.layers]
        for position, op in reversed(report.mask_ops):  # the mask's operations, where Keras lists them
            layers.insert(position, op)
        rows = [(f"{INPUT_LAYER} (InputLayer)", fmt_shape(report.input_shape), "0", "-"), *layers]
    else:
        rows = ((f"{r.name} ({r.keras_class})", fmt_shape(r.output_shape), f"{r.params:,}")
                for r in report.layers)
    trainable, non_trainable = report.trainable_params, report.non_trainable_params
    total = trainable + non_trainable + (optimizer_params or 0)
    total_bytes = report.bytes + optimizer_bytes
    trainable_bytes = report.trainable_bytes
    out = [f'Model: "{report.model}"', *render_table(rows, line_length, functional),
           f" Total params: {total:,} ({readable_size(total_bytes)})",
           f" Trainable params: {trainable:,} ({readable_size(trainable_bytes)})",
           f" Non-trainable params: {non_trainable:,} ({readable_size(report.bytes - trainable_bytes)})"]
    if optimizer_params:
        out.append(f" Optimizer params: {optimizer_params:,} ({readable_size(optimizer_bytes)})")
    if flops:
        out.append(f" FLOPs: {report.flops:,} per sample (forward pass; 2 per multiply-accumulate "
                   "in dense, convolution, recurrent and attention layers)")
    return "\n".join(out) + "\n"
