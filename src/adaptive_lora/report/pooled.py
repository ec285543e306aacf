"""What the runs a report pooled under `--allow-mixed` differ in, read back from its
`stats.json` (one analysis per model in a multi-model study, each with its
`environment_check`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def pooled_differences(stats_json: Path) -> list[str]:
    """The environment facts the pooled runs differ in, each once, in the order found."""
    stats = json.loads(stats_json.read_text())
    analyses = list((stats.get("models") or {}).values()) or [stats]
    found: dict[str, None] = {}
    for analysis in analyses:
        check: dict[str, Any] = analysis.get("environment_check") or {}
        found.update(dict.fromkeys(check.get("differ") or {}))
    return list(found)
