"""``coco:`` data checks its instances file when it loads it (issue 17): duplicate ids, orphans, unknown categories,
malformed annotations, non-finite or negative boxes are refused in one line naming the file and the first offenders
with their counts (exit 2, nothing published), or, lenient, dropped and counted in the manifest.

Small hand-written annotation files beside real image files, and the real 79-image COCO mini set
(``../shared/data/coco_val2017_mini``, skipped with a reason when absent) through ``freqprobe run`` and
``freqprobe decompose``.
"""

from __future__ import annotations

import copy
import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")
from PIL import Image  # noqa: E402

import freqprobe  # noqa: E402
from freqprobe import UserFacingError  # noqa: E402
from freqprobe_coco.data import CocoDataSource  # noqa: E402

FIX = Path(__file__).resolve().parent / "fixtures"
GT_DETECTOR = f"{FIX / 'gt_detector.py'}:gt_detector"


# ---------------------------------------------------------------- small hand-written files
def small_set(tmp_path: Path) -> tuple[Path, dict]:
    """Three real 12×10 PNGs and a valid instances dict for them (two categories, four annotations)."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in (1, 2, 3):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(images / f"{i}.png")
    ann = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 12, "height": 10} for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 3], "area": 12.0, "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [5, 2, 3, 3], "area": 9.0, "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 1, "bbox": [0, 0, 6, 5], "area": 30.0, "iscrowd": 0},
            {"id": 13, "image_id": 3, "category_id": 2, "bbox": [2, 2, 2, 2], "area": 4.0, "iscrowd": 0},
        ],
    }
    return images, ann


def write(tmp_path: Path, ann: dict, name: str = "ann.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(ann))  # json writes NaN / Infinity as the literals Python's json reads back
    return p


def refused(images: Path, ann_file: Path) -> str:
    with pytest.raises(UserFacingError) as e:
        CocoDataSource(f"{images}:{ann_file}")
    msg = str(e.value)
    assert "\n" not in msg and str(ann_file) in msg, msg
    return msg


def test_a_valid_small_file_loads(tmp_path):
    images, ann = small_set(tmp_path)
    data = CocoDataSource(f"{images}:{write(tmp_path, ann)}")
    assert len(data) == 3 and data.describe()["annotations_count"] == 4
    assert "dropped" not in data.describe() and "filled" not in data.describe()


def _dup_image(a):
    a["images"].append({"id": 2, "file_name": "3.png", "width": 12, "height": 10})


def _dup_ann(a):
    a["annotations"].append(dict(a["annotations"][0], bbox=[2, 2, 2, 2]))


def _dup_cat(a):
    a["categories"].append({"id": 2, "name": "wolf"})


CASES = {
    "duplicate image id": (_dup_image, ["1 duplicate image ids", "first: 2 ×2"]),
    "duplicate annotation id": (_dup_ann, ["1 duplicate annotation ids", "first: 10 ×2"]),
    "duplicate category id": (_dup_cat, ["1 duplicate category ids", "first: 2 ×2"]),
    "orphan": (lambda a: a["annotations"].append(dict(a["annotations"][0], id=20, image_id=99)),
               ["1 annotations of image ids not in the file", "id 20 (image 99)"]),
    "unknown category": (lambda a: a["annotations"].append(dict(a["annotations"][0], id=21, category_id=7)),
                         ["1 annotations of category ids not in the file", "id 21 (category 7)"]),
    "NaN box": (lambda a: a["annotations"].append(dict(a["annotations"][0], id=22, bbox=[1, 1, float("nan"), 2])),
                ["1 non-finite or negative boxes", "id 22 [1, 1, NaN, 2]"]),
    "infinite box": (lambda a: a["annotations"].append(dict(a["annotations"][0], id=23, bbox=[1, float("inf"), 2, 2])),
                     ["id 23 [1, Infinity, 2, 2]"]),
    "negative width": (lambda a: a["annotations"].append(dict(a["annotations"][0], id=24, bbox=[1, 1, -3, 2])),
                       ["id 24 [1, 1, -3, 2]"]),
    "negative coordinate": (lambda a: a["annotations"].append(dict(a["annotations"][0], id=25, bbox=[-1, 1, 3, 2])),
                            ["id 25 [-1, 1, 3, 2]"]),
    "negative area": (lambda a: a["annotations"].append(dict(a["annotations"][0], id=26, area=-5.0)), ["id 26"]),
    "no bbox": (lambda a: a["annotations"].append({"id": 27, "image_id": 1, "category_id": 1}),
                ["1 malformed annotations", "id 27: bbox is not 4 numbers"]),
    "string image id": (lambda a: a["annotations"].append(dict(a["annotations"][0], id=28, image_id="1")),
                        ["id 28: no integer image_id"]),
    "three-number bbox": (lambda a: a["annotations"].append(dict(a["annotations"][0], id=29, bbox=[1, 2, 3])),
                          ["id 29: bbox is not 4 numbers"]),
    "image without id": (lambda a: a["images"].append({"file_name": "1.png"}), ["1 image entries without an integer id"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_kind_is_refused_in_one_line(tmp_path, case):
    images, ann = small_set(tmp_path)
    change, needles = CASES[case]
    change(ann)
    msg = refused(images, write(tmp_path, ann))
    for needle in needles:
        assert needle in msg, msg
    assert "fix the file" in msg


def test_many_offenders_are_counted_and_the_first_named(tmp_path):
    images, ann = small_set(tmp_path)
    ann["images"] += [dict(ann["images"][0]) for _ in range(2)] + [dict(ann["images"][1])]
    ann["annotations"] += [dict(ann["annotations"][0], id=100 + k, image_id=1000 + k) for k in range(5)]
    msg = refused(images, write(tmp_path, ann))
    assert "2 duplicate image ids (first: 1 ×3, 2 ×2)" in msg, msg
    assert "5 annotations of image ids not in the file (first: id 100 (image 1000), id 101 (image 1001), " \
           "id 102 (image 1002), ...)" in msg, msg
    assert msg.index("duplicate") < msg.index("not in the file")  # one line, kinds in a fixed order


def test_lenient_drops_and_counts(tmp_path):
    images, ann = small_set(tmp_path)
    ann["images"].append(dict(ann["images"][0]))  # an identical repeat: kept once
    ann["images"].append({"id": 3, "file_name": "1.png", "width": 12, "height": 10})  # conflicting: id 3 goes
    ann["annotations"] += [dict(ann["annotations"][1], id=30, image_id=77),
                           dict(ann["annotations"][1], id=31, category_id=9),
                           dict(ann["annotations"][1], id=32, bbox=[0, 0, float("nan"), 1]),
                           dict(ann["annotations"][1], id=33, bbox=[0, 0, 1, -1])]
    f = write(tmp_path, ann)
    refused(images, f)
    with pytest.warns(UserWarning, match="dropped"):
        data = CocoDataSource(f"{images}:{f}", lenient=True)
    assert data.image_ids == [1, 2]  # image 3 (listed twice, differently) and its annotation are gone
    d = data.describe()
    assert d["lenient"] is True
    assert d["dropped"] == {"duplicate_image_entries": 3, "orphan_annotations": 1, "unknown_category_annotations": 1,
                            "bad_boxes": 2, "annotations_of_dropped_entries": 1}
    assert d["annotations_count"] == 3
    assert [a["id"] for a in data.coco.dataset["annotations"]] == [10, 11, 12]
    boxes = torch.cat([data.target(i)["boxes"] for i in data.image_ids])
    assert torch.isfinite(boxes).all() and (boxes[:, 2:] >= boxes[:, :2]).all()


def test_lenient_on_a_clean_file_records_nothing_dropped(tmp_path):
    images, ann = small_set(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = CocoDataSource(f"{images}:{write(tmp_path, ann)}", lenient=True)
    assert data.describe()["dropped"] == {} and len(data) == 3


def test_missing_area_and_iscrowd_are_filled_and_counted(tmp_path):
    """COCO's evaluation reads both (a KeyError inside pycocotools before): the box's area and 0, counted."""
    images, ann = small_set(tmp_path)
    for a in ann["annotations"][:2]:
        del a["area"], a["iscrowd"]
    data = CocoDataSource(f"{images}:{write(tmp_path, ann)}")
    assert data.describe()["filled"] == {"area_from_box": 2, "iscrowd_set_to_0": 2}
    assert data.coco.anns[10]["area"] == 12.0 and data.coco.anns[10]["iscrowd"] == 0


def test_refused_through_decompose_exit_2_nothing_written(cli, tmp_path):
    images, ann = small_set(tmp_path)
    _dup_image(ann)
    f = write(tmp_path, ann)
    out = tmp_path / "parts"
    rc, _, err = cli("decompose", "--data", f"coco:{images}:{f}", "--radii", "4", "--out", out, "-q")
    assert rc == 2 and err.startswith("Error: ") and len(err.strip().splitlines()) == 1, err
    assert "duplicate" in err and str(f) in err
    assert not out.exists() and not list(tmp_path.glob(".parts*"))


def test_16bit_image_reads_as_its_8bit_version(tmp_path):
    """``coco:`` images decode like ``imagefolder:``: an I;16 PNG of 257·u is bit for bit the 8-bit u / 255."""
    images, ann = small_set(tmp_path)
    u = np.random.default_rng(1).integers(0, 256, (10, 12), dtype=np.uint8)
    Image.fromarray(u).save(images / "1.png")
    Image.fromarray(u.astype(np.uint16) * 257).save(images / "2.png")
    data = CocoDataSource(f"{images}:{write(tmp_path, ann)}")
    with Image.open(images / "2.png") as im:
        assert im.mode == "I;16"
    eight, deep = data.read_image(1), data.read_image(2)
    assert torch.equal(eight, deep) and torch.equal(eight[0], torch.from_numpy(u).float() / 255)


# ---------------------------------------------------------------- the real mini set
def mini_with(coco_mini: dict, tmp_path: Path, change) -> tuple[Path, dict]:
    ann = json.loads(coco_mini["ann"].read_text())
    ids = sorted(i["id"] for i in ann["images"])
    bad = copy.deepcopy(ann)
    change(bad, ids)
    return write(tmp_path, bad, "instances_bad.json"), {"ids": ids, "clean": ann}


def conflicting_duplicate(ann: dict, ids: list[int]) -> None:
    """The second image's id listed again for the third image's file (pycocotools keeps the last entry)."""
    third = next(i for i in ann["images"] if i["id"] == ids[2])
    ann["images"].append(dict(third, id=ids[1]))


def test_duplicate_image_id_in_the_mini_set_publishes_no_ap(cli, tmp_path, coco_mini):
    f, _ = mini_with(coco_mini, tmp_path, conflicting_duplicate)
    out = tmp_path / "run"
    rc, _, err = cli("run", "--model", GT_DETECTOR, "--model-arg", f"ann='{coco_mini['ann']}'", "--model-arg",
                     f"images='{coco_mini['images']}'", "--probe", "coco-map", "--data", f"coco:{coco_mini['images']}:{f}",
                     "--limit", "4", "--out", out, "--probe-opt", "panels=0", "-q")
    assert rc == 2, err
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1 and "duplicate image ids" in err, err
    assert "instances_bad.json" in err and "Traceback" not in err
    assert not (out / "summary.csv").exists() and not out.exists()


def test_lenient_mini_set_drops_counts_in_the_manifest_and_scores_the_rest(tmp_path, coco_mini, coco_pm):
    def damage(ann: dict, ids: list[int]) -> None:
        conflicting_duplicate(ann, ids)
        first = next(a for a in ann["annotations"] if a["image_id"] == ids[0])
        top = max(a["id"] for a in ann["annotations"])
        ann["annotations"] += [dict(first, id=top + 1, image_id=123456789), dict(first, id=top + 2, category_id=999),
                               dict(first, id=top + 3, bbox=[1.0, 2.0, float("nan"), 3.0]),
                               dict(first, id=top + 4, bbox=[1.0, 2.0, -3.0, 3.0])]

    f, info = mini_with(coco_mini, tmp_path, damage)
    ids = info["ids"]
    n_second = sum(1 for a in info["clean"]["annotations"] if a["image_id"] == ids[1])
    with pytest.raises(UserFacingError, match="duplicate image ids"):
        CocoDataSource(f"{coco_mini['images']}:{f}")
    with pytest.warns(UserWarning, match="dropped"):
        data = CocoDataSource(f"{coco_mini['images']}:{f}", lenient=True)
    out = tmp_path / "lenient"
    freqprobe.run(GT_DETECTOR, model_args={"ann": str(coco_mini["ann"]), "images": str(coco_mini["images"])},
                  probe="coco-map", data=data, limit=4, out=str(out), probe_options={"panels": 0}, device="cpu", pm=coco_pm)
    man = json.loads((out / "manifest.json").read_text())
    assert man["data"]["lenient"] is True
    assert man["data"]["dropped"] == {"duplicate_image_entries": 2, "orphan_annotations": 1,
                                      "unknown_category_annotations": 1, "bad_boxes": 2,
                                      "annotations_of_dropped_entries": n_second}
    assert man["coco"]["image_ids"] == [ids[0], *ids[2:5]]  # the image with the conflicting id is not evaluated
    with open(out / "summary.csv", newline="") as fh:
        orig = {r["metric"]: float(r["value"]) for r in csv.DictReader(fh) if r["variant"] == "original"}
    assert orig["AP"] == 1.0 and orig["AR100"] == 1.0  # the NaN and negative boxes are not ground truth any more


def test_cli_lenient_flag_reaches_the_data_source(cli, tmp_path, coco_mini):
    f, _ = mini_with(coco_mini, tmp_path, conflicting_duplicate)
    out = tmp_path / "run"
    rc, _, err = cli("run", "--model", GT_DETECTOR, "--model-arg", f"ann='{coco_mini['ann']}'", "--model-arg",
                     f"images='{coco_mini['images']}'", "--probe", "coco-map", "--data", f"coco:{coco_mini['images']}:{f}",
                     "--coco-lenient", "--limit", "3", "--out", out, "--probe-opt", "panels=0", "-q")
    assert rc == 0, err
    assert json.loads((out / "manifest.json").read_text())["data"]["dropped"]["duplicate_image_entries"] == 2
    rc, _, err = cli("decompose", "--data", f"coco:{coco_mini['images']}:{f}", "--coco-lenient", "--limit", "2",
                     "--radii", "64", "--out", tmp_path / "parts", "-q")
    assert rc == 0, err
    rc, _, err = cli("run", "--model", GT_DETECTOR, "--data", "synth10", "--coco-lenient", "--out", tmp_path / "x")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err


def test_the_lenient_flag_belongs_to_coco_data(cli, tiny_npz, tmp_path):
    """A plugin option routed into a data source (``dataset="coco"``): with other data it is refused in one line."""
    rc, _, err = cli("run", "--model", "timm:resnet18", "--data", f"npz:{tiny_npz}", "--coco-lenient", "--out", tmp_path / "o")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "--coco-lenient is an option of data 'coco' (from plugin 'coco'); it has no effect with data 'npz'" in err
    assert not (tmp_path / "o").exists()


def test_a_classifier_under_coco_map_is_told_it_needs_a_detector(cli, coco_mini, tmp_path):
    """A user's classifier (file.py:callable) wrapped as a detector by the probe: one line that says why, not only conv2d's error."""
    net = tmp_path / "net.py"
    net.write_text("import torch\nfrom torch import nn\ndef net():\n    torch.manual_seed(0)\n"
                   "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))\n")
    rc, _, err = cli("run", "--model", f"{net}:net", "--probe", "coco-map", "--data", f"coco:{coco_mini['images']}:{coco_mini['ann']}",
                     "--limit", "2", "--out", tmp_path / "o")
    errors = [ln for ln in err.strip().splitlines() if ln.startswith("Error:")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err  # (a warning says the weights are random)
    assert "like a classifier: a detection probe needs a detector" in errors[0]
