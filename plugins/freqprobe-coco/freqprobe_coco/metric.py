"""``coco-map``: the twelve COCO box metrics of a variant's detections, by pycocotools or faster-coco-eval.

torch, numpy and the COCO evaluation are imported where they are used: registering the metric loads none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from freqprobe import Metric, UserFacingError

if TYPE_CHECKING:  # annotations only
    import numpy as np
    import torch


def detection_rows(outputs: list, targets: list) -> torch.Tensor:
    """COCO results rows ``(image_id, x, y, w, h, score, category_id)`` (float64, on the CPU) of a batch's detections."""
    import torch

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
        # one float64 K×7 tensor of COCO results rows per batch, and the batch's image ids: lists that "cat"
        # concatenates on merge (not "rows": that is the evaluator's summary-rows method)
        self.add_state("detections", [], reduce="cat")
        self.add_state("image_ids", [], reduce="cat")
        self._cache: tuple | None = None

    # the state changes only through update() and the contract (reset, load, merge): each drops the cached stats
    def reset(self) -> None:
        super().reset()
        self._cache = None

    def load_state_dict(self, state: Any) -> None:
        super().load_state_dict(state)
        self._cache = None

    def merge(self, other: Any) -> None:
        super().merge(other)
        self._cache = None

    def update(self, outputs: Any, targets: Any) -> None:
        self.detections.append(detection_rows(outputs, targets))
        self.image_ids.extend(int(t["image_id"]) for t in targets)
        self._cache = None

    def results_array(self) -> np.ndarray:
        """All detections so far as COCO's loadRes array (K×7 float64), in data order (ascending image id, each
        image's detections as the detector gave them): the same whichever shards were merged in which order."""
        import numpy as np
        import torch

        rows = [r.numpy() if isinstance(r, torch.Tensor) else np.asarray(r) for r in self.detections]
        if not rows:
            return np.zeros((0, 7))
        out = np.concatenate(rows)
        return out[np.argsort(out[:, 0], kind="stable")]

    def extras(self) -> dict[str, Any]:
        """``{"detections": {variant: results_array()}}``: the engine merges every variant's into one dict, which
        the plugin's writer turns into ``detections_<variant>.json`` and the Figure 8/9 lists."""
        return {"detections": {self.variant: self.results_array()}}

    def compute(self) -> dict[str, float]:
        from .cocoeval import coco_stats

        if self._cache is not None:
            return dict(self._cache)
        data = getattr(self.ctx, "data", None)
        gt = getattr(data, "coco", None)
        if gt is None:
            raise UserFacingError("metric 'coco-map' needs COCO ground truth: use --data coco:IMAGES_DIR:ANNOTATIONS.json")
        backend = (getattr(self.ctx, "options", None) or {}).get("backend", "auto")
        stats = coco_stats(gt, self.results_array(), sorted(set(self.image_ids)), backend=backend)
        self._cache = stats
        return dict(stats)
