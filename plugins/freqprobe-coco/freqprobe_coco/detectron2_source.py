"""``detectron2:CONFIG`` — detectron2 model-zoo detectors, when detectron2 is importable.

detectron2 publishes no wheels for current torch releases, so it is optional: without it this source
answers in one line how to get it. With it, ``detectron2:COCO-Detection/retinanet_R_50_FPN_3x.yaml``
builds the model-zoo model (``--pretrained`` loads its COCO weights, ``--checkpoint`` a file) and
wraps it to freqprobe's detector contract: a list of C×H×W [0, 1] RGB images in, per image ``boxes``
(x1, y1, x2, y2 in the input image's pixels), ``scores`` and ``labels`` as COCO category ids out.
detectron2's models do not resize in eval mode (its ``DefaultPredictor`` does), so the wrapper resizes
to the config's test size and detectron2 maps the boxes back to the input's size.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from freqprobe import BuiltModel, ModelSource, UnknownNameError, UserFacingError

#: COCO's 80 category ids in ascending order: detectron2's contiguous class i is the i-th
COCO_CATEGORY_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
                     33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
                     60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)


def detectron2_available() -> bool:
    try:
        import detectron2  # noqa: F401
    except ImportError:
        return False
    return True


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
        h, w = x.shape[-2:]
        scale = self.min_size / min(h, w)
        if max(h, w) * scale > self.max_size:
            scale = self.max_size / max(h, w)
        size = (int(h * scale + 0.5), int(w * scale + 0.5))
        return torch.nn.functional.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]

    def forward(self, images: list) -> list:
        inputs = []
        for x in images:
            img = self._resize(x.float()) * 255.0
            if self.input_format == "BGR":
                img = img.flip(0)
            inputs.append({"image": img, "height": int(x.shape[-2]), "width": int(x.shape[-1])})
        outs = self.model(inputs)
        got = []
        for o in outs:
            inst = o["instances"]
            got.append({"boxes": inst.pred_boxes.tensor, "scores": inst.scores,
                        "labels": self.category_ids.to(inst.pred_classes.device)[inst.pred_classes]})
        return got


class Detectron2ModelSource(ModelSource):
    """detectron2 model-zoo detectors (detectron2:COCO-Detection/retinanet_R_50_FPN_3x.yaml), when detectron2 is installed."""

    name = "detectron2"
    usage = "detectron2:CONFIG"
    task = "detection"

    def build(self, target, *, pretrained=False, num_classes=None, model_args: Mapping[str, Any] = {}):
        if not detectron2_available():
            raise UserFacingError(
                "detectron2 is not installed (it has no wheels for current torch; build it from source, see "
                "https://detectron2.readthedocs.io/en/latest/tutorials/install.html), or use torchvision:retinanet_resnet50_fpn")
        from detectron2 import model_zoo
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.modeling import build_model

        try:
            cfg = model_zoo.get_config(target, trained=pretrained)
        except RuntimeError:
            raise UnknownNameError("detectron2 model-zoo config", target, _zoo_configs()) from None
        cfg.MODEL.DEVICE = "cpu"
        if model_args:
            key = next(iter(model_args))
            raise UserFacingError(f"detectron2:{target} takes no --model-arg (got {key}); copy and edit its config instead")
        model = build_model(cfg)
        if pretrained:
            DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        wrapped = Detectron2Detector(model, input_format=cfg.INPUT.FORMAT, min_size=cfg.INPUT.MIN_SIZE_TEST,
                                     max_size=cfg.INPUT.MAX_SIZE_TEST)
        return BuiltModel(wrapped, has_weights=pretrained,
                          info={"detectron2_config": target, "task": "detection", "normalises_inside": True,
                                "resize": {"min_size": int(cfg.INPUT.MIN_SIZE_TEST), "max_size": int(cfg.INPUT.MAX_SIZE_TEST)}})


def _zoo_configs() -> list[str]:
    try:
        from detectron2.model_zoo.model_zoo import _ModelZooUrls

        return sorted(k + ".yaml" for k in _ModelZooUrls.CONFIG_PATH_TO_URL_SUFFIX)
    except Exception:  # pragma: no cover - internal layout of another version
        return []
