#!/usr/bin/env python
"""The ``coco-map`` probe against the bare detector forwards it needs (issue: >= 80 % of the bare rate on a GPU).

Workload: a detector (default torchvision ``retinanet_resnet50_fpn_v2`` with random weights: nothing
is downloaded) on COCO images. The 79 real val2017 images of ``../shared/data/coco_val2017_mini``
are cycled to ``--images`` entries (an annotation file written to a temporary folder lists the same
files under new ids, with their annotations), so a 5,000-image run reads real JPEGs of real sizes.

(a) The bare rate: batches of ``--batch-size`` images, decoded and on the device beforehand (not
    timed), through the adapter's ``predict`` (the model resizes them itself, to 800 px for
    RetinaNet unless ``--min-size``), warmed up, then timed with CUDA synchronisation: images/s.
(b) The probe: ``freqprobe.run(..., probe="coco-map")`` as the command line runs it, r = 128: the
    original and the low and high part of every image (3 forwards per image), decoding, the
    decomposition, inference, per-image matching, the COCO evaluation of the three variants and the
    files written (detections JSON, lists, samples.csv). Its rate is forwards/s = 3·N / wall time,
    and the ratio to (a) is the number the issue asks for. The loop's stage times are printed too.

Usage:
  .venv/bin/python benchmarks/bench_coco_probe.py --device cuda --images 5000 [--precision bf16]
  .venv/bin/python benchmarks/bench_coco_probe.py --device cpu --images 16 --min-size 320   # CPU smoke run
  .venv/bin/python benchmarks/bench_coco_probe.py --model detectron2:COCO-Detection/retinanet_R_50_FPN_3x.yaml \
      --device cpu --images 8 --batch-size 2 --bare-batches 4   # detectron2 (the vendored build), CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "plugins" / "freqprobe-coco"))

import freqprobe  # noqa: E402
from _common import cpu_model, sync  # noqa: E402

DEFAULT_MINI = ROOT.parent / "shared" / "data" / "coco_val2017_mini"
TARGET = 0.8


def cycled_annotations(mini: Path, n: int, folder: Path) -> Path:
    """An instances file listing the mini set's images ``n`` times in all (new ids, same files and annotations)."""
    src = json.loads((mini / "instances_val2017_mini.json").read_text())
    images = sorted(src["images"], key=lambda d: d["id"])
    by_image: dict[int, list] = {}
    for a in src["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    out_images, out_anns, aid = [], [], 1
    for k in range(n):
        d = dict(images[k % len(images)])
        old, d["id"] = d["id"], k + 1
        out_images.append(d)
        for a in by_image.get(old, []):
            out_anns.append({**a, "id": aid, "image_id": k + 1})
            aid += 1
    path = folder / f"instances_cycled_{n}.json"
    path.write_text(json.dumps({"images": out_images, "annotations": out_anns, "categories": src["categories"]}))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="torchvision:retinanet_resnet50_fpn_v2")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16", "fp16"])
    ap.add_argument("--min-size", type=int, help="the detector's resize (torchvision min_size, detectron2 "
                    "INPUT.MIN_SIZE_TEST; RetinaNet default 800)")
    ap.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="as freqprobe run's (detectron2: config overrides such as MODEL.RETINANET.SCORE_THRESH_TEST=0.05)")
    ap.add_argument("--bare-batches", type=int, default=30, help="timed batches for the bare rate")
    ap.add_argument("--mini", type=Path, default=DEFAULT_MINI)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    dev = torch.device(args.device)
    from freqprobe.plugin import parse_kv

    model_args = parse_kv(args.model_arg, "--model-arg")
    if args.min_size and args.model.startswith("detectron2:"):
        model_args["INPUT.MIN_SIZE_TEST"] = args.min_size
    elif args.min_size:
        model_args.update(min_size=args.min_size, max_size=max(args.min_size, int(args.min_size * 1333 / 800)))
    print(f"{args.model} on {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else cpu_model()}), "
          f"torch {torch.__version__}, {args.precision}, batch {args.batch_size}, {args.images} images x 3 variants")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ann = cycled_annotations(args.mini, args.images, tmp)
        spec = f"coco:{args.mini / 'val2017'}:{ann}"
        pm = freqprobe.get_plugin_manager(autoload=True)
        data = freqprobe.open_data(spec, pm=pm)
        adapter = freqprobe.build_model(args.model, model_args=model_args, task="detection", pm=pm).to(dev)
        adapter.prepare()

        # (a) bare forwards on images already on the device
        from freqprobe.engine import precision_context

        k = args.batch_size
        batches = [[x.to(dev) for x in data.load(list(range(s, s + k))).images] for s in range(0, min(len(data), 79), k)]
        with precision_context(dev, args.precision):
            for b in batches[:3]:
                adapter.predict(b)
            sync(dev)
            t = time.perf_counter()
            seen = 0
            for i in range(args.bare_batches):
                b = batches[i % len(batches)]
                adapter.predict(b)
                seen += len(b)
            sync(dev)
            bare_s = time.perf_counter() - t
        bare_rate = seen / bare_s
        print(f"(a) bare forwards: {seen} images in {bare_s:.2f} s = {bare_rate:.1f} images/s")

        # (b) the whole probe
        t = time.perf_counter()
        result = freqprobe.run(adapter, probe="coco-map", data=data, device=str(dev), batch_size=k, precision=args.precision,
                               out=tmp / "run", probe_options={"panels": 0}, pm=pm)
        wall = time.perf_counter() - t
        forwards = 3 * len(data)
        rate = forwards / wall
        timings = result.extras.get("timings", {})
        print(f"(b) coco-map probe: {forwards} forwards in {wall:.1f} s = {rate:.1f} forwards/s "
              f"({rate / bare_rate:.2f} x the bare rate; target >= {TARGET})")
        print("    stages: " + ", ".join(f"{k2} {v:.1f}" for k2, v in sorted(timings.items())))
        stats = {(r["variant"], r["param"]): r["value"] for r in result.summary if r["metric"] == "AP"}
        print("    AP: " + ", ".join(f"{v} {'' if p is None else p} {a:.4f}".replace("  ", " ") for (v, p), a in stats.items()))
        out = {"model_args": model_args, "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
               "torch": torch.__version__, "python": platform.python_version(), "model": args.model, "precision": args.precision,
               "batch_size": k, "images": len(data), "bare_images_per_s": bare_rate, "probe_wall_s": wall,
               "probe_forwards_per_s": rate, "ratio": rate / bare_rate, "timings": timings}
        if args.json:
            args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
