"""Figures shared by the CLI, run records and reports (matplotlib, no screen needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from adaptive_lora.model.inventory import ALL_KINDS, ModuleInfo
from adaptive_lora.records import atomic_path


def layer_kind_grid(
    inventory: Sequence[ModuleInfo], values: Mapping[str, float]
) -> tuple[np.ndarray, list[str]]:
    """A (layers × kinds) array of per-module values (NaN where a kind is absent)."""
    kinds = [k for k in ALL_KINDS if any(m.kind == k for m in inventory)]
    n_layers = 1 + max(m.layer for m in inventory)
    grid = np.full((n_layers, len(kinds)), np.nan)
    for m in inventory:
        if m.name in values:
            grid[m.layer, kinds.index(m.kind)] = values[m.name]
    return grid, kinds


def draw_layer_kind_heatmap(
    ax, inventory, values, *, title: str, label: str, integer=True, numbers=True
):
    """Draw the layer × module-kind heatmap of `values` onto `ax` (`numbers`: print each
    cell's value where the grid is small enough to read them)."""
    grid, kinds = layer_kind_grid(inventory, values)
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel("layer")
    ax.set_xlabel("module kind")
    ax.set_title(title, fontsize=9)
    if numbers and grid.size <= 400:  # numbers stay legible only on small grids
        for (row, col), value in np.ndenumerate(grid):
            if not np.isnan(value):
                text = f"{value:.0f}" if integer else f"{value:.2g}"
                ax.text(col, row, text, ha="center", va="center", fontsize=6, color="white")
    plt.colorbar(image, ax=ax, label=label)
    return image


def save_figure(fig, path: str | Path) -> list[Path]:
    """Save `fig` at `path`; a `.png` path also gets an `.svg` twin when `svg=True` callers ask."""
    path = Path(path)
    with atomic_path(path) as tmp:  # a temporary name, then renamed: never half a file
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=150,
                    bbox_inches="tight")  # fmt: skip
    plt.close(fig)
    return [path]


def rank_heatmap(
    inventory: Sequence[ModuleInfo],
    ranks: Mapping[str, float],
    path: str | Path,
    *,
    title: str = "LoRA rank per layer and module kind",
    label: str = "rank",
    integer: bool = True,
) -> Path:
    """Write a layer × module-kind heatmap of ranks (or any per-module value) to `path`."""
    n_layers = 1 + max(m.layer for m in inventory)
    fig, ax = plt.subplots(figsize=(6, max(3.0, 0.22 * n_layers + 1.5)))
    draw_layer_kind_heatmap(ax, inventory, ranks, title=title, label=label, integer=integer)
    save_figure(fig, path)
    return Path(path)
