"""The ``detectron2:`` model source with a real detectron2 (the vendored build .ci/run installs), end to end.

Random weights (no model-zoo weights offline) at small test sizes: what is checked is the pipeline —
config files and overrides, checkpoint formats and the trust rule, the resize and the boxes mapped back to
the input image, COCO category ids, torchrun — against detectron2's own code (``DefaultPredictor``,
``DetectionCheckpointer``) and pycocotools. Without detectron2 these tests skip with the reason, except the
one-line refusal, which runs everywhere.
"""

from __future__ import annotations

import csv
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

RETINANET = "COCO-Detection/retinanet_R_50_FPN_3x.yaml"
FASTER_RCNN = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
#: a small test size, every candidate kept (random weights score low) and GroupNorm (random weights under detectron2's
#: frozen BatchNorm blow the activations up: every score is 1.0 and boxes degenerate), so runs are quick and detect
SMALL = ["--model-arg", "INPUT.MIN_SIZE_TEST=256", "--model-arg", "MODEL.RETINANET.SCORE_THRESH_TEST=0.0",
         "--model-arg", "TEST.DETECTIONS_PER_IMAGE=20", "--model-arg", "MODEL.RESNETS.NORM=GN", "--model-arg", "MODEL.FPN.NORM=GN"]


def one_line_error(rc: int, err: str) -> str:
    lines = [s for s in err.splitlines() if s.startswith("Error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def build(coco_pm):
    """``build(spec, seed=, **build_model keywords)``: freqprobe's adapter of a detectron2 model, its weights drawn from ``seed``."""
    import freqprobe

    def run(spec: str = RETINANET, *, seed: int = 0, **kw):
        torch.manual_seed(seed)
        return freqprobe.build_model(f"detectron2:{spec}", task="detection", pm=coco_pm, **kw)

    return run


def zoo_state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def test_without_detectron2_one_line_says_how_to_get_it(cli, tmp_path, coco_mini, monkeypatch):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # what a machine without detectron2 sees
    rc, _, err = cli("run", "--model", f"detectron2:{RETINANET}", "--probe", "coco-map", "--data", coco_mini["spec"],
                     "--limit", "1", "--out", tmp_path / "d2")
    line = one_line_error(rc, err)
    assert line.startswith("Error: detectron2 is not installed") and "docs/detection.md" in line
    assert not (tmp_path / "d2").exists()


def test_retinanet_through_coco_map(cli, tmp_path, coco_mini, detectron2_ready):
    """A model-zoo RetinaNet on two COCO images: per-image statistics, detections files in COCO's results format
    (image ids and category ids of the data, boxes inside each image), APs equal to pycocotools' evaluation of
    them, and the config overrides with the resulting values in the manifest."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from freqprobe_coco.detectron2_detector import COCO_CATEGORY_IDS

    out = tmp_path / "d2"
    rc, stdout, err = cli("run", "--model", f"detectron2:{RETINANET}", *SMALL, "--probe", "coco-map",
                          "--data", coco_mini["spec"], "--limit", "2", "--batch-size", "2", "--out", out,
                          "--probe-opt", "panels=0")
    assert rc == 0, err
    assert "random weights" in err and "yaml.unsafe_load" not in err and "Traceback" not in err
    man = json.loads((out / "manifest.json").read_text())
    d2 = man["model"]["detectron2"]
    assert d2["config"] == RETINANET and d2["model_zoo"] is True
    assert d2["overrides"] == {"INPUT.MIN_SIZE_TEST": 256, "MODEL.RETINANET.SCORE_THRESH_TEST": 0.0,
                               "TEST.DETECTIONS_PER_IMAGE": 20, "MODEL.RESNETS.NORM": "GN", "MODEL.FPN.NORM": "GN"}
    values = d2["config_values"]
    assert values["INPUT.MIN_SIZE_TEST"] == 256 and values["INPUT.MAX_SIZE_TEST"] == 1333
    assert values["MODEL.META_ARCHITECTURE"] == "RetinaNet" and values["INPUT.FORMAT"] == "BGR"
    ids = man["coco"]["image_ids"]
    assert len(ids) == 2
    with open(out / "samples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 and {int(r["image_id"]) for r in rows} == set(ids)  # each image, each variant
    gt = COCO(str(coco_mini["ann"]))
    sizes = {i: (gt.imgs[i]["width"], gt.imgs[i]["height"]) for i in ids}
    for name in ("detections_original.json", "detections_low_r128.json", "detections_high_r128.json"):
        dets = json.loads((out / name).read_text())
        assert dets and all(d["image_id"] in ids for d in dets)
        assert {d["category_id"] for d in dets} <= set(COCO_CATEGORY_IDS)
        for i in ids:
            mine = [d for d in dets if d["image_id"] == i]
            assert 0 < len(mine) <= 20
            w, h = sizes[i]
            for d in mine:
                x, y, bw, bh = d["bbox"]
                assert -1e-3 <= x and -1e-3 <= y and x + bw <= w + 1e-3 and y + bh <= h + 1e-3, (d, w, h)
    with open(out / "summary.csv", newline="") as f:
        got = {r["metric"]: float(r["value"]) for r in csv.DictReader(f) if r["variant"] == "original"}
    ev = COCOeval(gt, gt.loadRes(str(out / "detections_original.json")), "bbox")
    ev.params.imgIds = ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert got["AP"] == pytest.approx(float(ev.stats[0]), abs=1e-4) and got["AR100"] == pytest.approx(float(ev.stats[8]), abs=1e-4)


def test_faster_rcnn_is_wrapped_too(cli, tmp_path, coco_mini, detectron2_ready):
    out = tmp_path / "frcnn"
    rc, _, err = cli("run", "--model", f"detectron2:{FASTER_RCNN}", "--model-arg", "INPUT.MIN_SIZE_TEST=256",
                     "--model-arg", "MODEL.ROI_HEADS.SCORE_THRESH_TEST=0.0", "--probe", "coco-map", "--data", coco_mini["spec"],
                     "--limit", "1", "--out", out, "--probe-opt", "panels=0", "-q")
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["detectron2"]["config_values"]["MODEL.META_ARCHITECTURE"] == "GeneralizedRCNN"
    assert man["model"]["detectron2"]["config_values"]["MODEL.ROI_HEADS.SCORE_THRESH_TEST"] == 0.0
    assert json.loads((out / "detections_original.json").read_text())


def test_a_lazyconfig_detector(cli, tmp_path, coco_mini, detectron2_ready):
    """A LazyConfig (.py) model-zoo FCOS: its test size overridden through the test loader's augmentation, a new
    keyword for the model's call (as detectron2's apply_overrides allows), both in the manifest."""
    out = tmp_path / "fcos"
    rc, _, err = cli("run", "--model", "detectron2:COCO-Detection/fcos_R_50_FPN_1x.py",
                     "--model-arg", "dataloader.test.mapper.augmentations.0.short_edge_length=256",
                     "--model-arg", "model.test_score_thresh=0.0", "--probe", "coco-map", "--data", coco_mini["spec"],
                     "--limit", "1", "--out", out, "--probe-opt", "panels=0", "-q")
    assert rc == 0, err
    d2 = json.loads((out / "manifest.json").read_text())["model"]["detectron2"]
    assert d2["lazy_config"] is True and d2["config_values"]["model._target_"].endswith(".FCOS")
    assert d2["overrides"] == {"dataloader.test.mapper.augmentations.0.short_edge_length": 256, "model.test_score_thresh": 0.0}
    assert d2["config_values"]["test_resize.short_edge_length"] == 256 and d2["config_values"]["model.test_score_thresh"] == 0.0
    assert json.loads((out / "detections_original.json").read_text())


def test_the_same_detections_as_detectron2s_default_predictor(coco_mini, detectron2_ready, build):
    """One COCO image (640×426) at test size 600 (resized to 901×600): the wrapper gives exactly what
    detectron2's own ``DefaultPredictor`` gives for the float image (resize, BGR, 0–255, boxes mapped back to
    640×426, classes as COCO ids). On the uint8 image DefaultPredictor resizes with PIL: the model's input then
    differs by at most one grey level when upscaling. (Random weights saturate the scores at 1.0, so detections
    of two inputs that differ at all cannot be compared: their ranking is a tie.)"""
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultPredictor
    from PIL import Image

    from freqprobe_coco.detectron2_detector import COCO_CATEGORY_IDS
    from freqprobe_coco.detectron2_source import zoo_config_dir

    path = sorted(Path(coco_mini["images"]).glob("*.jpg"))[0]
    rgb = np.array(Image.open(path).convert("RGB"))
    assert rgb.shape == (426, 640, 3)
    x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    for size in (600,):
        overrides = {"INPUT.MIN_SIZE_TEST": size, "MODEL.RETINANET.SCORE_THRESH_TEST": 0.0}
        wrapper = build(model_args=overrides).module
        cfg = get_cfg()
        cfg.merge_from_file(str(zoo_config_dir() / RETINANET))
        cfg.merge_from_list([*sum(([k, v] for k, v in overrides.items()), []), "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
        predictor = DefaultPredictor(cfg)
        predictor.model = wrapper.model  # the same weights
        seen = []
        hook = wrapper.model.backbone.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0].clone()))
        with torch.no_grad():
            ours = wrapper([x])[0]
            ref = predictor(rgb[:, :, ::-1].astype(np.float32))["instances"]
            ref_uint8 = predictor(np.ascontiguousarray(rgb[:, :, ::-1]))["instances"]
        hook.remove()
        assert len(ref) > 0
        assert torch.equal(ours["boxes"], ref.pred_boxes.tensor) and torch.equal(ours["scores"], ref.scores)
        assert ours["labels"].tolist() == [COCO_CATEGORY_IDS[c] for c in ref.pred_classes.tolist()]
        boxes = ours["boxes"]
        assert boxes[:, 0::2].max() <= 640 and boxes[:, 1::2].max() <= 426 and boxes.max() > 400  # the input's pixels
        assert torch.equal(seen[0], seen[1]) and seen[0].shape == seen[2].shape
        if size > 426:  # PIL's bilinear upscale is the same filter; it rounds to uint8
            assert (seen[0] - seen[2]).abs().max() <= 1.0
        assert len(ref_uint8) > 0


def _save_pkl(state: dict, path: Path) -> None:
    """A detectron2 model-zoo style checkpoint: numpy arrays under "model", with an "__author__"."""
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "freqprobe tests"}, f)


def test_checkpoints_pkl_with_trust_pth_without(cli, tmp_path, coco_mini, detectron2_ready, build, pickle_payload):
    """detectron2's formats load through its DetectionCheckpointer: the weights are exactly the file's. A .pkl is a
    pickle: without --trust-checkpoint, one line and nothing unpickled (a malicious file's payload never runs)."""
    want = zoo_state(build(seed=1).module)
    pkl, pth = tmp_path / "model_final.pkl", tmp_path / "model_final.pth"
    _save_pkl(want, pkl)
    torch.save({"model": want, "iteration": 90000}, pth)  # what detectron2's trainer writes

    got = build(checkpoint=pkl, trust_checkpoint=True)
    assert all(torch.equal(got.module.model.state_dict()[k], v) for k, v in want.items())
    assert got.info["checkpoint_kind"] == "detectron2-pkl" and got.info["has_weights"] is True
    assert len(got.info["checkpoint_sha256"]) == 64 and got.info["checkpoint_missing"] == []
    got = build(checkpoint=pth)  # tensors only: no trust needed
    assert all(torch.equal(got.module.model.state_dict()[k], v) for k, v in want.items())
    assert got.info["checkpoint_kind"] == "detectron2"

    marker = pickle_payload.marker
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {"x": pickle_payload}, "__author__": "someone"}, f)
    base = ["run", "--model", f"detectron2:{RETINANET}", "--model-arg", "INPUT.MIN_SIZE_TEST=320", "--probe", "coco-map",
            "--data", coco_mini["spec"],
            "--limit", "1", "--probe-opt", "panels=0", "-q"]
    for f in (evil, pkl):
        rc, _, err = cli(*base, "--checkpoint", f, "--out", tmp_path / "refused")
        line = one_line_error(rc, err)
        assert "is a Python pickle" in line and "--trust-checkpoint" in line
    assert not marker.exists() and not (tmp_path / "refused").exists()

    partial = dict(want)
    partial.pop("head.cls_score.weight")
    torch.save({"model": partial}, tmp_path / "partial.pth")
    rc, _, err = cli(*base, "--checkpoint", tmp_path / "partial.pth", "--out", tmp_path / "p")
    assert "missing keys (1): head.cls_score.weight" in one_line_error(rc, err) and "--non-strict" in err
    wrong = dict(want, **{"head.cls_score.weight": torch.zeros(9, 256, 3, 3)})
    torch.save({"model": wrong}, tmp_path / "wrong.pth")
    rc, _, err = cli(*base, "--checkpoint", tmp_path / "wrong.pth", "--non-strict", "--out", tmp_path / "w")
    assert "shape conflicts (1): head.cls_score.weight" in one_line_error(rc, err)
    got = build(checkpoint=tmp_path / "partial.pth", strict=False)
    assert got.info["checkpoint_missing"] == ["head.cls_score.weight"]


