#!/usr/bin/env python
"""Throughput benchmark for freqprobe's ``fft-radial`` decomposer (paper §3.1).

Measures, on N CIFAR-sized float32 images (N×3×32×32, values in [0, 1]):

  (a) freqprobe ``decompose_all`` over the radii: seconds per call (all radii), seconds per
      radius and image-decompositions per second; with fresh outputs, with reused ``out=``
      buffers per radius (``{r: {"low", "high"}}``: the chunk-major path, all radii of a chunk
      finished while its spectrum is in cache) and with one reused ``{"low", "high"}`` pair
      (radius-major, what the probe does on its small batches); and fresh outputs again after
      ``freqprobe.tune_allocator()`` (glibc mmap/trim thresholds raised, as the ``freqprobe``
      command does at start-up), run last because it changes the process's allocator. A new random batch is drawn (outside the timed region) before every timed
      repetition so nothing can be cached across calls; one untimed warm-up call comes first;
      the median over the repetitions is reported (min and max as well).
  (b) the authors' method as a per-image numpy loop (for each image, channel and radius:
      fft2, fftshift, multiply by the mask, ifftshift, ifft2, real part; once with the mask for
      the low part and once with 1 - mask for the high part, as in the released code), timed on
      a subset and extrapolated per image; plus a tighter loop (one fft2 per image-channel,
      shared by all radii, high = x - low). Speedup = per-image loop time / per-image freqprobe
      time. The loop's output is checked against freqprobe's.
  (c) the memory floor: this machine's copy bandwidth (``dst.copy_(src)`` into a preallocated
      buffer, best of several, read + write bytes counted), then floor time per radius =
      (read the batch once + write the two outputs) / bandwidth, and freqprobe's fraction of
      that floor = floor time / freqprobe time per radius.
  (d) the share of decomposition in a real ``lfc-hfc`` probe: ResNet-20 (tests/fixtures) with the
      akamaster checkpoint on the lossless first-100 CIFAR-10 test images, radii 4,8,12,16, run
      through ``freqprobe.runner.run``; decompose_s / probe_s from manifest.json. Optionally the
      same on the first ``--probe-big-n`` images of the (lossy JPEG q75) 10k test file.

Usage:  .venv/bin/python benchmarks/bench_fft.py [--n 10000] [--radii 4,8,12,16] [--repeats 5]
        [--threads N] [--skip-probe] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
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
from _common import cpu_model, loadavg, sync  # noqa: E402
from freqprobe import runner  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"  # ../shared/data beside the checkout, as the tests use
CKPT = NPZ_SMALL = NPZ_BIG = Path()  # set from --data-dir in main()


def set_data_dir(data: Path) -> None:
    global CKPT, NPZ_SMALL, NPZ_BIG
    CKPT = data / "cifar10_resnet_akamaster" / "resnet20-12fca82f.th"
    NPZ_SMALL = data / "cifar10_test" / "cifar10_test_first100_lossless.npz"
    NPZ_BIG = data / "cifar10_test" / "cifar10_test_jpeg_q75.npz"


MODEL = f"{ROOT / 'tests' / 'fixtures' / 'cifar_resnet.py'}:resnet20"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODES = {"fresh": "fresh allocations", "reuse": "reused out per radius", "pair": "reused out pair",
         "tuned": "fresh, tuned malloc"}
TARGET_SPEEDUP = 50.0
TARGET_FLOOR_FRACTION = 0.20
TARGET_FLOOR_FRACTION_CUDA = 0.40
TARGET_DECOMPOSE_SHARE = 0.10







# ------------------------------------------------------------------------------- (a) freqprobe
def run_decompose_all(dec, x: torch.Tensor, radii: list, out) -> None:
    for _r, parts in dec.decompose_all(x, radii, out=out):
        del parts  # results are computed eagerly; the next radius may overwrite/free them


def bench_freqprobe(dec, n: int, radii: list, repeats: int, reuse: str, device: torch.device, seed: int, size: int = 32) -> dict:
    gen = torch.Generator().manual_seed(seed)
    shape = (n, 3, size, size)
    x = torch.rand(shape, generator=gen).to(device)
    if reuse == "reuse":
        out = {r: {"low": torch.empty_like(x), "high": torch.empty_like(x)} for r in radii}
    elif reuse == "pair":
        out = {"low": torch.empty_like(x), "high": torch.empty_like(x)}
    else:
        out = None
    run_decompose_all(dec, x, radii, out)  # warm-up: masks, bases, allocator, thread pool
    sync(device)
    times = []
    for _ in range(repeats):
        x = torch.rand(shape, generator=gen).to(device)  # a new batch each time, made outside the timed region
        sync(device)
        t0 = time.perf_counter()
        run_decompose_all(dec, x, radii, out)
        sync(device)
        times.append(time.perf_counter() - t0)
        del x
    med = statistics.median(times)
    return {
        "mode": MODES[reuse],
        "times_s": times,
        "median_s": med,
        "min_s": min(times),
        "max_s": max(times),
        "per_radius_s": med / len(radii),
        "per_image_s": med / n,  # all radii
        "image_decompositions_per_s": n * len(radii) / med,
        "images_per_s_all_radii": n / med,
    }


# ------------------------------------------------------------------------------- (b) authors' loop
def authors_mask(size: int, r: float) -> np.ndarray:
    """The released code's mask_radial: 1 where sqrt((i - size/2)^2 + (j - size/2)^2) < r."""
    i = np.arange(size).reshape(-1, 1)
    j = np.arange(size).reshape(1, -1)
    return (np.sqrt((i - size / 2) ** 2 + (j - size / 2) ** 2) < r).astype(np.float64)


