"""The report's figures (PNG and SVG), drawn from the analysis and the run folders.

Each figure draws what the runs measured and no more: a validation loss evaluated only
before and after training is two points per run, drawn as points (a line between them
would invent a curve); AdaLoRA's allocation is drawn at its start (its `initial_ranks`,
above the budget's rank) and at its end (`final_ranks`), each panel naming its seed; the
learning-rate figure shows every tuning seed, so a choice within the seed spread shows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from adaptive_lora.allocation.heatmap import draw_layer_kind_heatmap
from adaptive_lora.analysis.descriptive import mean_ci_t
from adaptive_lora.model.inventory import ALL_KINDS, ModuleInfo
from adaptive_lora.records import ALLOCATION_KEY, atomic_path
from adaptive_lora.report.analyse import PRIMARY, study_at
from adaptive_lora.report.cells import file_slug
from adaptive_lora.report.recovery import recovery_panels
from adaptive_lora.report.timing import PHASES, REST, phase_seconds
from adaptive_lora.study.spec import Study
from adaptive_lora.study.store import (
    RunRow,
)


def _save(fig: Any, folder: Path, stem: str) -> list[Path]:
    import matplotlib.pyplot as plt  # slow to import; only drawing a figure needs it

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    # Each under a temporary name, then renamed: a report stopped mid-figure leaves the
    # previous figure or none, never half a file.
    with atomic_path(paths[0]) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    # No date and fixed element ids: the same store redraws the same bytes, so a
    # regenerated report can be compared with the committed one file by file.
    with plt.rc_context({"svg.hashsalt": "adaptive-lora"}), atomic_path(paths[1]) as tmp:
        fig.savefig(tmp, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return paths


def _subplots(n: int, width: float = 5.0, height: float = 3.6, ncols: int | None = None):
    import matplotlib.pyplot as plt  # slow to import; only drawing a figure needs it

    ncols = ncols or min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _strip(ax: Any, labels: list[str], values: list[list[float]], means, cis, ylabel: str):
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
    ax.set_xlim(-0.5, len(labels) - 0.5)  # one strategy alone stays centred, not stretched
    ax.set_ylabel(ylabel)


def _shared_seeds(entries: list[dict[str, Any]]) -> list[Any]:
    """The seeds every strategy of a panel has a finite value for."""
    sets = [{s for s, v in e["values"].items() if math.isfinite(v)} for e in entries]
    return sorted(set.intersection(*sets), key=int) if sets else []


def _fig_test_loss(study: Study, analysis: dict[str, Any], folder: Path) -> list[Path]:
    """Per budget: each strategy's per-seed test losses (points) and their mean with its
    95% t interval over the seeds *every* strategy of the panel ran. With sequential
    seeds the strategies stop at different seeds, and means over unequal seed sets
    would show seed differences as strategy differences (the tests are paired)."""
    blocks = analysis["budgets"]
    fig, axes = _subplots(len(blocks), height=4.0)
    for ax, (budget, block) in zip(axes, blocks.items()):
        labels = list(block["strategies"])  # the strategies run at this budget
        entries = [block["strategies"][label][PRIMARY] for label in labels]
        shared = _shared_seeds(entries)
        means, cis = [], []
        for e in entries:
            values = [e["values"][s] for s in shared]
            means.append(sum(values) / len(values) if values else math.nan)
            cis.append(mean_ci_t(values))
        _strip(ax, labels, [list(e["values"].values()) for e in entries], means, cis, "test loss")
        every = all(len(e["values"]) == len(shared) for e in entries)
        note = "" if every else f"\nmeans over the {len(shared)} seeds all ran"
        ax.set_title(f"budget {budget}{note}", fontsize=9)
    # One y scale for every budget, so the budgets compare by eye.
    low = min(ax.get_ylim()[0] for ax in axes)
    high = max(ax.get_ylim()[1] for ax in axes)
    for ax in axes:
        ax.set_ylim(low, high)
    fig.tight_layout()  # rotated strategy names clear the titles of the row below
    return _save(fig, folder, "test_loss")


def _adjusted_ci(diffs: list[float], k: int, level: float = 0.95) -> list[float]:
    """The Bonferroni-adjusted t interval of the mean of `diffs` (level 1 − α/k for the k
    comparisons of a family): simultaneous coverage ≥ `level`, as the Holm tests need."""
    return mean_ci_t([d for d in diffs if math.isfinite(d)], 1 - (1 - level) / max(k, 1))


def _fig_paired(study: Study, analysis: dict[str, Any], folder: Path) -> list[Path]:
    """Per budget, each strategy's paired differences from the baseline, with the mean and
    its Bonferroni-adjusted 95% interval over the family, beside the declared margin (±,
    dotted) and, where the study measured it, one doubling of the baseline's rank."""
    # A budget where only the baseline ran has nothing to compare: no empty panel for it.
    blocks = {
        budget: block
        for budget, block in analysis["budgets"].items()
        if any(c.n for c in block["comparisons"].values())
    }
    if not blocks:
        return []
    margin = (analysis.get("hypotheses") or {}).get("margin")
    doubling = analysis.get("one_doubling")
    fig, axes = _subplots(len(blocks), height=4.0)
    for ax, (budget, block) in zip(axes, blocks.items()):
        baseline = study_at(study, block).baseline
        comps = block["comparisons"]
        labels = list(comps)
        _strip(
            ax,
            labels,
            [comps[k].diffs for k in labels],
            [comps[k].mean_diff for k in labels],
            [_adjusted_ci(comps[k].diffs, len(labels)) for k in labels],
            f"test loss − {baseline}",
        )
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        if margin:
            for sign in (-1, 1):
                ax.axhline(sign * margin, color="C2", lw=0.9, ls=":")
            ax.text(1.0, margin, f" ±{margin:g} margin", color="C2", fontsize=7,
                    transform=ax.get_yaxis_transform(), va="bottom", ha="right")  # fmt: skip
        if doubling and math.isfinite(doubling) and doubling > 0:
            ax.axhline(doubling, color="C1", lw=0.9, ls="-.")
            ax.text(0.0, doubling, f" one doubling of rank ({doubling:+.4f})", color="C1",
                    fontsize=7, transform=ax.get_yaxis_transform(), va="bottom")  # fmt: skip
        ax.set_title(
            f"budget {budget} (below 0: better than {baseline})\n"
            f"mean, 95% interval adjusted for {len(labels)} comparisons",
            fontsize=9,
        )
    fig.tight_layout()
    return _save(fig, folder, "paired_diff")


