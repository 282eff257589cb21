"""`freqprobe run --probe coco-map` end to end on real COCO images and annotations, with real detectors.

The detectors: FastestDet (a real 80-class COCO detector, ONNX through onnxruntime, wrapped in
``fixtures/fastestdet.py`` and loaded as a user's ``file.py:callable``), a detector that returns the
ground truth (``fixtures/gt_detector.py``), and torchvision's RetinaNet with random weights at a small
input size. Every AP the probe reports is checked against pycocotools' own evaluation of the
detections file the run wrote.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
FIX = HERE / "fixtures"
NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


@pytest.fixture
def fastestdet(shared_data) -> str:
    pytest.importorskip("onnxruntime")
    if not (shared_data / "coco_detector_fastestdet" / "FastestDet.onnx").is_file():
        pytest.skip("FastestDet.onnx not found in ../shared/data/coco_detector_fastestdet")
    return f"{FIX / 'fastestdet.py'}:fastestdet"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def pycocotools_stats(ann: Path, detections: Path, img_ids: list[int]) -> list[float]:
    """The independent reference: pycocotools reading the files, as anyone re-scoring a run would."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        dets = json.loads(detections.read_text())
        if not dets:
            return None
        dt = gt.loadRes(str(detections))
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats]


def csv_values(stats: list[float]) -> list[float]:
    """``stats`` as summary.csv writes them (six decimals). (pycocotools' own run and the probe's can differ by
    its precision epsilon, 2**-52, which the probe drops so that both backends agree bit for bit.)"""
    return [float(f"{v:.6f}") for v in stats]


def summary_stats(out: Path) -> dict[tuple, dict[str, float]]:
    got: dict[tuple, dict[str, float]] = {}
    for r in read_csv(out / "summary.csv"):
        got.setdefault((r["variant"], r["param"]), {})[r["metric"]] = float(r["value"])
    return got


def test_fastestdet_ap_equals_pycocotools_on_written_detections(cli, tmp_path, coco_mini, fastestdet):
    out = tmp_path / "run"
    rc, stdout, err = cli("run", "--model", fastestdet, "--probe", "coco-map", "--data", coco_mini["spec"], "--limit", "24",
                          "--out", out, "--probe-opt", "panels=2", "-q")
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    ids = man["coco"]["image_ids"]
    all_ids = sorted(json.loads(coco_mini["ann"].read_text())["images"], key=lambda d: d["id"])
    assert ids == [d["id"] for d in all_ids[:24]]  # --limit: the first N image ids in ascending order
    stats = summary_stats(out)
    assert set(stats) == {("original", ""), ("low", "128"), ("high", "128")}  # the paper's r = 128 by default
    for (variant, param), got in stats.items():
        assert list(got) == NAMES
        name = f"detections_{variant}" + (f"_r{param}" if param else "") + ".json"
        ref = pycocotools_stats(coco_mini["ann"], out / name, ids)
        assert ref is not None, f"{name} is empty"
        assert [got[k] for k in NAMES] == csv_values(ref), variant
    # a real detector: clearly better than nothing on the originals, near nothing on the high part (paper §7:
    # 35.6 / 27.5 / 10.7 for RetinaNet); FastestDet shrinks images to 352 px itself, so at r = 128 the low part
    # keeps nearly all it sees and scores about as well as the original
    assert stats[("original", "")]["AP50"] > 0.2
    assert stats[("high", "128")]["AP"] < 0.5 * stats[("original", "")]["AP"]
    # per image and variant: tp + fn = objects, detections >= tp + fp
    rows = read_csv(out / "samples.csv")
    assert list(rows[0]) == ["index", "image_id", "variant", "param", "n_det", "tp", "fp", "fn", "n_gt", "recall_50"]
    assert len(rows) == 24 * 3
    for r in rows:
        assert int(r["tp"]) + int(r["fn"]) == int(r["n_gt"])
        assert int(r["n_det"]) >= int(r["tp"]) + int(r["fp"])
    # Figures 8 and 9: the lists agree with the manifest's counts, the panels decode
    fig = man["coco"]["figures"]["r128"]
    better = read_csv(out / "figure9_low_better_r128.csv")
    worse = read_csv(out / "figure8_low_worse_r128.csv")
    assert len(better) == fig["low_better"] and len(worse) == fig["low_worse"]
    assert all(int(r["only_low"]) > 0 for r in better) and all(int(r["only_original"]) > 0 for r in worse)
    assert sum(int(r["only_low"]) for r in better) == fig["objects_only_low"]
    assert worse, "FastestDet finds some objects on the originals it misses on the blurred low part"
    from PIL import Image

    pngs = sorted((out / "panels").glob("*.png"))
    assert len(pngs) == min(2, len(better)) + min(2, len(worse))
    for p in pngs:
        with Image.open(p) as im:
            im.load()
            assert im.size[0] > 300


