"""What the commands print: rich consoles and tables, and JSON documents."""

from __future__ import annotations

import json
import math
from typing import Any


def console() -> Any:
    return console_on(None)


def console_on(stream: Any) -> Any:
    """A rich console; lines of text are never broken (soft_wrap): a list of files or paths
    stays one line, without the trailing spaces a wrap at 80 columns leaves when piped."""
    from rich.console import Console

    return Console(file=stream, highlight=False, soft_wrap=True)


def print_table(con: Any, table: Any) -> None:
    """A table at its natural width where the output is not a terminal (a pipe or a file has no
    width to fit), so that no name or figure is cut to fit 80 columns."""
    from rich.measure import Measurement

    if not con.is_terminal:
        needed = Measurement.get(con, con.options.update_width(10_000), table).maximum
        if needed > con.width:
            table.width = needed
    con.print(table)


def metrics_table(title: str, metrics: dict[str, float]) -> Any:
    from rich.table import Table

    from ..progress import format_value

    table = Table(title=title, title_justify="left", min_width=len(title))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        table.add_row(key, format_value(metrics[key]))
    return table


def print_json(doc: dict[str, Any], ok: bool = True) -> None:
    """A command's one JSON document: `ok`, then what it reports."""
    print(json.dumps(finite({"ok": ok, **doc}), indent=2))


def finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
