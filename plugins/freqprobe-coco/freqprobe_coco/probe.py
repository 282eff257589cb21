"""``coco-map``: COCO mAP on the original images and on their low/high parts (paper §7), with per-object comparisons.

numpy and the COCO evaluation are imported where they are used: registering the probe (``freqprobe --help``) loads neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from freqprobe import Probe, UserFacingError

if TYPE_CHECKING:  # annotations only
    import numpy as np


class CocoMapProbe(Probe):
    """COCO box AP/AR of a detector on the original images and on each frequency component (paper §7, Figures 8-9)."""

    name = "coco-map"
    requires = {"task": "detection"}
    #: score_threshold: detections counted per image (tp/fp/fn, Figures 8-9); backend: auto, pycocotools,
    #: faster-coco-eval; panels: side-by-side PNGs kept per list
    options = {"score_threshold": 0.5, "iou_threshold": 0.5, "backend": "auto", "panels": 6}
    default_metrics = ("coco-map",)
    default_params = {"fft-radial": (128,)}
    plot_metrics = ("AP", "AP50")

    @classmethod
    def check_options(cls, given):
        from .cocoeval import resolve_backend

        opts = super().check_options(given)
        for key in ("score_threshold", "iou_threshold"):
            if not 0.0 <= float(opts[key]) <= 1.0:
                raise UserFacingError(f"probe 'coco-map': {key}={opts[key]!r} must be between 0 and 1")
        if opts["panels"] < 0:
            raise UserFacingError(f"probe 'coco-map': panels={opts['panels']!r} must be 0 or more")
        resolve_backend(opts["backend"])
        return opts

    def sources(self, ctx) -> list:
        """The original images and their parts; the detector adapter counts its per-image columns at the probe's
        thresholds (public attributes of the plugin's own adapter class)."""
        adapter = ctx.adapter
        adapter.score_threshold = float(self.opts["score_threshold"])
        adapter.iou_threshold = float(self.opts["iou_threshold"])
        if ctx.forward_batch:
            adapter.forward_batch = int(ctx.forward_batch)
        return super().sources(ctx)

    def derive(self, result, ctx) -> None:
        """``extras["coco"]``: the backend, the thresholds and the evaluated image ids (what the writers and the
        manifest use); the detections per variant come from the ``coco-map`` metrics' extras."""
        from .cocoeval import resolve_backend

        ids = result.samples.column("image_id") if result.samples is not None else []
        result.extras["coco"] = {
            "backend": resolve_backend(self.opts["backend"]),
            "score_threshold": float(self.opts["score_threshold"]),
            "iou_threshold": float(self.opts["iou_threshold"]),
            "image_ids": sorted({int(i) for i in ids}),
        }


def detections_by_image(rows: np.ndarray) -> dict[int, np.ndarray]:
    """COCO results rows grouped by image id (each group in its original order)."""
    import numpy as np

    if not len(rows):
        return {}
    ids = rows[:, 0].astype(np.int64)
    order = np.argsort(ids, kind="stable")
    ids_sorted = ids[order]
    cuts = np.flatnonzero(np.diff(ids_sorted)) + 1
    return {int(g[0]): rows[order[s:e]] for g, s, e in zip(np.split(ids_sorted, cuts), np.r_[0, cuts], np.r_[cuts, len(ids)])}


def per_object_found(data, image_ids, rows: np.ndarray, *, iou_threshold: float, score_threshold: float) -> dict[int, dict]:
    """Per image: which ground-truth objects a variant's detections find (IoU >= threshold, score >= threshold), and its false positives."""
    import numpy as np

    from .match import match_images

    groups = detections_by_image(rows)
    dets, gts = [], []
    for i in image_ids:
        r = groups.get(int(i), np.zeros((0, 7)))
        boxes = np.concatenate([r[:, 1:3], r[:, 1:3] + r[:, 3:5]], axis=1) if len(r) else np.zeros((0, 4))
        dets.append((boxes, r[:, 5], r[:, 6].astype(np.int64)))
        t = data.target(int(i))
        gts.append((t["boxes"], t["labels"], t["iscrowd"]))
    got = match_images(dets, gts, iou_threshold=iou_threshold, score_threshold=score_threshold, return_matches=True)
    return {int(i): {"found": got["gt_matched"][k], "det_tp": got["det_matched"][k], "fp": int(got["fp"][k]),
                     "tp": int(got["tp"][k])} for k, i in enumerate(image_ids)}
