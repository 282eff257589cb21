"""Built-in result writers (a ``report_result`` hook: the CSVs, the accuracy plot), the Figure-2 gallery's files,
and the ``freqprobe report`` section of probe-run folders (a ``report_folder`` hook)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .. import tables
from ..hookspecs import hookimpl
from ..report import is_probe_run
from ..scores import VARIANT as SCORE_VARIANT
from ..tables import fmt_param

if TYPE_CHECKING:  # annotations only: numpy (and matplotlib) are imported where they are used
    import numpy as np

log = logging.getLogger("freqprobe.report")


def write_summary(result, path: Path) -> None:
    tables.write_summary(result.summary, path, result.extras.get("extra_columns") or ())


def write_samples(result, path: Path) -> None:
    result.samples.write_csv(path)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(result, path: Path) -> None:
    plt = _plt()
    extra = list(result.extras.get("extra_columns") or [])
    # the clean images' curves: rows of variants without extra columns (not an attack's), per metric with a component curve;
    # score rows (hfc-reliance: one number, no parameter) are no point on a curve
    plain = [r for r in result.summary if all(r.get(c) is None for c in extra) and r["variant"] != SCORE_VARIANT]
    metric_names = sorted({r["metric"] for r in plain if r["variant"] in result.components})
    if result.extras.get("plot_metrics"):  # a probe with many metrics names the ones worth a panel (a detection probe: AP, AP50)
        metric_names = [m for m in result.extras["plot_metrics"] if m in metric_names]
    if not metric_names:
        return
    fig, axes = plt.subplots(1, len(metric_names), figsize=(5.5 * len(metric_names), 4), squeeze=False)
    for ax, metric in zip(axes[0], metric_names):
        rows = [r for r in plain if r["metric"] == metric]
        orig = [r["value"] for r in rows if r["variant"] == "original"]
        for comp in result.components:
            pts = [(r["param"], r["value"]) for r in rows if r["variant"] == comp]
            if pts and all(_is_number(p) for p, _ in pts):
                pts = sorted((float(p), v) for p, v in pts)
                ax.plot([p for p, _ in pts], [v for _, v in pts], marker="o", label=comp)
            elif pts:  # text parameters (the bands "0-4", "4-8"): in the order evaluated, one tick each
                ax.plot(range(len(pts)), [v for _, v in pts], marker="o", label=comp)
                ax.set_xticks(range(len(pts)), [fmt_param(p) for p, _ in pts])
        if orig:
            ax.axhline(orig[0], color="gray", linestyle="--", label=f"original ({orig[0]:.3f})")
        ax.set_xlabel(result.param_name or "param")
        ax.set_ylabel(metric)
        ax.set_ylim(-0.02, 1.02)
        dec = rows[0]["decomposer"] if rows else ""
        ax.set_title(f"{result.probe}: {metric} vs {result.param_name} ({dec})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _is_number(p) -> bool:
    return isinstance(p, (int, float)) and not isinstance(p, bool)


def _show(img) -> np.ndarray:
    a = img.float().numpy().transpose(1, 2, 0)
    if a.shape[2] == 1:
        a = a[:, :, 0]
    return a


def plot_gallery(entries, param, comps, param_name: str, names, out_dir: Path) -> str:
    """Figure 2 of the paper for one parameter: right on original and high part, wrong on the low part; the file's name."""
    plt = _plt()
    cols = ["original", comps[0], comps[1]]
    fig, axes = plt.subplots(len(entries), 3, figsize=(6.6, 2.3 * len(entries)), squeeze=False)
    for row, e in zip(axes, entries):
        for ax, c in zip(row, cols):
            img = e["images"][c]
            if c == comps[1]:
                lo, hi = float(img.min()), float(img.max())
                img = (img - lo) / (hi - lo) if hi > lo else img * 0
                title_extra = " (stretched)"
            else:
                img = img.clamp(0, 1)
                title_extra = ""
            a = _show(img)
            ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            pred = e["pred"][c]
            label = names[pred] if names and pred < len(names) else str(pred)
            ax.set_title(f"{c}{title_extra}\n{label} {e['confidence'][c]:.2f}", fontsize=8, color="green" if pred == e["label"] else "red")
            ax.axis("off")
        truth = names[e["label"]] if names and e["label"] < len(names) else str(e["label"])
        row[0].text(-0.1, 0.5, f"#{e['index']}\n{truth}", transform=row[0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle(f"right on original and {comps[1]}, wrong on {comps[0]} ({param_name}={fmt_param(param)})", fontsize=9)
    fig.tight_layout()
    name = f"figure2_{param_name}{fmt_param(param)}.png"
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def write_gallery_csv(gallery, comps, path: Path) -> None:
    """``figure2.csv``: per parameter, the gallery's samples with their predictions and confidences."""
    cols = ["param", "index", "label"] + [f"{k}_{c}" for c in ("original",) + tuple(comps) for k in ("pred", "confidence")]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for p, entries in gallery.items():
            for e in entries:
                vals = []
                for c in ("original",) + tuple(comps):
                    vals += [e["pred"][c], f"{e['confidence'][c]:.6f}"]
                w.writerow([fmt_param(p), e["index"], e["label"], *vals])


@hookimpl
def report_result(result, context):
    """``summary.csv``, ``samples.csv`` (unless streamed already) and ``accuracy.png``."""
    out = getattr(context, "out_dir", None)
    if out is None:
        return
    out = Path(out)
    write_summary(result, out / "summary.csv")
    if result.samples is not None and len(result.samples) and not (out / "samples.csv").exists():
        write_samples(result, out / "samples.csv")  # a run into a folder has streamed it already
    if result.components and any(r["variant"] not in ("original", SCORE_VARIANT) for r in result.summary):
        plot_accuracy(result, out / "accuracy.png")


@hookimpl(trylast=True)
def report_folder(folder, report):
    """A probe run's folder (``manifest.json`` + ``summary.csv``): its tables, scores, plots and manifest. A study's
    folder (``freqprobe run`` with several models: one run folder per model inside) is its runs, each a section."""
    if is_probe_run(folder):
        return report.probe_section(folder, report.level)
    if (Path(folder) / "study.json").is_file():  # written by freqprobe run with several models (runner.STUDY_FILE)
        h = f"h{report.level}"
        return f"<{h}>{report.escape(Path(folder).name)} (study)</{h}>" + report.subfolders(folder, report.level + 1)
    return None