def test_ground_truth_detector_scores_ap_one(cli, tmp_path, coco_mini):
    out = tmp_path / "gt"
    model = f"{FIX / 'gt_detector.py'}:gt_detector"
    rc, _, err = cli("run", "--model", model, "--model-arg", f"ann='{coco_mini['ann']}'", "--model-arg",
                     f"images='{coco_mini['images']}'", "--model-arg", "limit=12", "--probe", "coco-map",
                     "--data", coco_mini["spec"], "--limit", "12", "--out", out, "--probe-opt", "panels=0", "-q")
    assert rc == 0, err
    stats = summary_stats(out)
    orig = stats[("original", "")]
    assert orig["AP"] == 1.0 and orig["AP50"] == 1.0 and orig["AR100"] == 1.0
    assert stats[("low", "128")]["AP"] == 0.0  # no detections on the parts
    rows = [r for r in read_csv(out / "samples.csv") if r["variant"] == "original"]
    assert all(r["fp"] == "0" and r["fn"] == "0" for r in rows)
    assert all(r["recall_50"] in ("1.000000", "nan") for r in rows)


def test_backends_give_identical_stats(cli, tmp_path, coco_mini, fastestdet):
    pytest.importorskip("faster_coco_eval")
    got = {}
    for backend in ("pycocotools", "faster-coco-eval"):
        out = tmp_path / backend
        rc, _, err = cli("run", "--model", fastestdet, "--probe", "coco-map", "--data", coco_mini["spec"], "--limit", "10",
                         "--out", out, "--probe-opt", f"backend={backend}", "--probe-opt", "panels=0", "-q")
        assert rc == 0, err
        got[backend] = summary_stats(out)
        assert json.loads((out / "manifest.json").read_text())["coco"]["backend"] == backend
    assert got["pycocotools"] == got["faster-coco-eval"]


def test_relative_radius_and_svd(cli, tmp_path, coco_mini, fastestdet):
    out = tmp_path / "rel"
    rc, _, err = cli("run", "--model", fastestdet, "--probe", "coco-map", "--data", coco_mini["spec"], "--limit", "3",
                     "--decomposer-opt", "unit=nyquist", "--radii", "0.5", "--out", out, "--probe-opt", "panels=0", "-q")
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    assert man["decomposer"]["options"] == {"rule": "exclusive", "unit": "nyquist"}
    assert (out / "detections_low_r0.5.json").is_file()
    assert {r["param"] for r in read_csv(out / "samples.csv")} == {"", "0.5"}


def test_retinanet_random_weights_runs_through_the_probe(cli, tmp_path, coco_mini):
    """torchvision's RetinaNet path, without weights (nothing is downloaded), at a small input size."""
    out = tmp_path / "retina"
    rc, stdout, err = cli("run", "--model", "torchvision:retinanet_resnet50_fpn", "--model-arg", "min_size=128",
                          "--model-arg", "max_size=160", "--model-arg", "score_thresh=0.0", "--model-arg", "detections_per_img=20",
                          "--probe", "coco-map", "--data", coco_mini["spec"], "--limit", "2", "--out", out,
                          "--probe-opt", "panels=1", "--probe-opt", "score_threshold=0.0")
    assert rc == 0, err
    assert "random weights" in err
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["task"] == "detection" and man["model"]["torchvision_name"] == "retinanet_resnet50_fpn"
    stats = summary_stats(out)
    for (variant, param), got in stats.items():
        name = f"detections_{variant}" + (f"_r{param}" if param else "") + ".json"
        dets = json.loads((out / name).read_text())
        assert len(dets) == 2 * 20  # detections_per_img on each of the two images
        ref = pycocotools_stats(coco_mini["ann"], out / name, man["coco"]["image_ids"])
        assert [got[k] for k in NAMES] == csv_values(ref)
    assert "AP50" in stdout and "original" in stdout


