"""The FastestDet fixture (``tests/fixtures/fastestdet.py``): a real tiny COCO detector behind the
torchvision detector contract, checked on the 79-image COCO val2017 mini set in ``../shared/data``."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the FastestDet fixture runs its ONNX graph in onnxruntime")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))

import fastestdet as fd  # noqa: E402

MINI = "coco_val2017_mini"
ANNOTATIONS = "instances_val2017_mini.json"
ONNX = Path("coco_detector_fastestdet") / "FastestDet.onnx"


def _paths(shared_data: Path) -> tuple[Path, Path]:
    onnx, ann = shared_data / ONNX, shared_data / MINI / ANNOTATIONS
    for p in (onnx, ann):
        if not p.is_file():
            pytest.skip(f"shared data file missing: {p}")
    return onnx, ann


@functools.lru_cache(maxsize=None)
def _detector(onnx: Path, **kwargs) -> fd.FastestDetDetector:
    return fd.fastestdet(onnx=str(onnx), **kwargs)


@functools.lru_cache(maxsize=None)
def _images(ann: Path) -> tuple[tuple[int, ...], tuple[torch.Tensor, ...]]:
    """All mini-set images, sorted by id, as 3×H×W float RGB tensors in [0, 1]."""
    import numpy as np
    from PIL import Image

    meta = json.loads(ann.read_text())
    recs = sorted(meta["images"], key=lambda r: r["id"])
    imgs = []
    for r in recs:
        with Image.open(ann.parent / "val2017" / r["file_name"]) as im:
            arr = np.array(im.convert("RGB"))
        assert arr.shape[:2] == (r["height"], r["width"])
        imgs.append(torch.from_numpy(arr).permute(2, 0, 1).float().div(255))
    return tuple(r["id"] for r in recs), tuple(imgs)


def _check_contract(dets, images, det: fd.FastestDetDetector):
    assert isinstance(dets, list) and len(dets) == len(images)
    ids = torch.tensor(fd.COCO_CATEGORY_IDS)
    for d, img in zip(dets, images):
        assert set(d) == {"boxes", "scores", "labels"}
        b, s, lab = d["boxes"], d["scores"], d["labels"]
        k = len(s)
        assert b.dtype == torch.float32 and s.dtype == torch.float32 and lab.dtype == torch.int64
        assert b.shape == (k, 4) and s.shape == (k,) and lab.shape == (k,)
        assert b.device == s.device == lab.device == img.device
        assert k <= det.max_detections
        h, w = img.shape[1:]
        assert bool((b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all())
        assert bool((b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all())
        assert bool(torch.isin(lab, ids).all())
        assert bool(((s > det.score_threshold) & (s <= 1)).all())
        assert bool((s[:-1] >= s[1:]).all()), "scores not sorted in decreasing order"


def test_category_ids_match_annotations(shared_data):
    _, ann = _paths(shared_data)
    cats = json.loads(ann.read_text())["categories"]
    assert fd.COCO_CATEGORY_IDS == tuple(sorted(c["id"] for c in cats))
    assert len(fd.COCO_CATEGORY_IDS) == 80 and fd.COCO_CATEGORY_IDS[0] == 1 and fd.COCO_CATEGORY_IDS[-1] == 90


def test_default_onnx_path_and_missing_file(tmp_path):
    # The default sits at <repo>/../shared/data, the repository being 4 levels above the fixture.
    repo = Path(fd.__file__).resolve().parents[4]
    assert (repo / "plugins" / "freqprobe-coco" / "tests" / "fixtures" / "fastestdet.py").is_file()
    assert fd.DEFAULT_ONNX == repo.parent / "shared" / "data" / ONNX
    missing = tmp_path / "nope.onnx"
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        fd.fastestdet(onnx=str(missing))
    # The arguments are checked before onnxruntime opens the file.
    dummy = tmp_path / "dummy.onnx"
    dummy.write_bytes(b"")
    for bad, match in (({"score_threshold": 1.5}, "score_threshold"), ({"nms_iou": 0}, "nms_iou"), ({"max_detections": 0}, "max_detections")):
        with pytest.raises(ValueError, match=match):
            fd.fastestdet(onnx=str(dummy), **bad)


def test_contract_on_real_images(shared_data):
    onnx, ann = _paths(shared_data)
    det = _detector(onnx)
    assert callable(det) and not isinstance(det, torch.nn.Module)
    _, imgs = _images(ann)
    four = list(imgs[:4])
    dets = det(four)
    _check_contract(dets, four, det)
    assert sum(len(d["scores"]) for d in dets) > 0
    assert det([]) == []
    with pytest.raises(ValueError, match="3×H×W"):
        det([torch.rand(1, 32, 32)])


def test_score_threshold_and_max_detections_args(shared_data):
    onnx, ann = _paths(shared_data)
    _, imgs = _images(ann)
    strict = _detector(onnx, score_threshold=0.5, max_detections=3)
    dets = strict(list(imgs[:4]))
    _check_contract(dets, list(imgs[:4]), strict)
    loose = _detector(onnx)(list(imgs[:4]))
    for s, lo in zip(dets, loose):  # same decoding, the strict one is a prefix of the loose one
        n = len(s["scores"])
        assert n <= 3
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(s[k], lo[k][:n])


def test_coco_ap_on_mini_val(shared_data):
    """The decoded detections are real: COCO bbox AP on all 79 mini-set images.

    Measured (onnxruntime 1.32 CPU, score_threshold=0.05): AP = 0.173, AP50 = 0.328 (upstream on the
    full val2017: 0.130 / 0.253). With the channels left RGB AP50 falls to 0.275; chance is ~0.
    """
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    onnx, ann = _paths(shared_data)
    det = _detector(onnx)
    ids, imgs = _images(ann)
    assert len(ids) == 79
    dets = det(list(imgs))
    results = [
        {"image_id": i, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}
        for i, d in zip(ids, dets)
        for (x1, y1, x2, y2), s, c in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist())
    ]
    assert results
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ap, ap50 = ev.stats[0], ev.stats[1]
    assert ap50 > 0.25, f"AP50 {ap50:.3f} (measured 0.328)"
    assert ap > 0.12, f"AP {ap:.3f} (measured 0.173)"


def test_deterministic_and_mixed_sizes(shared_data):
    onnx, ann = _paths(shared_data)
    det = _detector(onnx)
    _, imgs = _images(ann)
    big = imgs[0]
    mixed = [
        big,
        big[:, : big.shape[1] // 2, : big.shape[2] // 3].contiguous(),  # a crop
        torch.nn.functional.interpolate(big[None], size=(500, 900), mode="bilinear", align_corners=False)[0],  # upscaled
        torch.rand(3, 7, 5, generator=torch.Generator().manual_seed(0)),  # tiny
    ]
    a, b = det(mixed), det(mixed)
    for x, y in zip(a, b):
        for k in x:
            assert torch.equal(x[k], y[k])
    _check_contract(a, mixed, det)
    # One image at a time gives the same detections as the whole list in one call.
    for img, d in zip(mixed, a):
        (alone,) = det([img])
        for k in d:
            assert torch.equal(alone[k], d[k])
