"""The numbers of a report, computed once from the store and written to stats.json.

Besides the per-budget comparisons: the hypotheses the study declared before its runs
(their alternative decides the headline tests' sidedness), each comparison's two-level
interval where every run stored per-item records, each cell's sequential decisions when
seeds are sequential, and how firmly each learning rate was chosen.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from adaptive_lora.analysis import margin_tests, paired
from adaptive_lora.analysis.descriptive import describe, mean_ci_t
from adaptive_lora.analysis.pairing import pair_by_seed
from adaptive_lora.evaluation_metrics import CUT_OFF_KEYS, METRICS, PRIMARY_METRIC
from adaptive_lora.report.cross_budget import cross_budget
from adaptive_lora.report.environment_check import check_environment
from adaptive_lora.report.lr_spread import spread
from adaptive_lora.report.recovery import recovery_block
from adaptive_lora.report.timing import compute_time
from adaptive_lora.report.two_level import add_two_level
from adaptive_lora.study.lr import LrChoice, chosen_rate_rows
from adaptive_lora.study.sequential_seeds import cell_decisions
from adaptive_lora.study.spec import Study
from adaptive_lora.study.store import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    RunRow,
)

PRIMARY = PRIMARY_METRIC  # the metric registry's, under the name report/ reads


# (metric key, name in prose, lower is better): validation loss, then every task metric
# of the registry (a column and a paired test appear for those the runs recorded).
_NAMES = {"rouge_l": "ROUGE-L", "exact_match": "exact match"}


def metric_words(name: str) -> str:
    """A task metric's name in the report's prose and tables."""
    return _NAMES.get(name, name.replace("_", " "))


SECONDARY = (("val_loss", "validation loss", True),) + tuple(
    (name, metric_words(name), False) for name in METRICS
)


LOSS_DECIMALS = 4


def _value(row: RunRow, key: str) -> float:
    value = row.metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def summarise(by_seed: dict[int, float]) -> dict[str, Any]:
    """`describe` of the finite values, plus the 95% t interval of their mean."""
    finite = [v for v in by_seed.values() if math.isfinite(v)]
    out = describe(finite)
    out["ci_t"] = mean_ci_t(finite)
    out["values"] = {k: by_seed[k] for k in sorted(by_seed)}
    return out


def analyse(
    study: Study, rows: list[RunRow], *, n_boot: int = 10000, boot_seed: int = 0
) -> dict[str, Any]:
    """Everything the report shows (also written as stats.json): plain data, with each
    comparison a `FamilyComparison` (`analysis/comparison.py`), written in field order.

    Only reported runs enter a statistic (`reported_rows`): finished, on a reporting
    seed, at their strategy × budget's chosen learning rate.
    """
    choices = study.select_lr(rows)
    reported = reported_rows(study, rows, choices)
    analysis = _overview(study, rows, choices)
    analysis["hypotheses"] = hypotheses_block(study)
    analysis["environment_check"] = check_environment(reported)
    cut_off = cut_off_block(reported)
    if cut_off is not None:  # only runs that record it: an older study's stats are unchanged
        analysis["cut_off_answers"] = cut_off
    for budget in study.budgets:
        analysis["budgets"][budget] = _budget_block(
            study, budget, reported, choices, n_boot, boot_seed
        )
        analysis["budgets"][budget]["sequential"] = _sequential(study, rows, budget)
    recovery = recovery_block(reported, {b: study.baseline_at(b) for b in study.budgets}, PRIMARY)
    if recovery is not None:  # a planted task only: other studies' stats are unchanged
        analysis["recovery"] = recovery
    if study.cross_budget is not None:
        blocks = analysis["budgets"]
        losses = {
            b: {label: e[PRIMARY]["values"] for label, e in block["strategies"].items()}
            for b, block in blocks.items()
        }
        params = {
            b: {label: e["effective_params"]["mean"] for label, e in block["strategies"].items()}
            for b, block in blocks.items()
        }
        analysis["cross_budget"] = cross_budget(
            study.cross_budget, study.baseline, losses, params, declared_margin=_margin(study)
        )
    return analysis


def cut_off_block(rows: list[RunRow]) -> dict[str, Any] | None:
    """Over the reported runs that count them: the answers generated, how many stopped at
    the token limit, and how many of those without an answer line (None: no run counted).
    A run answers its first `eval.n_generate` test items (all of them, when fewer)."""
    counted = [r for r in rows if isinstance(r.metrics.get(CUT_OFF_KEYS[0]), int)]
    if not counted:
        return None

    def answered(row: RunRow) -> int:
        return min(row.config["eval"]["n_generate"], row.config["data"]["n_test"])

    return {
        "runs": len(counted),
        "answers": sum(answered(r) for r in counted),
        "at_token_limit": sum(r.metrics[CUT_OFF_KEYS[0]] for r in counted),
        "without_answer_line": sum(r.metrics.get(CUT_OFF_KEYS[1]) or 0 for r in counted),
    }


def study_at(study: Any, block: dict[str, Any]) -> Any:
    """The study as one budget's tables, verdicts and figures see it: its baseline that
    budget's (the study itself where that is the study's one baseline)."""
    baseline = block.get("baseline") or study.baseline
    return study if baseline == study.baseline else dataclasses.replace(study, baseline=baseline)


def _hypotheses(study: Study) -> Any:
    return getattr(study, "hypotheses", None)


def hypotheses_block(study: Study) -> dict[str, Any]:
    """What the study declared before its runs (`given` False: nothing, the defaults)."""
    declared = _hypotheses(study)
    block = declared.to_dict() if declared is not None else {"given": False}
    plan = getattr(study, "seed_plan", None)
    block["seed_plan"] = plan.to_dict() if plan is not None else None
    return block


def _margin(study: Study) -> float | None:
    """The equivalence margin declared in the hypotheses (None when none was)."""
    declared = _hypotheses(study)
    return declared.margin if declared is not None and declared.given else None


def _alternatives(study: Study, labels: list[str]) -> dict[str, str]:
    """Each comparison's declared alternative (two-sided when nothing was declared)."""
    declared = _hypotheses(study)
    if declared is None:
        return {label: "two-sided" for label in labels}
    return {label: declared.for_comparison(label).alternative for label in labels}


