"""The detector adapter: [0, 1] images in, per-image ``boxes``/``scores``/``labels`` (COCO category ids) out.

torch and numpy are imported where they are used: registering the adapter loads neither.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from freqprobe import IncompatibleError, ModelAdapter, UserFacingError
from freqprobe.plugin import exception_line

if TYPE_CHECKING:  # annotations only
    import torch

OUTPUT_KEYS = ("boxes", "scores", "labels")


class DetectorAdapter(ModelAdapter):
    """Detectors: a list of C×H×W [0, 1] images -> per image boxes (x1, y1, x2, y2 pixels), scores, COCO category ids."""

    name = "detector"
    task = "detection"
    #: per image and variant: detections kept (score >= threshold), and at IoU 0.5 true/false positives,
    #: missed ground-truth objects, non-crowd objects, and recall (NaN without objects)
    sample_columns = ("n_det", "tp", "fp", "fn", "n_gt", "recall_50")
    #: each variant is its own forward pass (a detector's batch pads its images to a common size)
    stackable = False
    #: the per-image columns count detections at or above this score (the probe's ``score_threshold``)
    score_threshold: float = 0.5
    iou_threshold: float = 0.5
    #: images per forward pass (the run's ``--forward-batch``, set by the coco-map probe); None: ``default_forward_batch``
    forward_batch: int | None = None
    #: images per forward pass when the run gives none (a detector at 800 px is memory hungry)
    default_forward_batch = 8

    def normalize(self, images01: Any) -> Any:
        import torch

        if isinstance(images01, torch.Tensor):
            return super().normalize(images01)
        if self.mean is None and self.std is None:
            return images01
        return [super(DetectorAdapter, self).normalize(x[None])[0] for x in images01]

    def forward(self, images01: Any) -> Any:
        return self.module(self.normalize(list(images01)))

    def predict(self, images01: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections for a list of C×H×W [0, 1] images, in eval and inference mode, in chunks of :attr:`forward_batch` images."""
        import torch

        with torch.inference_mode():
            images = list(images01) if not isinstance(images01, torch.Tensor) else list(images01.unbind(0))
            was_training = self.module.training
            self.module.eval()
            try:
                fb = int(self.forward_batch or self.default_forward_batch)
                out: list = []
                for s in range(0, len(images), fb):
                    chunk = images[s:s + fb]
                    got = self.module(self.normalize(chunk))
                    out.extend(self._clean(got, len(chunk)))
                return out
            finally:
                self.module.train(was_training)

    def _clean(self, got: Any, n: int) -> list[dict[str, torch.Tensor]]:
        """The model's per-image dicts as float32 boxes/scores and int64 labels (or one line saying what is wrong)."""
        import numpy as np
        import torch

        name = self.spec or type(self.module).__name__
        if isinstance(got, tuple) and len(got) == 2 and isinstance(got[1], (list, tuple)):
            got = got[1]  # torchvision's scripted detectors return (losses, detections)
        if not isinstance(got, (list, tuple)) or len(got) != n:
            kind = type(got).__name__ + (f" of {len(got)} items" if isinstance(got, (list, tuple)) else "")
            raise IncompatibleError(f"the detector {name} returned a {kind} for {n} images; a detector must return a list "
                                    "of one dict per image with boxes (x1, y1, x2, y2 pixels), scores and labels (COCO category ids)")
        out = []
        for d in got:
            if not isinstance(d, Mapping) or any(k not in d for k in OUTPUT_KEYS):
                keys = ", ".join(map(str, d)) if isinstance(d, Mapping) else type(d).__name__
                raise IncompatibleError(f"the detector {name} returned {{{keys}}} for an image; each image needs a dict with "
                                        "boxes (K×4: x1, y1, x2, y2 pixels), scores (K) and labels (K, COCO category ids)")
            boxes = torch.as_tensor(np.asarray(d["boxes"]) if not isinstance(d["boxes"], torch.Tensor) else d["boxes"])
            scores = torch.as_tensor(np.asarray(d["scores"]) if not isinstance(d["scores"], torch.Tensor) else d["scores"])
            labels = torch.as_tensor(np.asarray(d["labels"]) if not isinstance(d["labels"], torch.Tensor) else d["labels"])
            k = scores.reshape(-1).shape[0]
            if boxes.numel() != 4 * k or labels.reshape(-1).shape[0] != k:
                raise IncompatibleError(f"the detector {name} returned {tuple(boxes.shape)} boxes, {k} scores and "
                                        f"{labels.reshape(-1).shape[0]} labels for one image; they must agree (K×4, K, K)")
            out.append({"boxes": boxes.reshape(k, 4).float(), "scores": scores.reshape(k).float(),
                        "labels": labels.reshape(k).long()})
        return out

    # -- the task contract ---------------------------------------------------------------------
    def sample_values(self, outputs: Any, targets: Any) -> dict[str, Any]:
        import torch

        from .match import match_images

        got = match_images(
            [(o["boxes"], o["scores"], o["labels"]) for o in outputs],
            [(t["boxes"], t["labels"], t["iscrowd"]) for t in targets],
            iou_threshold=self.iou_threshold, score_threshold=self.score_threshold,
        )
        return {"n_det": torch.from_numpy(got["n_det"]), "tp": torch.from_numpy(got["tp"]), "fp": torch.from_numpy(got["fp"]),
                "fn": torch.from_numpy(got["fn"]), "n_gt": torch.from_numpy(got["n_gt"]),
                "recall_50": torch.from_numpy(got["recall"])}

    def check_data(self, data: Any, device: torch.device) -> None:
        """One forward of the data's first two images: the output contract, boxes in pixels, labels that are category ids."""
        import numpy as np
        import torch

        name = self.spec or type(self.module).__name__
        if getattr(data, "task", "classification") != "detection":
            raise IncompatibleError(f"{name} is a detector but the data set {data.name!r} holds {data.task} targets; "
                                    "use detection data such as coco:IMAGES_DIR:ANNOTATIONS.json")
        batch = next(iter(data.batches(2)))
        images = [x.to(device) for x in batch.images]
        shape = ", ".join("×".join(map(str, x.shape)) for x in images)
        try:
            outs = self.predict(images)
        except UserFacingError:
            raise
        except (Exception, SystemExit) as exc:
            hint = ""
            if self.info.get("source") == "python" and _looks_like_a_classifier(self.module, images):
                hint = ("; it takes one stacked batch and returns one tensor, like a classifier: a detection probe needs a "
                        "detector (a list of C×H×W images in, one dict of boxes, scores and labels per image out)")
            raise IncompatibleError(f"the detector {name} failed on this data's first images ({shape}): "
                                    f"{exception_line(exc)}{hint}") from None
        cats = set(int(c) for c in getattr(data, "category_ids", ()) or ())
        labels = torch.cat([o["labels"].cpu() for o in outs]) if outs else torch.zeros(0, dtype=torch.long)
        if cats and labels.numel():
            foreign = sorted({int(v) for v in labels.tolist()} - cats)
            share = float(np.isin(labels.numpy(), sorted(cats), invert=True).mean())
            if share > 0.5:
                warnings.warn(f"{share:.0%} of the detections of {name} on the first images have labels that are not category ids "
                              f"of the annotations (e.g. {', '.join(map(str, foreign[:5]))}); a detector must return COCO category "
                              "ids (torchvision's convention), not class positions", stacklevel=2)
        for x, o in zip(images, outs):
            b = o["boxes"]
            if b.numel() and float(b.abs().max()) <= 1.5 and min(x.shape[-2:]) > 8:
                warnings.warn(f"the boxes of {name} all lie within [0, 1.5]: they look normalised; a detector must return "
                              "x1, y1, x2, y2 in the input image's pixels", stacklevel=2)
                break
        self.info["num_classes"] = len(cats) or None

    def prepare(self, *, channels_last: bool = False) -> None:
        self.module.eval()  # lists of images: no memory-format change

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "score_threshold": self.score_threshold, "iou_threshold": self.iou_threshold}


def _looks_like_a_classifier(module: Any, images: list) -> bool:
    """Whether ``module`` maps a stacked batch of (resized) images to one tensor: a classifier given to a detection probe."""
    import torch

    try:
        x = torch.nn.functional.interpolate(images[0][None], size=(32, 32))
        with torch.inference_mode():
            out = module(x)
    except Exception:
        return False
    return isinstance(out, torch.Tensor) and out.dim() == 2

