"""The hypotheses a study declares before its runs, and its sequential seed plan.

    hypotheses:
      declared: "2026-12-01, before any run"   # when: the report prints it first
      metric: test_loss                 # the primary metric, in its own units
      alternative: less                 # strategy − baseline: two-sided | less | greater
      family: cell                      # Holm family: the comparisons of one group × budget
      unit: seeds_x_items               # the inference unit: seeds, or seeds × test items
      smallest_effect: 0.002            # superiority: the smallest difference of interest
      margin: 0.001                     # equivalence (TOST) margin, a priori
      margin_source: {pilot_seeds: 12}  # where it came from (`hypothesis_sources`)
      comparisons:                      # per strategy label: its own alternative / effect / margin
        random: {alternative: two-sided}
    seeds: {min: 4, max: 24, step: 4}   # sequential: blocks of 4, up to 24 seeds

Both numbers are in the metric's units and stated a priori (DESIGN.md, "Hypotheses
before runs"). The inference unit says what a decision generalises over: `seeds` (other
seeds on these test items — or on other items too, where each seed draws its own split,
`data.split: per_seed`) or `seeds_x_items` (other seeds *and* other test items when every
seed is tested on the same items: each look's variance carries the items' share, see
`analysis/item_variance.py`). Without `unit` it is `seeds` under `per_seed` splits and
`seeds_x_items` under a fixed split. A margin computed from outcomes (the cross-budget `margin: post-hoc`)
is allowed only when asked for, and the report labels it so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from adaptive_lora.errors import UserError
from adaptive_lora.evaluation_metrics import PRIMARY_METRIC
from adaptive_lora.study.hypothesis_sources import NumberSource, parse_source

ALTERNATIVES = ("two-sided", "less", "greater")
FAMILIES = ("cell",)
UNITS = ("seeds", "seeds_x_items")
UNIT_WORDS = {"seeds": "seeds", "seeds_x_items": "seeds × items"}
HYPOTHESIS_KEYS = (
    "declared", "metric", "alternative", "family", "smallest_effect", "margin", "comparisons",
    "smallest_effect_source", "margin_source", "unit",
)  # fmt: skip
COMPARISON_KEYS = (
    "alternative", "smallest_effect", "margin", "smallest_effect_source", "margin_source",
)  # fmt: skip
SEED_PLAN_KEYS = ("min", "max", "step", "start", "spending")


@dataclass(frozen=True)
class Hypotheses:
    """What a comparison tests, declared in the study file (defaults: two-sided, no margin)."""

    declared: str = ""
    metric: str = PRIMARY_METRIC
    alternative: str = "two-sided"
    family: str = "cell"
    smallest_effect: float | None = None
    margin: float | None = None
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)
    # where each number came from (`plan` refuses one from a pilot of < 10 seeds)
    smallest_effect_source: NumberSource | None = None
    margin_source: NumberSource | None = None
    unit: str | None = None  # None: by the split (`unit_for`)
    given: bool = False  # the study file has a `hypotheses` section

    def unit_for(self, split: str) -> str:
        """The inference unit of a group with this `data.split`: the declared one, else
        seeds where every seed draws its own split and seeds × items where they share one."""
        if self.unit is not None:
            return self.unit
        return "seeds" if split == "per_seed" else "seeds_x_items"

    def for_comparison(self, label: str) -> Hypotheses:
        """This strategy's hypotheses: the study's, with its own overrides (a number of its
        own comes with its own source, or none: the study's source was about another)."""
        own = dict(self.comparisons.get(label, {}))
        for key in ("smallest_effect", "margin"):
            if key in own:
                own.setdefault(f"{key}_source", None)
        return replace(self, **own, comparisons={})

    def to_dict(self) -> dict[str, Any]:
        return {
            "declared": self.declared, "metric": self.metric, "alternative": self.alternative,
            "family": self.family, "smallest_effect": self.smallest_effect,
            "margin": self.margin, "comparisons": _plain(self.comparisons), "given": self.given,
            **({"unit": self.unit} if self.unit is not None else {}),
        }  # fmt: skip


def _plain(comparisons: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The per-label settings as JSON values (a source as its mapping)."""
    return {
        label: {k: asdict(v) if isinstance(v, NumberSource) else v for k, v in own.items()}
        for label, own in comparisons.items()
    }


@dataclass(frozen=True)
class SeedPlan:
    """Sequential seeds: reporting seeds start..start+max-1, looked at every `step`."""

    start: int
    minimum: int
    maximum: int
    step: int
    spending: str = "obrien-fleming"

    @property
    def looks(self) -> tuple[int, ...]:
        sizes = list(range(self.minimum, self.maximum + 1, self.step))
        return tuple(sizes if sizes[-1] == self.maximum else [*sizes, self.maximum])

    @property
    def seeds(self) -> list[int]:
        return list(range(self.start, self.start + self.maximum))

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "min": self.minimum, "max": self.maximum,
                "step": self.step, "spending": self.spending, "looks": list(self.looks)}  # fmt: skip


def reject_unknown_keys(raw: dict, known: tuple[str, ...], where: str) -> None:
    """One line naming the keys of `raw` that are not in `known`, and the known ones.

    The study file's sections (a strategy entry, a task, the hypotheses, a seed plan)
    all check their keys through this one function, so they say it the same way.
    """
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"{where} must be a number > 0 in the metric's units, got {value!r}")
    return float(value)


def _settings(raw: dict[str, Any], keys: tuple[str, ...], where: str) -> dict[str, Any]:
    reject_unknown_keys(raw, keys, where)
    out: dict[str, Any] = {}
    if "alternative" in raw:
        if raw["alternative"] not in ALTERNATIVES:
            raise UserError(
                f"{where}.alternative must be one of {', '.join(ALTERNATIVES)}, "
                f"got {raw['alternative']!r}"
            )
        out["alternative"] = raw["alternative"]
    for key in ("smallest_effect", "margin"):
        if raw.get(key) is not None:
            out[key] = _number(raw[key], f"{where}.{key}")
        if raw.get(f"{key}_source") is not None:
            out[f"{key}_source"] = parse_source(raw[f"{key}_source"], f"{where}.{key}_source")
    return out


def parse_hypotheses(raw: Any, labels: list[str], baseline: str) -> Hypotheses:
    """The `hypotheses` section, validated; the defaults when the study has none."""
    if raw is None:
        return Hypotheses()
    if not isinstance(raw, dict):
        raise UserError(
            "hypotheses must be a mapping (alternative, family, smallest_effect, margin)"
        )
    values = _settings(raw, HYPOTHESIS_KEYS, "hypotheses")
    family = raw.get("family", "cell")
    if family not in FAMILIES:
        raise UserError(
            f"hypotheses.family must be one of {', '.join(FAMILIES)} (the comparisons of one "
            f"model × task × size × budget), got {family!r}"
        )
    if raw.get("metric", PRIMARY_METRIC) != PRIMARY_METRIC:
        raise UserError("hypotheses.metric: only test_loss is the primary metric so far")
    comparisons = raw.get("comparisons") or {}
    if not isinstance(comparisons, dict):
        raise UserError("hypotheses.comparisons must map strategy labels to their own settings")
    own = {}
    for label, settings in comparisons.items():
        if label not in labels or label == baseline:
            raise UserError(
                f"hypotheses.comparisons: {label!r} is not a compared strategy "
                f"({', '.join(x for x in labels if x != baseline)})"
            )
        if not isinstance(settings, dict):
            raise UserError(f"hypotheses.comparisons.{label} must be a mapping")
        own[label] = _settings(settings, COMPARISON_KEYS, f"hypotheses.comparisons.{label}")
    declared = raw.get("declared", "")
    if not isinstance(declared, str):
        raise UserError("hypotheses.declared must be text (when they were declared)")
    unit = raw.get("unit")
    if unit is not None and unit not in UNITS:
        raise UserError(
            f"hypotheses.unit must be seeds or seeds_x_items (seeds × test items), got {unit!r}"
        )
    return Hypotheses(
        declared=declared, family=family, comparisons=own, unit=unit, given=True, **values
    )


def parse_seed_plan(raw: dict[str, Any], tuning_seeds: list[int]) -> SeedPlan:
    """`seeds: {min, max, step[, start, spending]}`: seeds start after the tuning seeds."""
    reject_unknown_keys(raw, SEED_PLAN_KEYS, "seeds")
    values = {}
    for key in ("min", "max", "step"):
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise UserError(f"seeds.{key} must be a whole number >= 2, got {value!r}")
        values[key] = value
    if values["max"] < values["min"]:
        raise UserError(f"seeds.max ({values['max']}) must be >= seeds.min ({values['min']})")
    start = raw.get("start", max(tuning_seeds, default=-1) + 1)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise UserError(f"seeds.start must be a seed >= 0, got {start!r}")
    spending = raw.get("spending", "obrien-fleming")
    if spending not in ("obrien-fleming", "pocock"):
        raise UserError(f"seeds.spending must be obrien-fleming or pocock, got {spending!r}")
    return SeedPlan(start, values["min"], values["max"], values["step"], spending)