@pytest.mark.parametrize("args, needle", [
    (["--probe", "coco-map"], "holds classification targets"),
    (["--probe", "coco-map", "--metric", "accuracy", "--data", "COCO"], "metric 'accuracy' is a classification metric"),
    (["--data", "COCO", "--model", "timm:resnet18"], "holds detection targets; use a detection model with a detection probe"),
    (["--data", "coco:/nonexistent/images:/x.json", "--probe", "coco-map"], "COCO image folder not found"),
    (["--data", "coco:justone", "--probe", "coco-map"], "coco:IMAGES_DIR:ANNOTATIONS.json"),
    (["--probe", "coco-map", "--data", "COCO", "--probe-opt", "backend=fast"], "backend"),
    (["--probe", "coco-map", "--data", "COCO", "--probe-opt", "score_threshold=2"], "score_threshold"),
    (["--probe", "coco-map", "--data", "COCO", "--model", "BAD:bad_output"], "a detector must return a list"),
    (["--probe", "coco-map", "--data", "COCO", "--model", "BAD:bad_output", "--model-arg", "kind='keys'"], "bbox"),
    (["--probe", "coco-map", "--data", "COCO", "--model", "BAD:bad_output", "--model-arg", "kind='raises'"], "my detector broke"),
    (["--probe", "coco-map", "--data", "COCO", "--model", "BAD:bad_output", "--checkpoint", "CKPT"], "plain callable"),
    (["--probe", "lfc-hfc", "--model", "torchvision:retinanet_resnet50_fpn"], "is a detection model"),
])
def test_bad_detection_inputs_are_one_line(cli, tmp_path, coco_mini, args, needle):
    ckpt = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1)}, ckpt)
    subst = {"COCO": coco_mini["spec"], "BAD:bad_output": f"{FIX / 'gt_detector.py'}:bad_output", "CKPT": str(ckpt)}
    full = [subst.get(a, a) for a in args]
    if "--model" not in full:
        full = ["--model", f"{FIX / 'gt_detector.py'}:bad_output", *full]
    out = tmp_path / "out"
    rc, _, err = cli("run", *full, "--limit", "2", "--out", out)
    assert rc == 2, err
    assert "Traceback" not in err and needle in err, err
    assert not out.exists()


def test_contract_warnings(cli, tmp_path, coco_mini):
    model = f"{FIX / 'gt_detector.py'}:bad_output"
    rc, _, err = cli("run", "--model", model, "--model-arg", "kind='positions'", "--probe", "coco-map", "--data", coco_mini["spec"],
                     "--limit", "2", "--out", tmp_path / "a", "--probe-opt", "panels=0", "-q")
    assert rc == 0, err
    assert "not category ids" in err
    rc, _, err = cli("run", "--model", model, "--model-arg", "kind='normalised'", "--probe", "coco-map", "--data", coco_mini["spec"],
                     "--limit", "2", "--out", tmp_path / "b", "--probe-opt", "panels=0", "-q")
    assert rc == 0, err
    assert "look normalised" in err


def coco_context(pm, model: str, data: str, **values):
    """The checked :class:`RunContext` of a coco-map run (what ``freqprobe run`` builds before evaluating) and its probe."""
    from freqprobe import Services
    from freqprobe.runner import build_context, plan, run_config

    config = run_config(pm, {"model": model, "probe": "coco-map", "data": data, "device": "cpu", **values})
    p = plan(config, pm, check_out=False)
    return build_context(p, pm, Services(pm=pm)), p.probe


