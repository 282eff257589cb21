#!/usr/bin/env python
"""``--probe fourier-heatmap`` against the bare forwards it needs.

Workload: the akamaster CIFAR-10 ResNet-20 (``tests/fixtures/cifar_resnet.py:resnet20``, its checkpoint from
``--data-dir``) on the first ``--n`` images of the shared CIFAR-10 test file, ``--eps`` budgets, every
frequency of the 32×32 spectrum (514 mirror pairs) unless ``--max-freq``.

(a) The bare rate: the run's batches of perturbed images (built beforehand, on the device) through the
    adapter, warmed up, CUDA-synchronised: images/s.
(b) The probe as ``freqprobe.run`` runs it (decoding, the perturbations, the forwards, the maps and their
    files): forwards/s = (1 + frequencies × budgets) · N / wall time, and its ratio to (a).

Usage:
  .venv/bin/python benchmarks/bench_heatmap.py --device cuda --n 1000 --json heatmap.json
  .venv/bin/python benchmarks/bench_heatmap.py --device cpu --n 20 --max-freq 4     # a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
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
from _common import cpu_model  # noqa: E402
from bench_probe import bare  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
MEAN, STD = "0.485,0.456,0.406", "0.229,0.224,0.225"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--eps", default="4")
    ap.add_argument("--max-freq", type=float, default=None)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16", "fp16"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    dev = torch.device(args.device)
    src = args.data_dir / "cifar10_test" / "cifar10_test_jpeg_q75.npz"
    ckpt = args.data_dir / "cifar10_resnet_akamaster" / "resnet20-12fca82f.th"
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()
    print(f"fourier-heatmap, resnet20 on {dev} ({name}), torch {torch.__version__}, {args.precision}, {args.n} images, "
          f"eps {args.eps}, max-freq {args.max_freq or 'all'}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with np.load(src) as d:
            np.savez(tmp / "cifar.npz", x=d["x"][: args.n], y=d["y"][: args.n])
        model = f"{ROOT / 'tests' / 'fixtures' / 'cifar_resnet.py'}:resnet20"
        opts = {"eps": args.eps, **({"max_freq": args.max_freq} if args.max_freq else {})}
        t = time.perf_counter()
        result = freqprobe.run(model, checkpoint=str(ckpt), data=f"npz:{tmp / 'cifar.npz'}", mean=MEAN, std=STD,
                               probe="fourier-heatmap", probe_options=opts, device=str(dev), precision=args.precision,
                               out=tmp / "run")
        wall = time.perf_counter() - t
        engine = result.extras.get("engine") or {}
        hm = result.extras["fourier_heatmap"]
        cells = sum(len(m) for m in hm["maps"].values())
        forwards = (1 + cells) * args.n
        # (a) the bare model as bench_probe.py times it, in the engine's forward batch (CPU: 128 CIFAR images)
        adapter = freqprobe.build_model(model, checkpoint=str(ckpt), mean=MEAN, std=STD).to(dev)
        imgs = torch.rand(min(forwards, 4096), 3, 32, 32, device=dev)
        got = bare(adapter, imgs, 128 if dev.type == "cpu" else 4096, dev.type == "cuda", args.precision, 3, dev)
        bare_rate = len(imgs) / got["median_s"]
    rate = forwards / wall
    errs = [r["value"] for r in result.summary if r.get("variant") == "heatmap" and r.get("param") == "all"]
    print(f"(a) bare forwards: {bare_rate:.0f} images/s")
    print(f"(b) fourier-heatmap: {cells} frequencies x budgets, {forwards} forwards in {wall:.1f} s = {rate:.0f} forwards/s "
          f"({rate / bare_rate:.2f} x the bare rate); mean error {', '.join(f'{e:.3f}' for e in errs)}")
    out = {"device": str(dev), "device_name": name, "torch": torch.__version__, "python": platform.python_version(),
           "n": args.n, "eps": args.eps, "max_freq": args.max_freq, "precision": args.precision, "frequencies": cells,
           "forwards": forwards, "wall_s": wall, "forwards_per_s": rate, "bare_images_per_s": bare_rate, "ratio": rate / bare_rate,
           "mean_error": errs, "engine": engine}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
