"""Error rates and seeds saved by the sequential-seeds design, by simulation.

Run from the repository root (under a minute on one core):

    .venv/bin/python bench/sequential_error.py [--studies 50000] [--seed 2026]

Every simulated study goes through `adaptive_lora.analysis.sequential.decide_matrix`,
the vectorised core that `sequential_decisions` (what a runner and a report call)
runs on; a check at the start confirms both give the same decisions on a few hundred
studies. The design is the reference one: looks at 4, 8, ..., 24 seeds, α = 0.05
two-sided, O'Brien–Fleming-type spending, and a non-binding futility stop at the
smallest effect of interest δ = 0.65 sd of the paired differences (about 20 seeds for
80 % power in a fixed design). Differences are normal with sd 1.

* type1: a family of one, true difference 0: the share of studies that claim
  superior or inferior at any look (should be within ±0.01 of α). The futility stop
  is non-binding, so it can only lower this; the same studies without it (the
  spending alone, which should match α up to Monte-Carlo error) are printed too.
* fwer: a family of 8 null comparisons sharing one baseline (each difference is
  strategy − baseline with the arms' noise split evenly, so comparisons correlate at
  0.5), each at α/8: the share of studies with any claim (at most α + 0.01).
* fwer_per_seed_splits, fwer_fixed_items: the same null family where each difference
  also carries the test items' share (`ITEM_SD`: the sd of a test sample's mean
  difference, a quarter of the seeds' own sd, as the map's two-level intervals show). With `data.split: per_seed` every seed draws its own test items, so that share
  is new noise per seed and the seeds-unit design keeps its error (at most α + 0.01).
  With one test set for every seed it is one offset shared by all seeds of a comparison:
  the design then tests the mean on *those* items, and claims a strategy that is no
  better on the item population far more often than α.
* fwer_fixed_items_unit_seeds_x_items: the same null family with one fixed test set,
  simulated as per-seed, per-item tables (`ITEMS` items, item effects fixed for the
  study), judged with the inference unit seeds × items: each look's variance carries
  the items' share (`analysis/item_variance.py`). It should keep the error within
  α + 0.01 where the seeds unit (printed beside it, on the same tables) does not.
* power: a family of one with a true difference of −δ (the strategy is better): the
  share that stop as superior.
* seeds_saved: 1 − (mean seeds used under that effect) / (seeds a fixed design needs
  for the same power, from `analysis.planning.seeds_for_t_test`), in percent.

The last line reads
`alpha=<nominal> type1=<measured> fwer=<measured> power=<measured> seeds_saved=<percent>`.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import numpy as np

from adaptive_lora.analysis.item_variance import item_share_by_look
from adaptive_lora.analysis.planning import seeds_for_t_test, t_test_power
from adaptive_lora.analysis.sequential import (
    DECISIONS,
    SequentialDesign,
    decide_matrix,
    looks_from_seeds,
    sequential_decisions,
)

ALPHA = 0.05
EFFECT = 0.65  # smallest effect of interest, in sd of the paired differences
FAMILY = 8
DESIGN = SequentialDesign(looks=looks_from_seeds(4, 24, 4), alpha=ALPHA, smallest_effect=EFFECT)
CLAIMS = (DECISIONS.index("superior"), DECISIONS.index("inferior"))


def seeds_used(result: dict[str, np.ndarray]) -> np.ndarray:
    """Seeds each comparison ran: its stopping look's n (the last look's if inconclusive)."""
    return result["n"]


def check_dict_api(rng: np.random.Generator, studies: int = 300) -> None:
    """`sequential_decisions` must agree with `decide_matrix` study by study."""
    diffs = rng.standard_normal((studies, DESIGN.looks[-1])) - 0.5
    core = decide_matrix(diffs, DESIGN, 1)
    last = len(DESIGN.looks) - 1
    for i in range(studies):
        got = sequential_decisions({"s": diffs[i]}, last, DESIGN)["s"]
        if got.decision != DECISIONS[core["code"][i]] or got.n != core["n"][i]:
            raise SystemExit(f"study {i}: sequential_decisions and decide_matrix disagree")


def null_family(rng: np.random.Generator, studies: int) -> np.ndarray:
    """(studies × FAMILY, n_max) differences of FAMILY null strategies against one baseline."""
    n_max = DESIGN.looks[-1]
    half = math.sqrt(0.5)  # each arm's noise sd, so a difference has sd 1
    baseline = half * rng.standard_normal((studies, 1, n_max))
    arms = half * rng.standard_normal((studies, FAMILY, n_max))
    return (arms - baseline).reshape(studies * FAMILY, n_max)


# sd of one 100-item test sample's mean difference, in units of the seeds' sd, from the
# map's eva cell at r4 (results/regime-map/report.md, 20 seeds): the seeds' t half-width
# 0.0010 gives a per-seed sd of 0.0021; the two-level (seeds × items) half-width 0.00145
# leaves an item share of the mean with sd 0.00056, about a quarter of it.
ITEM_SD = 0.25


def null_family_with_items(rng: np.random.Generator, studies: int, per_seed: bool) -> np.ndarray:
    """`null_family` plus each arm's test-item share: drawn afresh for every seed
    (per-seed splits) or once per study (one test set for all seeds)."""
    n_max = DESIGN.looks[-1]
    half = math.sqrt(0.5)
    shape = (studies, FAMILY + 1, n_max if per_seed else 1)  # the baseline is arm 0
    items = half * ITEM_SD * rng.standard_normal(shape)
    seeds = half * rng.standard_normal((studies, FAMILY + 1, n_max))
    arms = seeds + items  # broadcast over seeds when the items are shared
    return (arms[:, 1:] - arms[:, :1]).reshape(studies * FAMILY, n_max)


ITEMS = 100  # test items of one fixed test set (the map's Alpaca cells)


def fixed_item_tables(rng: np.random.Generator, studies: int) -> np.ndarray:
    """(studies × FAMILY, n_max, ITEMS) per-seed, per-item differences of FAMILY null
    strategies against one baseline, every seed scored on the same items: each arm is
    a_s + b_i + e_si, its item effects b_i fixed for the study. Scaled like
    `null_family_with_items(per_seed=False)`: a seed mean of a difference has sd 1 over
    seeds and the items' share of it sd ITEM_SD."""
    n_max, arms = DESIGN.looks[-1], FAMILY + 1
    half = math.sqrt(0.5)  # each arm carries half of every variance of a difference
    seed_sd, resid_sd = half * math.sqrt(0.5), half * math.sqrt(0.5 * ITEMS)
    item_sd = half * ITEM_SD * math.sqrt(ITEMS)
    y = (
        seed_sd * rng.standard_normal((studies, arms, n_max, 1))
        + item_sd * rng.standard_normal((studies, arms, 1, ITEMS))
        + resid_sd * rng.standard_normal((studies, arms, n_max, ITEMS))
    )
    return (y[:, 1:] - y[:, :1]).reshape(studies * FAMILY, n_max, ITEMS)


