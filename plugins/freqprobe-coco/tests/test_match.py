"""freqprobe_coco.match.match_images against pycocotools' own per-image matching (COCOeval.evaluateImg),
plus hand-worked cases: exact IoU boundaries, ties, duplicates, crowd boxes and label mismatches."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from freqprobe_coco import match
from freqprobe_coco.match import match_images

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

KEYS = ("tp", "fp", "fn", "n_gt", "n_det")


# --- the reference: pycocotools on the same boxes -------------------------------------------------


def coco_gt(gts, categories, image_ids) -> COCO:
    """A pycocotools ground truth from per-image (boxes x1y1x2y2, labels, iscrowd)."""
    anns = []
    for img_id, (boxes, labels, crowd) in zip(image_ids, gts):
        for b, lab, c in zip(np.asarray(boxes, float).reshape(-1, 4), labels, crowd):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": int(img_id), "category_id": int(lab),
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": int(c)})
    dataset = {"images": [{"id": int(i), "width": 640, "height": 480} for i in image_ids],
               "annotations": anns, "categories": [{"id": int(c), "name": str(c)} for c in categories]}
    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_reference(dets, gts, categories, iou_threshold, score_thresholds, image_ids=None):
    """Per-image TP/FP/FN/n_gt/n_det from pycocotools' evalImgs, for each score threshold."""
    image_ids = list(range(1, len(gts) + 1)) if image_ids is None else image_ids
    gt = coco_gt(gts, categories, image_ids)
    res = []
    for img_id, (boxes, scores, labels) in zip(image_ids, dets):
        for b, s, lab in zip(np.asarray(boxes, float).reshape(-1, 4), scores, labels):
            res.append({"image_id": int(img_id), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                        "score": float(s), "category_id": int(lab)})
    assert res, "the reference needs at least one detection"
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(res)
        E = COCOeval(gt, dt, "bbox")
        E.params.iouThrs = np.array([iou_threshold])
        E.params.areaRng, E.params.areaRngLbl = [[0, 1e5 ** 2]], ["all"]
        E.params.maxDets = [100]
        E.evaluate()
    row = {img_id: i for i, img_id in enumerate(image_ids)}
    out = {}
    for thr in score_thresholds:
        r = {k: np.zeros(len(image_ids), dtype=np.int64) for k in KEYS}
        for e in E.evalImgs:
            if e is None:
                continue
            i = row[e["image_id"]]
            keep = np.asarray(e["dtScores"]) >= thr
            matched = e["dtMatches"][0] > 0
            ignored = e["dtIgnore"][0].astype(bool)
            tp = int(np.sum(matched & ~ignored & keep))
            r["tp"][i] += tp
            r["fp"][i] += int(np.sum(~matched & ~ignored & keep))
            r["n_gt"][i] += int(np.sum(e["gtIgnore"] == 0))
            r["n_det"][i] += int(keep.sum())
        r["fn"] = r["n_gt"] - r["tp"]
        out[thr] = r
    return out


def assert_same(ours: dict, ref: dict) -> None:
    for k in KEYS:
        np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_array_equal(ours["recall"], np.where(ref["n_gt"] > 0, ref["tp"] / ref["n_gt"], np.nan))


# --- synthetic data built to hit pycocotools' corner cases ----------------------------------------


