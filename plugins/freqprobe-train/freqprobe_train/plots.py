"""The paper's training-curve figures (Figures 3-6): accuracy along the epochs on originals and low/high parts."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _series(rows, split: str, variant: str, param=None) -> tuple[list, list]:
    pts = sorted((r["epoch"], r["value"]) for r in rows if r["split"] == split and r["variant"] == variant
                 and r["metric"] == "accuracy" and (param is None or r["param"] == param))
    return [p for p, _ in pts], [v for _, v in pts]


def _panel(ax, rows, split: str, *, legend: bool = True) -> None:
    import matplotlib.cm as cm

    radii = sorted({r["param"] for r in rows if r["param"] is not None and r["split"] == split})
    colors = cm.viridis([i / max(1, len(radii) - 1) * 0.85 for i in range(len(radii))])
    for s, style in (("train", "-"), ("test", "-")):
        x, y = _series(rows, s, "original")
        if x:
            ax.plot(x, y, style, color="black" if s == "train" else "tab:red", lw=2, label=f"{s} (original)")
    for r, c in zip(radii, colors):
        x, y = _series(rows, split, "low", r)
        if x:
            ax.plot(x, y, "--", color=c, label=f"{split} low r={r:g}")
        x, y = _series(rows, split, "high", r)
        if x:
            ax.plot(x, y, ":", color=c, label=f"{split} high r={r:g}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="best")


def plot_curves(rows: Sequence[Mapping], path: Path, *, title: str = "") -> None:
    """One run: the train split's and the test split's low/high curves beside the original train and test accuracy."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    for ax, split in zip(axes[0], ("train", "test")):
        _panel(ax, rows, split)
        ax.set_title(f"{split} samples: original, low (--) and high (:) parts", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_comparison(runs: Mapping[str, Sequence[Mapping]], path: Path, *, split: str = "train", title: str = "") -> None:
    """A grid: one panel per setting (the paper's Figures 4-5: vanilla first, then each heuristic)."""
    plt = _plt()
    n = len(runs)
    cols = min(n, 3)
    rows_n = -(-n // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.8 * rows_n), squeeze=False)
    for i, (name, rows) in enumerate(runs.items()):
        ax = axes[i // cols][i % cols]
        _panel(ax, rows, split, legend=(i == 0))
        ax.set_title(name, fontsize=9)
    for j in range(n, rows_n * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(title or f"accuracy along the epochs ({split} low/high parts)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
