#!/usr/bin/env python
"""The same lfc-hfc run from Python (``freqprobe.run``) and from the command line, each in a fresh process.

ResNet-20 (akamaster checkpoint) on the first N images of the CIFAR-10 JPEG test file, radii
4,8,12,16. Reports the loop's ``evaluate_s`` from each run's manifest.json and each process's peak
resident memory (``ru_maxrss`` of the child). Fresh processes matter: allocator state is what
made the Python API slower than the CLI before the loop primed glibc's heap (docs/benchmarks.md).

Usage: .venv/bin/python benchmarks/bench_api_vs_cli.py [--n 2000] [--rss-n 1000,10000] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
MODEL = f"{ROOT / 'tests' / 'fixtures' / 'cifar_resnet.py'}:resnet20"
MEAN, STD = "0.485,0.456,0.406", "0.229,0.224,0.225"


def child(cmd: list[str], env: dict | None = None) -> int:
    """Run ``cmd``; the peak RSS (KiB) of this child alone (wait4's rusage)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr.read()}")
    return usage.ru_maxrss


def run(kind: str, n: int, data: Path, prime: bool = True) -> dict:
    ckpt = data / "cifar10_resnet_akamaster" / "resnet20-12fca82f.th"
    npz = data / "cifar10_test" / "cifar10_test_jpeg_q75.npz"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "o"
        if kind == "cli":
            exe = Path(sys.executable).parent / "freqprobe"
            cmd = [str(exe), "run", "--model", MODEL, "--checkpoint", str(ckpt), "--data", f"npz:{npz}", "--limit", str(n),
                   "--mean", MEAN, "--std", STD, "--device", "cpu", "--out", str(out), "-q"]
        else:
            code = (f"import freqprobe; freqprobe.run({MODEL!r}, checkpoint={str(ckpt)!r}, data={'npz:' + str(npz)!r}, limit={n}, "
                    f"mean=[{MEAN}], std=[{STD}], device='cpu', out={str(out)!r})")
            cmd = [sys.executable, "-c", code]
        env = dict(os.environ)
        if not prime:
            env["FREQPROBE_NO_HEAP_PRIMING"] = "1"
        rss = child(cmd, env)
        t = json.loads((out / "manifest.json").read_text())["timings"]
    return {"kind": kind, "n": n, "evaluate_s": t["evaluate_s"], "peak_rss_mb": rss / 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rss-n", default="1000,10000", help="sizes for the peak-memory runs (CLI); empty to skip")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args(argv)
    for kind, prime in (("python", False), ("python", True), ("cli", True)):
        r = run(kind, args.n, args.data_dir, prime)
        label = f"{kind}{'' if prime else ' (FREQPROBE_NO_HEAP_PRIMING=1)'}"
        print(f"{label:>38}: n={r['n']}, evaluate_s {r['evaluate_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    for n in [int(s) for s in args.rss_n.split(",") if s]:
        r = run("cli", n, args.data_dir)
        print(f"{'cli':>38}: n={n}, evaluate_s {r['evaluate_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
