"""Diagnostics: errors and warnings that point at a place in a spec.

Every problem modelspec finds in a spec is a `Diagnostic` with a file, line and column,
a message saying what was expected and what was received, and an optional hint. They
print as compilers print them::

    spec.ms:3:9: error: unknown activation 'rleu'
      dense 64 rleu
               ^^^^
      hint: did you mean 'relu'?

The library raises `SpecError`, which carries the structured diagnostics and nothing
else (no chained framework exception), so callers can show them or inspect them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Literal, NamedTuple

from .errors import ModelspecError

Severity = Literal["error", "warning"]

MAX_REPORTED = 100  # a megabyte of garbage should not print a megabyte of errors


class Span(NamedTuple):
    """Where a node came from: 1-based line and column, end column exclusive."""

    line: int
    column: int
    end_line: int
    end_column: int


@dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    message: str
    span: Span | None = None
    hint: str | None = None
    code: str = ""
    file: str | None = None

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def with_file(self, file: str | None) -> "Diagnostic":
        return Diagnostic(self.severity, self.message, self.span, self.hint, self.code, file)

    def as_error(self) -> "Diagnostic":
        return Diagnostic("error", self.message, self.span, self.hint, self.code, self.file)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("span")
        d.update(
            line=self.span.line if self.span else None,
            column=self.span.column if self.span else None,
            end_line=self.span.end_line if self.span else None,
            end_column=self.span.end_column if self.span else None,
        )
        return d

    def render(self, source: str | None = None) -> str:
        """The compiler-style text: location, message, source line with a caret, hint."""
        where = self.file or "<spec>"
        if self.span:
            where += f":{self.span.line}:{self.span.column}"
        out = [f"{where}: {self.severity}: {self.message}"]
        if self.span and source is not None:
            out.extend(_excerpt(source, self.span))
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


def _excerpt(source: str, span: Span) -> list[str]:
    lines = source.split("\n")
    if not 1 <= span.line <= len(lines):
        return []
    text = lines[span.line - 1].rstrip("\r").expandtabs(1)
    if len(text) > 200:  # a megabyte on one line: show the neighbourhood only
        start = max(0, span.column - 60)
        text, offset = text[start : start + 160], start
    else:
        offset = 0
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    col = span.column - 1 - offset
    width = span.end_column - span.column if span.end_line == span.line else len(text) - col
    width = max(1, min(width, len(text) - col if col < len(text) else 1))
    return [f"  {text}", "  " + " " * col + "^" * width]


@dataclass
class SpecError(ModelspecError):
    """An invalid spec. Carries every diagnostic found, in source order."""

    diagnostics: list[Diagnostic]
    source: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        super().__init__(self.diagnostics[0].message if self.diagnostics else "invalid spec")

    def __str__(self) -> str:
        return self.render()

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def render(self) -> str:
        shown = self.diagnostics[:MAX_REPORTED]
        text = "\n".join(d.render(self.source) for d in shown)
        hidden = len(self.diagnostics) - len(shown)
        if hidden:
            text += f"\n... and {hidden} more"
        return text


def sort_diagnostics(diags: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Source order; diagnostics without a position go last, in the order found."""
    indexed = list(enumerate(diags))
    indexed.sort(key=lambda p: ((p[1].span.line, p[1].span.column) if p[1].span else (1 << 60, 0), p[0]))
    return [d for _, d in indexed]


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A hint naming the closest choice, or None."""
    import difflib  # only on the error path

    match = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else None


def one_of(choices: Iterable[str], limit: int = 12) -> str:
    """'a', 'b' or 'c' - for messages that list what was expected."""
    items = [f"'{c}'" for c in choices]
    if len(items) > limit:
        items = items[:limit] + ["..."]
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " or " + items[-1]
