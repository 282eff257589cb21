#!/usr/bin/env python
"""freqprobe's PGD against torchattacks' PGD on the same model and images (issue: attacks plugin).

The workload: PGD-10 (L∞, ε = 8/255, α = 2/255, no random start, so both sides compute the same
thing) on ResNet-20 (tests/fixtures/cifar_resnet.py with the akamaster checkpoint from the shared
data, ImageNet mean/std) and the first N images of the CIFAR-10 test file (JPEG q75), in batches.

* ours: ``freqprobe_attacks.attacks.PGD`` called as the robustness probe calls it — inside
  ``torch.inference_mode()`` (and the precision's autocast), on a model prepared as the engine
  prepares it (eval, channels_last unless ``--no-channels-last``), BatchNorm folded into the
  convolutions of the copy it differentiates unless ``--no-fold-batchnorm``;
* torchattacks: ``torchattacks.PGD`` (3.5.1) on a wrapper module that takes [0, 1] images and
  normalises, the model in the default (contiguous) memory format, fp32.

* plain (``--baseline plain``, and the default when torchattacks is not installed): the textbook
  PGD loop written out (what torchattacks.PGD computes, without its input checks) on the same
  wrapper module, contiguous, fp32.

Each side is warmed up on one batch, then timed over all N images ``--repeats`` times
(alternating sides; CUDA synchronised); medians count. Printed: img/s of each, the speed ratio
(target ≥ 1.3× the baseline), the agreement of the adversarial images (max |diff|, fraction of
identical pixels, fraction of identical predictions) and the clean and robust accuracy of each.
``--no-torchattacks`` times ours only.

Usage: .venv/bin/python benchmarks/bench_pgd.py [--device cpu|cuda] [--n 500] [--batch-size 100]
       [--repeats 3] [--threads T] [--no-channels-last] [--no-fold-batchnorm] [--precision fp32|bf16]
       [--baseline auto|torchattacks|plain] [--json OUT]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins" / "freqprobe-attacks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import freqprobe  # noqa: E402
from _common import cpu_model, finish, loadavg, sync  # noqa: E402
from freqprobe import runner  # noqa: E402
from freqprobe.engine import precision_context  # noqa: E402
from freqprobe_attacks.attacks import PGD  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
MODEL = f"{ROOT / 'tests' / 'fixtures' / 'cifar_resnet.py'}:resnet20"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TARGET = 1.3


class Normalized(torch.nn.Module):
    """[0, 1] images -> normalise -> module: what torchattacks expects to attack."""

    def __init__(self, module: torch.nn.Module, mean, std) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module((x - self.mean) / self.std)


class PlainPGD:
    """The textbook PGD loop (L∞, no random start) on a module that takes [0, 1] images: what torchattacks.PGD
    computes (mean cross-entropy, sign step, projection onto the ε-ball and [0, 1]), without its input checks."""

    def __init__(self, model: torch.nn.Module, eps: float, alpha: float, steps: int) -> None:
        self.model, self.eps, self.alpha, self.steps = model, eps, alpha, steps

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        adv = x.clone()
        for _ in range(self.steps):
            adv.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(self.model(adv), y)
            (grad,) = torch.autograd.grad(loss, adv)
            adv = adv.detach() + self.alpha * grad.sign()
            adv = torch.clamp(x + torch.clamp(adv - x, min=-self.eps, max=self.eps), 0, 1).detach()
        return adv


def run_ours(attack: PGD, x: torch.Tensor, y: torch.Tensor, bs: int, precision: str, dev, out: torch.Tensor) -> None:
    with torch.inference_mode(), precision_context(dev, precision):
        for s in range(0, len(x), bs):
            out[s:s + bs] = attack(x[s:s + bs], y[s:s + bs])


def run_theirs(attack, x: torch.Tensor, y: torch.Tensor, bs: int, out: torch.Tensor) -> None:
    for s in range(0, len(x), bs):
        out[s:s + bs] = attack(x[s:s + bs], y[s:s + bs])


def predictions(adapter, x: torch.Tensor, bs: int) -> torch.Tensor:
    return torch.cat([adapter.predict(x[s:s + bs]).argmax(-1) for s in range(0, len(x), bs)]).cpu()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help=f"shared test data (default {DEFAULT_DATA})")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=None, help="images (default 500 on CPU, 10000 on CUDA)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 100 on CPU, 1000 on CUDA")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--alpha", type=float, default=2 / 255)
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="ours: model and images in channels_last (default on, as the engine)")
    ap.add_argument("--fold-batchnorm", action=argparse.BooleanOptionalAction, default=True,
                    help="ours: differentiate a copy with BatchNorm folded into the convolutions (default on, as the attack)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="ours: fp32 or bf16 autocast")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-torchattacks", action="store_true", help="time ours only")
    ap.add_argument("--baseline", choices=("auto", "torchattacks", "plain"), default="auto",
                    help="what ours is compared with: torchattacks.PGD, a plain PGD loop, or auto (default): torchattacks "
                         "when it is installed, else the plain loop")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)

    dev = runner.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (10000 if dev.type == "cuda" else 500)
    bs = args.batch_size or (1000 if dev.type == "cuda" else 100)
    ckpt = args.data_dir / "cifar10_resnet_akamaster" / "resnet20-12fca82f.th"
    npz = args.data_dir / "cifar10_test" / "cifar10_test_jpeg_q75.npz"
    if not (ckpt.exists() and npz.exists()):
        print(f"missing {ckpt} or {npz}; pass --data-dir", file=sys.stderr)
        return 2
    torchattacks = None
    why_not = "--no-torchattacks"
    baseline = None  # "torchattacks", "plain" or None (ours only)
    if not args.no_torchattacks:
        if args.baseline in ("auto", "torchattacks"):
            try:
                import torchattacks
            except ImportError as exc:
                why_not = f"torchattacks is not importable ({exc}); install it with `pip install --no-deps torchattacks==3.5.1 scipy`"
            else:
                baseline = "torchattacks"
        else:
            why_not = "--baseline plain"
        if baseline is None and args.baseline in ("auto", "plain"):
            baseline = "plain"
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": cpu_model(), "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "n": n,
           "batch_size": bs, "torchattacks": getattr(torchattacks, "__version__", None), "loadavg_start": loadavg(),
           "baseline": baseline, "baseline_reason": None if baseline == "torchattacks" else why_not}
    print(f"PGD-{args.steps} L∞ eps={args.eps:.5f} alpha={args.alpha:.5f} no random start: ResNet-20, {n} CIFAR-10 test "
          f"images (JPEG q75 file), batch {bs}; torch {env['torch']}, {env['threads']} threads, {env['cpu']}, "
          f"device {env['device']}, load {env['loadavg_start']}")
    print(f"ours: {'channels_last' if args.channels_last else 'contiguous'}, {args.precision}, "
          f"BatchNorm {'folded' if args.fold_batchnorm else 'not folded'}; "
          + (f"torchattacks {torchattacks.__version__}: contiguous, fp32" if torchattacks else f"torchattacks: skipped ({why_not})")
          + ("; baseline: a plain PGD loop, contiguous, fp32" if baseline == "plain" else ""))

    with np.load(npz) as d:
        x = torch.from_numpy(d["x"][:n]).permute(0, 3, 1, 2).float().div(255).contiguous().to(dev)
        y = torch.from_numpy(d["y"][:n]).long().to(dev)
    adapter = freqprobe.build_model(MODEL, checkpoint=ckpt, mean=MEAN, std=STD, num_classes=10)
    adapter.to(dev)
    module = adapter.module
    module.eval()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    ours = PGD(adapter, eps=args.eps, steps=args.steps, alpha=args.alpha, random_start=False)
    ours.channels_last = args.channels_last
    ours.fold_batchnorm = args.fold_batchnorm
    adv_ours = torch.empty_like(x)
    adv_theirs = torch.empty_like(x)
    # .eval(): torchattacks restores the mode the wrapper had, and a fresh module is in train mode
    if baseline == "torchattacks":
        theirs = torchattacks.PGD(Normalized(module, MEAN, STD).to(dev).eval(), eps=args.eps, alpha=args.alpha, steps=args.steps,
                                  random_start=False)
    elif baseline == "plain":
        theirs = PlainPGD(Normalized(module, MEAN, STD).to(dev).eval(), eps=args.eps, alpha=args.alpha, steps=args.steps)
    else:
        theirs = None
    label = {"torchattacks": "torchattacks", "plain": "plain loop"}.get(baseline, "")

    def time_ours() -> float:
        module.to(memory_format=fmt)  # as the engine's adapter.prepare(channels_last=...)
        xs = x.contiguous(memory_format=fmt)
        sync(dev)
        t = time.perf_counter()
        run_ours(ours, xs, y, bs, args.precision, dev, adv_ours)
        sync(dev)
        return time.perf_counter() - t

    def time_theirs() -> float:
        module.to(memory_format=torch.contiguous_format)
        sync(dev)
        t = time.perf_counter()
        run_theirs(theirs, x, y, bs, adv_theirs)
        sync(dev)
        return time.perf_counter() - t

    old_bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    try:
        # warm-up: kernels, allocator, cudnn autotuning
        module.to(memory_format=fmt)
        run_ours(ours, x[:bs].contiguous(memory_format=fmt), y[:bs], bs, args.precision, dev, adv_ours[:bs])
        if theirs is not None:
            module.to(memory_format=torch.contiguous_format)
            run_theirs(theirs, x[:bs], y[:bs], bs, adv_theirs[:bs])
        sync(dev)
        t_ours, t_theirs = [], []
        for _ in range(args.repeats):
            t_ours.append(time_ours())
            if theirs is not None:
                t_theirs.append(time_theirs())
            print(f"  repeat: ours {t_ours[-1]:.3f} s" + (f", {label} {t_theirs[-1]:.3f} s" if t_theirs else ""), flush=True)
    finally:
        torch.backends.cudnn.benchmark = old_bench
        module.to(memory_format=torch.contiguous_format)

    clean = predictions(adapter, x, bs)
    yc = y.cpu()
    res = {"env": env, "args": {k: str(v) for k, v in vars(args).items()}, "baseline": baseline,
           "baseline_reason": env["baseline_reason"]}
    m_ours = statistics.median(t_ours)
    res["ours"] = {"times_s": t_ours, "median_s": m_ours, "img_per_s": n / m_ours,
                   "robust_accuracy": float((predictions(adapter, adv_ours, bs) == yc).float().mean())}
    res["clean_accuracy"] = float((clean == yc).float().mean())
    print(f"\nclean accuracy {res['clean_accuracy']:.4f}")
    print("| attack | median s | img/s | robust accuracy |")
    print("| --- | --- | --- | --- |")
    print(f"| freqprobe PGD | {m_ours:.3f} | {n / m_ours:,.0f} | {res['ours']['robust_accuracy']:.4f} |")
    ok = True
    if theirs is not None:
        m_theirs = statistics.median(t_theirs)
        p_ours, p_theirs = predictions(adapter, adv_ours, bs), predictions(adapter, adv_theirs, bs)
        res[baseline] = {"times_s": t_theirs, "median_s": m_theirs, "img_per_s": n / m_theirs,
                         "robust_accuracy": float((p_theirs == yc).float().mean())}
        diff = (adv_ours - adv_theirs).abs()
        res["ratio"] = m_theirs / m_ours
        res["agreement"] = {"max_abs_diff": float(diff.max()), "identical_pixels": float((diff == 0).float().mean()),
                            "identical_predictions": float((p_ours == p_theirs).float().mean())}
        print(f"| {label} PGD | {m_theirs:.3f} | {n / m_theirs:,.0f} | {res[baseline]['robust_accuracy']:.4f} |")
        a = res["agreement"]
        print(f"\nspeed ratio ours / {label} = {res['ratio']:.2f}x  (target >= {TARGET}: "
              f"{'PASS' if res['ratio'] >= TARGET else 'FAIL'})")
        print(f"agreement: max |diff| {a['max_abs_diff']:.3g}, identical pixels {a['identical_pixels']:.4%}, "
              f"identical predictions {a['identical_predictions']:.2%}")
        ok = res["ratio"] >= TARGET
    return finish(res, env, args.json, ok)


if __name__ == "__main__":
    sys.exit(main())
