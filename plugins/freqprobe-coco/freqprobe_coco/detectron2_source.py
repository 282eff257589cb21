"""``detectron2:CONFIG`` — detectron2 detectors (model-zoo configs or a user's own), when detectron2 is importable.

detectron2 publishes no wheels for current torch releases, so it is optional: without it this source
answers in one line how to get it (docs/detection.md). With it:

- ``detectron2:COCO-Detection/retinanet_R_50_FPN_3x.yaml`` builds a model-zoo config (found through the
  installed package's own files: no ``pkg_resources``, which current setuptools no longer ships);
  ``detectron2:path/to/config.yaml`` a config file of one's own (``_BASE_`` resolved as detectron2 does);
  a LazyConfig ``.py`` (``COCO-Detection/fcos_R_50_FPN_1x.py``) is loaded and instantiated as detectron2 does;
- ``--model-arg KEY=VALUE`` overrides config keys (``INPUT.MIN_SIZE_TEST=320``,
  ``MODEL.RETINANET.SCORE_THRESH_TEST=0.05``) through ``cfg.merge_from_list``, so values are checked and
  coerced as detectron2 does; unknown keys answer "did you mean";
- ``--checkpoint`` loads detectron2's formats through its ``DetectionCheckpointer`` (``.pth``, and the
  model zoo's pickled ``.pkl``, which the core lets through only with ``--trust-checkpoint``);
  ``--pretrained`` loads the model zoo's COCO weights from detectron2's download cache (or downloads
  them, when online).

The model is wrapped to freqprobe's detector contract (:mod:`freqprobe_coco.detectron2_detector`, imported
when a model is built: registering the source does not load torch): a list of C×H×W [0, 1] RGB images in,
per image ``boxes`` (x1, y1, x2, y2 in the input image's pixels), ``scores`` and ``labels`` (COCO category
ids) out. The manifest's model section records the config, the overrides and the config values that decide
the numbers (test size, score threshold, NMS, detections per image).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

from freqprobe import BuiltModel, ModelSource, UnknownNameError, UserFacingError
from freqprobe.plugin import exception_line

#: detectron2 meta-architectures whose outputs carry ``instances`` (boxes, scores, classes)
DETECTORS = ("GeneralizedRCNN", "RetinaNet", "FCOS", "PanopticFPN")

#: the config values that decide a detector's numbers, recorded in the manifest beside the overrides
RECORDED_KEYS = ("MODEL.META_ARCHITECTURE", "INPUT.FORMAT", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST",
                 "MODEL.RETINANET.NUM_CLASSES", "MODEL.RETINANET.SCORE_THRESH_TEST", "MODEL.RETINANET.TOPK_CANDIDATES_TEST",
                 "MODEL.RETINANET.NMS_THRESH_TEST", "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
                 "MODEL.ROI_HEADS.NMS_THRESH_TEST", "TEST.DETECTIONS_PER_IMAGE", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD")

#: where detectron2's model zoo publishes its weights (``detectron2://`` in its configs)
ZOO_URL = "https://dl.fbaipublicfiles.com/detectron2/"

INSTALL_HINT = ("detectron2 is not installed (it publishes no wheels for current torch): pip install -e \".[detectron2]\" and "
                "build it from source (docs/detection.md), or use torchvision:retinanet_resnet50_fpn")


def detectron2_problem() -> str | None:
    """None when detectron2 can be used, else why not in one line (not installed; its compiled ops do not load)."""
    try:
        import detectron2  # noqa: F401
    except ImportError:
        return INSTALL_HINT
    try:
        import detectron2._C  # noqa: F401  (the compiled ops: built against one torch version)
    except ImportError as exc:
        import torch

        return (f"detectron2 is installed but its compiled ops do not load with torch {torch.__version__} "
                f"({exception_line(exc)}): rebuild it from source against this torch (docs/detection.md)")
    return None


def detectron2_available() -> bool:
    return detectron2_problem() is None


def zoo_config_dir() -> Path:
    """The model zoo's configs inside the installed detectron2 package (what ``pkg_resources`` used to find)."""
    import importlib.util

    spec = importlib.util.find_spec("detectron2")
    return Path(next(iter(spec.submodule_search_locations))) / "model_zoo" / "configs"


