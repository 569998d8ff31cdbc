"""The `modelspec` subcommands, one module each.

A command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Modules import nothing heavy at import time: `modelspec check` must not pay for the
frameworks that `modelspec train` needs. The modules named with an underscore are what
train, evaluate, predict and compare share: _arguments, _runs, _plots and _output.
"""

from __future__ import annotations

from ..errors import ModelspecError

# Order here is the order of `modelspec --help`.
COMMANDS = ("check", "fmt", "schema", "compile", "import", "train", "evaluate", "predict", "compare", "crosscheck")


class CommandError(ModelspecError):
    """A failure to report as one line, `modelspec: error: ...`, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