def authors_loop(x: np.ndarray, radii: list, masks: dict) -> dict:
    """As generateDataWithDifferentFrequencies_3Channel, called once per radius (masks precomputed)."""
    res = {}
    for r in radii:
        mask = masks[r]
        low = np.zeros(x.shape, dtype=np.float64)
        high = np.zeros(x.shape, dtype=np.float64)
        for i in range(x.shape[0]):
            for c in range(x.shape[1]):
                fd = np.fft.fftshift(np.fft.fft2(x[i, c]))
                low[i, c] = np.real(np.fft.ifft2(np.fft.ifftshift(fd * mask)))
            for c in range(x.shape[1]):
                fd = np.fft.fftshift(np.fft.fft2(x[i, c]))
                high[i, c] = np.real(np.fft.ifft2(np.fft.ifftshift(fd * (1 - mask))))
        res[r] = (low, high)
    return res


def shared_fft_loop(x: np.ndarray, radii: list, masks: dict) -> dict:
    """A tighter per-image loop: one fft2 per image-channel for all radii, high = x - low."""
    res = {r: (np.zeros(x.shape), np.zeros(x.shape)) for r in radii}
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            fd = np.fft.fftshift(np.fft.fft2(x[i, c]))
            for r in radii:
                lo = np.real(np.fft.ifft2(np.fft.ifftshift(fd * masks[r])))
                res[r][0][i, c] = lo
                res[r][1][i, c] = x[i, c] - lo
    return res


def bench_loops(dec, loop_n: int, radii: list, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed + 1)
    xt = torch.rand((loop_n, 3, 32, 32), generator=gen)
    x = xt.numpy()
    masks = {r: authors_mask(32, r) for r in radii}
    authors_loop(x[:2], radii, masks)  # warm-up
    t0 = time.perf_counter()
    ref = authors_loop(x, radii, masks)
    t_auth = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref2 = shared_fft_loop(x, radii, masks)
    t_shared = time.perf_counter() - t0
    # correctness: freqprobe (rule exclusive) against the authors' loop
    err = 0.0
    for r, parts in dec.decompose_all(xt, radii):
        lo, hi = ref[r]
        err = max(err, float(np.abs(parts["low"].numpy() - lo).max()), float(np.abs(parts["high"].numpy() - hi).max()))
        err = max(err, float(np.abs(ref2[r][0] - lo).max()))
    return {
        "n": loop_n,
        "authors_total_s": t_auth,
        "authors_per_image_s": t_auth / loop_n,
        "shared_fft_total_s": t_shared,
        "shared_fft_per_image_s": t_shared / loop_n,
        "max_abs_diff_vs_freqprobe": err,
    }