def zoo_configs() -> list[str]:
    """The model zoo's ``.yaml`` configs (``COCO-Detection/retinanet_R_50_FPN_3x.yaml``...), sorted."""
    root = zoo_config_dir()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))


def zoo_weight_suffixes() -> dict[str, str]:
    """config name (without ``.yaml``) -> its published weights' path below the config's folder, read from
    detectron2's ``model_zoo.py`` without importing it (it imports ``pkg_resources``)."""
    import ast

    source = (zoo_config_dir().parent / "model_zoo.py").read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == "_ModelZooUrls":
            for item in node.body:
                targets = [t.id for t in getattr(item, "targets", []) if isinstance(t, ast.Name)]
                if "CONFIG_PATH_TO_URL_SUFFIX" in targets:
                    return dict(ast.literal_eval(item.value))
    return {}  # pragma: no cover - another detectron2 layout


class Detectron2ModelSource(ModelSource):
    """detectron2 detectors: a model-zoo config (detectron2:COCO-Detection/retinanet_R_50_FPN_3x.yaml) or your own
    config file, with --model-arg KEY=VALUE config overrides, when detectron2 is installed."""

    name = "detectron2"
    usage = "detectron2:CONFIG"
    task = "detection"
    reads_checkpoints = True

    def build(self, target, *, pretrained=False, num_classes=None, model_args: Mapping[str, Any] = {}):
        problem = detectron2_problem()
        if problem:
            raise UserFacingError(problem)
        from .detectron2_detector import Detectron2Detector

        path, zoo_name = _config_file(target)
        weights = _pretrained_weights(target, zoo_name) if pretrained else None
        make = _lazy_model if path.suffix == ".py" else _yaml_model
        model, found = make(path, zoo_name, model_args, target)
        if found["arch"] not in DETECTORS:
            raise UserFacingError(f"detectron2:{target} builds a {found['arch']}, whose outputs carry no detections; use a "
                                  f"detector config ({', '.join(DETECTORS)}), e.g. COCO-Detection/retinanet_R_50_FPN_3x.yaml")
        category_ids = _category_ids(found["num_classes"], target)
        model.eval()
        info: dict[str, Any] = {}
        if weights is not None:
            info = _load(model, weights, strict=True, what=f"the model zoo's weights of {zoo_name}")
            info = {"weights_file": weights, "weights_url": ZOO_URL + _zoo_suffix(zoo_name),
                    **{k: v for k, v in info.items() if k != "checkpoint_kind"}}
        wrapped = Detectron2Detector(model, input_format=found["input_format"], min_size=found["min_size"],
                                     max_size=found["max_size"], category_ids=category_ids)
        return BuiltModel(wrapped, has_weights=weights is not None, info={
            "task": "detection", "normalises_inside": True,
            "detectron2": {"config": target, "config_file": str(path), "model_zoo": zoo_name is not None,
                           "lazy_config": path.suffix == ".py", "overrides": found["overrides"],
                           "config_values": found["values"], **info},
            "resize": {"min_size": int(found["min_size"]), "max_size": int(found["max_size"])}})

    def load_checkpoint(self, built: BuiltModel, path: str, *, strict: bool = True) -> Mapping[str, Any]:
        return _load(built.module.model, path, strict=strict, what=f"checkpoint {path}")


def _imports():
    with warnings.catch_warnings():  # detectron2's modules torch.jit.script at import, which torch deprecates
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script")
        import detectron2.config
        import detectron2.modeling
    return detectron2.config, detectron2.modeling


