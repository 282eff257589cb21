#!/usr/bin/env python
"""COCO detection scoring in the freqprobe-coco plugin: pycocotools against faster-coco-eval plus
freqprobe's vectorised per-image matching (freqprobe_coco.cocoeval / freqprobe_coco.match).

The workload is synthetic and seeded: ``--images`` images (default 5,000) of 640×480 with a Poisson(7)
number of ground-truth boxes each over 80 categories, sides log-uniform in 6–400 px (so all of COCO's
small / medium / large ranges are populated), 1 % crowd boxes; ``--dets`` detections per image (default
100): one to three jittered copies of each gt (10 % with a wrong label; scores uniform in 0.3–1) topped
up with random boxes (scores uniform in 0–0.7). Timed side by side in one run, each ``--repeat`` times (median reported):

  (a) ``coco_stats(backend="pycocotools")``: loadRes + evaluate + accumulate + summarize, the 12 stats;
  (b) ``coco_stats(backend="faster-coco-eval")``: the same through the C++ evaluator (its ground-truth
      twin is built on the first call and cached; that first call is reported separately as "cold");
  (c) ``match_images`` at IoU 0.5: per-image TP / FP / FN at score threshold 0.5 and at 0.0 (both calls).

Printed: seconds for each, the speed-up of (b) + (c) over (a), and whether the 12 stats of (a) and (b)
are identical (the script exits 1 if they are not). Without faster-coco-eval only (a) and (c) run.

Usage: .venv/bin/python benchmarks/bench_coco_eval.py [--images 5000] [--dets 100] [--repeat 1]
       [--seed 0] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import freqprobe_coco  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "plugins" / "freqprobe-coco"))
try:
    import freqprobe  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))
from _common import cpu_model, finish, loadavg  # noqa: E402
from freqprobe_coco.cocoeval import METRIC_NAMES, available_backends, coco_stats  # noqa: E402
from freqprobe_coco.match import match_images  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

N_CATEGORIES = 80
WIDTH, HEIGHT = 640, 480


def synthetic(n_images: int, n_dets: int, seed: int) -> tuple[COCO, np.ndarray, list, list]:
    """(pycocotools gt, loadRes K×7 results, match_images dets, match_images gts), all from one seed."""
    rng = np.random.default_rng(seed)
    cats = np.arange(1, N_CATEGORIES + 1)
    images, anns, results, dets, gts = [], [], [], [], []
    for img_id in range(1, n_images + 1):
        images.append({"id": img_id, "width": WIDTH, "height": HEIGHT, "file_name": f"{img_id:012d}.jpg"})
        n = int(rng.poisson(7))
        side = np.exp(rng.uniform(np.log(6), np.log(400), n))
        wh = np.stack([side * rng.uniform(0.6, 1.5, n), side * rng.uniform(0.6, 1.5, n)], 1).clip(2, [WIDTH, HEIGHT])
        xy = rng.uniform(0, 1, (n, 2)) * ([WIDTH, HEIGHT] - wh)
        labels = rng.choice(cats, n)
        crowd = rng.random(n) < 0.01
        fields = zip(np.concatenate([xy, wh], 1).tolist(), (wh[:, 0] * wh[:, 1]).tolist(), labels.tolist(), crowd.tolist())
        for b, area, lab, c in fields:
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": lab, "bbox": b, "area": area, "iscrowd": int(c)})
        gts.append((np.concatenate([xy, xy + wh], 1), labels, crowd))

        src = np.repeat(np.arange(n), rng.integers(1, 4, n))[:n_dets]
        j = rng.normal(0, 0.1, (len(src), 4)) * np.tile(wh[src], 2)
        d_xy, d_wh = xy[src] + j[:, :2], np.maximum(wh[src] + j[:, 2:], 1.0)
        d_lab = np.where(rng.random(len(src)) < 0.1, rng.choice(cats, len(src)), labels[src])
        k = n_dets - len(src)
        r_wh = np.exp(rng.uniform(np.log(6), np.log(300), (k, 2)))
        r_xy = rng.uniform(0, 1, (k, 2)) * np.maximum([WIDTH, HEIGHT] - r_wh, 1)
        box_xywh = np.concatenate([np.concatenate([d_xy, d_wh], 1), np.concatenate([r_xy, r_wh], 1)])
        d_labels = np.concatenate([d_lab, rng.choice(cats, k)]).astype(np.int64)
        scores = np.concatenate([rng.uniform(0.3, 1.0, len(src)), rng.uniform(0.0, 0.7, k)])
        results.append(np.column_stack([np.full(n_dets, img_id), box_xywh, scores, d_labels]))
        # x2 = x + w as pycocotools computes it, so both sides see the same boxes
        dets.append((np.concatenate([box_xywh[:, :2], box_xywh[:, :2] + box_xywh[:, 2:]], 1), scores, d_labels))
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": int(c), "name": f"c{c}"} for c in cats]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt, np.concatenate(results).astype(np.float64), dets, gts


def timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    """Run ``fn`` ``repeat`` times: (wall seconds of each, the last result)."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100, help="detections per image")
    ap.add_argument("--repeat", type=int, default=1, help="timed repetitions of each side (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)

    env = {"python": platform.python_version(), "numpy": np.__version__, "pycocotools": version("pycocotools"),
           "faster-coco-eval": version("faster-coco-eval"), "cpu": cpu_model(), "loadavg_start": loadavg()}
    t = time.perf_counter()
    gt, results, dets, gts = synthetic(args.images, args.dets, args.seed)
    setup_s = time.perf_counter() - t
    img_ids = sorted(gt.getImgIds())
    n_gt = len(gt.dataset["annotations"])
    print(f"{args.images} images, {n_gt} gts ({sum(a['iscrowd'] for a in gt.dataset['annotations'])} crowd), "
          f"{len(results)} detections, {N_CATEGORIES} categories (built in {setup_s:.1f} s); python {env['python']}, "
          f"numpy {env['numpy']}, pycocotools {env['pycocotools']}, faster-coco-eval {env['faster-coco-eval']}; "
          f"{env['cpu']}, load {env['loadavg_start']}")

    res: dict[str, Any] = {"env": env, "args": vars(args), "n_gt": n_gt, "n_det": int(len(results))}
    t_slow, slow = timed(lambda: coco_stats(gt, results, img_ids, backend="pycocotools"), args.repeat)
    print(f"  (a) pycocotools: {' '.join(f'{x:.2f}' for x in t_slow)} s", flush=True)
    have_fast = "faster-coco-eval" in available_backends()
    fast = None
    if have_fast:
        t_cold, _ = timed(lambda: coco_stats(gt, results, img_ids, backend="faster-coco-eval"), 1)
        t_fast, fast = timed(lambda: coco_stats(gt, results, img_ids, backend="faster-coco-eval"), args.repeat)
        print(f"  (b) faster-coco-eval: cold {t_cold[0]:.2f} s, warm {' '.join(f'{x:.2f}' for x in t_fast)} s", flush=True)

    def both_thresholds() -> tuple[dict, dict]:
        return (match_images(dets, gts, iou_threshold=0.5, score_threshold=0.5),
                match_images(dets, gts, iou_threshold=0.5, score_threshold=0.0))

    match_images(dets[:50], gts[:50])  # warm-up
    t_match, (m50, m0) = timed(both_thresholds, args.repeat)
    print(f"  (c) match_images (score >= 0.5 and >= 0.0): {' '.join(f'{x:.3f}' for x in t_match)} s", flush=True)

    a, c = statistics.median(t_slow), statistics.median(t_match)
    rows = [("(a) pycocotools coco_stats", a)]
    res["pycocotools"] = {"times_s": t_slow, "median_s": a, "stats": slow}
    if have_fast:
        b = statistics.median(t_fast)
        rows += [("(b) faster-coco-eval coco_stats (cold: builds the gt twin)", t_cold[0]),
                 ("(b) faster-coco-eval coco_stats (warm)", b)]
        res["faster-coco-eval"] = {"cold_s": t_cold[0], "times_s": t_fast, "median_s": b, "stats": fast}
    rows.append(("(c) match_images, IoU 0.5, score >= 0.5 and >= 0.0", c))
    res["match_images"] = {"times_s": t_match, "median_s": c,
                           "score_0.5": {k: int(m50[k].sum()) for k in ("tp", "fp", "fn", "n_det")},
                           "score_0.0": {k: int(m0[k].sum()) for k in ("tp", "fp", "fn", "n_det")}}

    print("\n| what | seconds |")
    print("| --- | --- |")
    for name, sec in rows:
        print(f"| {name} | {sec:.3f} |")
    if have_fast:
        res["speedup_b_plus_c_over_a"] = a / (b + c)
        print(f"\nspeed-up of (b) warm + (c) over (a): {a / (b + c):.1f}x ({a:.2f} s -> {b + c:.2f} s); "
              f"(b) alone {a / b:.1f}x")
    print("\n| metric | pycocotools | faster-coco-eval |")
    print("| --- | --- | --- |")
    for k in METRIC_NAMES:
        print(f"| {k} | {slow[k]:.6f} | {fast[k]:.6f} |" if fast else f"| {k} | {slow[k]:.6f} | - |")
    for thr, m in (("0.5", m50), ("0.0", m0)):
        s = res["match_images"][f"score_{thr}"]
        print(f"match_images score >= {thr}: {s['n_det']} dets, TP {s['tp']}, FP {s['fp']}, FN {s['fn']}, "
              f"recall {s['tp'] / max(int(m['n_gt'].sum()), 1):.4f}")
    ok = True
    if have_fast:
        ok = fast == slow
        res["identical_stats"] = ok
        diff = max(abs(fast[k] - slow[k]) for k in METRIC_NAMES)
        print(f"12 stats identical between backends: {'yes' if ok else f'NO (max |diff| {diff:.3g})'}")
    return finish(res, env, args.json, ok)


if __name__ == "__main__":
    sys.exit(main())
