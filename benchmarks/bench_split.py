#!/usr/bin/env python
"""freqprobe.decompose(x, "fft-radial", r) with fresh outputs against the plain torch split.

The plain split is what a user would write: ``rfft2``, multiply by the radial mask, ``irfft2``,
subtract (``high = x - low``), fresh tensors each time. freqprobe's call is the public API as a
user calls it (fresh outputs, the checks included). Both produce the same parts (checked: max
|difference| printed). Each is warmed up, then timed ``--repeats`` times; medians compared.

Target (issue "speed where users run it", part 5): freqprobe >= 0.9x the plain split's speed at
2000x3x32x32 (r = 4, 16) and 64x3x224x224 (r = 16, 64).

Usage: .venv/bin/python benchmarks/bench_split.py [--repeats 7] [--device cpu|cuda] [--json OUT]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import freqprobe  # noqa: E402
from _common import cpu_model, finish, loadavg, sync  # noqa: E402

TARGET = 0.9
CASES = [((2000, 3, 32, 32), (4, 16)), ((64, 3, 224, 224), (16, 64))]


def plain_split(x: torch.Tensor, r: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook split: the frequencies with distance < r from the centre of the shifted spectrum are low."""
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device).mul(h)[:, None]
    fx = torch.fft.rfftfreq(w, device=x.device).mul(w)[None, :]
    mask = ((fy * fy + fx * fx) < r * r).to(x.dtype)
    low = torch.fft.irfft2(torch.fft.rfft2(x) * mask, s=(h, w))
    return low, x - low


def timed(fn, repeats: int, dev: torch.device) -> float:
    fn()
    sync(dev)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tiny", action="store_true", help="small batches (a dry run)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": cpu_model(), "device": str(dev), "loadavg_start": loadavg()}
    print(f"fft-radial split, fresh outputs: freqprobe.decompose vs plain torch; torch {env['torch']}, {env['threads']} "
          f"threads, {env['cpu']}, {dev}, load average {env['loadavg_start']}")
    rows, ok = [], True
    for shape, radii in CASES:
        if args.tiny:
            shape = (max(1, shape[0] // 32),) + shape[1:]
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(dev)
        for r in radii:
            ours = timed(lambda x=x, r=r: freqprobe.decompose(x, "fft-radial", r), args.repeats, dev)
            plain = timed(lambda x=x, r=r: plain_split(x, r), args.repeats, dev)
            got, ref = freqprobe.decompose(x, "fft-radial", r), plain_split(x, r)
            diff = max(float((got["low"] - ref[0]).abs().max()), float((got["high"] - ref[1]).abs().max()))
            speed = plain / ours
            ok &= speed >= TARGET
            rows.append({"shape": list(shape), "r": r, "freqprobe_ms": ours * 1e3, "plain_ms": plain * 1e3,
                         "speed_vs_plain": speed, "max_abs_diff": diff})
            print(f"  {'x'.join(map(str, shape)):>16}  r={r:<3}  freqprobe {ours * 1e3:8.1f} ms   plain {plain * 1e3:8.1f} ms   "
                  f"speed {speed:.2f}x (target >= {TARGET}: {'PASS' if speed >= TARGET else 'FAIL'})   max |diff| {diff:.1e}",
                  flush=True)
    return finish({"env": env, "rows": rows, "target": TARGET}, env, args.json, ok)


if __name__ == "__main__":
    sys.exit(main())