def _module_infos(modules: list[dict[str, Any]]) -> list[Any]:

    return [
        ModuleInfo(str(m["name"]), int(m["layer"]), str(m["kind"]), 0, 0)
        for m in modules
        if m.get("kind") in ALL_KINDS and isinstance(m.get("layer"), int)
    ]


def _run_dir(study: Study, row: RunRow) -> Path:
    return study.out / row.run_dir if row.run_dir else study.runs_dir / row.id


def _read_allocation(study: Study, row: RunRow) -> dict[str, Any] | None:
    """The run's allocation from the store; from its run folder for runs stored before that."""
    modules = row.metrics.get(ALLOCATION_KEY)
    if isinstance(modules, list) and modules:
        return {"modules": modules}
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
    numbers: bool = True,
) -> list[Path]:
    from matplotlib.ticker import MaxNLocator  # slow to import; only drawing a figure needs it

    n_layers = max(1 + max(m.layer for m in inventory) for _, inventory, _ in panels)
    fig, axes = _subplots(
        len(panels), width=4.6, height=max(3.0, 0.22 * n_layers + 1.5), ncols=min(len(panels), 4)
    )
    values_all = [v for _, _, values in panels for v in values.values()]
    images = []
    for ax, (title, inventory, values) in zip(axes, panels):
        images.append(
            draw_layer_kind_heatmap(
                ax, inventory, values, title=title, label=label, numbers=numbers
            )
        )
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
        for label in block["strategies"]:
            mine, learned = _allocation_panels(study, label, budget, block, by_id)
            panels += mine
            final += learned
        if panels:
            paths += _heatmaps(study, panels, folder, f"allocation_{file_slug(budget)}", "rank")
        if final:
            paths += _heatmaps(
                study, final, folder, f"adalora_final_ranks_{file_slug(budget)}", "final rank"
            )
    return paths