def _yaml_model(path: Path, zoo_name: str | None, model_args: Mapping[str, Any], target: str):
    """A ``.yaml`` config (detectron2's ``CfgNode``): ``cfg.merge_from_file``, the overrides, ``build_model``."""
    config, modeling = _imports()
    cfg = config.get_cfg()
    try:
        with _quiet("fvcore.common.config", zoo_name is not None):
            cfg.merge_from_file(str(path))
    except Exception as exc:
        raise UserFacingError(f"could not read detectron2 config {path}: {exception_line(exc)}") from None
    overrides = _apply_overrides(cfg, model_args, target)
    arch = cfg.MODEL.META_ARCHITECTURE
    k = cfg.MODEL.RETINANET.NUM_CLASSES if arch == "RetinaNet" else cfg.MODEL.ROI_HEADS.NUM_CLASSES
    values = {key: _plain(_get(cfg, key)) for key in RECORDED_KEYS if _has(cfg, key)}
    found = {"arch": arch, "num_classes": k, "input_format": cfg.INPUT.FORMAT, "min_size": cfg.INPUT.MIN_SIZE_TEST,
             "max_size": cfg.INPUT.MAX_SIZE_TEST, "overrides": overrides, "values": values}
    if arch not in DETECTORS:
        return None, found
    cfg.MODEL.DEVICE = "cpu"  # the core moves the model to the run's device
    cfg.MODEL.WEIGHTS = ""  # the config's own (ImageNet backbone) weights are never loaded: --pretrained or --checkpoint
    cfg.freeze()
    return modeling.build_model(cfg), found


def _lazy_model(path: Path, zoo_name: str | None, model_args: Mapping[str, Any], target: str):
    """A LazyConfig ``.py`` file: ``LazyConfig.load``, the overrides (``LazyConfig.apply_overrides``),
    ``instantiate(cfg.model)``; the test size from its test loader's ``ResizeShortestEdge``."""
    import json

    from omegaconf import OmegaConf

    config, _ = _imports()
    try:
        cfg = config.LazyConfig.load(str(path))
    except Exception as exc:
        raise UserFacingError(f"could not read detectron2 config {path}: {exception_line(exc)}") from None
    if "model" not in cfg:
        raise UserFacingError(f"detectron2 config {path} defines no model (a LazyConfig needs `model = L(...)(...)`)")
    missing = object()
    overrides = {}
    for key, value in model_args.items():
        parent = OmegaConf.select(cfg, key.rpartition(".")[0], default=missing) if "." in key else cfg
        # as detectron2's apply_overrides: a new key is a new keyword of its parent's call (model.test_score_thresh=0.0)
        if OmegaConf.select(cfg, key, default=missing) is missing and not OmegaConf.is_dict(parent):
            raise UnknownNameError(f"detectron2 config key (--model-arg of detectron2:{target})", key, _lazy_keys(cfg))
        text = repr(value) if isinstance(value, str) else json.dumps(value)
        try:
            config.LazyConfig.apply_overrides(cfg, [f"{key}={text}"])
        except Exception as exc:
            raise UserFacingError(f"bad --model-arg {key}={value!r} for detectron2:{target}: {exception_line(exc)}") from None
        overrides[key] = _plain(OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, key)}))["v"])
    resize = _lazy_test_resize(cfg)
    if resize is None:
        raise UserFacingError(f"detectron2 config {path} has no ResizeShortestEdge in dataloader.test.mapper.augmentations: "
                              "freqprobe needs the test size from it")
    try:
        with _quiet("detectron2.config.instantiate"):
            model = config.instantiate(cfg.model)
    except Exception as exc:
        raise UserFacingError(f"could not build the model of detectron2 config {path}: {exception_line(exc)}") from None
    heads = getattr(model, "roi_heads", None)
    k = getattr(model, "num_classes", None) or getattr(heads, "num_classes", None)
    arch = type(model).__name__
    fmt = getattr(model, "input_format", None) or "BGR"
    values = {"model._target_": f"{type(model).__module__}.{arch}", "input_format": fmt,
              "test_resize.short_edge_length": resize[0], "test_resize.max_size": resize[1], "num_classes": k}
    for key in ("model.test_score_thresh", "model.test_nms_thresh", "model.max_detections_per_image",
                "model.roi_heads.box_predictor.test_score_thresh", "model.roi_heads.box_predictor.test_topk_per_image"):
        got = OmegaConf.select(cfg, key, default=None)
        if isinstance(got, (int, float)):
            values[key] = got
    return model, {"arch": arch, "num_classes": k, "input_format": fmt, "min_size": resize[0], "max_size": resize[1],
                   "overrides": overrides, "values": values}


