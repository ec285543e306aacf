"""report.md: hypotheses, answer, status, results, cross-budget, learning rates, set-up,
figures, notes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adaptive_lora.analysis.comparison import FamilyComparison
from adaptive_lora.analysis.formatting import fmt_g, fmt_num, fmt_p, fmt_sig
from adaptive_lora.evaluation_metrics import metrics_of_source
from adaptive_lora.report.analyse import (
    LOSS_DECIMALS,
    PRIMARY,
    environment,
    metric_words,
    study_at,
)
from adaptive_lora.report.answer import answer_lines
from adaptive_lora.report.cells import (
    _columns,
    _interval,
    _seed_range,
    figure_lines,
    file_slug,
    main_table_rows,
    markdown_table,
    mean_and_ci,
)
from adaptive_lora.report.cross_budget import margin_words, verdict_lines
from adaptive_lora.report.environment_check import describe as describe_environment
from adaptive_lora.report.hypotheses import hypotheses_lines, sequential_lines
from adaptive_lora.report.recovery import recovery_lines
from adaptive_lora.report.regime import LADDER_TITLE, ladder_lines
from adaptive_lora.report.timing import compute_line
from adaptive_lora.report.two_level import WHY_T
from adaptive_lora.study.item_tables import NO_RECORDS, NON_FINITE, ONE_SEED, OTHER_ITEMS
from adaptive_lora.study.spec import Study
from adaptive_lora.study.store import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    RunRow,
    count_statuses,
)

QUESTION = (
    "At the same number of trainable parameters, do LoRA adapters whose rank differs "
    "between layers and module kinds beat a uniform rank?"
)


def split_sentence(data: Any) -> str:
    """How the study's data were split, and what that lets its answer mean."""
    if data.split == "per_seed":
        return (
            "Each seed draws its own split from the pool (both strategies of a seed's pair "
            "share it), so the test items vary with the seed."
        )
    generated = str(data.source).startswith(("reasoning_gym:", "planted"))
    order = (
        "test set drawn first, the same for every training size"
        if data.split == "test_first" or generated  # a generated task always drew it first
        else "drawn training first, the order before 2026-12-07, so another training size "
        "would have drawn other test items"
    )
    return (
        f"One fixed split ({order}): the answer is conditional on these {data.n_test} test items."
    )


def baseline_words(study: Study) -> str:
    """The baseline as prose: "`uniform`", or "`uniform` (`peft_default` at qv:r1)"."""
    own = getattr(study, "baseline_by_budget", None) or {}
    if not own:
        return f"`{study.baseline}`"
    at = "; ".join(f"`{label}` at {budget}" for budget, label in own.items())
    return f"`{study.baseline}` ({at})"


def _placed_budgets_note(study: Study) -> str:
    """How a `qv:rN` budget is counted, for a study that has one (else nothing)."""
    if not any(b.placement == "qv" for b in study.budget_values):
        return ""
    return (
        ", `qv:rN` that of rank N on the modules PEFT adapts by default on the model (q "
        "and v on Llama)"
    )


def _lr_sentence(study: Study) -> str:
    """How the learning rates were found, for the set-up's data line."""
    tuned = [label for label in study.labels if len(study.lrs_for(label)) > 1]
    if len(tuned) == len(study.labels):
        return "Learning rates are chosen on validation"
    if not tuned:
        one = len({study.lrs_for(label) for label in study.labels}) == 1
        return (
            f"One learning rate{'' if one else ' per strategy'}, not tuned (no rate is chosen "
            "on validation)"
        )
    fixed = [label for label in study.labels if label not in tuned]
    return (
        f"Learning rates are chosen on validation for {', '.join(tuned)}; "
        f"{', '.join(fixed)} {'runs' if len(fixed) == 1 else 'run'} at one rate, not tuned"
    )


