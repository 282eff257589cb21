"""freqprobe_coco.cocoeval.coco_stats: against direct pycocotools runs, faster-coco-eval against pycocotools
(bit for bit), perfect and empty detections, image subsets, backend selection."""

from __future__ import annotations

import contextlib
import copy
import io
import sys

import numpy as np
import pytest

from freqprobe import UserFacingError
from freqprobe_coco import cocoeval
from freqprobe_coco.cocoeval import METRIC_NAMES, available_backends, coco_stats, resolve_backend

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

EPS_ONE = 1.0 / (1.0 + np.spacing(1))


def quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def make_coco(dataset: dict) -> COCO:
    gt = COCO()
    gt.dataset = dataset
    quiet(gt.createIndex)
    return gt


def synthetic_gt(seed: int = 0, n_images: int = 30, categories=(1, 2, 3, 5, 8)) -> COCO:
    """Small, medium and large boxes over a few categories, some crowd, a few images without objects;
    image ids deliberately not 1..N."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n_images):
        img_id = 1000 + 7 * i
        images.append({"id": img_id, "width": 640, "height": 480, "file_name": f"{img_id}.jpg"})
        for _ in range(0 if i % 10 == 3 else int(rng.integers(1, 9))):
            side = float(rng.choice([12.0, 20.0, 50.0, 80.0, 150.0, 300.0])) * rng.uniform(0.7, 1.3)
            w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - min(h, 470))
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(rng.choice(categories)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.05)})
    cats = [{"id": c, "name": f"c{c}"} for c in categories]
    return make_coco({"images": images, "annotations": anns, "categories": cats})


def detections_for(gt: COCO, seed: int = 1, per_gt: int = 2, random_per_image: int = 4) -> np.ndarray:
    """Jittered copies of the gts (some with the wrong label) plus random boxes; K×7 loadRes rows."""
    rng = np.random.default_rng(seed)
    cats = sorted(gt.getCatIds())
    rows = []
    for a in gt.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        for _ in range(per_gt):
            j = rng.normal(0, 0.12, 4) * [w, h, w, h]
            label = a["category_id"] if rng.random() > 0.1 else int(rng.choice(cats))
            rows.append([a["image_id"], x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0), rng.random(), label])
    for img_id in gt.getImgIds():
        for _ in range(random_per_image):
            w, h = rng.uniform(5, 200, 2)
            rows.append([img_id, rng.uniform(0, 500), rng.uniform(0, 400), w, h, rng.random() * 0.6, int(rng.choice(cats))])
    return np.array(rows, dtype=np.float64)


def direct_pycocotools(gt: COCO, results: np.ndarray, img_ids, canonical: bool = False) -> np.ndarray:
    """The textbook pycocotools run (loadRes on the numpy array); ``canonical`` maps 1 − 2**-52 to 1.0."""
    with contextlib.redirect_stdout(io.StringIO()):
        E = COCOeval(gt, gt.loadRes(results), "bbox")
        E.params.imgIds = list(img_ids)
        E.evaluate()
        E.accumulate()
        if canonical:
            E.eval["precision"][E.eval["precision"] == EPS_ONE] = 1.0
        E.summarize()
    return np.asarray(E.stats, dtype=np.float64)


def as_array(stats: dict) -> np.ndarray:
    assert tuple(stats) == METRIC_NAMES
    assert all(type(v) is float for v in stats.values())
    return np.array([stats[k] for k in METRIC_NAMES])


# --- the pycocotools path ---------------------------------------------------------------------------


def test_pycocotools_path_equals_a_direct_run():
    gt = synthetic_gt()
    res = detections_for(gt)
    ids = sorted(gt.getImgIds())
    ours = as_array(coco_stats(gt, res, ids, backend="pycocotools"))
    plain = direct_pycocotools(gt, res, ids)
    np.testing.assert_allclose(ours, plain, rtol=0, atol=1e-12)
    # the only change is pycocotools' eps-guarded precision of one TP out of one detection, read as 1.0
    np.testing.assert_array_equal(ours, direct_pycocotools(gt, res, ids, canonical=True))
    assert 0.1 < ours[0] < 0.9 and ours[1] > ours[0] > ours[2] * 0.5


def test_real_annotations_both_backends(shared_data):
    """The 79 real val2017 images (78 categories, crowd boxes, all area ranges)."""
    path = shared_data / "coco_val2017_mini" / "instances_val2017_mini.json"
    if not path.is_file():
        pytest.skip(f"real COCO annotations not found at {path}")
    gt = quiet(COCO, str(path))
    res = detections_for(gt, seed=3)
    ids = sorted(gt.getImgIds())
    ours = as_array(coco_stats(gt, res, ids, backend="pycocotools"))
    np.testing.assert_allclose(ours, direct_pycocotools(gt, res, ids), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours, direct_pycocotools(gt, res, ids, canonical=True))
    if "faster-coco-eval" in available_backends():
        np.testing.assert_array_equal(as_array(coco_stats(gt, res, ids, backend="faster-coco-eval")), ours)


# --- faster-coco-eval against pycocotools ------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faster_coco_eval_is_identical(seed):
    pytest.importorskip("faster_coco_eval")
    gt = synthetic_gt(seed)
    res = detections_for(gt, seed=seed + 10)
    ids = sorted(gt.getImgIds())
    for subset in (ids, ids[::3]):
        slow = coco_stats(gt, res, subset, backend="pycocotools")
        fast = coco_stats(gt, res, subset, backend="faster-coco-eval")
        assert fast == slow
    assert coco_stats(gt, res[:0], ids, backend="faster-coco-eval") == coco_stats(gt, res[:0], ids, backend="pycocotools")


def test_faster_ground_truth_is_built_once():
    pytest.importorskip("faster_coco_eval")
    gt = synthetic_gt()
    res = detections_for(gt)
    ids = sorted(gt.getImgIds())
    first = coco_stats(gt, res, ids, backend="faster-coco-eval")
    twin = getattr(gt, cocoeval._FAST_GT_ATTR)[1]
    assert coco_stats(gt, res, ids, backend="faster-coco-eval") == first
    assert getattr(gt, cocoeval._FAST_GT_ATTR)[1] is twin
    # the twin works on copies: pycocotools' own records are left as they were
    assert all("ignore" not in a for a in gt.dataset["annotations"])


# --- behaviour -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_perfect_detections_give_ap_one(backend):
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    gt = synthetic_gt(4)
    rows = [[a["image_id"], *a["bbox"], 1.0, a["category_id"]] for a in gt.dataset["annotations"] if not a["iscrowd"]]
    s = coco_stats(gt, np.array(rows), sorted(gt.getImgIds()), backend=backend)
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "ARs", "ARm", "ARl"):
        assert s[k] == 1.0, k
    assert 0 < s["AR1"] < 1.0 and s["AR1"] <= s["AR10"] <= 1.0


def test_one_tp_out_of_one_detection_is_precision_one():
    """pycocotools' tp / (tp + fp + eps) reads 1 − 2**-52 for one TP out of one detection; both backends say 1.0."""
    images = [{"id": 1, "width": 100, "height": 100}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600.0, "iscrowd": 0}]
    gt = make_coco({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]})
    res = np.array([[1, 10, 10, 40, 40, 0.9, 1]], dtype=np.float64)
    assert direct_pycocotools(gt, res, [1])[0] == EPS_ONE
    expected = {k: (-1.0 if k in ("APs", "APl", "ARs", "ARl") else 1.0) for k in METRIC_NAMES}
    for backend in available_backends():
        assert coco_stats(gt, res, [1], backend=backend) == expected


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_empty_results(backend):
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    # only small and large objects: the medium area range has no gts, so its AP/AR is -1
    images = [{"id": i, "width": 100, "height": 100} for i in (1, 2, 3)]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 99, 99], "area": 9801.0, "iscrowd": 0}]
    gt = make_coco({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]})
    s = coco_stats(gt, np.zeros((0, 7)), [1, 2], backend=backend)
    assert s == {k: (-1.0 if k in ("APm", "ARm") else 0.0) for k in METRIC_NAMES}
    # the same as pycocotools itself gives when the evaluated images have no detections
    elsewhere = np.array([[3, 0, 0, 10, 10, 0.9, 1]], dtype=np.float64)
    np.testing.assert_array_equal(as_array(s), direct_pycocotools(gt, elsewhere, [1, 2]))
    assert coco_stats(gt, [], [1, 2], backend=backend) == s


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_img_ids_restrict_the_evaluation(backend):
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    gt = synthetic_gt(5)
    res = detections_for(gt, seed=6)
    ids = sorted(gt.getImgIds())
    subset = ids[1::2]
    # independent reference: a ground truth and results holding only those images
    keep = set(subset)
    small = copy.deepcopy(gt.dataset)
    small["images"] = [im for im in small["images"] if im["id"] in keep]
    small["annotations"] = [a for a in small["annotations"] if a["image_id"] in keep]
    small_gt = make_coco(small)
    small_res = res[np.isin(res[:, 0], subset)]
    expected = coco_stats(small_gt, small_res, subset, backend=backend)
    got = coco_stats(gt, res, subset, backend=backend)
    assert got == expected
    assert got != coco_stats(gt, res, ids, backend=backend)
    # order and duplicates of img_ids do not matter
    assert coco_stats(gt, res, list(reversed(subset)) + subset[:2], backend=backend) == got