def fixed_items_by_unit(rng: np.random.Generator, studies: int) -> tuple[float, float]:
    """Family-wise error with one test set for all seeds, judged on seeds alone and on
    seeds × items (the items' share of each look's variance added, through
    `item_share_by_look`, the function `sequential_decisions` uses), on the same studies."""
    claims = {"seeds": 0.0, "seeds_x_items": 0.0}
    chunk = 250
    for start in range(0, studies, chunk):
        size = min(chunk, studies - start)
        tables = fixed_item_tables(rng, size)
        diffs = tables.mean(axis=2)
        item_var = np.array([item_share_by_look(t, DESIGN.looks) for t in tables])
        for unit, extra in (("seeds", None), ("seeds_x_items", item_var)):
            result = decide_matrix(diffs, DESIGN, FAMILY, item_var=extra)
            claims[unit] += family_error(result, size) * size
    return claims["seeds"] / studies, claims["seeds_x_items"] / studies


def family_error(result: dict[str, np.ndarray], studies: int) -> float:
    """Share of studies with any claim among their FAMILY comparisons."""
    return float(np.isin(result["code"], CLAIMS).reshape(studies, FAMILY).any(axis=1).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=50000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--item-studies", type=int, default=4000, help="studies of the seeds × items scenario"
    )
    args = parser.parse_args()
    n, rng, n_max = args.studies, np.random.default_rng(args.seed), DESIGN.looks[-1]
    start = time.perf_counter()
    check_dict_api(rng)

    null_diffs = rng.standard_normal((n, n_max))
    null = decide_matrix(null_diffs, DESIGN, 1)
    type1 = float(np.isin(null["code"], CLAIMS).mean())
    # the same studies without the (non-binding) futility stop: the spending alone
    binding_free = replace(DESIGN, smallest_effect=None)
    type1_spending = float(
        np.isin(decide_matrix(null_diffs, binding_free, 1)["code"], CLAIMS).mean()
    )
    family = decide_matrix(null_family(rng, n), DESIGN, FAMILY)
    fwer = family_error(family, n)
    per_seed = family_error(decide_matrix(null_family_with_items(rng, n, True), DESIGN, FAMILY), n)
    fixed_items = family_error(
        decide_matrix(null_family_with_items(rng, n, False), DESIGN, FAMILY), n
    )
    alt = decide_matrix(rng.standard_normal((n, n_max)) - EFFECT, DESIGN, 1)
    power = float((alt["code"] == DECISIONS.index("superior")).mean())
    mean_seeds = float(seeds_used(alt).mean())
    fixed = seeds_for_t_test(EFFECT, 1.0, power=power, alpha=ALPHA)
    saved = 100.0 * (1.0 - mean_seeds / fixed)
    # last, so the figures above draw the same numbers they always did
    unit_seeds, unit_items = fixed_items_by_unit(rng, args.item_studies)

    se = math.sqrt(ALPHA * (1 - ALPHA) / n)
    print(f"design: looks {DESIGN.looks}, α = {ALPHA}, two-sided, {DESIGN.spending},")
    print(f"  futility at δ = {EFFECT} sd; {n:,} studies per scenario (MC se at α: {se:.4f})")
    for label, res in (("null, 1", null), ("null, 8", family), ("effect δ, 1", alt)):
        counts = np.bincount(res["code"], minlength=len(DECISIONS)) / res["code"].size
        shares = ", ".join(f"{d} {c:.3f}" for d, c in zip(DECISIONS, counts) if c)
        print(f"  {label}: mean seeds {seeds_used(res).mean():.2f} of {n_max}; {shares}")
    print(f"type1 without the futility stop (the spending alone): {type1_spending:.4f}")
    print(
        f"fixed design for power {power:.3f}: {fixed} seeds "
        f"(a fixed {n_max}: power {t_test_power(n_max, EFFECT, 1.0, alpha=ALPHA):.3f}); "
        f"sequential mean under the effect: {mean_seeds:.2f}"
    )
    print(
        f"null family of {FAMILY} with test items (item sd {ITEM_SD:g} × the seeds'): "
        f"per-seed splits {per_seed:.4f}, one test set for all seeds {fixed_items:.4f}"
    )
    print(
        f"one test set of {ITEMS} items for all seeds, {args.item_studies:,} studies of "
        f"per-item tables: unit seeds {unit_seeds:.4f}, unit seeds × items {unit_items:.4f}"
    )
    print(f"({time.perf_counter() - start:.1f}s)")
    print(
        f"alpha={ALPHA:g} type1={type1:.4f} fwer={fwer:.4f} power={power:.4f} "
        f"seeds_saved={saved:.1f}% fwer_per_seed_splits={per_seed:.4f} "
        f"fwer_fixed_items={fixed_items:.4f} fwer_fixed_items_unit_seeds_x_items={unit_items:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