def _evaluation_line(config: Any, cut_off: dict[str, Any] | None) -> str:
    """The set-up's evaluation line: the metrics the runs were scored by (the study's
    `eval.metrics`, else the data's default, and those every run records), how many
    answers, and how many of them the token limit cut off where the runs counted it."""
    d, e = config.data, config.eval
    named, also = metrics_of_source(e.metrics, d.source)
    line = (
        f"- **Evaluation:** test loss; {_joined(metric_words(m) for m in named)} on "
        f"{min(e.n_generate, d.n_test)} generated answers ({e.max_new_tokens} new tokens)"
    )
    if e.answer_pattern:
        line += f", each answer read where the declared pattern `{e.answer_pattern}` finds it"
    line += "."
    if also:
        verb = "is" if len(also) == 1 else "are"
        line += f" {_joined(metric_words(m) for m in also)} {verb} recorded on every run as well."
    if cut_off is not None:
        scored = "final_number" in named + also
        line += " " + _cut_off_sentence(cut_off, e, scored)
    return line


def _cut_off_sentence(cut: dict[str, Any], evaluation: Any, final_number: bool) -> str:
    """How many answers the token limit cut off (and, where final_number scores them, how
    many without an answer line: wrong whatever their last number)."""
    text = (
        f"Of the {cut['answers']} answers of the {cut['runs']} reported run(s), "
        f"{cut['at_token_limit']} stopped at the {evaluation.max_new_tokens}-token limit"
    )
    if not final_number:
        return text + "."
    line = "a match of the declared pattern" if evaluation.answer_pattern else "a `#### N` line"
    return text + (
        f", {cut['without_answer_line']} of them without an answer line ({line}): "
        "`final_number` scores those wrong, whatever number they ended on."
    )


def _joined(words: Any) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _setup_lines(
    study: Study, store_manifest: dict[str, Any], rows: list[RunRow], analysis: dict
) -> list[str]:
    config = study.runs[0].config
    d, t, a = config.data, config.train, config.allocation
    steps = f"{t.max_steps} step(s)" if t.max_steps else f"{t.epochs:g} epoch(s)"
    lines = [
        "## Set-up",
        "",
        f"- **Model:** `{study.model}`",
        f"- **Data:** `{d.source}`: {d.n_train} train / {d.n_val} validation / {d.n_test} "
        f"test examples (data seed {d.data_seed}, max length {d.max_length} tokens, "
        f"`{d.template}` template). {split_sentence(d)} {_lr_sentence(study)}; every "
        "reported number is on test.",
        f"- **Budgets:** {', '.join(study.budgets)}. `rN` is the parameter count of rank N on "
        f"every target module{_placed_budgets_note(study)}; each strategy is apportioned to "
        "that count (the table shows the exact trainable count and its deviation).",
        f"- **Target modules:** `{a.target}`; ranks between {a.min_rank} and "
        f"{a.max_rank if a.max_rank is not None else 'unbounded'}.",
        f"- **Seeds:** {_seed_range(study.seeds)}; a seed fixes data order and adapter "
        "initialisation, so comparisons are paired by seed.",
        f"- **Training:** AdamW, {steps}, batch {t.batch_size} × {t.grad_accum} "
        f"accumulation, {t.scheduler} schedule with {t.warmup_ratio:g} warm-up, precision "
        f"`{t.precision}`; α/r = {config.adapter.alpha_ratio:g}"
        f"{' (rsLoRA)' if config.adapter.rslora else ''}, dropout {config.adapter.dropout:g}.",
        _evaluation_line(config, analysis.get("cut_off_answers")),
        f"- **Baseline:** {baseline_words(study)}.",
        "",
        "| strategy | allocation | parameters | learning rate(s) |",
        "|---|---|---|---|",
    ]
    for entry in study.strategies:
        params = ", ".join(f"{k}={v}" for k, v in entry.params.items()) or "defaults"
        lrs = ", ".join(f"{lr:g}" for lr in study.lrs_for(entry.label))
        lines.append(f"| {entry.label} | `{entry.name}` | {params} | {lrs} |")
    env = environment(rows)
    lines += ["", "**Environment recorded by the runs:**", ""]
    if env:
        lines += [f"- `{key}`: {', '.join(values)}" for key, values in env.items()]
        lines += _commits_note(env)
    else:
        lines.append("- (no run manifest holds version or device information)")
    warnings = {"differ": {}, "warnings": analysis["environment_check"]["warnings"]}
    lines += describe_environment(warnings)
    versions = store_manifest.get("versions") or {}
    git = store_manifest.get("git") or {}
    lines += [
        "",
        "**Study process (last `adaptive-lora run`):** host "
        f"`{store_manifest.get('host', 'n/a')}`, {store_manifest.get('cpu_count', 'n/a')} CPUs, "
        f"{store_manifest.get('platform', 'n/a')}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
        + f"; git commit `{git.get('commit') or 'n/a'}`"
        + (" (with local changes)" if git.get("dirty") else "")
        + f"; spec hash `{study.spec_hash}`.",
        "",
    ]
    return lines


