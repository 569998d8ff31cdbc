"""From text to statements: the lark grammar (grammar/modelspec.lark) and syntax errors.

The result is a flat list of `Statement`s, each a keyword and its arguments with exact
source spans. What the arguments mean is decided in modelspec.parser; this module only
knows the shape of the text. A file is parsed in one pass; if that fails, it is parsed
again line by line (no statement spans lines) so that every syntax error is reported,
not just the first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Union

from .diagnostics import Diagnostic, Span

# ---------------------------------------------------------------------------------------
# What the grammar produces


@dataclass(slots=True)
class Value:
    """A literal: int, float, fraction (1/255, as its (numerator, denominator) floats), dims
    (28x28), word, string, or tuple or list of values."""

    type: str
    value: Any
    text: str
    span: Span

    def describe(self) -> str:
        return f"'{self.text}'" if len(self.text) <= 40 else f"'{self.text[:37]}...'"


@dataclass(slots=True)
class Option:
    """`key=value`."""

    key: str
    key_span: Span
    value: Value
    span: Span

    @property
    def text(self) -> str:
        return f"{self.key}={self.value.text}"


@dataclass(slots=True)
class Call:
    """`name(arg, key=value)`."""

    name: str
    args: list[Union[Value, Option]]
    span: Span
    text: str = ""

    type = "call"
    value = None

    def describe(self) -> str:
        return f"'{self.text}'" if len(self.text) <= 40 else f"'{self.text[:37]}...'"


Arg = Union[Value, Option, Call]


@dataclass(slots=True)
class Statement:
    keyword: str
    keyword_span: Span
    args: list[Arg] = field(default_factory=list)
    binding: tuple[str, Span] | None = None  # `h = dense 64`: the reference and its span

    @property
    def span(self) -> Span:
        start = self.binding[1] if self.binding else self.keyword_span
        end = self.args[-1].span if self.args else self.keyword_span
        return Span(start.line, start.column, end.end_line, end.end_column)


@dataclass(slots=True)
class Brace:
    """A `{` or `}` delimiting a body (repeat, block)."""

    text: str
    span: Span


def _tok_span(tok: Any) -> Span:
    return Span(tok.line, tok.column, tok.end_line, tok.end_column)


def _join(a: Span, b: Span) -> Span:
    return Span(a.line, a.column, b.end_line, b.end_column)


def _shift(span: Span, lines: int) -> Span:
    return Span(span.line + lines, span.column, span.end_line + lines, span.end_column)


# ---------------------------------------------------------------------------------------
# The lark side

_MAX_TEXT = 200  # a tuple's text, for messages: longer is cut

_TERMINAL_NAMES = {
    "INT": "a whole number", "FLOAT": "a number", "FRACTION": "a fraction such as 1/255", "DIMS": "a shape such as 3x3",
    "WORD": "a word", "STRING": "a quoted string", "CALL_OPEN": "a call such as he_normal(seed=1)",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "OPEN": "'{'", "CLOSE": "'}'", "COMMA": "','", "EQUAL": "'='", "_SEP": "the end of the statement",
    "$END": "the end of the statement",
}


class _Rules:
    """The transformer's rules, one method per grammar rule (lark calls each with the rule's
    children): structural only, they build Values, Options, Calls and Statements; never raise."""

    def int(self, c):  # noqa: A003 - named after the grammar's alias
        t = c[0]
        try:
            v = int(t)
        except ValueError:  # more digits than Python converts: reported by the parser
            v = None
        return Value("int", v, str(t), _tok_span(t))

    def float(self, c):  # noqa: A003
        t = c[0]
        return Value("float", float(t), str(t), _tok_span(t))

    def fraction(self, c):
        t = c[0]
        top, _, bottom = str(t).partition("/")
        return Value("fraction", (float(top), float(bottom)), str(t), _tok_span(t))

    def dims(self, c):
        t = c[0]
        try:
            v = tuple(int(p) for p in str(t).split("x"))
        except ValueError:
            v = None
        return Value("dims", v, str(t), _tok_span(t))

    def word(self, c):
        t = c[0]
        return Value("word", str(t), str(t), _tok_span(t))

    def string(self, c):
        t = c[0]
        return Value("string", _unquote(str(t)), str(t), _tok_span(t))

    def tuple(self, c):  # noqa: A003
        items = [x for x in c if isinstance(x, Value)]
        text = "(" + ", ".join(i.text for i in items) + ")"
        if len(text) > _MAX_TEXT:  # nested parentheses must not grow quadratically
            text = text[: _MAX_TEXT - 4] + "...)"
        return Value("tuple", tuple(items), text, _join(_tok_span(c[0]), _tok_span(c[-1])))

    def list(self, c):  # noqa: A003
        items = [x for x in c if isinstance(x, Value)]
        text = "[" + ", ".join(i.text for i in items) + "]"
        if len(text) > _MAX_TEXT:
            text = text[: _MAX_TEXT - 4] + "...]"
        return Value("list", tuple(items), text, _join(_tok_span(c[0]), _tok_span(c[-1])))

    def option(self, c):
        key, value = c
        return Option(str(key), _tok_span(key), value, _join(_tok_span(key), value.span))

    def call(self, c):
        head, args = c[0], [a for a in c[1:] if a is not None]
        span = _tok_span(head)
        if args:
            span = _join(span, args[-1].span)
        span = Span(span.line, span.column, span.end_line, span.end_column + 1)  # the ')'
        text = str(head) + ", ".join(a.text for a in args) + ")"
        return Call(str(head)[:-1], args, span, text)

    def binding(self, c):
        return (str(c[0]), _tok_span(c[0]))

    def statement(self, c):
        binding, kw, args = c[0], c[1], c[2:]
        return Statement(str(kw), _tok_span(kw), list(args), binding)

    def start(self, c):
        return [s if isinstance(s, Statement) else Brace(str(s), _tok_span(s)) for s in c if s is not None]


def _make_parser() -> Any:
    from lark import Lark, Transformer

    class ToStatements(_Rules, Transformer):
        pass

    return Lark.open_from_package(
        "modelspec.grammar", "modelspec.lark", parser="lalr", lexer="contextual",
        transformer=ToStatements(), maybe_placeholders=True, cache=True,
    )


_PARSER: Any = None


def _lark() -> Any:
    global _PARSER
    if _PARSER is None:
        _PARSER = _make_parser()
    return _PARSER


def _unquote(text: str) -> str:
    body = text[1:-1]
    if "\\" not in body:
        return body
    out, i = [], 0
    escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            out.append(escapes.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------
# Driver


def parse_statements(text: str) -> tuple[list[Statement | Brace], list[Diagnostic]]:
    """All statements and braces of `text`, and a syntax error for every line that has one."""
    from lark.exceptions import UnexpectedInput

    parser = _lark()
    try:
        return parser.parse(text), []
    except UnexpectedInput:
        pass
    statements: list[Statement | Brace] = []
    errors: list[Diagnostic] = []
    for index, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        try:
            found = parser.parse(line)
        except UnexpectedInput as e:
            errors.append(_syntax_error(e, line, index))
            continue
        for st in found:
            _shift_statement(st, index)
            statements.append(st)
    return statements, errors


def _shift_statement(st: Statement | Brace, lines: int) -> None:
    if not lines:
        return
    if isinstance(st, Brace):
        st.span = _shift(st.span, lines)
        return
    if st.binding is not None:
        st.binding = (st.binding[0], _shift(st.binding[1], lines))
    st.keyword_span = _shift(st.keyword_span, lines)
    for arg in st.args:
        _shift_arg(arg, lines)


def _shift_arg(arg: Arg, lines: int) -> None:
    pending = [arg]  # a loop, not recursion: tuples may nest thousands deep
    while pending:
        arg = pending.pop()
        arg.span = _shift(arg.span, lines)
        if isinstance(arg, Option):
            arg.key_span = _shift(arg.key_span, lines)
            pending.append(arg.value)
        elif isinstance(arg, Call):
            pending.extend(arg.args)
        elif arg.type == "tuple":
            pending.extend(arg.value)


def _syntax_error(e: Any, line_text: str, index: int) -> Diagnostic:
    from lark.exceptions import UnexpectedCharacters, UnexpectedToken

    line_no = index + 1
    if isinstance(e, UnexpectedCharacters):
        col = e.column
        ch = line_text[col - 1] if 0 < col <= len(line_text) else ""
        span = Span(line_no, col, line_no, col + 1)
        if ch in "\"'":
            return Diagnostic("error", "unterminated string: expected a closing " + ch, span,
                              hint=f"end the string with {ch} on the same line", code="syntax")
        if ch.isdigit() or ch in ".+-":
            number = _NUMBER_LIKE.match(line_text, col - 1).group(0)
            shown = number if len(number) <= 40 else number[:37] + "..."
            return Diagnostic("error", f"malformed number '{shown}'; expected a number such as 64, 0.5 or 1e-3, "
                                       "or a shape such as 28x28", Span(line_no, col, line_no, col + len(number)),
                              code="syntax")
        shown = ch if ch.isprintable() and ch else repr(ch)[1:-1]
        expected = _expected(e.allowed or set())
        msg = f"unexpected character '{shown}'" + (f"; expected {expected}" if expected else "")
        hint = None
        if ch == "=":
            hint = "options are written key=value, e.g. momentum=0.9"
        return Diagnostic("error", msg, span, hint=hint, code="syntax")
    if isinstance(e, UnexpectedToken):
        tok = e.token
        expected = _expected(e.expected)
        if tok.type == "$END" or tok.type == "_SEP":
            col = len(line_text.rstrip("\r\n ;")) + 1 if tok.type == "$END" else tok.column
            span = Span(line_no, max(1, col), line_no, max(1, col) + 1)
            return Diagnostic("error", f"unexpected end of statement; expected {expected}", span,
                              hint=_hint_for_end(e.expected), code="syntax")
        span = Span(line_no, tok.column, line_no, tok.end_column)
        text = str(tok)
        return Diagnostic("error", f"unexpected '{text}'; expected {expected}", span, code="syntax",
                          hint=_hint_for_token(text, e.expected))
    col = getattr(e, "column", 1) or 1
    return Diagnostic("error", "invalid syntax", Span(line_no, col, line_no, col + 1), code="syntax")


_NUMBER_LIKE = re.compile(r"[A-Za-z0-9_.+-]*")


def _expected(names: set[str]) -> str:
    words = sorted({_TERMINAL_NAMES.get(n, f"'{n.lower()}'") for n in names})
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _hint_for_end(expected: set[str]) -> str | None:
    if "RSQB" in expected and "RPAR" not in expected:
        return "close the list: [100, 200]"
    if "RPAR" in expected:
        return "close the parenthesis: he_normal(seed=2024)"
    if "INT" in expected or "FLOAT" in expected:
        return "give the option a value, e.g. momentum=0.9"
    return None


def _hint_for_token(text: str, expected: set[str]) -> str | None:
    if text == "=":
        return "options are written key=value with a word before '=', e.g. l2=0.01"
    if text == "(":
        return "a call is written without a space: he_normal(seed=2024)"
    return None