def _lazy_test_resize(cfg) -> tuple[int, int] | None:
    from omegaconf import OmegaConf

    for aug in OmegaConf.select(cfg, "dataloader.test.mapper.augmentations", default=None) or []:
        target = aug.get("_target_") if hasattr(aug, "get") else None
        if getattr(target, "__name__", str(target)).endswith("ResizeShortestEdge"):
            short = aug.get("short_edge_length")
            short = short[0] if isinstance(short, (list, tuple)) or OmegaConf.is_list(short) else short
            return int(short), int(aug.get("max_size", 10**9))
    return None


def _lazy_keys(cfg, prefix: str = "") -> list[str]:
    from omegaconf import OmegaConf

    out = []
    for k in cfg.keys():
        v = cfg.get(k)
        out += _lazy_keys(v, f"{prefix}{k}.") if OmegaConf.is_dict(v) else [f"{prefix}{k}"]
    return out


@contextlib.contextmanager
def _quiet(logger: str, quiet: bool = True):
    """Silence one of detectron2's loggers for a moment: fvcore's ``yaml.unsafe_load`` warning for the model zoo's
    configs (they compute anchor sizes with a yaml ``!!python`` tag; a user's own config file keeps the warning:
    like a LazyConfig ``.py``, a config file is code the user chose to run), and ``instantiate``'s error log,
    which the one-line error says again."""
    import logging

    log = logging.getLogger(logger)
    level = log.level
    if quiet:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _config_file(target: str) -> tuple[Path, str | None]:
    """``(path, model-zoo name or None)`` of a config spec: an existing file, else a model-zoo config."""
    own = Path(target).expanduser()
    if own.is_file():
        return own, None
    name = target if target.endswith((".yaml", ".py")) else target + ".yaml"
    zoo = zoo_config_dir() / name
    if zoo.is_file() and "/" in name:
        return zoo, name
    if target.startswith((".", os.sep, "~")):  # meant as a file of one's own
        raise UserFacingError(f"detectron2 config file not found: {target} (pass an existing .yaml file, "
                              "or a model-zoo config such as COCO-Detection/retinanet_R_50_FPN_3x.yaml)")
    raise UnknownNameError("detectron2 model-zoo config", target, zoo_configs())