def _commits_note(env: dict[str, list[str]]) -> list[str]:
    """Why runs from several commits are still one environment (when they are)."""
    commits = env.get("git_commit", [])
    versions = env.get("numerics_version", [])
    if len(commits) < 2 or len(versions) > 1:
        return []
    span = (
        f"The runs span {len(commits)} git commits (`-dirty`: the work tree had changes when "
        "the run started)"
    )
    if versions:
        return [
            "",
            f"{span} but share numerics version {versions[0]}: a commit bumps it only when it "
            "means to change a run's numbers (the golden re-runs fail on any other change "
            "that does), and `report` pools runs only when it is the same; the "
            "`source_hash` values are provenance.",
        ]
    if len(env.get("source_hash", [])) != 1:
        return []
    return [  # runs recorded before numerics versions were: their source hash stands in
        "",
        f"{span} but share one `source_hash`, the hash of the sources a run "
        "computes with: commits that change only the study, report, analysis or command "
        "code, or the committed results, leave it unchanged, and `report` pools runs only "
        "when it is the same.",
    ]


def _status_lines(study: Study, analysis: dict[str, Any]) -> list[str]:
    counts, total = analysis["counts"], analysis["n_runs"]
    missing = total - counts[DONE]
    lines = [
        "## Status",
        "",
        f"{counts[DONE]} of {total} runs done, {counts[FAILED]} failed, "
        f"{counts[RUNNING]} running, {counts[PENDING]} not yet run.",
        "",
        compute_line(analysis["compute"]),
    ]
    lines += _not_run_lines(study)
    if missing:
        lines += [
            "",
            f"**{missing} run(s) are missing.** The comparisons use only the seeds present "
            f"for both the strategy and {baseline_words(study)} (paired seeds); the numbers will "
            "change when the study is complete.",
        ]
        for budget, block in analysis["budgets"].items():
            for label, entry in block["strategies"].items():
                if entry["missing_seeds"]:
                    lines.append(
                        f"- {label} @ {budget}: no result for seed(s) "
                        f"{', '.join(map(str, entry['missing_seeds']))}"
                    )
    return lines + [""]


def _sentence(text: str) -> str:
    """`text` ending in one full stop (a note typed with its own keeps just that one)."""
    return text if text.rstrip().endswith((".", "!", "?")) else text + "."


def outside_lines(statuses: Mapping[str, str], study: Study) -> list[str]:
    """Stored runs the study file no longer expands to (run id → state) — its design
    narrowed after they ran (cells moved to another study, say): kept in the store, never
    reported, and said so, since a reader counting the store's runs would otherwise miss
    them."""
    if not statuses:
        return []
    return [
        f"**{len(statuses)} stored run(s) are no longer in the study file** "
        f"({count_statuses(statuses.values())}): kept in the store and left out of every "
        "number here (`stats.json` lists them under `outside_study_file`; "
        f"`adaptive-lora status {study.path}` counts them).",
        "",
    ]


