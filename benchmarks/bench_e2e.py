#!/usr/bin/env python
"""A probe timed end to end on an image folder of JPEGs: decoding, waiting for data and the forwards together.

The workload is what users run next after CIFAR: an ImageNet-style folder of JPEGs (made on the
spot by benchmarks/_jpegs.py: ``--images`` crops of the shared COCO images at 500×375, quality 90,
10 class folders), read by ``imagefolder:`` with ``--image-size`` (resize + centre crop), through
the ``lfc-hfc`` probe (the original and low/high at radii 4, 8, 12, 16: 9 variants).

(a) Decoding alone: the folder read with :func:`freqprobe.plugin.iter_batches` (decode, resize,
    crop, to a float tensor) with each ``--workers`` count; images per second.
(b) The bare forwards: the model over 9 variants of a sample of decoded images (decomposed
    beforehand), in the run's precision and memory format; scaled to the whole folder.
(c) The probe, as ``freqprobe run`` drives it, with each ``--workers`` count: the loop's wall
    time with its wait for data (``evaluate_s + data_s`` of the manifest), the whole call's, and
    ``summary.csv`` / ``samples.csv`` compared byte for byte across the worker counts.

Target: (c) with the largest worker count within 1.2× the larger of (b) and (a) with that count.
The model: ``pool`` (a model that costs next to nothing: average pooling and a linear layer, so the
run measures the data path), or any ``--model`` spec (``timm:resnet50``), with random weights and
10 outputs. ``--imagenet-projection`` prints the minutes for ImageNet-val's 50,000 images.

Usage: .venv/bin/python benchmarks/bench_e2e.py [--images 1200] [--workers 0,1,2] [--model pool] [--json OUT]
       .venv/bin/python benchmarks/bench_e2e.py --device cuda --model timm:resnet50 --precision bf16 --images 5000 --workers 0,1,8
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import freqprobe  # noqa: E402
from _common import cpu_model, finish, loadavg  # noqa: E402
from _jpegs import make_jpeg_folder  # noqa: E402
from bench_probe import bare, variant_images  # noqa: E402
from freqprobe.engine import CPU_FORWARD_BYTES  # noqa: E402
from freqprobe.plugin import iter_batches, resolve_device  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
TARGET = 1.2
IMAGENET_VAL = 50_000
MEAN, STD = "0.485,0.456,0.406", "0.229,0.224,0.225"


class Pool(torch.nn.Module):
    """A classifier that costs next to nothing: 4×4 average pooling and a linear layer."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.fc = torch.nn.Linear(48, num_classes)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


def model_for(spec: str):
    return Pool() if spec == "pool" else spec


def decode_rate(data, batch_size: int, workers: int, limit: int | None = None) -> dict:
    t = time.perf_counter()
    n = 0
    for b in iter_batches(data, batch_size, limit=limit, workers=workers):
        n += len(b.indices)
    s = time.perf_counter() - t
    return {"workers": workers, "images": n, "seconds": s, "img_s": n / s}


