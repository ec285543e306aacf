"""The `adaptive-lora` command: one small module per subcommand.

Each module in this folder that defines `register(subparsers)` is a subcommand: it
parses its arguments and calls the API, nothing else. Adding a command is one new
file here. Mistakes a user can fix (`UserError`) end in one line on stderr and exit
status 2 (`common.dispatch`).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Sequence

from adaptive_lora.cli.common import dispatch


def command_modules() -> list:
    """Every module of this package that defines a subcommand, by name."""
    modules = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):  # __main__ runs the command; it is not one
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            modules.append(module)
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptive-lora",
        description="Budget-matched LoRA rank allocation: allocate, train, run studies, report.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in command_modules():
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))
