"""Where a declared smallest effect or margin came from, and whether it may be planned on.

    hypotheses:
      smallest_effect: 0.003
      smallest_effect_source: {pilot_seeds: 20}          # a pilot's estimate, on 20 seeds
      margin: 0.003
      margin_source: {pilot_seeds: 5, reason: "..."}   # a small pilot, kept for a reason

A number read off a pilot of a few seeds is a noisy number: the regime map's gain per
doubling, the basis of its ±0.003, was +0.0030 at 5 seeds and +0.0020 at 20, so its
margin was 1.5 doublings, not one (DESIGN.md, "Margins from enough seeds"). `plan`
therefore plans on a declared number only when its source says it rests on at least
`MIN_PILOT_SEEDS` seeds, or gives a reason from outside the pilot (a practical
threshold, a published value, a design kept as declared); a reason beside a small pilot
is accepted and printed as a warning, so the weakness is said where seeds are planned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adaptive_lora.errors import UserError

MIN_PILOT_SEEDS = 10  # below this a pilot's mean moves by more than the effects studied
SOURCE_KEYS = ("pilot_seeds", "reason")
SOURCED = ("smallest_effect", "margin")  # the declared numbers that need a source


@dataclass(frozen=True)
class NumberSource:
    """Where one declared number came from: a pilot's seed count and/or a reason."""

    pilot_seeds: int | None = None
    reason: str = ""

    @property
    def small_pilot(self) -> bool:
        return self.pilot_seeds is not None and self.pilot_seeds < MIN_PILOT_SEEDS


def parse_source(raw: Any, where: str) -> NumberSource:
    """`{pilot_seeds: N}` and/or `{reason: "..."}`, validated (at least one of them)."""
    if not isinstance(raw, dict) or not raw or set(raw) - set(SOURCE_KEYS):
        raise UserError(
            f"{where} must be a mapping with pilot_seeds (the seeds the number was estimated "
            f"on) and/or reason (why it holds without a pilot), got {raw!r}"
        )
    seeds = raw.get("pilot_seeds")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise UserError(f"{where}.pilot_seeds must be a whole number >= 1, got {seeds!r}")
    reason = raw.get("reason", "")
    if not isinstance(reason, str) or ("reason" in raw and not reason.strip()):
        raise UserError(f"{where}.reason must be a sentence, got {reason!r}")
    return NumberSource(seeds, reason.strip())


def source_warnings(
    hypotheses: Any, labels: list[str], overridden: tuple[str, ...] = ()
) -> list[str]:
    """`plan`'s check of every declared smallest effect and margin (the study's and each
    compared label's own): one warning line per number from a small pilot with a reason;
    a `UserError` naming the key to add for a number with no source, or from a small
    pilot with no reason. `overridden` names the numbers a what-if flag replaces."""
    lines: list[str] = []
    seen: set[tuple[str, float, NumberSource | None]] = set()
    for label in labels:
        h = hypotheses.for_comparison(label)
        for name in SOURCED:
            value = getattr(h, name)
            source = getattr(h, f"{name}_source")
            if value is None or name in overridden or (name, value, source) in seen:
                continue
            seen.add((name, value, source))
            line = _judge(name, value, source)
            if line:
                lines.append(line)
    return lines


def _judge(name: str, value: float, source: NumberSource | None) -> str:
    key = f"hypotheses.{name}_source"
    if source is None:
        raise UserError(
            f"hypotheses.{name} {value:g} gives no source: add {key}: {{pilot_seeds: N}} "
            f'(N >= {MIN_PILOT_SEEDS}) or {{reason: "..."}} (or plan a what-if with '
            f"--{name.replace('_', '-')})"
        )
    if not source.small_pilot:
        return ""
    if not source.reason:
        raise UserError(
            f"hypotheses.{name} {value:g} was taken from a pilot of {source.pilot_seeds} "
            f"seeds (fewer than {MIN_PILOT_SEEDS}: too noisy to set it); give more pilot "
            f'seeds or override with {key}.reason: "..."'
        )
    return (
        f"warning: hypotheses.{name} {value:g} was taken from a pilot of "
        f"{source.pilot_seeds} seeds (fewer than {MIN_PILOT_SEEDS}); kept because: "
        f"{source.reason}"
    )
