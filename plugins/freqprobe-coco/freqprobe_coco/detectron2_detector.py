"""The wrapper of a detectron2 model behind freqprobe's detector contract (what ``detectron2:CONFIG`` builds).

A torch module, so it lives apart from the model source (:mod:`freqprobe_coco.detectron2_source`), which
imports it when it builds a model: registering the source does not load torch.
"""

from __future__ import annotations

import warnings

import torch

#: COCO's 80 category ids in ascending order: detectron2's contiguous class i is the i-th
COCO_CATEGORY_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
                     33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
                     60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)


class Detectron2Detector(torch.nn.Module):
    """A detectron2 model behind freqprobe's detector contract (resize to the test size, BGR/RGB, 0–255, category ids)."""

    def __init__(self, model: torch.nn.Module, *, input_format: str, min_size: int, max_size: int,
                 category_ids: tuple = COCO_CATEGORY_IDS) -> None:
        super().__init__()
        self.model = model
        self.input_format = input_format
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.register_buffer("category_ids", torch.tensor(category_ids, dtype=torch.int64), persistent=False)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        """detectron2's test-time resize (``ResizeShortestEdge``: its output size, and for float images its bilinear
        ``interpolate``); a test size of 0 keeps the image as it is, as in detectron2."""
        from detectron2.data.transforms import ResizeShortestEdge

        h, w = x.shape[-2:]
        if self.min_size == 0:
            return x
        size = ResizeShortestEdge.get_output_shape(h, w, self.min_size, self.max_size)
        if tuple(size) == (h, w):
            return x
        return torch.nn.functional.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]

    def forward(self, images: list) -> list:
        inputs = []
        for x in images:
            img = self._resize(x.float() * 255.0)  # on 0-255 values, as detectron2's DefaultPredictor resizes a float image
            if self.input_format == "BGR":
                img = img.flip(0)
            inputs.append({"image": img, "height": int(x.shape[-2]), "width": int(x.shape[-1])})
        with warnings.catch_warnings():  # detectron2's anchor generator calls torch.meshgrid without indexing=
            warnings.filterwarnings("ignore", message=r"torch\.meshgrid")
            outs = self.model(inputs)
        got = []
        for o in outs:
            inst = o["instances"]
            got.append({"boxes": inst.pred_boxes.tensor, "scores": inst.scores,
                        "labels": self.category_ids.to(inst.pred_classes.device)[inst.pred_classes]})
        return got
