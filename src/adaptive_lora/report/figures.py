"""The report's figures (PNG and SVG), drawn from the analysis and the run folders."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from adaptive_lora.allocation.heatmap import draw_layer_kind_heatmap
from adaptive_lora.model.inventory import ALL_KINDS, ModuleInfo
from adaptive_lora.records import ALLOCATION_KEY
from adaptive_lora.report.analyse import PRIMARY, _value
from adaptive_lora.study.spec import Study
from adaptive_lora.study.store import (
    RunRow,
)


def _save(fig: Any, folder: Path, stem: str) -> list[Path]:
    import matplotlib.pyplot as plt  # slow to import; only drawing a figure needs it

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    # No date and fixed element ids: the same store redraws the same bytes, so a
    # regenerated report can be compared with the committed one file by file.
    with plt.rc_context({"svg.hashsalt": "adaptive-lora"}):
        fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)


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


def _fig_test_loss(study: Study, analysis: dict[str, Any], folder: Path) -> list[Path]:
    blocks = analysis["budgets"]
    fig, axes = _subplots(len(blocks))
    for ax, (budget, block) in zip(axes, blocks.items()):
        labels = list(block["strategies"])  # the strategies run at this budget
        entries = [block["strategies"][label][PRIMARY] for label in labels]
        _strip(
            ax,
            labels,
            [list(e["values"].values()) for e in entries],
            [e["mean"] for e in entries],
            [e["ci_t"] for e in entries],
            "test loss",
        )
        ax.set_title(f"budget {budget}")
    # One y scale for every budget, so the budgets compare by eye.
    low = min(ax.get_ylim()[0] for ax in axes)
    high = max(ax.get_ylim()[1] for ax in axes)
    for ax in axes:
        ax.set_ylim(low, high)
    return _save(fig, folder, "test_loss")


def _fig_paired(study: Study, analysis: dict[str, Any], folder: Path) -> list[Path]:
    # A budget where only the baseline ran has nothing to compare: no empty panel for it.
    blocks = {
        budget: block
        for budget, block in analysis["budgets"].items()
        if any(c["n"] for c in block["comparisons"].values())
    }
    if not blocks:
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
) -> list[Path]:
    from matplotlib.ticker import MaxNLocator  # slow to import; only drawing a figure needs it

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
        for label in block["strategies"]:
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
    import matplotlib.pyplot as plt  # slow to import; only drawing a figure needs it

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
                run_ids = block["strategies"].get(label, {}).get("run_ids", [])
                for j, run_id in enumerate(run_ids):
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
        labels = list(block["strategies"])
        for label in labels:
            entry = block["strategies"][label]
            key = "train_seconds" if entry["train_seconds"]["n"] else "wall_seconds"
            if key == "train_seconds":
                points = [_value(by_id[i], "train_seconds") for i in entry["run_ids"]]
            else:
                points = [by_id[i].seconds or math.nan for i in entry["run_ids"]]
            values.append(points)
            means.append(entry[key]["mean"])
        _strip(ax, labels, values, means, [[math.nan, math.nan]] * len(means), "seconds")
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
