"""``coco-map``: the twelve COCO box metrics of a variant's detections, by pycocotools or faster-coco-eval."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from freqprobe import Metric
from freqprobe.errors import UserFacingError

from .cocoeval import coco_stats


def detection_rows(outputs: list, targets: list) -> torch.Tensor:
    """COCO results rows ``(image_id, x, y, w, h, score, category_id)`` (float64, on the CPU) of a batch's detections."""
    rows = []
    for o, t in zip(outputs, targets):
        b = o["boxes"].detach().to("cpu", torch.float64)
        k = b.shape[0]
        if not k:
            continue
        r = torch.empty((k, 7), dtype=torch.float64)
        r[:, 0] = float(int(t["image_id"]))
        r[:, 1:3] = b[:, :2]
        r[:, 3:5] = b[:, 2:] - b[:, :2]
        r[:, 5] = o["scores"].detach().to("cpu", torch.float64)
        r[:, 6] = o["labels"].detach().to("cpu", torch.float64)
        rows.append(r)
    return torch.cat(rows) if rows else torch.zeros((0, 7), dtype=torch.float64)


class CocoMap(Metric):
    """COCO box AP/AR (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l) over exactly the evaluated images."""

    name = "coco-map"
    task = "detection"

    def __init__(self, ctx: Any = None, **options: Any) -> None:
        super().__init__(ctx, **options)
        self.add_state("rows", [], reduce="cat")  # one float64 K×7 tensor per batch
        self.add_state("image_ids", [], reduce="cat")
        self._cache: tuple | None = None

    def update(self, outputs: Any, targets: Any) -> None:
        self.rows.append(detection_rows(outputs, targets))
        self.image_ids.extend(int(t["image_id"]) for t in targets)
        self._cache = None

    def results_array(self) -> np.ndarray:
        """All detections so far as COCO's loadRes array (K×7 float64), in data order (ascending image id, each
        image's detections as the detector gave them): the same whichever shards were merged in which order."""
        rows = [r.numpy() if isinstance(r, torch.Tensor) else np.asarray(r) for r in self.rows]
        if not rows:
            return np.zeros((0, 7))
        out = np.concatenate(rows)
        return out[np.argsort(out[:, 0], kind="stable")]

    def compute(self) -> dict[str, float]:
        key = (len(self.rows), len(self.image_ids))
        if self._cache is not None and self._cache[0] == key:
            return dict(self._cache[1])
        data = getattr(self.ctx, "data", None)
        gt = getattr(data, "coco", None)
        if gt is None:
            raise UserFacingError("metric 'coco-map' needs COCO ground truth: use --data coco:IMAGES_DIR:ANNOTATIONS.json")
        backend = (getattr(self.ctx, "options", None) or {}).get("backend", "auto")
        stats = coco_stats(gt, self.results_array(), sorted(set(self.image_ids)), backend=backend)
        self._cache = (key, stats)
        return dict(stats)