def _sequential(study: Study, rows: list[RunRow], budget: str) -> dict[str, Any]:
    """Each comparison's sequential decision in this cell ({} with fixed seeds)."""
    if getattr(study, "seed_plan", None) is None:
        return {}
    decisions = cell_decisions(study, rows, budget)
    return {label: dataclasses.asdict(d) for label, d in decisions.items()}


def reported_rows(
    study: Study, rows: list[RunRow], choices: dict[tuple[str, str], LrChoice]
) -> list[RunRow]:
    """The rows every reported statistic is computed from: never a tuning seed's."""
    return chosen_rate_rows(rows, choices, study.lr_tuning_seeds)


def _overview(
    study: Study, rows: list[RunRow], choices: dict[tuple[str, str], LrChoice]
) -> dict[str, Any]:
    counts = {
        status: sum(1 for r in rows if r.status == status)
        for status in (DONE, FAILED, RUNNING, PENDING)
    }
    counts[PENDING] += len(study.runs) - len(rows)  # specs never stored yet
    return {
        "study": study.name,
        "baseline": study.baseline,
        "spec_hash": study.spec_hash,
        "n_runs": len(study.runs),
        "counts": counts,
        "protocol": {
            "reporting_seeds": study.seeds,
            "lr_tuning_seeds": study.lr_tuning_seeds,
            "tuning_excluded": bool(study.lr_tuning_seeds),
        },
        "lr_selection": [_with_spread(c.to_dict(), rows) for c in choices.values()],
        "compute": compute_time(rows),
        "budgets": {},
    }


def _with_spread(choice: dict[str, Any], rows: list[RunRow]) -> dict[str, Any]:
    choice["spread"] = spread(choice, rows)
    return choice


def _seeds_due(study: Study, label: str, budget: str) -> list[int]:
    """The reporting seeds a strategy × budget is to run: those its expanded runs have (a
    sequential comparison decided at a look gets no more), else, while tuning still
    chooses its rate, the first look's seeds (every seed with fixed seeds)."""
    due = sorted(
        {s.seed for s in study.runs if not s.tuning and s.label == label and s.budget == budget}
    )
    if due:
        return due
    plan = study.seed_plan
    return list(study.seeds[: plan.looks[0]] if plan is not None else study.seeds)


def _strategy_entry(
    study: Study, lr: float | None, runs: list[RunRow], lr_edge: str = "", *, due: list[int]
) -> dict[str, Any]:
    def described(key: str) -> dict[str, Any]:
        return describe([v for r in runs if math.isfinite(v := _value(r, key))])

    return {
        "lr": lr,
        "lr_edge": lr_edge,  # "largest"/"smallest": the chosen rate is an end of its grid
        "seeds": [r.seed for r in runs],
        "missing_seeds": [s for s in due if s not in {r.seed for r in runs}],
        "run_ids": [r.id for r in runs],
        PRIMARY: summarise({r.seed: _value(r, PRIMARY) for r in runs}),
        "trainable_params": described("trainable_params"),
        # AdaLoRA trains with more parameters than it keeps: its final count is this one.
        "effective_params": described("effective_params"),
        "deviation_pct": described("deviation_pct"),
        "effective_deviation_pct": described("effective_deviation_pct"),
        "train_seconds": described("train_seconds"),
        "wall_seconds": describe([r.seconds for r in runs if r.seconds]),
    }


