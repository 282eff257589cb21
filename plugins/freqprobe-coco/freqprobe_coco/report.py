"""What a ``coco-map`` run writes beside summary.csv: detections files, the Figure 8/9 lists and panels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from freqprobe.plugin import fmt_param


def variant_stem(variant, param_name: str) -> str:
    """``original``, ``low_r128``: how a variant names its files."""
    if variant.param is None:
        return variant.name
    return f"{variant.name}_{param_name}{fmt_param(variant.param)}"


def write_detections(rows: np.ndarray, path: Path) -> None:
    """COCO results JSON (``image_id``, ``category_id``, ``bbox`` x, y, w, h, ``score``): what ``COCO.loadRes`` reads."""
    items = [{"image_id": int(r[0]), "category_id": int(r[6]), "bbox": [float(r[1]), float(r[2]), float(r[3]), float(r[4])],
              "score": float(r[5])} for r in rows]
    with open(path, "w") as f:
        json.dump(items, f, separators=(",", ":"))
        f.write("\n")


def comparison(image_ids, fa: dict, fb: dict) -> list[dict]:
    """Per image, the objects found on ``a`` only and on ``b`` only (``fa``, ``fb``: :func:`per_object_found` of each)."""
    out = []
    for i in image_ids:
        a, b = fa[int(i)], fb[int(i)]
        out.append({"image_id": int(i), "n_gt": int(len(a["found"])), "found_a": int(a["found"].sum()),
                    "found_b": int(b["found"].sum()), "only_a": int((a["found"] & ~b["found"]).sum()),
                    "only_b": int((~a["found"] & b["found"]).sum()), "fp_a": a["fp"], "fp_b": b["fp"],
                    "gt_a": a["found"], "gt_b": b["found"], "det_a": a["det_tp"], "det_b": b["det_tp"]})
    return out


def write_coco_outputs(result, context) -> None:
    out = Path(context.out_dir)
    data = context.data
    probed = "coco" in result.extras  # the coco-map probe's thresholds and image ids (the metric under another probe: none)
    info = result.extras.setdefault("coco", {})
    files = []
    for v, rows in result.extras["detections"].items():
        name = f"detections_{variant_stem(v, result.param_name)}.json"
        write_detections(rows, out / name)
        files.append(name)
    info["detections_files"] = files
    if not probed or not hasattr(data, "target") or not result.components:
        return
    original = next((v for v in result.extras["detections"] if v.name == "original" and v.param is None and not v.extra), None)
    if original is None:
        return
    low = result.components[0]
    ids = info.get("image_ids") or []
    thr, iou = float(info.get("score_threshold", 0.5)), float(info.get("iou_threshold", 0.5))
    n_panels = int((getattr(context, "options", None) or {}).get("panels", 0))
    figures = {}
    from .probe import per_object_found

    found = lambda rows: per_object_found(data, ids, rows, iou_threshold=iou, score_threshold=thr)  # noqa: E731
    found_original = found(result.extras["detections"][original])  # matched once, compared with every radius
    for v in result.extras["detections"]:
        if v.name != low or v.extra:
            continue
        comp = comparison(ids, found_original, found(result.extras["detections"][v]))
        tag = f"{result.param_name}{fmt_param(v.param)}"
        better = sorted((c for c in comp if c["only_b"] > 0), key=lambda c: (-c["only_b"], c["image_id"]))
        worse = sorted((c for c in comp if c["only_a"] > 0), key=lambda c: (-c["only_a"], c["image_id"]))
        for fname, items, key in ((f"figure9_low_better_{tag}.csv", better, "only_b"),
                                  (f"figure8_low_worse_{tag}.csv", worse, "only_a")):
            with open(out / fname, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["image_id", "file_name", "n_gt", "found_original", f"found_{low}", f"only_{low}" if key == "only_b"
                            else "only_original", "fp_original", f"fp_{low}"])
                for c in items:
                    w.writerow([c["image_id"], data.file_name(c["image_id"]), c["n_gt"], c["found_a"], c["found_b"], c[key],
                                c["fp_a"], c["fp_b"]])
        figures[tag] = {"images": len(ids), "low_better": len(better), "low_worse": len(worse),
                        "objects_only_low": int(sum(c["only_b"] for c in comp)),
                        "objects_only_original": int(sum(c["only_a"] for c in comp))}
        if n_panels:
            from .panels import draw_panels

            draw_panels(result, context, v, original, better[:n_panels], "figure9", out / "panels")
            draw_panels(result, context, v, original, worse[:n_panels], "figure8", out / "panels")
    info["figures"] = figures
