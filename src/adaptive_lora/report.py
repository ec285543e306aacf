"""The study report: Markdown, LaTeX, JSON and figures, every number from `stats`.

    write_report(study, store, DIR) writes
        DIR/report.md      question, set-up, main table and verdicts per budget,
                           secondary metrics, learning-rate choice, figures, decisions
        DIR/table.tex      the main table (booktabs)
        DIR/stats.json     every number of the tables (strict JSON)
        DIR/figures/*.png and *.svg
        DIR/results.csv, DIR/results.parquet   one row per run

The numbers a reader sees are computed in `stats` (`compare_family`, `describe`,
`compare_paired`) and only formatted here (`fmt_num`, `fmt_p`, `fmt_sig`). Per
budget, each strategy is compared with the baseline on test loss, paired by seed,
with Holm's correction across the comparisons of that budget. A partly finished
study is reported from the runs present: only seeds present for both sides of a
comparison enter it, and the report says how many runs are missing.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptive_lora import stats
from adaptive_lora.store import DONE, FAILED, PENDING, RUNNING, RunRow, StudyStore, export_results
from adaptive_lora.study import Study, select_lr

PRIMARY = "test_loss"
# (metric key, name in prose, lower is better)
SECONDARY = (
    ("val_loss", "validation loss", True),
    ("rouge_l", "ROUGE-L", False),
    ("exact_match", "exact match", False),
)
LOSS_DECIMALS = 4
QUESTION = (
    "At the same number of trainable parameters, do LoRA adapters whose rank differs "
    "between layers and module kinds beat a uniform rank?"
)


@dataclass
class ReportFiles:
    report_md: Path
    table_tex: Path
    stats_json: Path
    figures: list[Path] = field(default_factory=list)
    exports: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------- numbers


def _value(row: RunRow, key: str) -> float:
    value = row.metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def summarise(by_seed: dict[int, float]) -> dict[str, Any]:
    """`stats.describe` of the finite values, plus the 95% t interval of their mean."""
    finite = [v for v in by_seed.values() if math.isfinite(v)]
    out = stats.describe(finite)
    out["ci_t"] = stats.mean_ci_t(finite)
    out["values"] = {k: by_seed[k] for k in sorted(by_seed)}
    return out


def analyse(
    study: Study, rows: list[RunRow], *, n_boot: int = 10000, boot_seed: int = 0
) -> dict[str, Any]:
    """Everything the report shows, as plain data (also written as stats.json)."""
    choices = select_lr(study, rows)
    done = [r for r in rows if r.status == DONE]
    counts = {
        status: sum(1 for r in rows if r.status == status)
        for status in (DONE, FAILED, RUNNING, PENDING)
    }
    counts[PENDING] += len(study.runs) - len(rows)  # specs never stored yet
    analysis: dict[str, Any] = {
        "study": study.name,
        "baseline": study.baseline,
        "spec_hash": study.spec_hash,
        "n_runs": len(study.runs),
        "counts": counts,
        "lr_selection": [
            {
                "label": c.label,
                "budget": c.budget,
                "candidates": c.candidates,
                "val_loss_mean": {str(lr): v for lr, v in c.val_loss_mean.items()},
                "n_seeds": {str(lr): n for lr, n in c.n_seeds.items()},
                "chosen": c.chosen,
            }
            for c in choices.values()
        ],
        "budgets": {},
    }
    for budget in study.budgets:
        chosen: dict[str, list[RunRow]] = {}
        for label in study.labels:
            lr = choices[(label, budget)].chosen
            chosen[label] = sorted(
                (r for r in done if r.label == label and r.budget == budget and r.lr == lr),
                key=lambda r: r.seed,
            )
        strategies = {}
        for label, runs in chosen.items():
            strategies[label] = {
                "lr": choices[(label, budget)].chosen,
                "seeds": [r.seed for r in runs],
                "missing_seeds": [s for s in study.seeds if s not in {r.seed for r in runs}],
                "run_ids": [r.id for r in runs],
                PRIMARY: summarise({r.seed: _value(r, PRIMARY) for r in runs}),
                "trainable_params": stats.describe(
                    [v for r in runs if math.isfinite(v := _value(r, "trainable_params"))]
                ),
                "deviation_pct": stats.describe(
                    [v for r in runs if math.isfinite(v := _value(r, "deviation_pct"))]
                ),
                "train_seconds": stats.describe(
                    [v for r in runs if math.isfinite(v := _value(r, "train_seconds"))]
                ),
                "wall_seconds": stats.describe([r.seconds for r in runs if r.seconds]),
            }
        primary = {
            label: {r.seed: _value(r, PRIMARY) for r in runs} for label, runs in chosen.items()
        }
        comparisons = (
            stats.compare_family(
                primary, study.baseline, n_boot=n_boot, seed=boot_seed, metric="test loss"
            )
            if len(primary) > 1
            else {}
        )
        secondary = {}
        for key, name, lower in SECONDARY:
            values = {
                label: {r.seed: _value(r, key) for r in runs} for label, runs in chosen.items()
            }
            if not any(math.isfinite(v) for by_seed in values.values() for v in by_seed.values()):
                continue
            secondary[key] = {
                "name": name,
                "lower_is_better": lower,
                "summary": {label: summarise(v) for label, v in values.items()},
                "comparisons": stats.compare_family(
                    values,
                    study.baseline,
                    lower_is_better=lower,
                    n_boot=n_boot,
                    seed=boot_seed,
                    metric=name,
                )
                if len(values) > 1
                else {},
            }
        analysis["budgets"][budget] = {
            "strategies": strategies,
            "comparisons": comparisons,
            "secondary": secondary,
        }
    return analysis


# ---------------------------------------------------------------------- formatting


def _interval(summary: dict[str, Any], decimals: int) -> str:
    mean = stats.fmt_num(summary["mean"], decimals)
    lo, hi = summary["ci_t"]
    if math.isnan(lo):
        return mean
    return f"{mean} [{stats.fmt_num(lo, decimals)}, {stats.fmt_num(hi, decimals)}]"


def _diff(comparison: dict[str, Any] | None) -> str:
    if not comparison or comparison["n"] == 0:
        return "n/a"
    mean = stats.fmt_num(comparison["mean_diff"], LOSS_DECIMALS, plus=True)
    lo, hi = comparison["ci_t"]
    if math.isnan(lo):
        return mean
    return f"{mean} [{stats.fmt_num(lo, LOSS_DECIMALS)}, {stats.fmt_num(hi, LOSS_DECIMALS)}]"


def _params(entry: dict[str, Any]) -> str:
    d = entry["trainable_params"]
    if d["n"] == 0:
        return "n/a"
    if d["min"] == d["max"]:
        return f"{int(d['min']):,}"
    return f"{int(d['min']):,}–{int(d['max']):,}"


def _deviation(entry: dict[str, Any]) -> str:
    d = entry["deviation_pct"]
    if d["n"] == 0:
        return "n/a"
    if d["min"] == d["max"]:
        return stats.fmt_num(d["mean"], 2, plus=True) + "%"
    return f"{stats.fmt_num(d['min'], 2, plus=True)} to {stats.fmt_num(d['max'], 2, plus=True)}%"


def _seconds(entry: dict[str, Any]) -> str:
    d = entry["train_seconds"] if entry["train_seconds"]["n"] else entry["wall_seconds"]
    return stats.fmt_num(d["mean"], 1)


def main_table_rows(study: Study, block: dict[str, Any]) -> list[dict[str, str]]:
    """The cells of the main table of one budget, as text (shared by Markdown and LaTeX)."""
    out = []
    for label in study.labels:
        entry = block["strategies"][label]
        comparison = block["comparisons"].get(label)
        is_base = label == study.baseline
        out.append(
            {
                "strategy": label,
                "lr": f"{entry['lr']:g}" if entry["lr"] is not None else "n/a",
                "n": str(entry[PRIMARY]["n"]),
                "test": _interval(entry[PRIMARY], LOSS_DECIMALS),
                "diff": "—" if is_base else _diff(comparison),
                "p_t": "—" if is_base or not comparison else stats.fmt_p(comparison["p_t_holm"]),
                "p_w": "—"
                if is_base or not comparison
                else stats.fmt_p(comparison["p_wilcoxon_holm"]),
                "d_z": "—" if is_base or not comparison else stats.fmt_sig(comparison["d_z"]),
                "params": _params(entry),
                "deviation": _deviation(entry),
                "seconds": _seconds(entry),
            }
        )
    return out


MAIN_COLUMNS = (
    ("strategy", "strategy"),
    ("lr", "lr"),
    ("n", "n"),
    ("test", "test loss, mean [95% CI]"),
    ("diff", "Δ vs {baseline} [95% CI]"),
    ("p_t", "p (paired t, Holm)"),
    ("p_w", "p (Wilcoxon, Holm)"),
    ("d_z", "d_z"),
    ("params", "trainable params"),
    ("deviation", "vs budget"),
    ("seconds", "train time (s)"),
)


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _columns(study: Study) -> list[tuple[str, str]]:
    columns = [(k, h.format(baseline=study.baseline)) for k, h in MAIN_COLUMNS]
    return columns if study.tunes_lr else [c for c in columns if c[0] != "lr"]


def _seed_range(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"{seeds[0]}–{seeds[-1]} ({len(seeds)} seeds)"
    return f"{', '.join(map(str, seeds))} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})"


# ---------------------------------------------------------------------- environment

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


# ---------------------------------------------------------------------- report.md


def _setup_lines(study: Study, store_manifest: dict[str, Any], rows: list[RunRow]) -> list[str]:
    config = study.runs[0].config
    d, t, e, a = config.data, config.train, config.eval, config.allocation
    steps = f"{t.max_steps} step(s)" if t.max_steps else f"{t.epochs:g} epoch(s)"
    lines = [
        "## Set-up",
        "",
        f"- **Model:** `{study.model}`",
        f"- **Data:** `{d.source}`: {d.n_train} train / {d.n_val} validation / {d.n_test} "
        f"test examples (data seed {d.data_seed}, max length {d.max_length} tokens, "
        f"`{d.template}` template). Learning rates are chosen on validation; every "
        "reported number is on test.",
        f"- **Budgets:** {', '.join(study.budgets)}. `rN` is the parameter count of rank N on "
        "every target module; each strategy is apportioned to that count (the table "
        "shows the exact trainable count and its deviation).",
        f"- **Target modules:** `{a.target}`; ranks between {a.min_rank} and "
        f"{a.max_rank if a.max_rank is not None else 'unbounded'}.",
        f"- **Seeds:** {_seed_range(study.seeds)}; a seed fixes data order and adapter "
        "initialisation, so comparisons are paired by seed.",
        f"- **Training:** AdamW, {steps}, batch {t.batch_size} × {t.grad_accum} "
        f"accumulation, {t.scheduler} schedule with {t.warmup_ratio:g} warm-up, precision "
        f"`{t.precision}`; α/r = {config.adapter.alpha_ratio:g}"
        f"{' (rsLoRA)' if config.adapter.rslora else ''}, dropout {config.adapter.dropout:g}.",
        f"- **Evaluation:** test loss; ROUGE-L and exact match on {config.eval.n_generate} "
        f"generated answers ({e.max_new_tokens} new tokens).",
        f"- **Baseline:** `{study.baseline}`.",
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
    else:
        lines.append("- (no run manifest holds version or device information)")
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


def _status_lines(study: Study, analysis: dict[str, Any]) -> list[str]:
    counts, total = analysis["counts"], analysis["n_runs"]
    missing = total - counts[DONE]
    lines = [
        "## Status",
        "",
        f"{counts[DONE]} of {total} runs done, {counts[FAILED]} failed, "
        f"{counts[RUNNING]} running, {counts[PENDING]} not yet run.",
    ]
    if missing:
        lines += [
            "",
            f"**{missing} run(s) are missing.** The comparisons use only the seeds present "
            f"for both the strategy and `{study.baseline}` (paired seeds); the numbers will "
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


def _results_lines(study: Study, analysis: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    columns = _columns(study)
    for budget, block in analysis["budgets"].items():
        lines += [f"## Test loss at budget {budget}", ""]
        cells = main_table_rows(study, block)
        lines += _markdown_table(
            [h for _, h in columns], [[c[k] for k, _ in columns] for c in cells]
        )
        comparisons = block["comparisons"]
        k = len(comparisons)
        lines += [
            "",
            f"Δ = strategy − {study.baseline} (negative: lower test loss, better). Intervals "
            "are 95% t intervals. p-values: paired t-test and Wilcoxon signed-rank test, "
            f"Holm-corrected across the {k} comparison{'s' if k != 1 else ''} at this budget. "
            "d_z = mean Δ / sd Δ.",
            "",
        ]
        floors = sorted(
            {
                (c["n"], c["wilcoxon_floor_p"])
                for c in comparisons.values()
                if c["n"] >= 2 and not c["can_reach_significance"]
            }
        )
        for n, floor in floors:
            lines += [
                f"With {n} paired seeds a two-sided Wilcoxon signed-rank test cannot reach "
                f"p < 0.05: its smallest possible p-value is 2/2^{n} = {floor:g}.",
                "",
            ]
        for comparison in comparisons.values():
            lines.append(f"- {comparison['verdict']}")
        caveats = sorted(
            {
                w
                for c in comparisons.values()
                for w in c["warnings"]
                if "Wilcoxon test cannot reach" not in w
            }
        )
        if caveats:
            lines += ["", "Caveats from the statistics:", ""]
            lines += [f"- {w}" for w in caveats]
        lines.append("")
        if block["secondary"]:
            lines += [f"### Secondary metrics at budget {budget}", ""]
            header = ["strategy", "n"] + [
                f"{m['name']} ({'lower' if m['lower_is_better'] else 'higher'} is better)"
                for m in block["secondary"].values()
            ]
            table = []
            for label in study.labels:
                row = [label, str(block["strategies"][label][PRIMARY]["n"])]
                for metric in block["secondary"].values():
                    summary = metric["summary"][label]
                    text = _interval(summary, LOSS_DECIMALS if metric["lower_is_better"] else 3)
                    comparison = metric["comparisons"].get(label)
                    if comparison and comparison["n"] >= 2:
                        text += f"; p = {stats.fmt_p(comparison['p_t_holm'])}"
                    row.append(text)
                table.append(row)
            lines += _markdown_table(header, table)
            lines += [
                "",
                "Mean [95% t interval]; p: paired t-test against "
                f"{study.baseline}, Holm-corrected per metric.",
                "",
            ]
    return lines


def _lr_lines(study: Study, analysis: dict[str, Any]) -> list[str]:
    if not study.tunes_lr:
        return []
    lines = [
        "## Learning-rate selection",
        "",
        "Per strategy and budget, the learning rate with the lowest mean validation loss "
        "across its finished seeds; the tables above use the test results of that choice only.",
        "",
        "| strategy | budget | mean validation loss per lr (seeds) | chosen |",
        "|---|---|---|---|",
    ]
    for choice in analysis["lr_selection"]:
        cells = ", ".join(
            f"{float(lr):g}: {stats.fmt_num(choice['val_loss_mean'].get(lr), LOSS_DECIMALS)}"
            f" ({choice['n_seeds'][lr]})"
            for lr in map(str, choice["candidates"])
        )
        chosen = f"{choice['chosen']:g}" if choice["chosen"] is not None else "n/a"
        lines.append(f"| {choice['label']} | {choice['budget']} | {cells} | {chosen} |")
    return lines + [""]


def _notes_lines(notes: list[Any], study: Study) -> list[str]:
    lines = ["## Decisions", ""]
    if not notes:
        lines.append(
            f'None recorded (`adaptive-lora note {study.path} "text" --decision ... '
            "--rationale ...`)."
        )
    for note in notes:
        text = f"- **{note.created_at[:10]}** — {note.text}"
        if note.decision:
            text += f" *Decision:* {note.decision}."
        if note.rationale:
            text += f" *Rationale:* {note.rationale}."
        if note.run_ids:
            text += " Runs: " + ", ".join(f"`{r}`" for r in note.run_ids) + "."
        lines.append(text)
    return lines + [""]


FIGURE_TITLES = {
    "test_loss": "Test loss per strategy: per-seed points, mean and 95% t interval",
    "paired_diff": "Paired differences vs the baseline, per seed, with mean and 95% t interval",
    "allocation": "Rank allocation (layer × module kind)",
    "adalora_final_ranks": "AdaLoRA's learned final ranks (layer × module kind)",
    "loss_curves": "Training and validation loss curves",
    "time_per_run": "Training time per run",
}


def _figure_lines(figures: list[Path], out_dir: Path) -> list[str]:
    lines = ["## Figures", ""]
    pngs = [f for f in figures if f.suffix == ".png"]
    if not pngs:
        return lines + ["No figures (no finished runs).", ""]
    for png in pngs:
        stem = png.stem
        title = next((t for k, t in FIGURE_TITLES.items() if stem.startswith(k)), stem)
        suffix = stem.split("_")[-1] if stem.startswith(("allocation_", "adalora_")) else ""
        rel = png.relative_to(out_dir).as_posix()
        svg = png.with_suffix(".svg").relative_to(out_dir).as_posix()
        lines += [
            f"**{title}{f' — {suffix}' if suffix else ''}** ([SVG]({svg}))",
            "",
            f"![{title}]({rel})",
            "",
        ]
    return lines


def render_markdown(
    study: Study,
    analysis: dict[str, Any],
    rows: list[RunRow],
    notes: list[Any],
    store_manifest: dict[str, Any],
    figures: list[Path],
    out_dir: Path,
) -> str:
    lines = [
        f"# Study `{study.name}`: rank allocation at a fixed parameter budget",
        "",
        f"**Question.** {QUESTION} Every strategy is compared with `{study.baseline}` on "
        "test loss, paired by seed.",
        "",
    ]
    if study.description:
        lines += [study.description, ""]
    lines += _status_lines(study, analysis)
    lines += _results_lines(study, analysis)
    lines += _lr_lines(study, analysis)
    lines += _setup_lines(study, store_manifest, rows)
    lines += _figure_lines(figures, out_dir)
    lines += _notes_lines(notes, study)
    lines += [
        "## Reproduce",
        "",
        "```",
        f"adaptive-lora run {study.path}",
        f"adaptive-lora report {study.path} --out {out_dir}",
        "```",
        "",
        "Every run's folder (`runs/<id>/` under the study folder) holds its resolved "
        "config, allocation, metrics and manifest; `results.csv` has one row per run. "
        "All numbers above are in `stats.json`.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- table.tex

_TEX_ESCAPES = {"_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$"}


def _tex(text: str) -> str:
    text = "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)
    return (
        text.replace(stats.MINUS, "$-$")
        .replace("< ", "$<$ ")
        .replace("—", "---")
        .replace("–", "--")
        .replace("Δ", r"$\Delta$")
    )


def render_latex(study: Study, analysis: dict[str, Any]) -> str:
    columns = [c for c in _columns(study) if c[0] != "strategy"]
    heads = {
        "lr": "lr",
        "n": "$n$",
        "test": "Test loss [95\\% CI]",
        "diff": f"$\\Delta$ vs {_tex(study.baseline)} [95\\% CI]",
        "p_t": "$p_{\\mathrm{Holm}}$ (t)",
        "p_w": "$p_{\\mathrm{Holm}}$ (W)",
        "d_z": "$d_z$",
        "params": "Params",
        "deviation": "vs budget",
        "seconds": "Time (s)",
    }
    spec = "ll" + "".join("r" if k in ("n", "lr", "seconds", "params") else "l" for k, _ in columns)
    lines = [
        "% Generated by `adaptive-lora report`; needs \\usepackage{booktabs}.",
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{Test loss per rank-allocation strategy (study {_tex(study.name)}). "
        f"$\\Delta$: strategy $-$ {_tex(study.baseline)}, paired by seed; intervals are "
        "95\\% $t$ intervals; $p$: paired $t$-test and Wilcoxon signed-rank test, "
        "Holm-corrected per budget.}",
        f"\\label{{tab:{re.sub(r'[^A-Za-z0-9]+', '-', study.name)}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        "Budget & Strategy & " + " & ".join(heads[k] for k, _ in columns) + " \\\\",
        "\\midrule",
    ]
    for i, (budget, block) in enumerate(analysis["budgets"].items()):
        if i:
            lines.append("\\midrule")
        for j, cells in enumerate(main_table_rows(study, block)):
            first = _tex(budget) if j == 0 else ""
            lines.append(
                f"{first} & {_tex(cells['strategy'])} & "
                + " & ".join(_tex(cells[k]) for k, _ in columns)
                + " \\\\"
            )
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- figures


def _save(fig: Any, folder: Path, stem: str) -> list[Path]:
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)


def _subplots(n: int, width: float = 5.0, height: float = 3.6, ncols: int | None = None):
    import matplotlib.pyplot as plt

    ncols = ncols or min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _strip(ax: Any, labels: list[str], values: list[list[float]], means, cis, ylabel: str):
    import numpy as np

    rng = np.random.default_rng(0)  # the same jitter in every report
    for i, points in enumerate(values):
        finite = [v for v in points if math.isfinite(v)]
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(finite)), finite, s=14, alpha=0.6, color="C0")
        if math.isfinite(means[i]):
            lo, hi = cis[i]
            if math.isfinite(lo):
                ax.errorbar(
                    i + 0.25,
                    means[i],
                    yerr=[[means[i] - lo], [hi - means[i]]],
                    fmt="o",
                    color="C3",
                    capsize=4,
                )
            else:
                ax.plot(i + 0.25, means[i], "o", color="C3")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel(ylabel)


def _fig_test_loss(study: Study, analysis: dict[str, Any], folder: Path) -> list[Path]:
    blocks = analysis["budgets"]
    fig, axes = _subplots(len(blocks))
    for ax, (budget, block) in zip(axes, blocks.items()):
        entries = [block["strategies"][label][PRIMARY] for label in study.labels]
        _strip(
            ax,
            study.labels,
            [list(e["values"].values()) for e in entries],
            [e["mean"] for e in entries],
            [e["ci_t"] for e in entries],
            "test loss",
        )
        ax.set_title(f"budget {budget}")
    return _save(fig, folder, "test_loss")


def _fig_paired(study: Study, analysis: dict[str, Any], folder: Path) -> list[Path]:
    blocks = analysis["budgets"]
    if not any(c["n"] for b in blocks.values() for c in b["comparisons"].values()):
        return []
    fig, axes = _subplots(len(blocks))
    for ax, (budget, block) in zip(axes, blocks.items()):
        comps = block["comparisons"]
        labels = list(comps)
        _strip(
            ax,
            labels,
            [comps[k]["diffs"] for k in labels],
            [comps[k]["mean_diff"] for k in labels],
            [comps[k]["ci_t"] for k in labels],
            f"test loss − {study.baseline}",
        )
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"budget {budget} (below 0: better than {study.baseline})")
    return _save(fig, folder, "paired_diff")


def _module_infos(modules: list[dict[str, Any]]) -> list[Any]:
    from adaptive_lora.inventory import ALL_KINDS, ModuleInfo

    return [
        ModuleInfo(str(m["name"]), int(m["layer"]), str(m["kind"]), 0, 0)
        for m in modules
        if m.get("kind") in ALL_KINDS and isinstance(m.get("layer"), int)
    ]


def _run_dir(study: Study, row: RunRow) -> Path:
    return study.out / row.run_dir if row.run_dir else study.runs_dir / row.id


def _read_allocation(study: Study, row: RunRow) -> dict[str, Any] | None:
    path = _run_dir(study, row) / "allocation.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("modules") else None


def _heatmaps(
    study: Study,
    panels: list[tuple[str, list[Any], dict[str, float]]],
    folder: Path,
    stem: str,
    label: str,
) -> list[Path]:
    from matplotlib.ticker import MaxNLocator

    from adaptive_lora.plots import draw_layer_kind_heatmap

    n_layers = max(1 + max(m.layer for m in inventory) for _, inventory, _ in panels)
    fig, axes = _subplots(
        len(panels), width=4.6, height=max(3.0, 0.22 * n_layers + 1.5), ncols=min(len(panels), 4)
    )
    values_all = [v for _, _, values in panels for v in values.values()]
    images = []
    for ax, (title, inventory, values) in zip(axes, panels):
        images.append(draw_layer_kind_heatmap(ax, inventory, values, title=title, label=label))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if values_all:  # one colour scale for every panel, so the panels compare
        for image in images:
            image.set_clim(min(values_all), max(values_all))
    fig.subplots_adjust(wspace=0.45)
    return _save(fig, folder, stem)


def _fig_allocations(
    study: Study, rows: list[RunRow], analysis: dict[str, Any], folder: Path
) -> list[Path]:
    by_id = {r.id: r for r in rows}
    paths: list[Path] = []
    for budget, block in analysis["budgets"].items():
        panels, final = [], []
        for label in study.labels:
            found = [
                (by_id[i], a)
                for i in block["strategies"][label]["run_ids"]
                if (a := _read_allocation(study, by_id[i])) is not None
            ]
            rank_sets = {json.dumps(_ranks(a), sort_keys=True) for _, a in found}
            for row, allocation in found:  # the lowest seed with an allocation.json
                inventory = _module_infos(allocation["modules"])
                if not inventory:
                    continue
                ranks = _ranks(allocation)
                # Seeded strategies (random) differ per seed: say which one is drawn.
                seed_note = f", seed {row.seed}" if len(rank_sets) > 1 else ""
                panels.append((f"{label} @ {budget}{seed_note}", inventory, ranks))
                learned = row.metrics.get("final_ranks")
                if isinstance(learned, dict) and learned:
                    final.append(
                        (
                            f"{label} final @ {budget}{seed_note}",
                            inventory,
                            _match_names(learned, inventory),
                        )
                    )
                break
        if panels:
            paths += _heatmaps(study, panels, folder, f"allocation_{_slug(budget)}", "rank")
        if final:
            paths += _heatmaps(
                study, final, folder, f"adalora_final_ranks_{_slug(budget)}", "final rank"
            )
    return paths


def _ranks(allocation: dict[str, Any]) -> dict[str, float]:
    return {m["name"]: m["rank"] for m in allocation["modules"]}


def _match_names(ranks: dict[str, Any], inventory: list[Any]) -> dict[str, float]:
    """`final_ranks` keys → inventory names (PEFT may prefix `base_model.model.`)."""
    out = {}
    for key, value in ranks.items():
        for m in inventory:
            if key == m.name or key.endswith("." + m.name):
                out[m.name] = float(value)
                break
    return out


def _fig_curves(study: Study, rows: list[RunRow], analysis: dict[str, Any], folder: Path):
    import matplotlib.pyplot as plt

    by_id = {r.id: r for r in rows}
    blocks = analysis["budgets"]
    curves = [("train_loss_curve", "training loss"), ("val_loss_curve", "validation loss")]
    has_any = any(
        by_id[i].metrics.get(key)
        for b in blocks.values()
        for e in b["strategies"].values()
        for i in e["run_ids"]
        for key, _ in curves
    )
    if not has_any:
        return []
    fig, axes = plt.subplots(len(blocks), 2, figsize=(11, 3.6 * len(blocks)), squeeze=False)
    for r, (budget, block) in enumerate(blocks.items()):
        for c, (key, name) in enumerate(curves):
            ax = axes[r][c]
            for i, label in enumerate(study.labels):
                for j, run_id in enumerate(block["strategies"][label]["run_ids"]):
                    points = by_id[run_id].metrics.get(key) or []
                    points = [p for p in points if isinstance(p, (list, tuple)) and len(p) == 2]
                    if points:
                        xs, ys = zip(*points)
                        ax.plot(
                            xs,
                            ys,
                            color=f"C{i % 10}",
                            alpha=0.6,
                            lw=1,
                            label=label if j == 0 else None,
                            marker="." if len(xs) < 4 else None,
                        )
            ax.set_title(f"{name}, budget {budget}")
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(name)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    return _save(fig, folder, "loss_curves")


def _fig_time(study: Study, rows: list[RunRow], analysis: dict[str, Any], folder: Path):
    by_id = {r.id: r for r in rows}
    blocks = analysis["budgets"]
    fig, axes = _subplots(len(blocks))
    for ax, (budget, block) in zip(axes, blocks.items()):
        values, means = [], []
        for label in study.labels:
            entry = block["strategies"][label]
            key = "train_seconds" if entry["train_seconds"]["n"] else "wall_seconds"
            if key == "train_seconds":
                points = [_value(by_id[i], "train_seconds") for i in entry["run_ids"]]
            else:
                points = [by_id[i].seconds or math.nan for i in entry["run_ids"]]
            values.append(points)
            means.append(entry[key]["mean"])
        _strip(ax, study.labels, values, means, [[math.nan, math.nan]] * len(means), "seconds")
        ax.set_title(f"training time per run, budget {budget}")
    return _save(fig, folder, "time_per_run")


def draw_figures(
    study: Study, rows: list[RunRow], analysis: dict[str, Any], folder: Path
) -> list[Path]:
    """Every figure for which there is data, as PNG and SVG."""
    if not any(
        e[PRIMARY]["n"] for b in analysis["budgets"].values() for e in b["strategies"].values()
    ):
        return []
    paths = _fig_test_loss(study, analysis, folder)
    paths += _fig_paired(study, analysis, folder)
    paths += _fig_allocations(study, rows, analysis, folder)
    paths += _fig_curves(study, rows, analysis, folder)
    paths += _fig_time(study, rows, analysis, folder)
    return paths


# ---------------------------------------------------------------------- entry point


def _write(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_report(
    study: Study, store: StudyStore, out_dir: str | Path, *, n_boot: int = 10000
) -> ReportFiles:
    """Write the report of `study` (finished or not) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = store.rows(study.run_ids)
    analysis = analyse(study, rows, n_boot=n_boot)
    figures = draw_figures(study, rows, analysis, out_dir / "figures")
    files = ReportFiles(out_dir / "report.md", out_dir / "table.tex", out_dir / "stats.json")
    files.figures = figures
    _write(files.table_tex, render_latex(study, analysis))
    _write(
        files.report_md,
        render_markdown(study, analysis, rows, store.notes(), store.manifest(), figures, out_dir),
    )
    _write(files.stats_json, json.dumps(stats.to_jsonable(analysis), indent=2))
    files.exports = export_results(rows, out_dir)
    return files
