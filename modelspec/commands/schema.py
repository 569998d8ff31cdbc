"""`modelspec schema`: the JSON Schema of the IR."""

from __future__ import annotations

import argparse
import json

HELP = "print the JSON Schema of the spec IR"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from ..ir import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0
