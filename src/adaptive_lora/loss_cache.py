"""The untrained model's held-out losses, kept on disk between processes.

Before training, a run's adapter adds B·A·x with B = 0, which changes no bit of the base
model's output: every run of a group (same model, data split and evaluation settings)
measures the same validation and test loss before training. A study's workers are new
processes each session and each `train` is one, so the number is kept in a small file
per key under the cache folder (beside the importance probes) and read back exactly
(JSON keeps every bit of a float). The key holds everything the number depends on: the
model's and data's fingerprints, the split, tokenisation and batching, the precision, the
kernels (CPU model and family, threads, torch) and the numerics version; nothing is
shared across any of them, and a changed data file changes the data hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from adaptive_lora.environment import NUMERICS_VERSION, cpu_model, matrix_family
from adaptive_lora.model.loading import cache_root
from adaptive_lora.records import write_json

CACHE_FOLDER = "losses-before"


def loss_key(
    *, fingerprint: dict[str, Any], data_hash: str, split: str, settings: dict[str, Any],
    precision: str, device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """What an untrained loss depends on, as the cache names it."""
    return {
        "model": fingerprint.get("sha256") or fingerprint.get("hub_id"),
        "model_commit": fingerprint.get("commit"),
        "data_hash": data_hash,
        "split": split,
        **settings,
        "precision": precision,
        "device": str(device),
        "cpu": cpu_model(),
        "matrix_family": matrix_family(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numerics_version": NUMERICS_VERSION,
    }


def _path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return cache_root() / CACHE_FOLDER / f"{digest[:32]}.json"


def cached_loss(key: dict[str, Any], compute: Callable[[], float]) -> float:
    """The loss stored under `key`, else `compute()` stored there (an unreadable or
    unwritable cache only means computing it)."""
    if key["model"] is None:  # a model without a fingerprint cannot be told apart
        return compute()
    path = _path(key)
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") == json.loads(json.dumps(key, default=str)):
            return float(stored["loss"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    loss = compute()
    try:
        write_json(path, {"key": key, "loss": loss})  # atomic: a reader never sees half
    except OSError:
        pass
    return loss
