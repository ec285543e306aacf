"""Argument helpers every command shares; the one error boundary."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator, Sequence

from adaptive_lora.config import parse_override
from adaptive_lora.errors import UserError
from adaptive_lora.study.executor import Stopped, as_stopped
from adaptive_lora.study.store import DamagedStore

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _strategy_params(pairs: Sequence[str]) -> dict:
    """`--param ratio=4 --param reverse=true` → {"ratio": 4, "reverse": True}."""

    params = {}
    for text in pairs:
        path, value = parse_override(text)
        params[".".join(path)] = value
    return params


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """While a study or a `train` runs, SIGTERM and SIGINT stop it cleanly (`Stopped`).

    SIGTERM is what `kill`, batch schedulers and container runtimes send; without a
    handler Python dies at once: the started runs stay `running` until the next `run`,
    and a run folder's manifest says `running` for good. SIGINT is handled too because a
    shell starts a background job (`nohup ... &`) with SIGINT ignored, and `kill -INT`
    must still stop it. A second signal while the first one unwinds kills the process
    (the store survives that too).
    """

    def stop(signum: int, frame) -> None:
        for sig in STOP_SIGNALS:  # a second signal ends the process at once
            signal.signal(sig, signal.SIG_DFL)
        Stopped.latest = Stopped(signal.Signals(signum).name, 128 + signum)
        raise Stopped.latest

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    except KeyboardInterrupt as error:  # Ray hands back a bare one for our `Stopped`
        raise as_stopped(error) from None
    finally:
        Stopped.latest = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def dispatch(args: argparse.Namespace) -> int:
    """Run a parsed subcommand; a UserError becomes one line on stderr and exit status 2."""
    try:
        return args.func(args)
    except DamagedStore as error:  # its fix names the study file, when the command has one
        if error.study_file is None and getattr(args, "study", None):
            error = error.for_study(args.study)
        print(f"adaptive-lora: error: {error}", file=sys.stderr)
        return 2
    except UserError as error:
        print(f"adaptive-lora: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C, or `run`'s `Stopped` (SIGTERM, SIGINT)
        print(f"adaptive-lora: {str(stop) or 'interrupted'}", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
