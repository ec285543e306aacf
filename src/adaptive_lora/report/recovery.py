"""Recovery on a planted task: where each strategy's budget went, beside the known answer.

A planted task (`data/planted.py`) has a right answer: the teacher differs from the base
model only on the planted modules. For each budget and strategy this section gives the
share of the budget on planted modules and the overlap of its most-ranked modules with
the planted set (both recorded by each run, `allocation/oracle.planted_metrics`; AdaLoRA
measured on the ranks it ended with), and its test loss against the cell's reference and
against `oracle`, paired by seed. The reference is the study's baseline where it ran at
that budget (its own, where the study names one per budget), else `peft_default` (below
r1 `uniform` cannot spend the budget).

Those Δ are descriptive (means over the seeds both ran); the tests, with their
corrections, are the per-budget comparisons above them. A strategy that does not read
the data cannot find planted modules except by chance, so each row says what the
strategy looks at: it is labelled, not blamed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from adaptive_lora.records import ALLOCATION_KEY, PLANTED_KEY
from adaptive_lora.study.store import RunRow

ORACLE = "oracle"
BELOW_R1_REFERENCE = "peft_default"  # what practitioners train where uniform cannot spend
# Strategies whose ranks move with training on the data (their records' `final_ranks`).
LEARNS_RANKS = ("adalora",)


def what_it_reads(strategy: str) -> str:
    """What a strategy looks at when it places rank: the planted task's right answer is
    findable only by one that reads the data."""
    from adaptive_lora.allocation.core import STRATEGIES  # the registry, filled on import

    if strategy == ORACLE:
        return "told the planted set"
    if strategy in LEARNS_RANKS:
        return "learns ranks on the data"
    known = STRATEGIES.get(strategy)
    if known is not None and known.needs_data:
        return "reads the data"
    if known is not None and known.needs_weights:
        return "base weights only"
    return "shapes only"


def _paired_delta(mine: Mapping[int, float], theirs: Mapping[int, float]) -> dict[str, Any]:
    """Mean of (mine − theirs) over the seeds both have finite values for."""
    seeds = sorted(s for s in mine if s in theirs and math.isfinite(mine[s] + theirs[s]))
    if not seeds:
        return {"mean": None, "n": 0}
    return {"mean": sum(mine[s] - theirs[s] for s in seeds) / len(seeds), "n": len(seeds)}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def recovery_block(
    rows: Sequence[RunRow], baselines: Mapping[str, str], primary: str
) -> dict[str, Any] | None:
    """The recovery numbers of the reported `rows` of a planted study (None when no row
    records a planted task): per budget (`baselines`: budget → its baseline), per strategy
    label, the mean budget share and overlap, Δ test loss against the reference and the
    oracle, and what it reads."""
    planted = [r for r in rows if isinstance(r.metrics.get(PLANTED_KEY), dict)]
    if not planted:
        return None
    first = planted[0].metrics[PLANTED_KEY]
    out: dict[str, Any] = {
        "planted_modules": list(first["modules"]),
        "target_kl": first.get("target_kl"),
        "achieved_kl": first.get("achieved_kl"),
        "kl_on_samples": first.get("kl_on_samples"),
        "budgets": {},
    }
    for budget, baseline in baselines.items():
        here = [r for r in planted if r.budget == budget]
        by_label: dict[str, list[RunRow]] = defaultdict(list)
        for row in here:
            by_label[row.label].append(row)
        if not by_label:
            continue
        loss = {
            label: {r.seed: float(r.metrics.get(primary, math.nan)) for r in runs}
            for label, runs in by_label.items()
        }
        reference = (
            baseline
            if baseline in loss
            else (BELOW_R1_REFERENCE if BELOW_R1_REFERENCE in loss else None)
        )
        strategies = {}
        for label, runs in by_label.items():
            records = [r.metrics[PLANTED_KEY] for r in runs]
            strategies[label] = {
                "strategy": runs[0].strategy,
                "reads": what_it_reads(runs[0].strategy),
                "seeds": sorted(r.seed for r in runs),
                "budget_share": _mean([float(p["budget_share"]) for p in records]),
                "overlap": _mean([float(p["overlap"]) for p in records]),
                "vs_reference": _paired_delta(loss[label], loss[reference])
                if reference and label != reference
                else None,
                "vs_oracle": _paired_delta(loss[label], loss[ORACLE])
                if ORACLE in loss and label != ORACLE
                else None,
            }
        out["budgets"][budget] = {"reference": reference, "strategies": strategies}
    return out


def _number(value: float | None, decimals: int = 4, signed: bool = True) -> str:
    if value is None:
        return "—"
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def _delta(entry: dict[str, Any] | None) -> str:
    if not entry or entry["mean"] is None:
        return "—"
    return _number(entry["mean"]) + (f" (n={entry['n']})" if entry["n"] != 1 else "")


def recovery_lines(block: dict[str, Any] | None) -> list[str]:
    """The report's recovery section (empty for a study that is not on a planted task)."""
    if not block:
        return []
    modules = block["planted_modules"]
    lines = [
        "## Recovery of the planted modules",
        "",
        f"The teacher differs from the base model on {len(modules)} planted modules "
        f"(target KL {block['target_kl']} nats per token, achieved "
        f"{_number(block['achieved_kl'], 3, signed=False)}; the base model's excess loss on "
        f"the teacher's samples is {_number(block['kl_on_samples'], 3, signed=False)} nats "
        "per token, what there is to learn). *Share*: the fraction of a strategy's "
        "parameters on planted modules; *overlap*: the fraction of the planted set among "
        "its most-ranked modules (as many as are planted; ties shared). Δ is test loss, "
        "paired by seed (negative: lower loss); descriptive, the tests are above. "
        "*Reads*: what the strategy looks at when it places rank; one that reads only "
        "shapes or base weights can find planted modules only by chance.",
        "",
    ]
    for budget, entry in block["budgets"].items():
        reference = entry["reference"]
        lines += [f"### Budget {budget}", ""]
        ref_head = f"Δ vs {reference}" if reference else "Δ vs reference"
        lines += [
            f"| strategy | reads | share on planted | overlap | {ref_head} | Δ vs oracle |",
            "|---|---|---|---|---|---|",
        ]
        for label, s in entry["strategies"].items():
            lines.append(
                f"| {label} | {s['reads']} | {_number(s['budget_share'], 2, False)} | "
                f"{_number(s['overlap'], 2, False)} | {_delta(s['vs_reference'])} | "
                f"{_delta(s['vs_oracle'])} |"
            )
        if reference is None:
            lines += ["", "Neither the baseline nor peft_default ran at this budget."]
        lines.append("")
    return lines


