"""`precision: auto` is the precision this machine computes fastest, decided once per machine."""

from __future__ import annotations

import json
import math

import pytest
import torch

from adaptive_lora.compute import precision
from adaptive_lora.compute.precision import resolve_precision


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _flags(monkeypatch, *flags):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))


def _measured(monkeypatch, ratio):
    calls = []

    def measure():
        calls.append(ratio)
        return ratio

    monkeypatch.setattr(precision, "bf16_over_fp32_seconds", measure)
    return calls


def test_auto_is_fp32_without_bf16_instructions_and_measures_nothing(cpu_only, monkeypatch):
    _flags(monkeypatch, "avx2", "fma")
    calls = _measured(monkeypatch, 0.5)
    assert resolve_precision("auto") == precision.Precision(torch.device("cpu"), None, "fp32")
    assert calls == []
    assert resolve_precision("bf16").name == "bf16-autocast-cpu"  # asked for by name: kept


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_auto_is_bf16_where_native_and_the_choice_is_kept_per_machine(cpu_only, monkeypatch, flag):
    _flags(monkeypatch, "avx2", "avx512f", flag)
    calls = _measured(monkeypatch, 0.4)
    assert resolve_precision("auto").name == "bf16-autocast-cpu"
    assert resolve_precision("auto").name == "bf16-autocast-cpu"
    assert len(calls) == 1  # measured once; the cache file answers after that
    cached = json.loads((precision.cache_root() / "precision.json").read_text())
    assert cached[precision._machine_key()] == "bf16"


def test_auto_is_fp32_where_bf16_kernels_are_not_used(cpu_only, monkeypatch):
    """A oneDNN ISA cap below the bf16 instructions: the flags say native, the clock not."""
    _flags(monkeypatch, "avx512_bf16")
    _measured(monkeypatch, 30.0)
    assert resolve_precision("auto").name == "fp32"
    assert resolve_precision("fp32").autocast_dtype is None


def test_the_measurement_is_a_ratio_of_two_matmuls():
    ratio = precision.bf16_over_fp32_seconds(size=64, repeats=2)
    assert math.isfinite(ratio) and ratio > 0