def _allocation_panels(
    study: Study, label: str, budget: str, block: dict[str, Any], by_id: dict[str, RunRow]
) -> tuple[list[tuple], list[tuple]]:
    """One strategy's panels for the allocation figure, and its learned final ranks.

    The lowest seed with an allocation is drawn. A strategy whose runs learn their ranks
    (AdaLoRA) gets two panels, its initial ranks (`initial_ranks`) and its final ones
    (`final_ranks`), both naming the seed: the planned allocation alone would show the
    budget's rank, not the rank training started from.
    """
    found = [
        (by_id[i], a)
        for i in block["strategies"][label]["run_ids"]
        if (a := _read_allocation(study, by_id[i])) is not None
    ]
    rank_sets = {json.dumps(_ranks(a), sort_keys=True) for _, a in found}
    for row, allocation in found:
        inventory = _module_infos(allocation["modules"])
        if not inventory:
            continue
        learned = row.metrics.get("final_ranks")
        if not (isinstance(learned, dict) and learned):
            # Seeded strategies (random) differ per seed: say which one is drawn.
            seed_note = f", seed {row.seed}" if len(rank_sets) > 1 else ""
            return [(f"{label} @ {budget}{seed_note}", inventory, _ranks(allocation))], []
        initial = row.metrics.get("initial_ranks")
        start = _match_names(initial, inventory) if isinstance(initial, dict) else {}
        end = (
            f"{label} final @ {budget}, seed {row.seed}",
            inventory,
            _match_names(learned, inventory),
        )
        first = (
            f"{label} initial @ {budget}, seed {row.seed}",
            inventory,
            start or _ranks(allocation),
        )
        return [first, end], [end]
    return [], []


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


CURVES = (("train_loss_curve", "training loss"), ("val_loss_curve", "validation loss"))
FEW_POINTS = 2  # evaluations per run up to which a "curve" is drawn as points


def _points(row: RunRow, key: str) -> list[tuple[float, float]]:
    points = row.metrics.get(key) or []
    return [tuple(p) for p in points if isinstance(p, (list, tuple)) and len(p) == 2]


def _panel_curves(ax: Any, study: Study, block: dict, by_id: dict, key: str, name: str) -> str:
    """One panel of the loss figure; returns its title's note ("" for real curves).

    When every run has at most `FEW_POINTS` evaluations (validation before and after
    training), the values are drawn as points, each strategy a little apart along x so
    they do not hide each other, and the title says so: a line would suggest a curve the
    runs never measured.
    """
    runs = [
        (i, label, j, _points(by_id[run_id], key))
        for i, label in enumerate(study.labels)
        for j, run_id in enumerate(block["strategies"].get(label, {}).get("run_ids", []))
    ]
    few = all(len(points) <= FEW_POINTS for *_, points in runs)
    span = max((x for *_, points in runs for x, _ in points), default=1.0) or 1.0
    present = sorted({i for i, *_ in runs})  # the panel's strategies, centred on each step
    by_strategy: dict[int, dict[float, list[float]]] = {}
    for i, label, j, points in runs:
        if not points:
            continue
        xs, ys = zip(*points)
        many = sum(1 for k, *_ in runs if k == i) > 1  # several seeds: their mean leads
        style = dict(color=f"C{i % 10}", alpha=0.15 if many and not few else 0.6,
                     label=label if j == 0 and (few or not many) else None)  # fmt: skip
        if few:
            offset = span * 0.012 * (present.index(i) - (len(present) - 1) / 2)
            ax.plot([x + offset for x in xs], ys, ls="none", marker="o", ms=3, **style)
        else:
            ax.plot(xs, ys, lw=0.6 if many else 1, marker="." if len(xs) < 4 else None, **style)
            if many:
                for x, y in points:
                    by_strategy.setdefault(i, {}).setdefault(x, []).append(y)
    # Per-step noise of one run hides any trend over a few steps: with several seeds the
    # mean over them at each step is drawn bold, the runs themselves faint behind it.
    for i, steps in by_strategy.items():
        xs = sorted(steps)
        ax.plot(xs, [sum(steps[x]) / len(steps[x]) for x in xs], lw=1.8, color=f"C{i % 10}",
                label=f"{study.labels[i]} (mean of {max(map(len, steps.values()))} seeds)")  # fmt: skip
    if not few:
        return ""
    steps = ", ".join(f"{x:g}" for x in sorted({x for *_, points in runs for x, _ in points}))
    return f"\n(evaluated at step(s) {steps} only: points, not a curve)"


def _fig_curves(study: Study, rows: list[RunRow], analysis: dict[str, Any], folder: Path):
    import matplotlib.pyplot as plt  # slow to import; only drawing a figure needs it

    by_id = {r.id: r for r in rows}
    blocks = analysis["budgets"]
    has_any = any(
        by_id[i].metrics.get(key)
        for b in blocks.values()
        for e in b["strategies"].values()
        for i in e["run_ids"]
        for key, _ in CURVES
    )
    if not has_any:
        return []
    # A constrained layout keeps each row's title clear of the x label of the row above.
    fig, axes = plt.subplots(
        len(blocks), 2, figsize=(11, 3.9 * len(blocks)), squeeze=False, layout="constrained"
    )
    for r, (budget, block) in enumerate(blocks.items()):
        for c, (key, name) in enumerate(CURVES):
            ax = axes[r][c]
            note = _panel_curves(ax, study, block, by_id, key, name)
            ax.set_title(f"{name}, budget {budget}{note}", fontsize=10)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(name)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    return _save(fig, folder, "loss_curves")