def test_results_on_unknown_images_and_bad_shapes():
    gt = synthetic_gt()
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_stats(gt, np.array([[1, 0, 0, 5, 5, 0.5, 1]], float), gt.getImgIds(), backend="pycocotools")
    with pytest.raises(ValueError, match="K×7"):
        coco_stats(gt, np.zeros((3, 6)), gt.getImgIds(), backend="pycocotools")


def test_output_is_silent(capsys):
    gt = synthetic_gt()
    res = detections_for(gt)
    for backend in available_backends():
        coco_stats(gt, res, gt.getImgIds(), backend=backend)
    assert capsys.readouterr().out == ""


# --- backend selection ------------------------------------------------------------------------------------


def test_backend_resolution(monkeypatch):
    found = available_backends()
    assert "pycocotools" in found and found[-1] == "pycocotools"
    assert resolve_backend("auto") == found[0]
    assert resolve_backend("pycocotools") == "pycocotools"
    if "faster-coco-eval" in found:
        assert resolve_backend("Faster_COCO_Eval") == "faster-coco-eval"
    with pytest.raises(UserFacingError) as err:
        resolve_backend("detectron2")
    msg = str(err.value)
    assert "\n" not in msg and "detectron2" in msg and "faster-coco-eval" in msg and "pycocotools" in msg
    with pytest.raises(UserFacingError):
        coco_stats(synthetic_gt(), np.zeros((0, 7)), [1000], backend="nope")

    # faster-coco-eval asked for but missing: say how to install it; auto falls back to pycocotools
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)
    assert available_backends() == ["pycocotools"]
    assert resolve_backend("auto") == "pycocotools"
    with pytest.raises(UserFacingError, match="pip install faster-coco-eval"):
        resolve_backend("faster-coco-eval")