def _has(cfg, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _keys(cfg, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        out += _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _apply_overrides(cfg, model_args: Mapping[str, Any], target: str) -> dict[str, Any]:
    """``--model-arg KEY=VALUE`` as detectron2 config overrides (``cfg.merge_from_list``); the values they gave."""
    got = {}
    for key, value in model_args.items():
        if key == "MODEL.WEIGHTS":
            raise UserFacingError("pass detectron2 weights with --checkpoint PATH (a .pkl also needs --trust-checkpoint), "
                                  "not --model-arg MODEL.WEIGHTS: the core checks checkpoint files before they are read")
        if not _has(cfg, key) or isinstance(_get(cfg, key), dict):
            raise UnknownNameError(f"detectron2 config key (--model-arg of detectron2:{target})", key, _keys(cfg))
        try:
            cfg.merge_from_list([key, value if not isinstance(value, str) else value])
        except Exception as exc:  # yacs: "Type mismatch (<class 'int'> vs. <class 'str'>) with values ..."
            raise UserFacingError(f"bad --model-arg {key}={value!r} for detectron2:{target}: {exception_line(exc)}") from None
        got[key] = _plain(_get(cfg, key))
    return got


def _category_ids(k, target: str) -> tuple:
    from .detectron2_detector import COCO_CATEGORY_IDS

    if k != len(COCO_CATEGORY_IDS):
        raise UserFacingError(f"detectron2:{target} predicts {k} classes; freqprobe reports detectron2's classes as COCO's "
                              f"{len(COCO_CATEGORY_IDS)} category ids, so only COCO-class detectors can be probed")
    return COCO_CATEGORY_IDS


def _zoo_suffix(zoo_name: str) -> str:
    stem = zoo_name.rsplit(".", 1)[0]
    suffix = zoo_weight_suffixes().get(stem)
    return f"{stem}/{suffix}" if suffix else ""


def _pretrained_weights(target: str, zoo_name: str | None) -> str:
    """The local file of the model zoo's COCO weights of ``zoo_name``: from detectron2's download cache, else
    downloaded (online only); otherwise one line that says how to pass a downloaded file."""
    if zoo_name is None:
        raise UserFacingError(f"--pretrained takes a model-zoo config, and {target} is your own file: "
                              "pass its weights with --checkpoint PATH instead")
    rel = _zoo_suffix(zoo_name)
    if not rel:
        raise UserFacingError(f"detectron2's model zoo publishes no weights for {zoo_name}: pass --checkpoint PATH")
    from iopath.common.file_io import get_cache_dir

    cached = Path(get_cache_dir()) / "detectron2" / rel
    if cached.is_file():
        return str(cached)
    hint = (f"download {ZOO_URL + rel} elsewhere and pass --checkpoint {Path(rel).name} --trust-checkpoint "
            "instead of --pretrained")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UserFacingError(f"--pretrained needs the model zoo's weights of {zoo_name}, which are not in detectron2's "
                              f"cache ({cached.parent}) and HF_HUB_OFFLINE is set: {hint}")
    from detectron2.utils.file_io import PathManager

    try:
        return PathManager.get_local_path(ZOO_URL + rel)
    except Exception as exc:
        raise UserFacingError(f"could not download the model zoo's weights of {zoo_name} ({exception_line(exc)}): "
                              f"{hint}") from None


def _load(model, path: str, *, strict: bool, what: str) -> dict[str, Any]:
    """Load ``path`` into a detectron2 model with its ``DetectionCheckpointer`` (``.pkl`` names converted as detectron2
    does); refuse shape conflicts, and with ``strict`` missing or unexpected weights, in one line."""
    from detectron2.checkpoint import DetectionCheckpointer

    class Checkpointer(DetectionCheckpointer):
        incompatible = None

        def _log_incompatible_keys(self, incompatible) -> None:  # detectron2 only logs them: keep them to check
            self.incompatible = incompatible

    ck = Checkpointer(model, save_dir="")
    try:
        ck.load(str(path), checkpointables=[])
    except Exception as exc:
        raise UserFacingError(f"could not load {what} into the detectron2 model: {exception_line(exc)}") from None
    inc = ck.incompatible
    missing = sorted(inc.missing_keys) if inc is not None else []
    unexpected = sorted(inc.unexpected_keys) if inc is not None else []
    shapes = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in (inc.incorrect_shapes if inc is not None else [])]

    def few(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

    if shapes or (strict and (missing or unexpected)):
        parts = [f"{name} ({len(items)}): {few(items)}" for name, items in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape conflicts", shapes)) if items]
        fix = "check the config (and its --model-arg overrides)" + ("" if shapes else " or pass --non-strict")
        raise UserFacingError(f"{what} does not fit the detectron2 model: {'; '.join(parts)}; {fix}")
    kind = "detectron2-pkl" if str(path).endswith(".pkl") else "detectron2"
    return {"checkpoint_kind": kind, "checkpoint_missing": missing, "checkpoint_unexpected": unexpected}