def recovery_panels(
    block: dict[str, Any], rows: Sequence[RunRow], budget: str
) -> list[tuple[str, list[dict[str, Any]], dict[str, float]]]:
    """The recovery figure's panels at one budget: the planted set, then each strategy's
    ranks (mean over its seeds; AdaLoRA's final ranks), each as (title, modules, values)
    with values scaled to the panel's largest, so placements compare across budgets."""
    entry = block["budgets"].get(budget)
    if not entry:
        return []
    modules: list[dict[str, Any]] | None = None
    panels = []
    for label in entry["strategies"]:
        runs = [r for r in rows if r.label == label and r.budget == budget]
        totals: dict[str, float] = defaultdict(float)
        for row in runs:
            listed = row.metrics.get(ALLOCATION_KEY)
            if not isinstance(listed, list) or not listed:
                continue
            modules = modules or listed
            learned = row.metrics.get("final_ranks")
            for m in listed:
                rank = learned.get(m["name"], 0) if isinstance(learned, dict) else m["rank"]
                totals[m["name"]] += float(rank) / len(runs)
        top = max(totals.values(), default=0.0)
        if top > 0:
            panels.append((label, {n: v / top for n, v in totals.items()}))
    if modules is None:
        return []
    planted = set(block["planted_modules"])
    mask = {m["name"]: 1.0 if m["name"] in planted else 0.0 for m in modules}
    return [("planted set", modules, mask)] + [
        (f"{label} @ {budget}", modules, values) for label, values in panels
    ]