def _not_run_lines(study: Study) -> list[str]:
    """Strategy × budget pairs the study leaves out by design (a strategy's own `budgets:`)."""
    lines = []
    for budget in study.budgets:
        skipped = [label for label in study.labels if budget not in study.budgets_for(label)]
        if skipped:
            lines.append(
                f"- not run at {budget} (the study lists them at other budgets only): "
                + ", ".join(skipped)
            )
    if not lines:
        return []
    return ["", "Left out by the study's design (its description says why, where it does):", *lines]


def _results_lines(study: Study, analysis: dict[str, Any]) -> list[str]:
    """Per budget: the main table, what the comparisons found, and the secondary metrics."""
    lines: list[str] = []
    for budget, block in analysis["budgets"].items():
        here = study_at(study, block)  # this budget's baseline, where it has its own
        lines += [f"## Test loss at budget {budget}", ""]
        if here is not study:
            lines += [f"At this budget every strategy is compared with `{here.baseline}`.", ""]
        cells = main_table_rows(here, block)
        columns = _columns(here)
        lines += markdown_table(
            [h for _, h in columns], [[c[k] for k, _ in columns] for c in cells]
        )
        lines += _comparison_lines(here, block["comparisons"])
        lines += _two_level_lines(block["comparisons"])
        lines += sequential_lines(here.baseline, block.get("sequential") or {})
        if block["secondary"]:
            lines += _secondary_lines(here, budget, block)
    return lines


def _comparison_lines(study: Study, comparisons: dict[str, FamilyComparison]) -> list[str]:
    """The legend, the Wilcoxon floors, one verdict per comparison, and the caveats."""
    k = len(comparisons)
    if not k:  # e.g. the baseline alone at the larger budget of a cross-budget question
        return ["", f"Only `{study.baseline}` runs at this budget: nothing to compare here.", ""]
    lines = [
        "",
        f"Δ = strategy − {study.baseline} (negative: lower test loss, better). Intervals "
        "are 95% t intervals over seeds. p-values: paired t-test and Wilcoxon signed-rank "
        f"test, {_sides(comparisons)}, Holm-corrected across the {k} "
        f"comparison{'s' if k != 1 else ''} at this budget. d_z = mean Δ / sd Δ.",
        "",
    ]
    lines += _floor_lines(comparisons)
    for comparison in comparisons.values():
        lines.append(f"- {comparison.verdict}")
    caveats = _caveats_by_strategy(comparisons)
    if caveats:
        lines += ["", "Caveats from the statistics:", ""]
        lines += [f"- {w} ({who})" for w, who in caveats]
    return lines + [""]


def _sides(comparisons: dict[str, FamilyComparison]) -> str:
    """The tests' sidedness in words, as declared (two-sided when nothing was)."""
    sides = {c.alternative for c in comparisons.values()}
    if sides == {"two-sided"}:
        return "two-sided"
    if sides == {"less"}:
        return "one-sided as declared (strategy − baseline < 0)"
    if sides == {"greater"}:
        return "one-sided as declared (strategy − baseline > 0)"
    return "each with its declared sidedness (one-sided p-values are marked in the verdicts)"


