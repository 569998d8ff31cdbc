"""The `modelspec` command line. Exit codes: 0 ok, 1 invalid input or failed run, 2 usage error."""

from __future__ import annotations

import argparse
import importlib
import keyword
import os
import sys

from .commands import COMMANDS, CommandError


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """The parser with every command, or with `only` that one: when the command line names
    a command, the others' modules and arguments are not needed (start-up time counts:
    `modelspec check` should feel instant)."""
    from .version import __version__

    parser = argparse.ArgumentParser(
        prog="modelspec",
        description="A declarative model-spec compiler: one spec, the same numbers in Keras, PyTorch and NumPy.")
    parser.add_argument("--version", action="version", version=f"modelspec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name in COMMANDS:
        if only is not None and name != only:
            continue
        # a command named by a Python keyword lives in a module with a trailing underscore
        module = importlib.import_module(f".commands.{name}{'_' * keyword.iskeyword(name)}", __package__)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        # a worker of a data-parallel run, done: everything is written and reported. Its
        # process group's teardown at interpreter exit can wait seconds on peers that have
        # ended already, and the launcher counts that wait against the others.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser, modules = build_parser(words[0] if words and words[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from .diagnostics import Diagnostic, SpecError
    from .errors import ModelspecError, one_line

    # a worker of `train --nproc` leaves its errors, in words and in JSON, to the launcher
    json_mode = getattr(args, "json", False) and not _quiet()
    args.words = words  # what `train --nproc N` passes on to its workers
    try:
        return modules[args.command].run(args)
    except SpecError as e:
        _error(e.render(), e, 1)
        if json_mode:
            _json_failure(e.diagnostics)
        return 1
    except CommandError as e:
        _error(f"modelspec: error: {e}", e, e.code)
        if json_mode:
            _json_failure([Diagnostic("error", str(e), code="command")])
        return e.code
    except ModelspecError as e:  # raised on purpose below a command that did not word it itself
        _error(f"modelspec: error: {one_line(e)}", e, 1)
        if json_mode:
            _json_failure([Diagnostic("error", one_line(e), code="command")])
        return 1
    except KeyboardInterrupt:
        _error("modelspec: interrupted", None, 130)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # never show a user a traceback; MODELSPEC_DEBUG=1 does
        if os.environ.get("MODELSPEC_DEBUG"):
            raise
        _error(f"modelspec: internal error: {type(e).__name__}: {e}\n"
               "(set MODELSPEC_DEBUG=1 for the traceback, and please report it)", e, 1)
        if json_mode:
            _json_failure([Diagnostic("error", f"internal error: {type(e).__name__}: {e}", code="internal")])
        return 1


def _error(text: str, error: BaseException | None, code: int) -> None:
    """A failure on standard error; in a worker of `train --nproc`, in torch's error file for
    the launcher to report once, in one line, for every worker."""
    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        from .commands import _launch

        _launch.record_error(text.splitlines()[0].removeprefix("modelspec: error: ").removeprefix("modelspec: "),
                             error, code)
        if _quiet():
            return
    print(text, file=sys.stderr)


def _quiet() -> bool:
    if "TORCHELASTIC_ERROR_FILE" not in os.environ:
        return False
    from .commands import _launch

    return _launch.quiet_errors()


def _json_failure(diagnostics: list) -> None:
    """With --json a failure is a JSON document on standard output too, in every command's shape."""
    import json

    try:
        print(json.dumps({"ok": False, "diagnostics": [d.to_dict() for d in diagnostics]}, indent=2))
    except BrokenPipeError:  # the reader went away: nothing left to tell it
        pass


if __name__ == "__main__":
    sys.exit(main())
