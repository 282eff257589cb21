"""Side-by-side panels for Figures 8 and 9: original | low part | high part, with the detections drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from freqprobe.plugin import decompose_with, fmt_param


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def draw_panels(result, context, v_low, v_orig, items, figure: str, folder: Path) -> list[Path]:
    """One PNG per listed image: detections at or above the score threshold (green: a found object, red: a false
    positive), and thick yellow the ground-truth objects found on one side only (the paper's marked objects)."""
    from .probe import per_object_found

    if not items:
        return []
    plt = _plt()
    folder.mkdir(exist_ok=True)
    data, dec = context.data, context.decomposer
    info = result.extras["coco"]
    thr, iou = float(info["score_threshold"]), float(info["iou_threshold"])
    comps = result.components
    dets = result.extras["detections"]
    v_high = next((v for v in dets if v.name == comps[1] and v.param == v_low.param and v.extra == v_low.extra), None)
    names = getattr(data, "category_names", {})
    written = []
    for item in items:
        image_id = item["image_id"]
        img = data.read_image(image_id)
        parts = dict(decompose_with(dec, img[None].contiguous(), v_low.param))
        views = [("original", img, v_orig), (f"{comps[0]} {result.param_name}={fmt_param(v_low.param)}", parts[comps[0]][0], v_low)]
        if v_high is not None:
            views.append((f"{comps[1]} (stretched)", parts[comps[1]][0], v_high))
        gt = data.target(image_id)
        gboxes = gt["boxes"].numpy()
        found = {v: per_object_found(data, [image_id], dets[v], iou_threshold=iou, score_threshold=thr)[image_id]
                 for _, _, v in views}
        differs = found[v_orig]["found"] != found[v_low]["found"]
        h, w = img.shape[-2:]
        fig, axes = plt.subplots(1, len(views), figsize=(4.2 * len(views), 4.2 * h / w + 0.6), squeeze=False)
        for ax, (title, x, v) in zip(axes[0], views):
            _draw_view(ax, title, x, dets[v], found[v], image_id=image_id, thr=thr, names=names, marked=gboxes[differs],
                       stretch=v is v_high)
        what = "better" if figure == "figure9" else "worse"
        fig.suptitle(f"image {image_id} ({data.file_name(image_id)}): objects found {what} on the {comps[0]} part "
                     f"(yellow: found on one side only; score >= {thr:g}, IoU >= {iou:g})", fontsize=8)
        fig.tight_layout()
        path = folder / f"{figure}_{result.param_name}{fmt_param(v_low.param)}_{image_id}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written



def _draw_view(ax, title: str, x, rows: np.ndarray, found: dict, *, image_id: int, thr: float, names, marked: np.ndarray,
               stretch: bool) -> None:
    """One panel: the image (``stretch``: min-max scaled, the high part), its detections at or above ``thr`` (green:
    found an object, red: a false positive) and the ``marked`` ground-truth boxes thick yellow."""
    from matplotlib.patches import Rectangle

    x = x.float()
    if stretch:
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else x * 0
    ax.imshow(x.clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
    rows = rows[(rows[:, 0] == image_id) & (rows[:, 5] >= thr)] if len(rows) else rows
    order = np.argsort(-rows[:, 5], kind="mergesort") if len(rows) else []
    tp_flags = found["det_tp"]
    for k, r in enumerate(rows[order] if len(rows) else []):
        ok = bool(tp_flags[k]) if k < len(tp_flags) else False
        ax.add_patch(Rectangle((r[1], r[2]), r[3], r[4], fill=False, lw=1.2, color="lime" if ok else "red"))
        ax.text(r[1], r[2], f"{names.get(int(r[6]), int(r[6]))} {r[5]:.2f}", fontsize=5, color="white",
                bbox={"facecolor": "green" if ok else "red", "alpha": 0.6, "pad": 0.5, "lw": 0})
    for b in marked:
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, lw=2.5, color="yellow", ls="--"))
    ax.set_title(f"{title}\nfound {int(found['found'].sum())}/{len(found['found'])}, false pos. {found['fp']}", fontsize=8)
    ax.axis("off")


__all__ = ["draw_panels", "torch"]