def _floor_lines(comparisons: dict[str, FamilyComparison]) -> list[str]:
    """Each Wilcoxon floor that keeps a comparison from alpha, with Holm's factor."""
    floors = sorted(
        {
            (c.n, c.alternative, c.family_size, c.wilcoxon_floor_p, c.wilcoxon_holm_floor_p)
            for c in comparisons.values()
            if c.n >= 2 and not c.can_reach_significance
        }
    )  # fmt: skip
    lines = []
    for n, alternative, m, floor, holm_floor in floors:
        sided = "two-sided" if alternative == "two-sided" else "one-sided"
        tails = "2" if sided == "two-sided" else "1"
        text = (
            f"With {n} paired seeds{f' and Holm over {m} comparisons' if m > 1 else ''}, a "
            f"{sided} Wilcoxon signed-rank test cannot reach p < 0.05: its smallest possible "
            f"p-value is {tails}/2^{n} = {fmt_g(floor)}"
        )
        if m > 1:
            text += f", and Holm multiplies the smallest by {m}: {fmt_g(holm_floor)}"
        lines += [text + " (`can_reach_significance: false` in stats.json).", ""]
    return lines


# Why a comparison's interval is over seeds alone (`two_level.seed_only_reason`), in the
# report's words: a sentence when no comparison at a budget has a two-level interval, and a
# table cell beside those that do.
_SEED_ONLY = {
    ONE_SEED: "No interval over seeds, nor a two-level one over seeds × test items: these "
    "comparisons have fewer than two paired seeds",
    NO_RECORDS: "Intervals generalise over seeds only: not every run of these comparisons "
    "stored per-item test records, so the test items cannot be resampled",
    OTHER_ITEMS: "Intervals generalise over seeds only: the runs' per-item records are not of "
    "the same test items (or not with the same token counts), so items cannot be paired "
    "across runs",
    NON_FINITE: "Intervals generalise over seeds only: a run's per-item test losses are not "
    "all finite",
}
_SEED_ONLY_SHORT = {
    ONE_SEED: "fewer than two paired seeds",
    NO_RECORDS: "a run without per-item records",
    OTHER_ITEMS: "runs with different test items",
    NON_FINITE: "non-finite per-item losses",
}


def _seed_only_lines(comparisons: dict[str, FamilyComparison]) -> list[str]:
    """Why no comparison at a budget has a two-level interval: one sentence per cause, each
    naming its comparisons when the causes differ between them."""
    by_cause: dict[str, list[str]] = {}
    for label, c in comparisons.items():
        by_cause.setdefault(c.seed_only_reason, []).append(label)
    if len(by_cause) == 1:
        return [_SEED_ONLY[next(iter(by_cause))] + ".", ""]
    return [
        " ".join(f"{_SEED_ONLY[cause]} ({', '.join(who)})." for cause, who in by_cause.items()),
        "",
    ]


def _two_level_lines(comparisons: dict[str, FamilyComparison]) -> list[str]:
    """The two-level (seeds × items) interval beside the t interval, where runs allow it."""
    if not comparisons:
        return []
    if not any(c.two_level for c in comparisons.values()):
        return _seed_only_lines(comparisons)
    rows = []
    for label, c in comparisons.items():
        level = c.two_level
        two = (
            mean_and_ci(level["mean_diff"], level["ci"])
            + f" ({level['n_seeds']} seeds × {level['n_items']} items)"
            if level
            else f"— ({_SEED_ONLY_SHORT[c.seed_only_reason]})"
        )
        rows.append([label, mean_and_ci(c.mean_diff, c.ci_t), two])
    return [
        *markdown_table(
            [
                "strategy",
                "Δ [95% t interval, seeds]",
                "Δ [95% two-level interval, seeds × items]",
            ],
            rows,
        ),
        "",
        "Two-level interval: a bootstrap that resamples seeds and test items together "
        "(each item's loss difference weighted by its response tokens, as the test loss "
        f"is). {WHY_T[0].upper() + WHY_T[1:]}.",
        "",
    ]


def _caveats_by_strategy(
    comparisons: dict[str, FamilyComparison],
) -> list[tuple[str, str]]:
    """Each caveat once, with the strategies it concerns ("all comparisons" when it
    concerns every one): a dropped seed means something only beside its strategy."""
    concerned: dict[str, list[str]] = {}
    for strategy, comparison in comparisons.items():
        for warning in comparison.warnings:
            if "Wilcoxon test cannot reach" not in warning:  # said above, with the floor
                concerned.setdefault(warning, []).append(strategy)
    return [
        (warning, "all comparisons" if len(who) == len(comparisons) > 1 else ", ".join(who))
        for warning, who in sorted(concerned.items())
    ]