def test_metric_state_merges_across_shards(coco_mini, fastestdet, coco_pm):
    """Two shards' states merge into the single-process result (what a torchrun rank 0 does), in either order."""
    from freqprobe.engine import run_loop, summarize

    ctx, probe = coco_context(coco_pm, fastestdet, coco_mini["spec"], limit=20, batch_size=4, probe_options={"panels": 0})
    whole = probe.run(ctx)
    key = lambda r: (r["variant"], r["param"], r["metric"])  # noqa: E731
    for order in ((0, 1), (1, 0)):
        states = []
        for rank in order:
            sub = ctx.replace(config=ctx.config.replace(shard=(rank, 2)))
            states.append(run_loop(sub, probe.sources(sub), evaluators=probe.evaluators(sub)))
        assert len(states[0].metrics) == 3 and all(m.name == "coco-map" for m in states[0].metrics)
        states[0].merge(states[1])
        assert states[0].n == 20
        merged = summarize(ctx, states[0], probe.sources(ctx), probe="coco-map")
        probe.derive(merged, ctx)
        assert sorted((key(r), r["value"]) for r in merged.summary) == sorted((key(r), r["value"]) for r in whole.summary)
        np.testing.assert_array_equal(np.sort(merged.samples.column("image_id")), np.sort(whole.samples.column("image_id")))
        assert merged.extras["coco"] == whole.extras["coco"]
        assert list(merged.extras["detections"]) == list(whole.extras["detections"]) == whole.variants
        for v, rows in whole.extras["detections"].items():
            assert len(rows), v
            np.testing.assert_array_equal(merged.extras["detections"][v], rows)


def _fake_detections(targets, rng) -> list[dict]:
    """Per image: its objects' boxes, jittered, with random scores and some labels wrong, and a few spurious boxes."""
    out = []
    for t in targets:
        b = t["boxes"].double()
        k = len(b) + 2
        boxes = torch.cat([b + torch.from_numpy(rng.normal(0, 4, b.shape)), torch.tensor([[0.0, 0, 50, 40], [10, 10, 90, 60]], dtype=torch.float64)])
        labels = torch.cat([t["labels"], torch.tensor([1, 3])])
        labels[torch.from_numpy(rng.random(k) < 0.2)] = 1
        out.append({"boxes": boxes.float(), "scores": torch.from_numpy(rng.random(k)).float(), "labels": labels.long()})
    return out


def test_metric_state_split_in_two_and_merged_equals_one_pass(coco_mini):
    """The coco-map metric through the evaluator contract: two halves merged (an instance, or its state_dict as the
    journal and torchrun ship it, in either order) equal one pass: the same stats, detections and extras."""
    import pickle
    from types import SimpleNamespace

    from freqprobe import Variant
    from freqprobe_coco.data import CocoDataSource
    from freqprobe_coco.metric import CocoMap

    data = CocoDataSource(coco_mini["spec"].partition(":")[2])
    ctx = SimpleNamespace(data=data, options={"backend": "pycocotools"}, device=torch.device("cpu"))
    rng = np.random.default_rng(0)
    batches = [(_fake_detections(b.targets, rng), b.targets) for b in data.batches(3, limit=15)]
    variant = Variant("low", 128.0)

    def metric(part) -> CocoMap:
        m = CocoMap(ctx)
        m.variant = variant
        m.reset()
        for outputs, targets in part:
            m.update(outputs, targets)
        return m

    whole = metric(batches)
    want, want_rows = whole.results(), whole.results_array()
    assert list(want) == NAMES and 0 < want["AP50"] < 1 and len(want_rows) > 15
    assert list(whole.extras()) == ["detections"] and list(whole.extras()["detections"]) == [variant]
    np.testing.assert_array_equal(whole.extras()["detections"][variant], want_rows)
    first, second = batches[:2], batches[2:]
    for how in ("instance", "state_dict", "reversed"):
        a, b = (metric(second), metric(first)) if how == "reversed" else (metric(first), metric(second))
        a.results()  # a cached result must not survive the merge
        a.merge(pickle.loads(pickle.dumps(b.state_dict())) if how == "state_dict" else b)
        assert a.results() == want, how
        np.testing.assert_array_equal(a.results_array(), want_rows)
        assert sorted(a.image_ids) == sorted(whole.image_ids)
    resumed = CocoMap(ctx)  # the journal's round trip: state_dict -> load_state_dict, then the rest of the batches
    resumed.variant = variant
    resumed.reset()
    resumed.results()
    resumed.load_state_dict(pickle.loads(pickle.dumps(metric(first).state_dict())))
    for outputs, targets in second:
        resumed.update(outputs, targets)
    assert resumed.results() == want
    np.testing.assert_array_equal(resumed.results_array(), want_rows)
    resumed.reset()
    assert resumed.state_dict() == {"detections": [], "image_ids": []}