def synthetic(seed: int, n_images: int = 40, categories=(1, 2, 3, 7)):
    """Boxes on a coarse grid (exact float arithmetic, so IoUs hit 0.5 exactly and tie), crowd boxes,
    duplicates, few distinct scores, wrong labels, images without gts or without dets."""
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for i in range(n_images):
        n_g = 0 if i % 9 == 4 else int(rng.integers(1, 9))
        xy = rng.integers(0, 40, size=(n_g, 2)) * 2.0
        wh = rng.integers(1, 12, size=(n_g, 2)) * 4.0
        g_boxes = np.concatenate([xy, xy + wh], axis=1)
        g_labels = rng.choice(categories, size=n_g)
        g_crowd = rng.random(n_g) < 0.15
        if n_g >= 2 and i % 3 == 0:  # a tying twin: same box size shifted by half its height
            dy = (g_boxes[0, 3] - g_boxes[0, 1]) / 2
            g_boxes[1] = g_boxes[0] + np.array([0, dy, 0, dy])
            g_labels[1], g_crowd[1] = g_labels[0], False
        gts.append((g_boxes, g_labels, g_crowd))
        if i % 9 == 7:
            dets.append((np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)))
            continue
        parts_b, parts_l = [], []
        if n_g:
            # jittered copies (steps of a quarter of the size hit IoU 0.5, 0.6, 0.75 ... exactly)
            src = rng.integers(0, n_g, size=int(rng.integers(n_g, 3 * n_g + 1)))
            size = (g_boxes[src, 2:] - g_boxes[src, :2])
            shift = rng.integers(-2, 3, size=(len(src), 2)) * size / 4
            grow = rng.integers(-1, 2, size=(len(src), 2)) * size / 4
            b = np.concatenate([g_boxes[src, :2] + shift, g_boxes[src, 2:] + shift + grow], axis=1)
            lab = np.where(rng.random(len(src)) < 0.1, rng.choice(categories, size=len(src)), g_labels[src])
            parts_b.append(b)
            parts_l.append(lab)
            if i % 3 == 0 and n_g >= 2:  # halfway between the twins: IoU 0.6 with both
                parts_b.append(((g_boxes[0] + g_boxes[1]) / 2)[None])
                parts_l.append(g_labels[:1])
        n_r = int(rng.integers(0, 6))
        xy = rng.integers(0, 60, size=(n_r, 2)) * 2.0
        parts_b.append(np.concatenate([xy, xy + rng.integers(1, 10, size=(n_r, 2)) * 4.0], axis=1))
        parts_l.append(rng.choice(categories, size=n_r))
        d_boxes = np.concatenate(parts_b)
        d_labels = np.concatenate(parts_l).astype(np.int64)
        if len(d_boxes) >= 2 and i % 4 == 1:  # an exact duplicate
            d_boxes = np.concatenate([d_boxes, d_boxes[:1]])
            d_labels = np.concatenate([d_labels, d_labels[:1]])
        scores = rng.choice([0.1, 0.3, 0.5, 0.5, 0.7, 0.9, 0.95], size=len(d_boxes))
        dets.append((d_boxes, scores, d_labels))
    return dets, gts


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("iou_threshold", [0.5, 0.75, 0.1, 1.0])
def test_matches_pycocotools_per_image(seed, iou_threshold):
    categories = (1, 2, 3, 7)
    dets, gts = synthetic(seed, categories=categories)
    thresholds = (0.0, 0.3, 0.5, 0.9, 0.96)
    ref = coco_reference(dets, gts, categories, iou_threshold, thresholds)
    for thr in thresholds:
        ours = match_images(dets, gts, iou_threshold=iou_threshold, score_threshold=thr)
        assert_same(ours, ref[thr])
    assert ref[0.0]["tp"].sum() > 0 and ref[0.0]["fp"].sum() > 0


def test_synthetic_data_hits_the_corner_cases():
    """The random data above does contain what it is meant to contain (ties, exact 0.5, crowd ignores)."""
    dets, gts = synthetic(0)
    ours = match_images(dets, gts)
    assert (ours["n_gt"] == 0).any() and (ours["n_det"] == 0).any()
    ignored = ours["n_det"] - ours["tp"] - ours["fp"]
    assert ignored.sum() > 0  # some detections absorbed by crowd boxes
    assert np.isnan(ours["recall"][ours["n_gt"] == 0]).all()


def test_real_coco_annotations(shared_data):
    """The 79 real val2017 images (crowd boxes, 78 categories, float coordinates) with jittered and random
    detections, against pycocotools."""
    path = shared_data / "coco_val2017_mini" / "instances_val2017_mini.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = json.loads(path.read_text())
    rng = np.random.default_rng(5)
    image_ids = sorted(img["id"] for img in data["images"])
    categories = sorted(c["id"] for c in data["categories"])
    by_img = {i: [a for a in data["annotations"] if a["image_id"] == i] for i in image_ids}
    dets, gts = [], []
    for i in image_ids:
        anns = by_img[i]
        xywh = np.array([a["bbox"] for a in anns], float).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        labels = np.array([a["category_id"] for a in anns], dtype=np.int64)
        gts.append((boxes, labels, np.array([a["iscrowd"] for a in anns], bool)))
        n = len(anns)
        src = rng.integers(0, max(n, 1), size=2 * n)
        jit = boxes[src] + rng.normal(0, 0.08, size=(2 * n, 4)) * np.tile(xywh[src, 2:], 2)
        rnd_xy = rng.uniform(0, 500, size=(5, 2))
        rnd = np.concatenate([rnd_xy, rnd_xy + rng.uniform(5, 200, size=(5, 2))], axis=1)
        d_boxes = np.concatenate([jit, rnd])
        d_labels = np.concatenate([labels[src] if n else np.zeros(0, np.int64), rng.choice(categories, 5)])
        dets.append((d_boxes, rng.random(len(d_boxes)), d_labels))
    assert sum(int(g[2].sum()) for g in gts) > 0  # the file has crowd boxes
    thresholds = (0.0, 0.25, 0.5, 0.75)
    for iou in (0.5, 0.75):
        ref = coco_reference(dets, gts, categories, iou, thresholds, image_ids)
        for thr in thresholds:
            assert_same(match_images(dets, gts, iou_threshold=iou, score_threshold=thr), ref[thr])


