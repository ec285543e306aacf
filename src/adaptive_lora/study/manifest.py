"""What the store records about the study and the machine at each `run`."""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any

from adaptive_lora.environment import git_commit, package_versions
from adaptive_lora.study.spec import Study
from adaptive_lora.study.store import (
    StudyStore,
    now_iso,
)


def _git_state() -> dict[str, Any]:
    """The tool's source commit and whether it had local changes (see environment.git_commit)."""
    commit = git_commit()
    if commit is None:
        return {"commit": None}
    return {"commit": commit.removesuffix("-dirty"), "dirty": commit.endswith("-dirty")}


def study_manifest(study: Study) -> dict[str, Any]:
    """What the store records about the study and the machine at each `run`."""
    return {
        "name": study.name,
        "spec_path": str(study.path),
        "spec_hash": study.spec_hash,
        "spec_text": study.text,
        "versions": package_versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "git": _git_state(),
        "argv": sys.argv,
    }


def record_manifest(store: StudyStore, study: Study) -> None:
    """Refresh the manifest; keep a history of spec hashes and of runs of `run`."""

    old = store.manifest()
    new = study_manifest(study)
    history = list(old.get("spec_history", []))
    if not history or history[-1]["spec_hash"] != study.spec_hash:
        history.append({"spec_hash": study.spec_hash, "since": now_iso()})
    sessions = list(old.get("sessions", []))[-49:]
    sessions.append({"started": now_iso(), "host": new["host"], "pid": os.getpid()})
    new.update(created_at=old.get("created_at", now_iso()), spec_history=history, sessions=sessions)
    store.update_manifest(new)
