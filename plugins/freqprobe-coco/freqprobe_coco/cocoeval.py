"""COCO bbox mAP / mAR (the 12 ``COCOeval.stats``) through pycocotools or faster-coco-eval.

Both backends run the reference algorithm (faster-coco-eval in C++) and give identical numbers; ``auto``
prefers faster-coco-eval when it is installed. The backends' own printing is silenced: callers print.

The one place they differ: pycocotools computes precision as ``tp / (tp + fp + eps)``, so a curve whose
first counted detection is a TP reads ``1 / (1 + 2**-52) = 1 - 2**-52`` where faster-coco-eval reads
``tp / (tp + fp) = 1.0``; for tp + fp ≥ 2 the eps vanishes in rounding. The pycocotools path maps those
entries back to 1.0 before summarising — the map is monotone, so it commutes with COCO's precision
envelope, and the precision array then equals faster-coco-eval's bit for bit. Stats from the pycocotools
path thus differ from a plain pycocotools run by a few 1e-16 at most, and equal faster-coco-eval's exactly.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib
import io
from typing import Any, Iterable, Iterator

import numpy as np

from freqprobe import UserFacingError

__all__ = ["METRIC_NAMES", "BACKENDS", "available_backends", "resolve_backend", "coco_stats"]

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
#: Backend names in order of preference, with the module each needs.
BACKENDS = {"faster-coco-eval": "faster_coco_eval", "pycocotools": "pycocotools"}
#: The attribute of a pycocotools ``COCO`` under which its faster-coco-eval twin is cached.
_FAST_GT_ATTR = "_freqprobe_faster_coco_eval_gt"
#: pycocotools' precision of one TP out of one detection: ``1 / (1 + np.spacing(1))`` = 1 − 2**-52.
_EPS_ONE = 1.0 / (1.0 + np.spacing(1))


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True


def available_backends() -> list[str]:
    """The installed backends, preferred first ("faster-coco-eval", then "pycocotools")."""
    return [name for name, module in BACKENDS.items() if _importable(module)]


def resolve_backend(name: str = "auto") -> str:
    """``auto`` -> the preferred installed backend; a named backend is checked to be installed."""
    key = str(name).strip().lower().replace("_", "-")
    if key == "auto":
        found = available_backends()
        if not found:
            raise UserFacingError("COCO evaluation needs pycocotools or faster-coco-eval: pip install pycocotools")
        return found[0]
    if key not in BACKENDS:
        raise UserFacingError(f"unknown COCO evaluation backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    if not _importable(BACKENDS[key]):
        raise UserFacingError(f"the COCO evaluation backend {key!r} is not installed: pip install {key}")
    return key


def _as_results(results: Any) -> np.ndarray:
    """``results`` as a float64 K×7 array (image_id, x, y, w, h, score, category_id)."""
    arr = np.asarray(results, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 7))
    if arr.ndim != 2 or arr.shape[1] != 7:
        raise ValueError(f"results must be a K×7 array (image_id, x, y, w, h, score, category_id), got shape {arr.shape}")
    return arr


def _load_results(gt: Any, results: np.ndarray, coco_cls: type) -> Any:
    """The results ``COCO`` (of ``coco_cls``) that ``gt.loadRes(results)`` builds, made in one pass.

    Same annotations as loadRes gives for bbox results (image_id, bbox, score, category_id, area = w·h,
    id = row + 1, iscrowd = 0) except the unused box-outline ``segmentation``; an empty ``results`` works
    (pycocotools' loadRes fails on it).
    """
    img = results[:, 0].astype(np.int64).tolist()
    cat = results[:, 6].astype(np.int64).tolist()
    x, y, w, h, score = (results[:, i].tolist() for i in range(1, 6))
    area = (results[:, 3] * results[:, 4]).tolist()
    anns = [
        {"image_id": i, "bbox": [a, b, c, d], "score": s, "category_id": k, "area": ar, "id": n, "iscrowd": 0}
        for n, (i, a, b, c, d, s, k, ar) in enumerate(zip(img, x, y, w, h, score, cat, area), start=1)
    ]
    dt = coco_cls()
    dt.dataset = {
        "info": copy.deepcopy(gt.dataset.get("info", {})),
        "images": list(gt.dataset["images"]),
        "categories": copy.deepcopy(gt.dataset.get("categories", [])),
        "annotations": anns,
    }
    dt.createIndex()
    return dt


def _faster_gt(gt: Any) -> Any:
    """The faster-coco-eval ``COCO`` twin of a pycocotools ground truth, built once and cached on ``gt``."""
    cached = getattr(gt, _FAST_GT_ATTR, None)
    if cached is not None and cached[0] is gt.dataset:
        return cached[1]
    from faster_coco_eval import COCO as FastCOCO

    # copy the records one level deep: faster-coco-eval annotates them in place during evaluation
    dataset = {k: [dict(x) if isinstance(x, dict) else x for x in v] if isinstance(v, list) else v
               for k, v in gt.dataset.items()}
    fast = FastCOCO(dataset, print_function=_silent)
    setattr(gt, _FAST_GT_ATTR, (gt.dataset, fast))
    return fast


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: building 10⁵–10⁶ annotation dicts otherwise triggers it over
    and over (3–4× slower). Memory is still freed by reference counting; any cycles wait for the next run."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _silent(*args: Any, **kwargs: Any) -> None:
    """faster-coco-eval's print function: nothing."""


def coco_stats(gt: Any, results: Any, img_ids: Iterable[int], *, backend: str = "auto") -> dict[str, float]:
    """The 12 COCO bbox statistics of ``results`` on the images ``img_ids`` of ``gt``, named by METRIC_NAMES.

    ``gt``: a pycocotools ``COCO`` (ground truth). ``results``: K×7 rows ``(image_id, x, y, w, h, score,
    category_id)``, possibly empty (then every AP/AR is 0, or −1 for an area range without gts).
    ``img_ids``: the images evaluated. Values keep COCO's 0–1 scale and its −1 for "no gt". Both backends
    return the same numbers (pycocotools' eps-guarded precision of 1 − 2**-52 is read as 1.0, see the
    module docstring).
    """
    name = resolve_backend(backend)
    res = _as_results(results)
    ids = sorted({int(i) for i in img_ids})
    if len(res):
        unknown = set(np.unique(res[:, 0]).astype(np.int64).tolist()) - set(gt.getImgIds())
        if unknown:
            raise ValueError(f"results name {len(unknown)} image id(s) not in the ground truth, e.g. {min(unknown)}")
    with contextlib.redirect_stdout(io.StringIO()), _gc_paused():
        if name == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            E = COCOeval(gt, _load_results(gt, res, COCO), "bbox")
            E.params.imgIds = ids
            E.evaluate()
            E.accumulate()
            precision = E.eval["precision"]
            precision[precision == _EPS_ONE] = 1.0  # see the module docstring
        else:
            from faster_coco_eval import COCO as FastCOCO
            from faster_coco_eval import COCOeval_faster

            fast_gt = _faster_gt(gt)
            E = COCOeval_faster(fast_gt, _load_results(fast_gt, res, FastCOCO), "bbox", print_function=_silent)
            E.params.imgIds = ids
            E.evaluate()
            E.accumulate()
        E.summarize()
    return {k: float(v) for k, v in zip(METRIC_NAMES, E.stats[: len(METRIC_NAMES)])}