# --- hand-worked cases ----------------------------------------------------------------------------


def one(dets, gts, **kw):
    """match_images on one image, as plain ints."""
    r = match_images([dets], [gts], **kw)
    return {k: int(r[k][0]) for k in KEYS}


def gt_of(*boxes, labels=None, crowd=None):
    n = len(boxes)
    return (np.array(boxes, float).reshape(n, 4), np.array(labels or [1] * n), np.array(crowd or [0] * n, bool))


def det_of(*boxes, scores=None, labels=None):
    n = len(boxes)
    return (np.array(boxes, float).reshape(n, 4), np.array(scores or [0.9] * n), np.array(labels or [1] * n))


def test_one_tp_and_a_duplicate_fp():
    r = one(det_of([0, 0, 10, 10], [0, 0, 10, 10], scores=[0.9, 0.8]), gt_of([0, 0, 10, 10]))
    assert r == {"tp": 1, "fp": 1, "fn": 0, "n_gt": 1, "n_det": 2}


def test_iou_exactly_at_threshold_counts():
    # intersection 50, union 100: IoU exactly 0.5
    assert one(det_of([0, 0, 10, 5]), gt_of([0, 0, 10, 10]))["tp"] == 1
    assert one(det_of([0, 0, 10, 4.99]), gt_of([0, 0, 10, 10]))["tp"] == 0
    # iou_threshold 1.0 is capped just below 1, so an exact copy still matches
    assert one(det_of([0, 0, 10, 10]), gt_of([0, 0, 10, 10]), iou_threshold=1.0)["tp"] == 1


def test_tie_goes_to_the_last_ground_truth():
    """IoU 0.6 with both gts: pycocotools keeps the later one, leaving the first for the next detection."""
    gts = gt_of([0, 0, 10, 10], [0, 5, 10, 15])
    dets = det_of([0, 2.5, 10, 12.5], [0, 0, 10, 10], scores=[0.9, 0.8])
    assert one(dets, gts) == {"tp": 2, "fp": 0, "fn": 0, "n_gt": 2, "n_det": 2}
    # reversing the gt order changes the outcome, as in pycocotools
    gts_rev = gt_of([0, 5, 10, 15], [0, 0, 10, 10])
    assert one(dets, gts_rev) == {"tp": 1, "fp": 1, "fn": 1, "n_gt": 2, "n_det": 2}


def test_crowd_box_absorbs_detections():
    # a crowd box listed first: non-crowd gts are still tried first; the crowd box takes the rest
    gts = gt_of([0, 0, 100, 100], [10, 10, 20, 20], crowd=[1, 0])
    dets = det_of([10, 10, 20, 20], [11, 11, 20, 20], [50, 50, 60, 60], [200, 200, 210, 210], scores=[0.9, 0.8, 0.7, 0.6])
    # det 1: TP; det 2 overlaps the taken gt and lies in the crowd box: ignored; det 3: ignored; det 4: FP
    assert one(dets, gts) == {"tp": 1, "fp": 1, "fn": 0, "n_gt": 1, "n_det": 4}
    # crowd IoU is intersection / detection area: a detection twice the crowd box's size is half inside
    assert one(det_of([0, 0, 200, 100]), gt_of([0, 0, 100, 100], crowd=[1]))["fp"] == 0
    assert one(det_of([0, 0, 201, 100]), gt_of([0, 0, 100, 100], crowd=[1]))["fp"] == 1


def test_class_mismatch_is_fp_and_fn():
    r = one(det_of([0, 0, 10, 10], labels=[2]), gt_of([0, 0, 10, 10], labels=[1]))
    assert r == {"tp": 0, "fp": 1, "fn": 1, "n_gt": 1, "n_det": 1}


def test_score_threshold_and_greedy_order():
    # the higher-scoring but worse detection takes the gt first
    dets = det_of([0, 0, 10, 7], [0, 0, 10, 10], scores=[0.9, 0.4])
    assert one(dets, gt_of([0, 0, 10, 10])) == {"tp": 1, "fp": 1, "fn": 0, "n_gt": 1, "n_det": 2}
    assert one(dets, gt_of([0, 0, 10, 10]), score_threshold=0.5) == {"tp": 1, "fp": 0, "fn": 0, "n_gt": 1, "n_det": 1}
    assert one(dets, gt_of([0, 0, 10, 10]), score_threshold=0.95) == {"tp": 0, "fp": 0, "fn": 1, "n_gt": 1, "n_det": 0}