# ------------------------------------------------------------------------------- (c) memory floor
def copy_bandwidth(mib: int, tries: int, device: torch.device) -> dict:
    n = mib * (1 << 20) // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages
    sync(device)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    nbytes = 2 * n * 4  # read + write
    return {"buffer_mib": mib, "best_copy_s": best, "bandwidth_bytes_per_s": nbytes / best}


# ------------------------------------------------------------------------------- (d) probe share
def probe_share(npz: Path, limit: int | None, radii: str, device: str, batch_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = runner.run(
            MODEL,
            probe="lfc-hfc",
            data=f"npz:{npz}",
            params=radii,
            checkpoint=str(CKPT),
            mean=list(IMAGENET_MEAN),
            std=list(IMAGENET_STD),
            limit=limit,
            device=device,
            batch_size=batch_size,
            out=Path(tmp) / "run",
            announce=lambda msg: None,
        )
        wall = time.perf_counter() - t0
        manifest = json.loads((Path(tmp) / "run" / "manifest.json").read_text())
    t = manifest["timings"]
    acc = {f"{row['variant']}{'' if row['param'] == '' else '@' + str(row['param'])}": row["value"]
           for row in res.summary if row["metric"] == "accuracy"}
    return {
        "data": str(npz),
        "n": manifest["data"]["n_evaluated"],
        "timings": t,
        "decompose_share_of_probe": t["decompose_s"] / t["probe_s"],
        "decompose_share_of_decompose_plus_inference": t["decompose_s"] / (t["decompose_s"] + t["inference_s"]),
        "accuracy_original": acc.get("original"),
        "wall_s": wall,
    }


# ------------------------------------------------------------------------------- report
def fmt_s(s: float) -> str:
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.2f} us"


