"""The `modelspec` subcommands, one module each.

A command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Modules import nothing heavy at import time: `modelspec check` must not pay for the
frameworks that `modelspec train` needs. The modules named with an underscore are what
train, evaluate, predict and compare share: _arguments, _runs, _plots and _output.
"""

from __future__ import annotations

from ..errors import ModelspecError

# Order here is the order of `modelspec --help`.
COMMANDS = ("check", "fmt", "schema", "compile", "export", "draw", "import", "train", "evaluate", "predict", "compare",
            "crosscheck")


class CommandError(ModelspecError):
    """A failure to report as one line, `modelspec: error: ...`, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def check_output(path: str, inputs: list[str | None], option: str = "-o") -> None:
    """Refuse, before any work, an output that would replace one of the command's inputs,
    that is a folder, or whose folder cannot be written."""
    import os

    from ..fileio import same_file, writable_folder

    for name in inputs:
        if name and os.path.exists(name) and same_file(path, name):
            raise CommandError(f"{option} {path}: that is the input {name}; an output never replaces an input, "
                               "choose another name")
    if os.path.isdir(path):
        raise CommandError(f"{option} {path}: is a folder; expected a file name")
    if not writable_folder(os.path.dirname(os.path.abspath(path))):
        raise CommandError(f"{option} {path}: cannot write in {os.path.dirname(os.path.abspath(path))}")
