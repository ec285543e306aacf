"""Each look of a study's sequential seeds: its boundaries, and whether it can decide.

What `plan` and `run --dry-run` print about a sequential plan (`seeds: {min, max,
step}`): per comparison and look, the boundaries in paired-t units and, given the
pilot's sd of differences, the smallest |mean difference| that crosses them
(`analysis/looks`); then a warning for each look that no comparison of its cell can
decide, with the first look that can.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adaptive_lora.analysis.looks import REACH, LookReach, first_useful, look_reach
from adaptive_lora.analysis.sequential import boundaries
from adaptive_lora.study.power_plan import ComparisonPlan, plan_study
from adaptive_lora.study.spec import Study


@dataclass(frozen=True)
class ComparisonLooks:
    plan: ComparisonPlan  # the comparison and its pilot sd
    smallest_effect: float | None
    margin: float | None
    reach: list[LookReach]


def comparison_looks(
    study: Study,
    plans: Sequence[ComparisonPlan],
    *,
    smallest_effect: float | None = None,
    margin: float | None = None,
) -> list[ComparisonLooks]:
    """Every comparison's looks (none with fixed seeds); `smallest_effect` and `margin`
    are what-ifs that win over the declared values, as in `plan_study`."""
    if study.seed_plan is None:
        return []
    compared: dict[tuple[str, str], int] = {}
    for p in plans:
        compared[(p.group, p.budget)] = compared.get((p.group, p.budget), 0) + 1
    out = []
    for p in plans:
        design = study.sequential_design(p.label, family_size=compared[(p.group, p.budget)])
        effect = smallest_effect if smallest_effect is not None else design.smallest_effect
        held = margin if margin is not None else design.margin
        reach = look_reach(boundaries(design), p.sd, effect, held)
        out.append(ComparisonLooks(p, effect, held, reach))
    return out


def look_table(study: Study, looks: Sequence[ComparisonLooks]) -> list[str]:
    """Per comparison and look: |t| to claim a difference, t for each side of TOST and
    futility, and with a pilot sd the |Δ| and the TOST margin at Δ = 0 they come to."""
    if not looks:
        return []
    plan = study.seed_plan
    titles = study.group_titles(plain=True)
    heads = [f"look {r.look} ({r.n} seeds)" for r in looks[0].reach]
    lines = [
        f"looks of the sequential seeds ({plan.spending} spending; α split over each cell): "
        "|t| to claim a difference / t for each side of TOST and futility → with the pilot "
        "sd, the smallest |Δ| that claims a difference / the tightest TOST margin (at Δ = 0); "
        f"✗: cannot decide (a difference beyond {REACH:g}× the smallest effect, a TOST "
        "margin beyond the declared one)",
        "",
        f"| group | budget | strategy | sd | {' | '.join(heads)} |",
        "|---|---|---|---|" + "---|" * len(heads),
    ]
    for c in looks:
        p = c.plan
        cells = [_cell(r) for r in c.reach]
        sd = f"{p.sd:.4g}" if p.sd == p.sd else "unknown"
        lines.append(f"| {titles[p.group]} | {p.budget} | {p.label} | {sd} | {' | '.join(cells)} |")
    return lines + _items_share_note(study, looks)


def _items_share_note(study: Study, looks: Sequence[ComparisonLooks]) -> list[str]:
    """Under the seeds × items unit a look's variance also holds the test items' share,
    which a seeds-only pilot sd leaves out: said, so the |Δ| above reads as a floor."""
    keys = {c.plan.group for c in looks}
    both = [g for g in study.groups if g.key in keys and study.inference_unit(g) != "seeds"]
    if not both:
        return []
    titles = study.group_titles(plain=True)
    where = "every group" if len(both) == len(keys) else ", ".join(titles[g.key] for g in both)
    return [
        "",
        f"note: {where} is judged in seeds × items: each look adds the test items' share "
        "to its variance, which the sd above (seeds only) leaves out, so a look there "
        "needs a |Δ| larger than shown",
    ]


def _cell(r: LookReach) -> str:
    mark = "" if r.can_decide else " ✗"
    text = f"{r.t_diff:.3g} / {r.t_one:.3g}"
    if r.crossing == r.crossing:  # NaN without an sd
        text += f" → {r.crossing:.2g} / ±{r.tightest_margin:.2g}"
    return text + mark


def look_warnings(study: Study, looks: Sequence[ComparisonLooks]) -> list[str]:
    """One warning per cell and look that none of the cell's comparisons can decide."""
    cells: dict[tuple[str, str], list[ComparisonLooks]] = {}
    for c in looks:
        cells.setdefault((c.plan.group, c.plan.budget), []).append(c)
    titles = study.group_titles(plain=True)
    lines = []
    for (group, budget), members in cells.items():
        where = f"{budget}" + (f" ({titles[group]})" if study.multi_group else "")
        useful = [first_useful(c.reach) for c in members]
        first = min((u.look for u in useful if u is not None), default=None)
        for k, look in enumerate(members[0].reach):
            if any(c.reach[k].can_decide for c in members):
                continue
            lines.append(_warning(where, look, members, k, first))
    return lines


def _warning(
    where: str, look: LookReach, members: list[ComparisonLooks], k: int, first: int | None
) -> str:
    # the most favourable sd (a NaN crossing, no sd, sorts last)
    best = min(
        members, key=lambda c: (c.reach[k].crossing != c.reach[k].crossing, c.reach[k].crossing)
    )
    r, c = best.reach[k], best
    if r.crossing == r.crossing:
        needs = f" (|Δ| ≥ {r.crossing:.2g} at the pilot sd {c.plan.sd:.2g}"
        target = c.smallest_effect if c.smallest_effect is not None else c.margin
        needs += f", beyond {REACH:g} × {target:g})" if target is not None else ")"
    else:
        needs = f" (more than {REACH:g}× the mean difference the last look needs; no pilot sd)"
    text = (
        f"warning: look {look.look} ({look.n} seeds) at {where} cannot decide any of its "
        f"{len(members)} comparison(s): |t| ≥ {r.t_diff:.3g} to claim a difference and "
        f"t ≥ {r.t_one:.3g} on each side of TOST{needs}; its seeds are spent for nothing"
    )
    if first is None:
        return text + " — and no look of the plan can decide: more seeds or a larger effect"
    n = members[0].reach[first - 1].n
    return text + f" — the first useful look is look {first} ({n} seeds): seeds.min: {n}"


def dry_run_look_lines(study: Study, rows: Sequence, *, table: bool = True) -> list[str]:
    """What `run --dry-run` (`table`) and `run` print about the looks, from the study's
    own stored runs as the pilot."""
    if study.seed_plan is None:
        return []
    looks = comparison_looks(
        study, plan_study(study, study, rows, smallest_effect=None, margin=None)
    )
    return (look_table(study, looks) if table else []) + look_warnings(study, looks)
