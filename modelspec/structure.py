"""The nesting of a spec's statements: bodies in braces, block definitions, parameter values.

modelspec.syntax gives a flat list of statements and braces; `nest` puts each body
(`repeat N { ... }`, `block NAME(P, Q=D) { ... }`) under the statement that opens it, with
an error for a brace that is never closed or closes nothing. The parser then expands
repeats and block uses into layers (modelspec.parser), reading each statement of a block's
body with its parameters replaced by the use's values (`substitute`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .diagnostics import Diagnostic, Span
from .syntax import Brace, Call, Option, Statement, Value

BODY_KEYWORDS = ("repeat", "block")


@dataclass
class Item:
    """A statement and, for `repeat` and `block`, its body."""

    st: Statement
    body: list["Item"] | None = None
    open: Span | None = None  # the '{' of the body
    close: Span | None = None  # its '}'


def nest(statements: list[Statement | Brace]) -> tuple[list[Item], list[Diagnostic]]:
    """The statements with every body under its statement; an error for each stray brace."""
    top: list[Item] = []
    stack: list[tuple[list[Item], Item]] = []
    errors: list[Diagnostic] = []
    current = top
    for s in statements:
        if isinstance(s, Statement):
            current.append(Item(s))
            continue
        if s.text == "{":
            owner = current[-1] if current else None
            if owner is None or owner.st.keyword not in BODY_KEYWORDS or owner.open is not None:
                after = f"after '{owner.st.keyword}'" if owner else "with no statement before it"
                errors.append(Diagnostic(
                    "error", f"unexpected '{{' {after}; a body in braces follows `repeat N` or `block NAME(...)`",
                    s.span, hint="for example: repeat 3 { dense 64 relu }", code="syntax"))
                owner = Item(Statement("{", s.span))  # its body is read, and dropped, so braces still pair
                current.append(owner)
            owner.open, owner.body = s.span, []
            stack.append((current, owner))
            current = owner.body
            continue
        if not stack:
            errors.append(Diagnostic("error", "unexpected '}': no '{' is open", s.span,
                                     hint="remove it, or open the body with `repeat N {` or `block NAME(...) {`",
                                     code="syntax"))
            continue
        current, owner = stack.pop()
        owner.close = s.span
    for _, owner in stack:
        errors.append(Diagnostic("error", f"this '{{' of '{owner.st.keyword}' is never closed", owner.open,
                                 hint="close the body with '}'", code="syntax"))
    return top, errors


@dataclass
class Block:
    """A block definition: its parameters (with defaults, as written) and its body."""

    name: str
    params: list[str]
    defaults: dict[str, Value]
    item: Item
    uses: int = 0


@dataclass(frozen=True)
class BlockUse:
    """One use of a block: which layers it became (spec.layers[start:stop]), with what
    arguments. `parent` is the index of the use it sits in, when a block uses another."""

    block: str
    arguments: tuple[tuple[str, str], ...]  # (parameter, the value's text)
    start: int
    stop: int
    span: Span
    parent: int | None = None
    params_of: tuple[tuple[int, tuple[tuple[str, str], ...]], ...] = field(default=(), compare=False)
    # (layer index, ((field, parameter), ...)): which fields of which layers a parameter set


def substitute(st: Statement, values: dict[str, Value], used: dict[int, tuple[str, Value]]) -> Statement:
    """`st` with every word naming a parameter replaced by that parameter's value; the values
    put in are recorded in `used` (id -> (parameter, the value), which keeps it alive), so the
    reader can tell which fields a parameter set."""
    if not values:
        return st

    def value(v: Value) -> Value:
        if v.type == "word" and v.value in values:
            new = values[v.value]
            new = replace(new)  # a copy per place, so each records its own parameter
            used[id(new)] = (v.value, new)
            return new
        if v.type == "tuple":
            return replace(v, value=tuple(value(x) for x in v.value))
        return v

    def arg(a):
        if isinstance(a, Option):
            return replace(a, value=arg(a.value))
        if isinstance(a, Call):
            return replace(a, args=[arg(x) for x in a.args])
        return value(a)

    keyword, keyword_span = st.keyword, st.keyword_span
    if keyword in values and values[keyword].type == "word":  # `act` as an activation layer of its own
        keyword = values[keyword].value
    return Statement(keyword, keyword_span, [arg(a) for a in st.args], st.binding)