def _secondary_lines(study: Study, budget: str, block: dict[str, Any]) -> list[str]:
    """The secondary metrics of one budget: mean [95% t interval] and Holm p per strategy."""
    header = ["strategy", "n"] + [
        f"{m['name']} ({'lower' if m['lower_is_better'] else 'higher'} is better)"
        for m in block["secondary"].values()
    ]
    table = []
    for label in block["strategies"]:
        row = [label, str(block["strategies"][label][PRIMARY]["n"])]
        for metric in block["secondary"].values():
            summary = metric["summary"][label]
            text = _interval(summary, LOSS_DECIMALS if metric["lower_is_better"] else 3)
            comparison = metric["comparisons"].get(label)
            if comparison and comparison.n >= 2:
                text += f"; p = {fmt_p(comparison.p_t_holm)}"
            row.append(text)
        table.append(row)
    return [
        f"### Secondary metrics at budget {budget}",
        "",
        *markdown_table(header, table),
        "",
        "Mean [95% t interval]"
        + (
            f"; p: paired t-test against {study.baseline}, Holm-corrected per metric."
            if block["comparisons"]
            else "."
        ),
        "",
    ]


def _untuned_lr_lines(study: Study) -> list[str]:
    """The learning-rate section of a study that tuned none: the rate(s) the runs used."""
    rates = {label: study.lrs_for(label)[0] for label in study.labels}
    if len(set(rates.values())) == 1:
        used = f"every run trained at learning rate {next(iter(rates.values())):g}"
    else:
        used = "each strategy trained at its own rate: " + ", ".join(
            f"{label} {rate:g}" for label, rate in rates.items()
        )
    return [
        "## Learning rate",
        "",
        f"One rate, not tuned: {used}; none was chosen on validation, so a difference "
        "between strategies may be in part how well that one rate suits each.",
        "",
    ]


def _lr_lines(study: Study, analysis: dict[str, Any]) -> list[str]:
    if not study.tunes_lr:
        return _untuned_lr_lines(study)
    protocol = analysis["protocol"]
    if protocol["tuning_excluded"]:
        how = (
            f"Candidates were tried on the tuning seed(s) {protocol['lr_tuning_seeds']} only; "
            "per strategy and budget the rate with the lowest mean validation loss was "
            f"chosen, and the reporting seeds ({_seed_range(protocol['reporting_seeds'])}) ran "
            "at that rate alone. **Tuning seeds are excluded from every test in this report.**"
        )
    else:
        how = (
            "No tuning seeds: every seed ran every candidate, the rate with the lowest mean "
            "validation loss across seeds was chosen, and the tables use the test results of "
            "that choice on the same seeds (the choice and the test share seeds)."
        )
    lines = [
        "## Learning-rate selection",
        "",
        how,
        "",
        "| strategy | budget | mean validation loss per lr (seeds) | chosen | note |",
        "|---|---|---|---|---|",
    ]
    for choice in analysis["lr_selection"]:
        cells = ", ".join(
            f"{float(lr):g}: {fmt_num(choice['val_loss_mean'].get(lr), LOSS_DECIMALS)}"
            f" ({choice['n_seeds'][lr]})"
            for lr in map(str, choice["candidates"])
        )
        chosen = f"{choice['chosen']:g}" if choice["chosen"] is not None else "n/a"
        note = choice["note"] or ("" if choice["complete"] else "tuning not finished")
        lines.append(f"| {choice['label']} | {choice['budget']} | {cells} | {chosen} | {note} |")
    return lines + [""] + _lr_noise_lines(analysis["lr_selection"])


