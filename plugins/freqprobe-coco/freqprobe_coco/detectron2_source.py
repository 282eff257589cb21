"""``detectron2:CONFIG`` — detectron2 model-zoo detectors, when detectron2 is importable.

detectron2 publishes no wheels for current torch releases, so it is optional: without it this source
answers in one line how to get it. With it, ``detectron2:COCO-Detection/retinanet_R_50_FPN_3x.yaml``
builds the model-zoo model (``--pretrained`` loads its COCO weights, ``--checkpoint`` a file) and
wraps it to freqprobe's detector contract: a list of C×H×W [0, 1] RGB images in, per image ``boxes``
(x1, y1, x2, y2 in the input image's pixels), ``scores`` and ``labels`` as COCO category ids out.
detectron2's models do not resize in eval mode (its ``DefaultPredictor`` does), so the wrapper resizes
to the config's test size and detectron2 maps the boxes back to the input's size.

The wrapper (a torch module) is :mod:`freqprobe_coco.detectron2_detector`, imported when a model is built:
registering the source does not load torch.
"""

from __future__ import annotations

from typing import Any, Mapping

from freqprobe import BuiltModel, ModelSource, UnknownNameError, UserFacingError


def detectron2_available() -> bool:
    try:
        import detectron2  # noqa: F401
    except ImportError:
        return False
    return True


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

        from .detectron2_detector import Detectron2Detector

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