def _budget_block(
    study: Study,
    budget: str,
    reported: list[RunRow],
    choices: dict[tuple[str, str], LrChoice],
    n_boot: int,
    boot_seed: int,
) -> dict[str, Any]:
    labels = [label for label in study.labels if budget in study.budgets_for(label)]
    chosen = {
        label: sorted(
            (r for r in reported if r.label == label and r.budget == budget), key=lambda r: r.seed
        )
        for label in labels
    }
    strategies = {
        label: _strategy_entry(
            study,
            choices[(label, budget)].chosen,
            runs,
            choices[(label, budget)].edge,
            due=_seeds_due(study, label, budget),
        )
        for label, runs in chosen.items()
    }
    primary = {label: {r.seed: _value(r, PRIMARY) for r in runs} for label, runs in chosen.items()}
    baseline = study.baseline_at(budget)
    comparisons = (
        paired.compare_family(
            primary,
            baseline,
            n_boot=n_boot,
            seed=boot_seed,
            metric="test loss",
            alternative=_alternatives(study, labels),
        )
        if len(primary) > 1 and baseline in primary
        else {}
    )
    add_two_level(comparisons, chosen, baseline, n_boot=n_boot, seed=boot_seed)
    block = {
        "strategies": strategies,
        "comparisons": comparisons,
        "secondary": _secondary(study, chosen, n_boot, boot_seed, baseline),
    }
    declared = _declared_tests(study, primary, baseline)
    if declared:  # fixed seeds with a declared effect or margin: other stats are unchanged
        block["declared_tests"] = declared
    if baseline != study.baseline:  # only then: a study of one baseline keeps its stats
        block["baseline"] = baseline
    return block


def _declared_tests(
    study: Study, primary: dict[str, dict[int, float]], baseline: str
) -> dict[str, Any]:
    """With fixed seeds, the declared smallest effect and margin tested on each
    comparison's paired differences (`margin_tests`); {} with sequential seeds (their
    decisions apply both) or where nothing was declared."""
    declared = _hypotheses(study)
    fixed = getattr(study, "seed_plan", None) is None
    if not (fixed and declared is not None and declared.given and baseline in primary):
        return {}
    plans, diffs = {}, {}
    for label, by_seed in primary.items():
        own = declared.for_comparison(label)
        if label == baseline or (own.smallest_effect is None and own.margin is None):
            continue
        plans[label] = (own.alternative, own.smallest_effect, own.margin)
        # The differences the comparison's own tests use (`pair_by_seed`).
        diffs[label] = list(pair_by_seed(by_seed, primary[baseline]).diffs)
    return margin_tests.declared_tests(diffs, plans) if plans else {}


def _secondary(
    study: Study, chosen: dict[str, list[RunRow]], n_boot: int, boot_seed: int, baseline: str
) -> dict[str, Any]:
    secondary = {}
    for key, name, lower in SECONDARY:
        values = {label: {r.seed: _value(r, key) for r in runs} for label, runs in chosen.items()}
        if not any(math.isfinite(v) for by_seed in values.values() for v in by_seed.values()):
            continue
        secondary[key] = {
            "name": name,
            "lower_is_better": lower,
            "summary": {label: summarise(v) for label, v in values.items()},
            "comparisons": paired.compare_family(
                values,
                baseline,
                lower_is_better=lower,
                n_boot=n_boot,
                seed=boot_seed,
                metric=name,
            )
            if len(values) > 1 and baseline in values
            else {},
        }
    return secondary


_ENV_WORDS = (
    "version",
    "device",
    "host",
    "git",
    "commit",
    "cpu",
    "gpu",
    "cuda",
    "platform",
    "thread",
    "python",
    "torch",
    "transformers",
    "peft",
    "sha256",
    "fingerprint",
    "hash",
    "dtype",
    "precision",
    "matrix",  # the CPU's matrix-instruction family (bf16 numbers differ across them)
    "kernel",
)


_ENV_SKIP = ("second", "time", "started", "ended", "date", "load_")


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    else:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[prefix] = text if len(text) <= 100 else text[:97] + "..."


def environment(rows: list[RunRow], limit: int = 40) -> dict[str, list[str]]:
    """Versions, device, host, commits and fingerprints recorded in the run manifests.

    Several distinct values for one key are all listed: a study whose runs ran
    under different versions says so.
    """
    found: dict[str, set[str]] = {}
    for row in rows:
        if row.status != DONE:
            continue
        flat: dict[str, str] = {}
        _flatten("", row.manifest, flat)
        for key, text in flat.items():
            low = key.lower()
            if any(w in low for w in _ENV_WORDS) and not any(s in low for s in _ENV_SKIP):
                found.setdefault(key, set()).add(text)
    return {key: sorted(found[key]) for key in sorted(found)[:limit]}