def _lr_noise_lines(choices: list[dict[str, Any]]) -> list[str]:
    """The choices decided by less than the seed noise (gap to the runner-up < seed sd)."""
    tuned = [c for c in choices if len(c["candidates"]) > 1]
    if tuned and all(len(c["seeds"]) == 1 for c in tuned):
        return [
            f"With one tuning seed ({tuned[0]['seeds'][0]}) no choice can be weighed against "
            "the seed noise: a rate's advantage may be that seed's chance alone.",
            "",
        ]
    noisy = [c for c in choices if (c.get("spread") or {}).get("within_noise")]
    if not noisy:
        return []
    items = []
    for c in noisy:
        sp = c["spread"]
        gap, sd = fmt_sig(sp["gap"]), fmt_sig(sp["seed_sd"])
        if gap == sd:  # rounded alike, though the gap is the smaller: one more figure
            gap, sd = fmt_sig(sp["gap"], 3), fmt_sig(sp["seed_sd"], 3)
        items.append(
            f"{c['label']} at {c['budget']} ({c['chosen']:g} over {sp['runner_up']:g} by "
            f"{gap} of validation loss; seed sd {sd})"
        )
    n = len(choices)
    return [
        f"**{len(noisy)} of {n} choices were decided by less than the seed noise** (the "
        "chosen rate's mean validation loss beats the runner-up's by less than the sd "
        "across tuning seeds at the chosen rate; other tuning seeds could have chosen the "
        "other rate): " + "; ".join(items) + ". The learning-rate figure shows each "
        "strategy's validation loss against rate with every tuning seed.",
        "",
    ]


def _cross_budget_lines(analysis: dict[str, Any]) -> list[str]:
    block = analysis.get("cross_budget")
    if not block:
        return []
    lines = [f"## Does a strategy at {block['small']} recover the {block['large']} gain?", ""]
    lines += [f"- {line}" for line in verdict_lines(block, LOSS_DECIMALS)]
    return lines + [
        "",
        f"Δ = strategy at {block['small']} − {block['baseline']} at {block['large']}, paired by "
        "seed, 95% t interval; TOST: two one-sided t-tests against "
        f"{margin_words(block, LOSS_DECIMALS)} (Schuirmann 1987), equivalent when p < 0.05.",
        "",
    ]


def _environment_warning(analysis: dict[str, Any]) -> list[str]:
    check = analysis["environment_check"]
    if not check["mixed"]:
        return []
    return [
        "**Warning: runs from different environments are pooled in this report "
        "(`--allow-mixed`).** Differences:",
        "",
        *describe_environment(check),
        "",
    ]


def notes_lines(notes: list[Any], study: Study) -> list[str]:
    """The study's recorded decisions (`adaptive-lora note`), oldest first."""
    lines = ["## Decisions", ""]
    if not notes:
        lines.append(
            f'None recorded (`adaptive-lora note {study.path} "text" --decision ... '
            "--rationale ...`)."
        )
    for note in notes:
        text = f"- **{note.created_at[:10]}** — {note.text}"
        if note.decision:
            text += f" *Decision:* {_sentence(note.decision)}"
        if note.rationale:
            text += f" *Rationale:* {_sentence(note.rationale)}"
        if note.run_ids:
            text += " Runs: " + ", ".join(f"`{r}`" for r in note.run_ids) + "."
        lines.append(text)
    return lines + [""]


FIGURE_TITLES = {
    "test_loss": "Test loss per strategy: per-seed points, mean and 95% t interval",
    "paired_diff": "Paired differences vs the baseline, per seed, with mean and 95% t interval",
    "allocation": "Rank allocation (layer × module kind)",
    "adalora_final_ranks": "AdaLoRA's learned final ranks (layer × module kind)",
    "loss_curves": "Training and validation loss per optimizer step",
    "lr_curves": "Validation loss against learning rate per strategy (tuning seeds: points; "
    "mean: line)",
    "time_per_run": "Time per run by phase (training, evaluation, allocation, the rest): mean "
    "per strategy, and each run's total",
    "regime_ladder": LADDER_TITLE,
    "recovery": "The planted set and where each strategy put its rank (layer × module kind; "
    "each panel scaled to its largest rank)",
}