def test_pretrained_offline_says_how_and_uses_detectron2s_cache(cli, tmp_path, coco_mini, detectron2_ready, monkeypatch, build):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    rc, _, err = cli("run", "--model", f"detectron2:{RETINANET}", "--pretrained", "--probe", "coco-map",
                     "--data", coco_mini["spec"], "--limit", "1", "--out", tmp_path / "p")
    line = one_line_error(rc, err)
    assert "--checkpoint model_final_5bd44e.pkl --trust-checkpoint" in line
    assert "https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/retinanet_R_50_FPN_3x/190397829/model_final_5bd44e.pkl" in line
    want = zoo_state(build(seed=1).module)  # stands for the published file, put where detectron2 caches downloads
    cached = tmp_path / "cache" / "detectron2" / "COCO-Detection/retinanet_R_50_FPN_3x/190397829/model_final_5bd44e.pkl"
    cached.parent.mkdir(parents=True)
    _save_pkl(want, cached)
    got = build(pretrained=True)
    assert all(torch.equal(got.module.model.state_dict()[k], v) for k, v in want.items())
    assert got.info["has_weights"] is True and got.info["detectron2"]["weights_file"] == str(cached)


def test_own_config_file(tmp_path, detectron2_ready, build):
    from freqprobe_coco.detectron2_source import zoo_config_dir

    own = tmp_path / "my_retinanet.yaml"
    own.write_text(f"_BASE_: {zoo_config_dir() / RETINANET}\nINPUT:\n  MIN_SIZE_TEST: 256\n")
    got = build(str(own), model_args={"MODEL.RETINANET.NMS_THRESH_TEST": 0.4})
    d2 = got.info["detectron2"]
    assert d2["model_zoo"] is False and d2["config_file"] == str(own)
    assert d2["config_values"]["INPUT.MIN_SIZE_TEST"] == 256 and d2["config_values"]["MODEL.RETINANET.NMS_THRESH_TEST"] == 0.4
    assert got.module.min_size == 256


