#!/usr/bin/env python
"""How close a probe comes to the bare forward passes it needs (issue: "a probe as fast as its bare forward passes").

The workload is the paper's lfc-hfc experiment: ResNet-20 (tests/fixtures/cifar_resnet.py with the
akamaster checkpoint from the shared data) on the first N images of the CIFAR-10 test file, the
original images and the low and high parts at radii 4, 8, 12, 16: 9 variants, 9·N forward passes.

(a) The floor: the same 9·N images, decomposed beforehand (not timed) and stored in the memory
    format of the setting, fed through the adapter's forward (normalisation included) under
    ``torch.inference_mode`` at several batch sizes, contiguous and channels_last. Each setting is
    warmed up, then timed ``--repeats`` times (CUDA synchronised); its median counts. The floor is
    the fastest setting.
(b) The probe: ``lfc-hfc`` through freqprobe's evaluation loop as ``freqprobe run`` drives it
    (decomposition, inference, bookkeeping, per-sample rows streamed to samples.csv and the
    checkpoints that ``--resume`` needs; ``--no-journal`` leaves those two out); data loading, process start-up and writing files excluded: the loop's
    ``evaluate_s`` is its wall time minus the time spent waiting for the data source), ``--repeats``
    times, median. Beside it, end to end: the loop's whole wall time, the wait for data included
    (``evaluate_s + data_s``; an image folder of JPEGs: benchmarks/bench_e2e.py). Its predictions are
    checked against (a)'s (the same model on the same images).
(c) Optionally (``--precisions fp32,bf16``) the probe in other precisions: accuracy and time.

Target: probe / floor <= 1.2.

Usage: .venv/bin/python benchmarks/bench_probe.py [--device cpu|cuda] [--n 2000] [--repeats 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))
import freqprobe  # noqa: E402
from _common import cpu_model, sync  # noqa: E402
from freqprobe import runner  # noqa: E402
from freqprobe.engine import precision_context  # noqa: E402
from freqprobe.journal import RunJournal, workspace  # noqa: E402
from freqprobe.probing import Services  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
MODEL = f"{ROOT / 'tests' / 'fixtures' / 'cifar_resnet.py'}:resnet20"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TARGET = 1.2






def variant_images(x: torch.Tensor, radii: list, dev: torch.device) -> tuple[torch.Tensor, list[str]]:
    """(9·N, C, H, W) on ``dev``: original, then low/high per radius (as the probe orders them)."""
    dec = freqprobe.get_decomposer("fft-radial")
    parts, names = [x], ["original"]
    for r, p in dec.decompose_all(x, radii):
        parts += [p["low"].clone(), p["high"].clone()]
        names += [f"low@{r:g}", f"high@{r:g}"]
    return torch.cat(parts).to(dev), names


def bare(adapter, imgs: torch.Tensor, bs: int, channels_last: bool, precision: str, repeats: int, dev) -> dict:
    module = adapter.module
    module.eval()
    module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    src = imgs.contiguous(memory_format=torch.channels_last) if channels_last else imgs.contiguous()
    preds = torch.empty(len(src), dtype=torch.int64, device=dev)

    def one_pass():
        for s in range(0, len(src), bs):
            preds[s:s + bs] = module(adapter.normalize(src[s:s + bs])).argmax(-1)

    times = []
    with torch.inference_mode(), precision_context(dev, precision):
        old = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = dev.type == "cuda"
        try:
            one_pass()  # warm-up: kernels, allocator, cudnn autotuning
            sync(dev)
            for _ in range(repeats):
                t = time.perf_counter()
                one_pass()
                sync(dev)
                times.append(time.perf_counter() - t)
        finally:
            torch.backends.cudnn.benchmark = old
    module.to(memory_format=torch.contiguous_format)
    return {"batch": bs, "channels_last": channels_last, "times_s": times, "median_s": statistics.median(times),
            "preds": preds.cpu().numpy()}


def probe(npz: Path, n: int, radii: str, dev: str, bs: int, precision: str, repeats: int, fb: int | None,
          journal: bool = True) -> dict:
    pm = freqprobe.get_plugin_manager(autoload=False)
    times, walls, res = [], [], None
    for i in range(repeats + 1):  # the first run warms up
        with tempfile.TemporaryDirectory() as tmp:
            config = runner.run_config(pm, {"model": MODEL, "data": f"npz:{npz}", "checkpoint": str(CKPT), "mean": MEAN,
                                            "std": STD, "params": radii, "limit": n, "device": dev, "batch_size": bs,
                                            "precision": precision, "forward_batch": fb, "out": Path(tmp) / "o"})
            p = runner.plan(config, pm)
            ctx = runner.build_context(p, pm, Services(pm=pm))
            if journal:  # as `freqprobe run` does: per-sample rows streamed to disk, checkpoints for --resume
                with workspace(p.out_dir, kind="run") as ws:
                    ws.bind(runner.fingerprint(config, ctx))
                    j = RunJournal(ws)
                    _, res = runner.evaluate_stage(ctx.replace(journal=j), p)
                    j.close()
            else:
                _, res = runner.evaluate_stage(ctx, p)
        if i:
            times.append(res.extras["timings"]["evaluate_s"])
            walls.append(res.extras["timings"]["evaluate_s"] + res.extras["timings"]["data_s"])  # end to end: data wait too
    acc = {f"{r['variant']}{'' if r['param'] is None else '@' + format(r['param'], 'g')}": r["value"] for r in res.summary}
    return {"batch": bs, "forward_batch": fb, "precision": precision, "times_s": times, "median_s": statistics.median(times),
            "e2e_times_s": walls, "e2e_median_s": statistics.median(walls),
            "timings_last": res.extras["timings"], "engine": res.extras["engine"], "accuracy": acc,
            "preds": {k: res.samples.column("pred", variant=v.name, param=v.param)
                      for k, v in zip(acc, res.variants)}}


def main(argv=None) -> int:
    global CKPT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help=f"shared test data (default {DEFAULT_DATA})")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=None, help="images (default 2000 on CPU, 10000 on CUDA)")
    ap.add_argument("--radii", default="4,8,12,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bare-batches", default=None, help="batch sizes for the floor (default 64,128,256 on CPU; 128,512,1024,2048 on CUDA)")
    ap.add_argument("--probe-batch", type=int, default=128, help="the probe's --batch-size (default 128, the CLI default)")
    ap.add_argument("--forward-batch", type=int, default=None, help="the probe's --forward-batch (default: the engine's)")
    ap.add_argument("--precisions", default="fp32", help="comma list, e.g. fp32,bf16 (the floor is measured per precision)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-journal", action="store_true", help="evaluate without streaming samples.csv and checkpoints (the Python API's ctx.evaluate)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)

    dev = runner.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (10000 if dev.type == "cuda" else 2000)
    bare_batches = [int(b) for b in (args.bare_batches or ("128,512,1024,2048" if dev.type == "cuda" else "64,128,256")).split(",")]
    CKPT = args.data_dir / "cifar10_resnet_akamaster" / "resnet20-12fca82f.th"
    npz = args.data_dir / "cifar10_test" / "cifar10_test_jpeg_q75.npz"
    if not (CKPT.exists() and npz.exists()):
        print(f"missing {CKPT} or {npz}; pass --data-dir", file=sys.stderr)
        return 2
    radii = [float(r) for r in args.radii.split(",")]
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": cpu_model(), "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "n": n}
    print(f"probe vs bare forwards: ResNet-20, {n} CIFAR-10 test images (JPEG q75 file) x {1 + 2 * len(radii)} variants; "
          f"torch {env['torch']}, {env['threads']} threads, {env['cpu']}, device {env['device']}")
    with np.load(npz) as d:
        x = torch.from_numpy(d["x"][:n]).permute(0, 3, 1, 2).float().div(255).contiguous()
    adapter = freqprobe.build_model(MODEL, checkpoint=CKPT, mean=MEAN, std=STD, num_classes=10)
    adapter.to(dev)
    imgs, names = variant_images(x, radii, dev)
    results = {"env": env, "args": {k: str(v) for k, v in vars(args).items()}, "precisions": {}}
    worst = 0.0
    for precision in args.precisions.split(","):
        print(f"\n[{precision}] (a) bare forwards over {len(imgs)} images (median of {args.repeats}):")
        rows = []
        for bs in bare_batches:
            for cl in (False, True):
                r = bare(adapter, imgs, bs, cl, precision, args.repeats, dev)
                rows.append(r)
                print(f"    batch {bs:>5}, {'channels_last' if cl else 'contiguous   '}: {r['median_s']:.3f} s "
                      f"({len(imgs) / r['median_s']:,.0f} img/s)", flush=True)
        best = min(rows, key=lambda r: r["median_s"])
        print(f"  floor: {best['median_s']:.3f} s (batch {best['batch']}, {'channels_last' if best['channels_last'] else 'contiguous'})")
        print(f"[{precision}] (b) lfc-hfc probe (batch {args.probe_batch}) ...", flush=True)
        pr = probe(npz, n, args.radii, str(dev), args.probe_batch, precision, args.repeats, args.forward_batch,
                   journal=not args.no_journal)
        ratio = pr["median_s"] / best["median_s"]
        worst = max(worst, ratio)
        t = pr["timings_last"]
        print(f"  probe: {pr['median_s']:.3f} s (decompose {t['decompose_s']:.3f}, inference {t['inference_s']:.3f}, "
              f"bookkeeping {t['bookkeeping_s']:.3f}, data loading excluded {t['data_s']:.3f}); engine {pr['engine']}")
        # the probe's predictions are the bare forwards' (same model, same images)
        agree = {}
        for i, name in enumerate(names):
            bp = best["preds"][i * n:(i + 1) * n]
            agree[name] = float(np.mean(bp == pr["preds"][name]))
        print(f"  predictions equal to the floor's: min {min(agree.values()):.4f} over variants")
        print("  accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in pr["accuracy"].items()))
        print(f"  ratio probe / floor = {ratio:.2f}  (target <= {TARGET}: {'PASS' if ratio <= TARGET else 'FAIL'})")
        e2e = pr["e2e_median_s"] / best["median_s"]
        print(f"  end to end (the loop's wall time, waiting for data included: {pr['e2e_median_s']:.3f} s) / floor = {e2e:.2f}")
        results["precisions"][precision] = {
            "bare": [{k: v for k, v in r.items() if k != "preds"} for r in rows],
            "floor": {k: v for k, v in best.items() if k != "preds"},
            "probe": {k: v for k, v in pr.items() if k != "preds"},
            "ratio": ratio,
            "ratio_e2e": e2e,
            "prediction_agreement": agree,
        }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