# Figures drawn per budget: their file names end in the budget's `file_slug`.
PER_BUDGET_FIGURES = ("allocation_", "adalora_final_ranks_", "recovery_")


def _figure_lines(figures: list[Path], out_dir: Path, budgets: Sequence[str]) -> list[str]:
    lines = ["## Figures", ""]
    pngs = [f for f in figures if f.suffix == ".png"]
    if not pngs:
        return lines + ["No figures (no finished runs).", ""]
    by_slug = {file_slug(b): b for b in budgets}
    for png in pngs:
        stem = png.stem
        title = next((t for k, t in FIGURE_TITLES.items() if stem.startswith(k)), stem)
        prefix = next((p for p in PER_BUDGET_FIGURES if stem.startswith(p)), None)
        suffix = by_slug.get(stem[len(prefix) :], stem[len(prefix) :]) if prefix else ""
        lines += figure_lines(title, png, out_dir, suffix)
    return lines


def _reproduce_lines(study: Study, out_dir: Path, against: str | None) -> list[str]:
    """The commands that rebuild the study and this report, and where every number is."""
    return [
        "## Reproduce",
        "",
        "```",
        f"adaptive-lora run {study.path}",
        f"adaptive-lora report {study.path} --out {out_dir}"
        + (f" --against {against}" if against else ""),
        "```",
        "",
        "Every run's folder (`runs/<id>/` under the study folder) holds its resolved "
        "config, allocation, metrics and manifest; `results.csv` has one row per run. "
        "All numbers above are in `stats.json`.",
        "",
    ]


def render_markdown(
    study: Study,
    analysis: dict[str, Any],
    rows: list[RunRow],
    notes: list[Any],
    store_manifest: dict[str, Any],
    figures: list[Path],
    out_dir: Path,
    *,
    study_level: bool = True,
    after_answer: Sequence[str] = (),
    against: str | None = None,
    outside: Mapping[str, str] | None = None,
) -> str:
    """report.md of one study or group (`after_answer`: lines that follow the Answer;
    `against`: the study file `report --against` named, for the command to reproduce it;
    `outside`: stored runs the study file no longer expands to).
    The hypotheses and the recorded decisions belong to the study, not to one group: a
    multi-group report prints them once at its top and renders each group's section with
    `study_level=False`, which leaves both out."""
    lines = [
        f"# Study `{study.name}`: rank allocation at a fixed parameter budget",
        "",
        f"**Question.** {QUESTION} Every strategy is compared with {baseline_words(study)} on "
        "test loss, paired by seed.",
        "",
    ]
    if study.description:
        lines += [study.description, ""]
    if study_level:
        lines += hypotheses_lines(analysis.get("hypotheses"), study.baseline)
    lines += _environment_warning(analysis)
    lines += answer_lines(study.baseline, analysis)
    lines += after_answer
    lines += _status_lines(study, analysis)
    if study_level:
        lines += outside_lines(outside or {}, study)
    lines += _results_lines(study, analysis)
    lines += recovery_lines(analysis.get("recovery"))
    if analysis.get("ladder"):
        lines += ladder_lines([analysis["ladder"]], study.baseline)
    lines += _cross_budget_lines(analysis)
    lines += _lr_lines(study, analysis)
    lines += _setup_lines(study, store_manifest, rows, analysis)
    lines += _figure_lines(figures, out_dir, study.budgets)
    if study_level:
        lines += notes_lines(notes, study)
    lines += _reproduce_lines(study, out_dir, against)
    return "\n".join(lines)
