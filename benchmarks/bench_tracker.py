#!/usr/bin/env python
"""The frequency tracker's cost per epoch against the epoch's training (issue: under 15 % at four radii).

Workload: ``freqprobe train`` on CIFAR-10 images from the shared data (the JPEG-q75 test file: images
1,000-9,999 train, 0-999 test, written to a temporary folder), the paper's vanilla set-up (Adam,
lr 1e-4, batch 100, Xavier), a paper architecture (default ``paper:resnet20`` with BatchNorm), tracked
at radii 4, 8, 12, 16 with the default tracking set (2.5 % of the training set per split, at least 100
and at most 1,000 images: here 225 train and 225 test images, 9 variants each). For every epoch the
training time (forward, backward, optimizer over the 9,000 images) and the tracking time (the probe
engine over both splits' tracked images) are taken from the run's manifest; the first epoch is
reported separately (warm-up), the median of the others counts.

Usage: .venv/bin/python benchmarks/bench_tracker.py [--model paper:resnet20] [--epochs 3] [--track-samples N] [--json OUT]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
for plugin in ("freqprobe-train", "freqprobe-attacks"):
    sys.path.insert(0, str(ROOT / "plugins" / plugin))

import freqprobe  # noqa: E402
from _common import cpu_model, finish, loadavg  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
TARGET = 0.15


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="paper:resnet20")
    ap.add_argument("--model-arg", action="append", default=["bn=True"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--track-samples", type=int, help="images tracked per split (default: the tracker's default)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import freqprobe_attacks.hooks
    import freqprobe_train.hooks
    from freqprobe.runner import parse_kv
    from freqprobe_train.train import TrainSettings, train

    pm = freqprobe.get_plugin_manager(autoload=False)
    pm.register(freqprobe_train.hooks, "train")
    pm.register(freqprobe_attacks.hooks, "attacks")
    env = {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(), "loadavg_start": loadavg()}
    print(f"{args.model} on {args.device} ({env['cpu']}, {env['threads']} threads), load {env['loadavg_start']}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        d = np.load(args.data_dir / "cifar10_test" / "cifar10_test_jpeg_q75.npz")
        np.savez(tmp / "train.npz", x=d["x"][1000:], y=d["y"][1000:])
        np.savez(tmp / "test.npz", x=d["x"][:1000], y=d["y"][:1000])
        s = TrainSettings(model=args.model, data=f"npz:{tmp / 'train.npz'}", test_data=f"npz:{tmp / 'test.npz'}",
                          epochs=args.epochs, track_samples=args.track_samples, device=args.device,
                          model_args=parse_kv(args.model_arg, "--model-arg"))
        man = train(s, tmp / "run", pm=pm, say=print)
    hist = man["history"]
    rest = hist[1:] or hist
    train_s = statistics.median(h["train_s"] for h in rest)
    track_s = statistics.median(h["track_s"] for h in rest)
    ratio = track_s / train_s
    print(f"\ntracked per split: {man['tracking']['samples_per_split']} images, radii {man['tracking']['radii']}")
    print("| epoch | training s | tracking s | tracking / training |\n| --- | ---: | ---: | ---: |")
    for h in hist:
        print(f"| {h['epoch']} | {h['train_s']:.2f} | {h['track_s']:.2f} | {h['track_s'] / h['train_s']:.1%} |")
    print(f"\nmedian after the first epoch: tracking {track_s:.2f} s / training {train_s:.2f} s = {ratio:.1%} "
          f"(target < {TARGET:.0%}: {'PASS' if ratio < TARGET else 'FAIL'})")
    res = {"env": env, "model": args.model, "train_n": man["train_n"], "tracking": man["tracking"], "history": hist,
           "median_train_s": train_s, "median_track_s": track_s, "ratio": ratio}
    return finish(res, env, args.json, ratio < TARGET)


if __name__ == "__main__":
    sys.exit(main())