def test_empty_inputs_and_torch_tensors():
    r = match_images([], [])
    assert all(len(v) == 0 for v in r.values())
    assert r["tp"].dtype == np.int64 and r["recall"].dtype == np.float64
    empty_d = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    empty_g = (np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool))
    r = match_images([empty_d, det_of([0, 0, 1, 1]), empty_d], [empty_g, empty_g, gt_of([0, 0, 1, 1])])
    np.testing.assert_array_equal(r["fp"], [0, 1, 0])
    np.testing.assert_array_equal(r["fn"], [0, 0, 1])
    assert np.isnan(r["recall"][:2]).all() and r["recall"][2] == 0.0
    d = tuple(torch.as_tensor(x) for x in det_of([0, 0, 10, 10], [20, 20, 30, 30]))
    g = (torch.tensor([[0.0, 0, 10, 10]], dtype=torch.float32), torch.tensor([1]), torch.tensor([False]))
    r = match_images([d], [g])
    assert (int(r["tp"][0]), int(r["fp"][0]), float(r["recall"][0])) == (1, 1, 1.0)


def test_many_images_in_chunks_equal_image_by_image(monkeypatch):
    """The chunked, padded path (forced into many small chunks) gives what each image gives alone."""
    dets, gts = synthetic(3, n_images=300)
    one_chunk = match_images(dets, gts, score_threshold=0.3)
    monkeypatch.setattr(match, "_CHUNK_ELEMENTS", 2000)
    monkeypatch.setattr(match, "_MIN_CHUNK_IMAGES", 1)
    whole = match_images(dets, gts, score_threshold=0.3)
    for k in (*KEYS, "recall"):
        np.testing.assert_array_equal(whole[k], one_chunk[k])
    for i in range(0, 300, 37):
        alone = match_images(dets[i:i + 1], gts[i:i + 1], score_threshold=0.3)
        for k in (*KEYS, "recall"):
            np.testing.assert_array_equal(alone[k], whole[k][i:i + 1])


def test_bad_arguments():
    with pytest.raises(ValueError):
        match_images([det_of([0, 0, 1, 1])], [])
    with pytest.raises(ValueError):
        match_images([det_of([0, 0, 1, 1])], [gt_of([0, 0, 1, 1])], iou_threshold=1.5)
    with pytest.raises(ValueError):
        match_images([(np.zeros((2, 4)), np.zeros(3), np.zeros(2))], [gt_of([0, 0, 1, 1])])


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("score_threshold", [0.0, 0.5])
def test_which_objects_and_detections_match_pycocotools(seed, score_threshold):
    """``return_matches``: per object found / per detection a TP, as pycocotools' gtMatches and dtMatches say."""
    categories = (1, 2, 3, 7)
    dets, gts = synthetic(seed, categories=categories)
    gt = coco_gt(gts, categories, list(range(1, len(gts) + 1)))
    res = []
    for img_id, (boxes, scores, labels) in enumerate(dets, start=1):
        for b, s, lab in zip(np.asarray(boxes, float).reshape(-1, 4), scores, labels):
            if s >= score_threshold:  # matching above a threshold = matching only those detections
                res.append({"image_id": img_id, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s),
                            "category_id": int(lab), "det_key": (img_id, len(res))})
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(res)
        E = COCOeval(gt, dt, "bbox")
        E.params.iouThrs = np.array([0.5])
        E.params.areaRng, E.params.areaRngLbl = [[0, 1e5 ** 2]], ["all"]
        E.params.maxDets = [100]
        E.evaluate()
    found_ids = {int(g) for e in E.evalImgs if e is not None
                 for g, m in zip(e["gtIds"], e["gtMatches"][0]) if m > 0}
    tp_det_ids = {int(d) for e in E.evalImgs if e is not None
                  for d, m, ig in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0]) if m > 0 and not ig}
    ours = match_images(dets, gts, iou_threshold=0.5, score_threshold=score_threshold, return_matches=True)
    ann_id = 0
    for i, (boxes, labels, crowd) in enumerate(gts):
        want = []
        for c in crowd:
            ann_id += 1
            want.append(ann_id in found_ids and not c)  # a crowd region is never an object found
        np.testing.assert_array_equal(ours["gt_matched"][i], np.array(want, dtype=bool))
        assert int(ours["gt_matched"][i].sum()) == int(ours["tp"][i])
    det_ids = {}  # pycocotools numbers results in the order given: id k+1 for res[k]
    for k, r in enumerate(res):
        det_ids.setdefault(r["image_id"], []).append((r["score"], k + 1))
    for i in range(len(dets)):
        got = det_ids.get(i + 1, [])
        order = sorted(range(len(got)), key=lambda j: -got[j][0])  # stable: pycocotools' mergesort
        want = np.array([got[j][1] in tp_det_ids for j in order], dtype=bool)
        np.testing.assert_array_equal(ours["det_matched"][i], want)