def bare_forwards(spec: str, data, radii: list, batch_size: int, precision: str, dev: torch.device, sample: int,
                  repeats: int) -> dict:
    """Seconds per source image (9 variants) of the model's forwards alone, timed on ``sample`` images."""
    adapter = freqprobe.build_model(model_for(spec), mean=MEAN, std=STD, num_classes=10)
    adapter.to(dev)
    x = next(iter_batches(data, sample, workers=0)).images
    imgs, names = variant_images(x, radii, dev)  # bench_probe.py's floor, at the loop's CPU forward size
    fb = batch_size * len(names)  # the loop's stacked forward: a batch's variants at once
    if dev.type == "cpu":  # the engine's CPU choice: a batch, at most CPU_FORWARD_BYTES of input
        fb = min(batch_size, max(1, CPU_FORWARD_BYTES // (x[0].numel() * x.element_size())))
    r = bare(adapter, imgs, fb, True, precision, repeats, dev)  # channels_last, warmed up, median of ``repeats``
    return {"sample": len(x), "variants": len(names), "forward_batch": fb, "times_s": r["times_s"],
            "per_image_s": r["median_s"] / len(x)}


def probe(spec: str, folder: Path, size: int, radii: str, batch_size: int, precision: str, dev: str, workers: int,
          out: Path, limit: int | None = None) -> dict:
    t = time.perf_counter()
    res = freqprobe.run(model_for(spec), data=f"imagefolder:{folder}", image_size=size, params=radii, batch_size=batch_size,
                        limit=limit,
                        precision=precision, device=dev, workers=workers, fit=False, mean=MEAN, std=STD,
                        model_args={} if spec == "pool" else {"num_classes": 10}, out=out)
    call = time.perf_counter() - t
    tm = res.extras["timings"]
    n = res.summary[0]["n"]
    loop = tm["evaluate_s"] + tm["data_s"]
    return {"workers": workers, "wall_s": loop, "data_wait_s": tm["data_s"], "call_s": call, "img_s": n / loop, "n": n,
            "engine_workers": res.extras["engine"]["workers"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help=f"shared test data, for the COCO photographs (default {DEFAULT_DATA})")
    ap.add_argument("--folder", type=Path, help="where the JPEG folder is made (default: a temporary folder)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--size", type=int, default=224, help="--image-size of the run (resize + centre crop)")
    ap.add_argument("--model", default="pool", help="pool (next to nothing) or a model spec such as timm:resnet50")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--radii", default="4,8,12,16")
    ap.add_argument("--workers", default="0,1,2", help="comma list of worker counts (the last is 'N')")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1, help="runs per worker count (median)")
    ap.add_argument("--sample", type=int, default=None, help="images the bare forwards are timed on (default: one batch)")
    ap.add_argument("--tiny", action="store_true", help="a dry run: few images, small sizes (CI)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    if args.tiny:
        args.images, args.size, args.batch_size = min(args.images, 48), min(args.size, 64), min(args.batch_size, 8)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    workers = [int(w) for w in args.workers.split(",")]
    radii = [float(r) for r in args.radii.split(",")]
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": cpu_model(), "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "loadavg_start": loadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_jpeg_folder(args.folder or Path(tmp) / "jpegs", args.images, data_dir=args.data_dir)
        data = freqprobe.open_data(f"imagefolder:{folder}", image_size=args.size)
        print(f"end to end: {args.model}, {len(data)} JPEGs (500x375 -> {args.size} px) x {1 + 2 * len(radii)} variants, "
              f"{args.precision}, batch {args.batch_size}; torch {env['torch']}, {env['threads']} threads, {env['cpu']}, "
              f"device {env['device']}, load average {env['loadavg_start']}", flush=True)
        decode = {}
        for w in workers:
            if w == 0:
                continue
            r = decode_rate(data, args.batch_size, w)
            decode[str(w)] = r["img_s"]
            print(f"  (a) decoding alone, {w} worker(s): {r['img_s']:,.0f} img/s ({r['seconds']:.2f} s)", flush=True)
        fw = bare_forwards(args.model, data, radii, args.batch_size, args.precision, dev, args.sample or args.batch_size, 3)
        forward_s = fw["per_image_s"] * len(data)
        print(f"  (b) bare forwards: {forward_s:.2f} s for {len(data)} x {fw['variants']} images "
              f"({1 / fw['per_image_s']:,.0f} source img/s)", flush=True)
        # warm-up (not timed): kernels, FFT plans, the allocator, the page cache of the folder
        probe(args.model, folder, args.size, args.radii, args.batch_size, args.precision, str(dev), 0, Path(tmp) / "warm",
              limit=2 * args.batch_size)
        runs, tables = [], {}
        for w in workers:
            got = []
            for i in range(args.repeats):
                out = Path(tmp) / f"run-w{w}-{i}"
                got.append(probe(args.model, folder, args.size, args.radii, args.batch_size, args.precision, str(dev), w, out))
                tables[w] = [(out / name).read_bytes() for name in ("summary.csv", "samples.csv")]
            best = sorted(got, key=lambda r: r["wall_s"])[len(got) // 2]
            runs.append(best)
            print(f"  (c) probe, --workers {w}: {best['wall_s']:.2f} s loop ({best['data_wait_s']:.2f} s waiting for data), "
                  f"{best['call_s']:.2f} s the whole call, {best['img_s']:,.0f} img/s", flush=True)
    identical = all(tables[w] == tables[workers[0]] for w in workers)
    last = runs[-1]
    n_top = str(workers[-1])
    decode_top = decode.get(n_top)
    floor = max(forward_s, len(data) / decode_top) if decode_top else forward_s
    ratio = last["wall_s"] / floor
    by_w = {r["workers"]: r["wall_s"] for r in runs}
    speedup = by_w[1] / by_w[2] if 1 in by_w and 2 in by_w else None
    projected = IMAGENET_VAL / last["img_s"] / 60
    print(f"  summary.csv and samples.csv byte-identical for --workers {args.workers}: {identical}")
    if speedup is not None:
        print(f"  --workers 2 against --workers 1: {speedup:.2f}x faster")
    print(f"  ratio probe (--workers {n_top}) / max(bare forwards, decoding with {n_top}) = {ratio:.2f} "
          f"(target <= {TARGET}: {'PASS' if ratio <= TARGET else 'FAIL'})")
    print(f"  projected for ImageNet-val's {IMAGENET_VAL:,} images at this rate: {projected:.1f} min")
    res = {"env": env, "args": {k: str(v) for k, v in vars(args).items()}, "images": len(data),
           "decode_img_s": decode, "bare": fw, "forward_s": forward_s, "runs": runs, "identical": identical,
           "speedup_2_vs_1": speedup, "ratio_e2e": ratio, "target_e2e": TARGET, "projected_imagenet_val_min": projected}
    return finish(res, env, args.json, identical and ratio <= TARGET)


if __name__ == "__main__":
    sys.exit(main())