@pytest.mark.parametrize("spec, args, needle", [
    ("COCO-Detection/retinanet_R_50_FPN_3X.yaml", [], "Did you mean: COCO-Detection/retinanet_R_50_FPN_3x.yaml"),
    ("./nowhere/mine.yaml", [], "detectron2 config file not found: ./nowhere/mine.yaml"),
    (RETINANET, ["--model-arg", "INPUT.MIN_SIZE_TES=320"], "Did you mean: INPUT.MIN_SIZE_TEST"),
    (RETINANET, ["--model-arg", "INPUT.MIN_SIZE_TEST=abc"], "bad --model-arg INPUT.MIN_SIZE_TEST='abc'"),
    (RETINANET, ["--model-arg", "MODEL.WEIGHTS=/x/model_final.pkl"], "not --model-arg MODEL.WEIGHTS"),
    (RETINANET, ["--model-arg", "MODEL.RETINANET.NUM_CLASSES=3"], "only COCO-class detectors"),
    ("Misc/semantic_R_50_FPN_1x.yaml", [], "builds a SemanticSegmentor, whose outputs carry no detections"),
    ("COCO-Detection/retinanet_R_50_FPN_1x.py", ["--model-arg", "model.nope.x=1"], "Did you mean: "),
    ("COCO-Detection/retinanet_R_50_FPN_1x.py", ["--model-arg", "model.bogus=1"], "unexpected keyword argument 'bogus'"),
    (RETINANET, ["--pretrained", "--checkpoint", "x.pkl"], "either --pretrained or --checkpoint"),
])
def test_bad_detectron2_input_is_one_line(cli, tmp_path, coco_mini, detectron2_ready, spec, args, needle):
    rc, _, err = cli("run", "--model", f"detectron2:{spec}", *args, "--probe", "coco-map", "--data", coco_mini["spec"],
                     "--limit", "1", "--out", tmp_path / "bad")
    assert needle in one_line_error(rc, err)
    assert not (tmp_path / "bad").exists()
