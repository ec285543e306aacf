"""Ray's own messages to the driver go to a log file, not the terminal.

A Ray driver prints every message of Ray's error channel on its stdout, whatever
`log_to_driver` says. When a local raylet dies, its dashboard and runtime-env agents
each publish "Raylet is terminated … Last 20 lines of the Raylet logs" there, the
raylet's `[state-dump]` lines included: some 40 lines, at a moment that depends on
timing (the study's own line has already said what happened: the node died, its runs
went back to pending). While an executor holds Ray, those messages are appended to
`adaptive-lora-driver-messages.log` in the Ray session's logs folder instead, beside
Ray's other logs; with no session folder to write to, Ray prints them as it would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray._private.worker as ray_worker

LOG_NAME = "adaptive-lora-driver-messages.log"
_lock = threading.Lock()


def _session_logs() -> Path | None:
    """The logs folder of the Ray session this process is connected to, if any."""
    node = getattr(ray_worker, "_global_node", None)
    try:
        return Path(node.get_logs_dir_path()) if node is not None else None
    except Exception:  # noqa: BLE001 - a private API, or Ray shutting down: print instead
        return None


class RayMessagesToLog:
    """Routes Ray's driver messages to the session's log while installed (`install` /
    `uninstall`; installing twice is one install)."""

    def __init__(self) -> None:
        self._printer: Callable[..., Any] | None = None

    def install(self) -> None:
        printer = getattr(ray_worker, "print_to_stdstream", None)
        if self._printer is not None or printer is None:  # a Ray without it prints as it does
            return
        self._printer = printer
        ray_worker.print_to_stdstream = self._write

    def uninstall(self) -> None:
        if self._printer is not None and ray_worker.print_to_stdstream == self._write:
            ray_worker.print_to_stdstream = self._printer
        self._printer = None

    def _write(self, data: dict[str, Any], ignore_prefix: bool = False) -> None:
        folder = _session_logs()
        if folder is None or not folder.is_dir():
            if self._printer is not None:
                self._printer(data, ignore_prefix)
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        source = data.get("pid", "ray")
        text = "".join(f"{stamp} ({source}) {line}\n" for line in data.get("lines", []))
        try:
            with _lock, open(folder / LOG_NAME, "a", encoding="utf-8") as log:
                log.write(text)
        except OSError:  # a full or vanished folder: the terminal then, as Ray would
            if self._printer is not None:
                self._printer(data, ignore_prefix)
