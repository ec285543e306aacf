"""Facts about where a run happened, for its manifest: versions, device, commit, memory,
the CPU's matrix-instruction family (which decides the last bits of a bf16 run), and the
numerics version of the code that computed it."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import resource
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

# What decides whether two runs' numbers may be pooled, as far as the code goes: bumped by
# a commit that means to change what a run computes (and only then). The golden re-runs
# (`tests/test_golden.py`, numbers stored per CPU family in `tests/golden/`) fail when a
# number moves without a bump, so code that changes no number (names, moves, formatting,
# docs, a faster path that sums in the same order) needs no bump and never splits a study.
# Runs recorded before versions were (no `numerics_version`) are told apart by their
# `source_hash` instead (see `report/environment_check.py`).
#   1: `precision: auto` resolves per machine (fp32 where bf16 is not native); the first
#      version, on the code the published studies ran with (source 59664e140a312a26).
#   2: EVA's SVD init (`init_from_svd`) gives each module exactly its rank's top
#      components; with unequal ranks among modules that read one input (q, k, v; gate,
#      up) PEFT had handed some more rows than their rank and others fewer. Only runs
#      with `init_from_svd: true` and unequal ranks move; no published run used it.
NUMERICS_VERSION = 2

PACKAGES = ("adaptive-lora", "torch", "transformers", "peft", "accelerate", "numpy", "scipy")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (`flags` on x86, `Features` on ARM); empty where unreadable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


# The widest matrix instructions a CPU has, best first. oneDNN picks its bf16 kernels by
# them, so each family sums in its own order: the same bf16 run on a Xeon with AMX and an
# EPYC with AVX512-bf16 differs by 0.0004 in test loss, the size of the effects studied.
MATRIX_FAMILIES = (
    ("amx_bf16", "AMX-bf16"),
    ("avx512_bf16", "AVX512-bf16"),
    ("avx512f", "AVX512"),
    ("avx2", "AVX2"),
)


def matrix_family(device: torch.device, flags: frozenset[str] | None = None) -> str:
    """The family of kernels a run on `device` computes with: the GPU model on CUDA, else the
    CPU's widest matrix instructions (`MATRIX_FAMILIES`), else the machine type (e.g. aarch64)."""
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    flags = cpu_flags() if flags is None else flags
    for flag, family in MATRIX_FAMILIES:
        if flag in flags:
            return family
    return platform.machine() or "unknown"


def kernel_path() -> str | None:
    """The CPU kernels torch dispatches to, where it says (ATen's capability, e.g. AVX512);
    a oneDNN ISA cap set in the environment changes the bf16 path too, so it is named."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", None)
    path = f"ATen {capability()}" if capability else None
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if cap:
        path = f"{path or 'ATen ?'}, oneDNN max ISA {cap}"
    return path


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the source tree this package runs from (with `-dirty` if modified)."""
    here = start or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


# The stages above one run: they read, schedule or present runs but never change a
# run's numbers (a run's config, which the study stage writes, is in its id already).
# The hash is provenance (which sources computed a run), not a lock: pooling is decided
# by `NUMERICS_VERSION`; it is kept over the run's sources alone so that it still names
# the same thing it named in the stores of the studies published before versions were.
NOT_RUN_SOURCES = (
    "analysis", "report", "study", "cli", "api.py", "__init__.py",
    "adapters/export.py",  # writes files for other trainers; no run imports it
)  # fmt: skip


@functools.cache
def source_hash() -> str:
    """sha256 (16 hex digits) of the source files a run's numbers depend on.

    Unlike HEAD: committing results between sessions moves HEAD without changing a
    run, and an uncommitted edit changes a run without moving HEAD. Computed once
    per process over the package minus `NOT_RUN_SOURCES` (top-level names, or paths).
    """
    return sources_digest(Path(__file__).resolve().parent)


def sources_digest(root: Path) -> str:
    """The hash of `source_hash` for a package folder `root`: paths and bytes of its run sources."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in NOT_RUN_SOURCES or relative.as_posix() in NOT_RUN_SOURCES:
            continue
        digest.update(relative.as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": cpu_model(),
        "matrix_family": matrix_family(device),
        "kernel_path": kernel_path(),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "hostname": platform.node(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on a GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def environment_manifest(device: torch.device) -> dict[str, Any]:
    return {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "source_hash": source_hash(),
        "numerics_version": NUMERICS_VERSION,
        **device_info(device),
    }