def _fig_time(study: Study, rows: list[RunRow], analysis: dict[str, Any], folder: Path):
    """Each strategy's mean time per run, stacked by phase (training, evaluation,
    allocation and the rest, as `report.timing` splits a run's time), with each run's
    total time as a point; a run that recorded no phase counts as rest alone."""
    by_id = {r.id: r for r in rows}
    blocks = analysis["budgets"]
    names = [name for name, _ in PHASES] + [REST]
    fig, axes = _subplots(len(blocks))
    for ax, (budget, block) in zip(axes, blocks.items()):
        labels = list(block["strategies"])
        rng = np.random.default_rng(0)  # the same jitter in every report
        for i, label in enumerate(labels):
            runs = [by_id[run_id] for run_id in block["strategies"][label]["run_ids"]]
            split = [phase_seconds(r) or {REST: float(r.seconds)} for r in runs if r.seconds]
            bottom = 0.0
            for k, name in enumerate(names):
                values = [p.get(name, 0.0) for p in split]
                height = float(np.mean(values)) if values else 0.0
                ax.bar(i, height, bottom=bottom, width=0.55, color=f"C{k}", alpha=0.75,
                       label=("the " + name if name == REST else name) if i == 0 else None)  # fmt: skip
                bottom += height
            totals = [r.seconds for r in runs if r.seconds]
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(totals)), totals, s=12, color="black",
                       alpha=0.7, zorder=3, label="one run's total" if i == 0 else None)  # fmt: skip
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_ylabel("seconds per run")
        if labels:
            ax.legend(fontsize=7)
        ax.set_title(f"time per run by phase, budget {budget}\n(bars: each phase's mean)")
    return _save(fig, folder, "time_per_run")


def _lr_panel(ax: Any, choice: dict[str, Any]) -> None:
    """One strategy × budget: each tuning seed's validation loss per rate, and the mean."""
    rates = choice["spread"]["rates"]
    xs = sorted(float(lr) for lr in rates)
    for k, lr in enumerate(xs):
        values = list(rates[str(lr)]["by_seed"].values())
        ax.scatter([lr] * len(values), values, s=14, alpha=0.6, color="C0",
                   label="tuning seed" if k == 0 else None)  # fmt: skip
    ax.plot(xs, [rates[str(lr)]["mean"] for lr in xs], color="C3", marker="o", ms=4, label="mean")
    if choice["chosen"] is not None:
        ax.axvline(choice["chosen"], color="grey", ls="--", lw=0.8, label="chosen")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{lr:g}" for lr in xs], fontsize=7)
    ax.minorticks_off()
    noisy = " — within seed noise" if choice["spread"].get("within_noise") else ""
    ax.set_title(f"{choice['label']} @ {choice['budget']}{noisy}", fontsize=9)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation loss")


def _fig_lr(study: Study, analysis: dict[str, Any], folder: Path) -> list[Path]:
    """Validation loss against learning rate, one panel per strategy × budget.

    Each panel has its own y scale: strategies differ in level (AdaLoRA's worst rate is
    far above the rest), and what matters is the gap between rates against the spread
    between seeds within a rate.
    """
    choices = [
        c
        for c in analysis["lr_selection"]
        if len(c["candidates"]) > 1 and len((c.get("spread") or {}).get("rates", {})) > 1
    ]
    if not choices:
        return []
    fig, axes = _subplots(len(choices), width=3.4, height=2.9, ncols=min(len(choices), 5))
    for ax, choice in zip(axes, choices):
        _lr_panel(ax, choice)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, folder, "lr_curves")


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
    paths += _fig_lr(study, analysis, folder)
    paths += _fig_time(study, rows, analysis, folder)
    paths += _fig_recovery(study, rows, analysis, folder)
    return paths


def _fig_recovery(
    study: Study, rows: list[RunRow], analysis: dict[str, Any], folder: Path
) -> list[Path]:
    """A planted task's known answer beside each strategy's ranks, per budget: the planted
    mask first, then every strategy scaled to its own largest rank (where, not how much)."""
    block = analysis.get("recovery")
    paths: list[Path] = []
    for budget in (block or {}).get("budgets", {}):
        panels = [
            (title, _module_infos(modules), values)
            for title, modules, values in recovery_panels(block, rows, budget)
        ]
        if len(panels) > 1:
            stem = f"recovery_{file_slug(budget)}"
            paths += _heatmaps(study, panels, folder, stem, "rank ÷ largest", numbers=False)
    return paths