def fmt_x(v: float) -> str:
    return f"{v:,.1f}x" if v < 10 else f"{v:,.0f}x"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000, help="images in the benchmark batch (default 10000)")
    ap.add_argument("--size", type=int, default=32, help="image side (default 32; e.g. --n 512 --size 224)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                    help=f"the shared test data (default: ../shared/data beside the checkout, {DEFAULT_DATA})")
    ap.add_argument("--modes", default=",".join(MODES), help=f"which (a) modes to time (default {','.join(MODES)})")
    ap.add_argument("--skip-loops", action="store_true", help="skip (b), the per-image numpy loops")
    ap.add_argument("--radii", default="4,8,12,16", help="comma-separated radii (default 4,8,12,16)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repetitions per mode (default 5; median reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--loop-n", type=int, default=500, help="images for the per-image numpy loops (default 500)")
    ap.add_argument("--bw-mib", type=int, default=1024, help="MiB copied for the bandwidth measurement (default 1024)")
    ap.add_argument("--bw-tries", type=int, default=7, help="copies for the bandwidth measurement, best taken (default 7)")
    ap.add_argument("--skip-probe", action="store_true", help="skip (d), the lfc-hfc probe with ResNet-20")
    ap.add_argument("--probe-big-n", type=int, default=0,
                    help="also run (d) on the first N images of the 10k JPEG-q75 test file (default 0: skipped; "
                         "about 9 ResNet-20 forward passes per image)")
    ap.add_argument("--batch-size", type=int, default=128, help="probe batch size for (d) (default 128, the CLI default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    args = ap.parse_args(argv)

    set_data_dir(args.data_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    radii = [float(r) for r in args.radii.split(",")]
    radii = [int(r) if r.is_integer() else r for r in radii]
    dec = freqprobe.get_decomposer("fft-radial")  # rule exclusive, as the authors' code

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "loadavg_start": loadavg(),
    }
    print(f"freqprobe fft-radial benchmark  (python {env['python']}, torch {env['torch']}, numpy {env['numpy']})")
    print(f"CPU: {env['cpu_model']} ({env['cpu_count']} logical CPUs), torch threads: {env['torch_threads']}, "
          f"device: {env['device']}, load average at start: {env['loadavg_start']}")
    batch_bytes = args.n * 3 * args.size * args.size * 4
    print(f"batch: {args.n}x3x{args.size}x{args.size} float32 in [0,1] ({batch_bytes / 1e6:.1f} MB), radii {radii}, "
          f"rule {dec.rule}, {args.repeats} timed repeats (new batch each), median reported\n")
    results: dict = {"env": env, "args": vars(args)}
    t_start = time.perf_counter()

    sections: dict = {}
    results["section_s"] = sections
    t_sec = time.perf_counter()

    # (a)
    print("(a) freqprobe decompose_all ...", flush=True)
    fa = {}
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    for reuse in modes:
        if reuse == "tuned":  # last: it changes the process's allocator for good
            print(f"    freqprobe.tune_allocator() -> {freqprobe.tune_allocator()}", flush=True)
        r = bench_freqprobe(dec, args.n, radii, args.repeats, reuse, device, args.seed, args.size)
        fa[reuse] = r
        print(f"    {r['mode']:<20} median {fmt_s(r['median_s'])} per call ({len(radii)} radii), "
              f"{fmt_s(r['per_radius_s'])} per radius, {r['image_decompositions_per_s']:,.0f} image-decompositions/s "
              f"[min {fmt_s(r['min_s'])}, max {fmt_s(r['max_s'])}]", flush=True)
    results["freqprobe"] = fa
    sections["a"], t_sec = time.perf_counter() - t_sec, time.perf_counter()

    # (b)
    if args.skip_loops or args.size != 32:
        print("(b) skipped" + (" (--skip-loops)" if args.skip_loops else " (the authors' loop is for 32x32 images)"))
        lp = None
    else:
        print(f"(b) per-image numpy loops on {args.loop_n} images ...", flush=True)
        lp = bench_loops(dec, args.loop_n, radii, args.seed)
        print(f"    authors' loop   {fmt_s(lp['authors_total_s'])} -> {fmt_s(lp['authors_per_image_s'])} per image (all radii)")
        print(f"    shared-FFT loop {fmt_s(lp['shared_fft_total_s'])} -> {fmt_s(lp['shared_fft_per_image_s'])} per image (all radii)")
        print(f"    max |freqprobe - authors' loop| = {lp['max_abs_diff_vs_freqprobe']:.2e}", flush=True)
    results["loops"] = lp
    sections["b"], t_sec = time.perf_counter() - t_sec, time.perf_counter()

    # (c)
    print(f"(c) copy bandwidth ({args.bw_mib} MiB, best of {args.bw_tries}) ...", flush=True)
    bw = copy_bandwidth(args.bw_mib, args.bw_tries, device)
    floor_per_radius = 3 * batch_bytes / bw["bandwidth_bytes_per_s"]
    bw["floor_per_radius_s"] = floor_per_radius
    bw["floor_bytes_per_radius"] = 3 * batch_bytes
    results["memory"] = bw
    print(f"    {bw['bandwidth_bytes_per_s'] / 1e9:.2f} GB/s (read+write) -> floor {fmt_s(floor_per_radius)} per radius "
          f"for {3 * batch_bytes / 1e6:.0f} MB (read batch + write low, high)", flush=True)
    sections["c"], t_sec = time.perf_counter() - t_sec, time.perf_counter()

    # (d)
    probes = []
    if args.skip_probe:
        print("(d) skipped (--skip-probe)")
    elif not (CKPT.exists() and NPZ_SMALL.exists()):
        print(f"(d) skipped: {CKPT} or {NPZ_SMALL} is missing (pass --data-dir)")
    else:
        cases = [(NPZ_SMALL, None)]
        if args.probe_big_n > 0 and NPZ_BIG.exists():
            cases.append((NPZ_BIG, args.probe_big_n))
        for npz, limit in cases:
            print(f"(d) lfc-hfc probe, ResNet-20, {npz.name}{'' if limit is None else f' (first {limit})'} ...", flush=True)
            p = probe_share(npz, limit, args.radii, args.device, args.batch_size)
            probes.append(p)
            t = p["timings"]
            print(f"    n={p['n']}: decompose_s {t['decompose_s']:.3f}, inference_s {t['inference_s']:.3f}, "
                  f"probe_s {t['probe_s']:.3f}, share {p['decompose_share_of_probe']:.1%}, "
                  f"original accuracy {p['accuracy_original']:.3f}", flush=True)
    results["probe"] = probes
    sections["d"] = time.perf_counter() - t_sec
    env["loadavg_end"] = loadavg()
    results["elapsed_s"] = time.perf_counter() - t_start

    # summary table: PASS/FAIL on the median; the best repeat is shown as well (closest to an idle machine)
    rows = []
    target_floor = TARGET_FLOOR_FRACTION_CUDA if device.type == "cuda" else TARGET_FLOOR_FRACTION
    for key in modes:
        r = fa[key]
        best_img, best_rad = r["min_s"] / args.n, r["min_s"] / len(radii)
        frac = floor_per_radius / r["per_radius_s"]
        r.update(floor_fraction=frac, best_floor_fraction=floor_per_radius / best_rad)
        label = {"fresh": "fresh", "reuse": "reused per-radius out", "pair": "reused out pair", "tuned": "fresh, tuned malloc"}[key]
        if lp is not None:
            sp = lp["authors_per_image_s"] / r["per_image_s"]
            sp2 = lp["shared_fft_per_image_s"] / r["per_image_s"]
            r.update(speedup_vs_authors_loop=sp, speedup_vs_shared_fft_loop=sp2,
                     best_speedup_vs_authors_loop=lp["authors_per_image_s"] / best_img)
            rows.append((f"speedup vs authors' per-image loop ({label})", fmt_x(sp), fmt_x(r["best_speedup_vs_authors_loop"]),
                         f">= {TARGET_SPEEDUP:.0f}x", verdict(sp >= TARGET_SPEEDUP)))
            rows.append((f"speedup vs shared-FFT per-image loop ({label})", fmt_x(sp2),
                         fmt_x(lp["shared_fft_per_image_s"] / best_img), "(info)", ""))
        rows.append((f"fraction of memory floor ({label})", f"{frac:.1%}", f"{r['best_floor_fraction']:.1%}",
                     f">= {target_floor:.0%}", verdict(frac >= target_floor)))
    for p in probes:
        tag = f"n={p['n']}" + (", lossless" if p["data"] == str(NPZ_SMALL) else ", jpeg q75")
        rows.append((f"decompose share of lfc-hfc probe ({tag})", f"{p['decompose_share_of_probe']:.1%}", "",
                     f"<= {TARGET_DECOMPOSE_SHARE:.0%}", verdict(p["decompose_share_of_probe"] <= TARGET_DECOMPOSE_SHARE)))
    results["table"] = [dict(zip(("measure", "median", "best_repeat", "target", "result"), row)) for row in rows]

    print("\nthroughput (median of repeats)")
    print(f"  {'mode':<22}{'per call':>12}{'per radius':>12}{'image-dec/s':>14}{'images/s (all radii)':>22}")
    for key in modes:
        r = fa[key]
        print(f"  {r['mode']:<22}{fmt_s(r['median_s']):>12}{fmt_s(r['per_radius_s']):>12}"
              f"{r['image_decompositions_per_s']:>14,.0f}{r['images_per_s_all_radii']:>22,.0f}")
    if lp is not None:
        print(f"  {'authors loop (numpy)':<22}{fmt_s(lp['authors_per_image_s'] * args.n):>12}"
              f"{fmt_s(lp['authors_per_image_s'] * args.n / len(radii)):>12}"
              f"{len(radii) / lp['authors_per_image_s']:>14,.0f}{1 / lp['authors_per_image_s']:>22,.0f}   (extrapolated from {args.loop_n})")
    print(f"  {'memory floor':<22}{fmt_s(floor_per_radius * len(radii)):>12}{fmt_s(floor_per_radius):>12}"
          f"{args.n / floor_per_radius:>14,.0f}{args.n / floor_per_radius / len(radii):>22,.0f}")
    w = max(len(r[0]) for r in rows) + 2
    print(f"\n  {'measure':<{w}}{'median':>8}{'best':>8}  {'target':<8}result (on the median)")
    for m, v, b, tgt, res in rows:
        print(f"  {m:<{w}}{v:>8}{b:>8}  {tgt:<8}{res}")
    secs = ", ".join(f"({k}) {v:.0f} s" for k, v in sections.items())
    print(f"\nload average at end: {env['loadavg_end']}; elapsed {results['elapsed_s']:.1f} s [{secs}]")

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
