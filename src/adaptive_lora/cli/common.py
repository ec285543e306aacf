"""Argument helpers every command shares; the one error boundary."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from adaptive_lora.config import parse_override
from adaptive_lora.errors import UserError


def _strategy_params(pairs: Sequence[str]) -> dict:
    """`--param ratio=4 --param reverse=true` → {"ratio": 4, "reverse": True}."""

    params = {}
    for text in pairs:
        path, value = parse_override(text)
        params[".".join(path)] = value
    return params


def dispatch(args: argparse.Namespace) -> int:
    """Run a parsed subcommand; a UserError becomes one line on stderr and exit status 2."""
    try:
        return args.func(args)
    except UserError as error:
        print(f"adaptive-lora: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C, or `run`'s `Stopped` (SIGTERM, SIGINT)
        print(f"adaptive-lora: {str(stop) or 'interrupted'}", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