def test_works_with_the_other_first_party_plugins_switched_off(tmp_path, coco_mini):
    """Only coco of the first-party plugins (``-p no:`` for the others, autoload on as installed): a coco-map run
    writes its files, and none of the other plugins' modules is imported."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "FREQPROBE_DISABLE_PLUGIN_AUTOLOAD"}
    out = tmp_path / "only_coco"
    args = ["-p", "no:attacks", "-p", "no:smoothing", "-p", "no:train", "run", "--model", f"{FIX / 'gt_detector.py'}:gt_detector",
            "--model-arg", f"ann='{coco_mini['ann']}'", "--model-arg", f"images='{coco_mini['images']}'", "--model-arg", "limit=4",
            "--probe", "coco-map", "--data", coco_mini["spec"], "--limit", "4", "--device", "cpu", "--out", str(out),
            "--probe-opt", "panels=1", "-q"]
    code = ("import sys; from freqprobe.cli import main; rc = main(sys.argv[1:]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('freqprobe_attacks', 'freqprobe_smoothing', 'freqprobe_train'))); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]", p.stdout
    man = json.loads((out / "manifest.json").read_text())
    assert man["probe"]["provided_by"] == "coco" and man["coco"]["detections_files"]
    assert summary_stats(out)[("original", "")]["AP"] == 1.0
    for name in ("samples.csv", "detections_original.json", "detections_low_r128.json", "figure8_low_worse_r128.csv"):
        assert (out / name).is_file(), name
    assert sorted(q.name for q in (out / "panels").glob("*.png"))
    # and in-process, with only the coco plugin registered: the same files
    import freqprobe

    pm = freqprobe.get_plugin_manager(autoload=False)
    import freqprobe_coco.hooks

    pm.register(freqprobe_coco.hooks, "coco")
    assert {pm.get_name(q) for q in pm.get_plugins()} & {"attacks", "smoothing", "train"} == set()
    freqprobe.run(f"{FIX / 'gt_detector.py'}:gt_detector", pm=pm, probe="coco-map", data=coco_mini["spec"], limit=4,
                  device="cpu", out=tmp_path / "api", probe_options={"panels": 1},
                  model_args={"ann": str(coco_mini["ann"]), "images": str(coco_mini["images"]), "limit": 4})
    for name in ("summary.csv", "samples.csv", "detections_original.json", "detections_low_r128.json",
                 "figure8_low_worse_r128.csv", "figure9_low_better_r128.csv"):
        assert (tmp_path / "api" / name).read_bytes() == (out / name).read_bytes(), name


def test_report_shows_the_panels(cli, tmp_path, coco_mini):
    """``freqprobe report`` on a coco-map run: the probe's section with the Figure 8/9 panels (the plugin's
    ``report_folder``); the core alone shows the run without them."""
    import freqprobe

    out = tmp_path / "run"
    rc, _, err = cli("run", "--model", f"{FIX / 'gt_detector.py'}:gt_detector", "--model-arg", f"ann='{coco_mini['ann']}'",
                     "--model-arg", f"images='{coco_mini['images']}'", "--model-arg", "limit=8", "--probe", "coco-map",
                     "--data", coco_mini["spec"], "--limit", "8", "--out", out, "--probe-opt", "panels=8", "-q")
    assert rc == 0, err
    panels = sorted((out / "panels").glob("*.png"))
    assert len(panels) > 6  # more than the report keeps
    rc, _, err = cli("report", out, "--out", tmp_path / "report.html")
    assert rc == 0, err
    page = (tmp_path / "report.html").read_text()
    from freqprobe.plugin import Report

    caption = "<figcaption class=meta>{}</figcaption>".format
    natural = sorted((q.name for q in panels), key=lambda q: Report.natural(Path(q)))
    at = [page.find(caption(name)) for name in natural]
    assert all(i > 0 for i in at[:6]) and at[:6] == sorted(at[:6])  # the first six in natural order
    assert all(i == -1 for i in at[6:])
    assert "accuracy.png" in page and "AP50" in page
    from freqprobe.report import build_report

    core_only = build_report([out], pm=freqprobe.get_plugin_manager(autoload=False))
    assert "accuracy.png" in core_only and not any(q.name in core_only for q in panels)


def test_stop_and_resume_gives_the_same_files(tmp_path, coco_mini, coco_pm, monkeypatch):
    """A coco-map run stopped mid-way (SIGINT at a batch boundary) resumes to the same summary, samples and detections."""
    import freqprobe
    from freqprobe import StopRequested
    from freqprobe.journal import clear_stop

    model = f"{FIX / 'gt_detector.py'}:gt_detector"
    kw = dict(probe="coco-map", data=coco_mini["spec"], limit=12, batch_size=4, device="cpu", probe_options={"panels": 0},
              pm=coco_pm)
    margs = {"ann": str(coco_mini["ann"]), "images": str(coco_mini["images"]), "limit": 12}
    freqprobe.run(model, out=tmp_path / "ref", model_args=margs, **kw)
    monkeypatch.setenv("GT_DETECTOR_STOP_AT_CALL", "5")  # call 1 checks the data; call 5: batch 2
    with pytest.raises(StopRequested, match=r"stopped after 8 of 12 samples"):
        freqprobe.run(model, out=tmp_path / "out", model_args=margs, **kw)
    clear_stop()
    monkeypatch.delenv("GT_DETECTOR_STOP_AT_CALL")
    assert not (tmp_path / "out").exists()
    freqprobe.run(model, out=tmp_path / "out", model_args=margs, resume=True, **kw)
    for name in ("summary.csv", "samples.csv", "detections_original.json", "detections_low_r128.json",
                 "figure9_low_better_r128.csv", "figure8_low_worse_r128.csv"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


def test_torchvision_detector_checkpoint(cli, tmp_path, coco_mini):
    """--checkpoint on a torchvision detector: the weights are loaded (and recorded), the detections are the model's."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model("ssdlite320_mobilenet_v3_large", weights=None, weights_backbone=None,
                                         score_thresh=0.0, detections_per_img=10).eval()
    ckpt = tmp_path / "ssd.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "ssd"
    rc, _, err = cli("run", "--model", "torchvision:ssdlite320_mobilenet_v3_large", "--checkpoint", ckpt,
                     "--model-arg", "score_thresh=0.0", "--model-arg", "detections_per_img=10", "--probe", "coco-map",
                     "--data", coco_mini["spec"], "--limit", "2", "--out", out, "--probe-opt", "panels=0", "-q")
    assert rc == 0, err
    assert "random weights" not in err
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["has_weights"] and man["model"]["checkpoint_kind"] and man["model"]["task"] == "detection"
    from freqprobe_coco.data import CocoDataSource

    data = CocoDataSource(coco_mini["spec"].partition(":")[2])
    with torch.inference_mode():
        want = model([data.read_image(i) for i in data.image_ids[:2]])
    dets = json.loads((out / "detections_original.json").read_text())
    got = np.array([d["score"] for d in dets])
    np.testing.assert_allclose(got, torch.cat([w["scores"] for w in want]).numpy(), rtol=1e-5)
