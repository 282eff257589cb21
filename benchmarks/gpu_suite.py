#!/usr/bin/env python
"""One command for every GPU figure: the CUDA tests and the GPU benchmarks, into one JSON file.

    python benchmarks/gpu_suite.py --data-dir DIR --json FILE                  # on a machine with a CUDA GPU
    python benchmarks/gpu_suite.py --device cpu --tiny --data-dir DIR --json FILE   # the CPU dry run (CI)

Installs nothing. From DIR it reads only ``cifar10_test``, ``cifar10_resnet_akamaster`` and
``coco_val2017_mini``. Every part runs as a subprocess with its own timeout, so a hang or a crash
costs that part only; the suite as a whole keeps to ``--budget-s`` (default 480 s) and skips what
is left, saying so, once the budget is spent. A part whose dependency is missing (pycocotools,
hypothesis for the tests, the bench_e2e.py script, ...) is skipped with the reason. The parts:

  pytest-cuda  ``FREQPROBE_TEST_CUDA=1 pytest -m cuda``: passed / failed / skipped counts (all pass)
  fft-32       bench_fft.py, 10,000×3×32×32, r = 4, 8, 12, 16: fraction of the copy floor (≥ 40 % on CUDA)
  fft-224      bench_fft.py, 512×3×224×224: fraction of the copy floor (≥ 40 % on CUDA)
  probe        bench_probe.py, lfc-hfc over 10,000 CIFAR images against its bare forwards (≤ 1.2×)
  pgd          bench_pgd.py, PGD-10 against torchattacks, or a plain PGD loop without it (≥ 1.3×)
  e2e          bench_e2e.py, an ImageNet-style JPEG folder (5,000 images, timm resnet50, 224 px, bf16,
               channels_last): decode rates, images/s, minutes projected for ImageNet-val (≤ 1.2× forwards)
  heatmap      bench_heatmap.py, fourier-heatmap over 1,000 CIFAR images (514 frequencies): forwards/s against the
               bare forwards (≥ 0.8×)
  coco         bench_coco_probe.py, coco-map against bare RetinaNet forwards (≥ 0.8×; needs pycocotools)

Each part in the JSON: {"name", "status": "ok|failed|skipped", "reason", "figures": {name: number},
"target": {"figure", "op", "value"}, "met": true|false|null, "seconds", ...}. ``--hide MOD,...`` (or
FREQPROBE_SUITE_HIDE) makes modules unimportable in every subprocess, to see what the suite does on a
machine without them. Exit code: 1 when a part failed, or with --device cuda on a machine without CUDA
(``--strict``: or a target was missed), else 0.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_BUDGET_S = 480.0
HIDE_ENV = "FREQPROBE_SUITE_HIDE"

#: Runs ``python -c LAUNCHER script.py ARGS`` or ``python -c LAUNCHER -m module ARGS`` with the modules named in
#: FREQPROBE_SUITE_HIDE made unimportable (``sys.modules[name] = None``: ``import name`` raises ImportError).
LAUNCHER = """\
import os, runpy, sys
for _m in os.environ.get("FREQPROBE_SUITE_HIDE", "").split(","):
    if _m.strip():
        sys.modules[_m.strip()] = None
del sys.argv[0]
if sys.argv[0] == "-m":
    del sys.argv[0]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
    runpy.run_path(sys.argv[0], run_name="__main__")
"""

#: Distributions whose versions the JSON records (``pip list`` names).
DISTRIBUTIONS = ("torch", "torchvision", "timm", "pycocotools", "faster-coco-eval", "torchattacks", "triton", "numpy",
                 "pillow", "scipy", "pytest", "hypothesis", "pluggy", "click", "matplotlib", "safetensors", "freqprobe")
#: Modules the parts may need: imported for real when cheap, else only looked up (find_spec).
MODULES_IMPORTED = ("numpy", "torch", "pluggy", "click", "PIL", "pycocotools", "faster_coco_eval", "hypothesis", "freqprobe")
MODULES_LOOKED_UP = ("torchvision", "timm", "torchattacks", "triton", "pytest", "scipy", "matplotlib")

# Targets, as the benchmark scripts state them (bench_fft.TARGET_FLOOR_FRACTION[_CUDA], bench_probe.TARGET,
# bench_pgd.TARGET, bench_coco_probe.TARGET; bench_e2e.py writes its own target_e2e).
FFT_FLOOR_CUDA, FFT_FLOOR_CPU = 0.40, 0.20
PROBE_RATIO = 1.2
PGD_RATIO = 1.3
COCO_RATIO = 0.8
E2E_RATIO = 1.2


# ------------------------------------------------------------------------------------------- environment
def env_probe() -> dict:
    """What this Python has (run in a subprocess under the launcher, so hidden modules count as absent)."""
    import importlib
    import importlib.metadata as md
    import importlib.util

    hidden = [m.strip() for m in os.environ.get(HIDE_ENV, "").split(",") if m.strip()]
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "hidden_modules": hidden}
    try:
        env["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                                 if ln.startswith("model name")), platform.processor())
    except OSError:
        env["cpu_model"] = platform.processor()
    versions = {}
    for dist in DISTRIBUTIONS:
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    env["versions"] = versions
    modules: dict[str, dict] = {}
    for name in MODULES_IMPORTED + MODULES_LOOKED_UP:
        if name in hidden:
            modules[name] = {"importable": False, "error": f"hidden ({HIDE_ENV} / --hide)"}
            continue
        try:
            if name in MODULES_IMPORTED:
                importlib.import_module(name)
                ok = True
            else:
                ok = importlib.util.find_spec(name) is not None
            modules[name] = {"importable": ok, "error": None if ok else f"No module named {name!r}"}
        except BaseException as exc:  # noqa: BLE001 - a broken install counts as absent, with its error
            modules[name] = {"importable": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    env["modules"] = modules
    cuda: dict[str, Any] = {"available": False}
    if modules["torch"]["importable"]:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        cuda["torch_cuda"] = torch.version.cuda
        try:
            cuda["available"] = bool(torch.cuda.is_available())
            if cuda["available"]:
                cuda["device_count"] = torch.cuda.device_count()
                props = torch.cuda.get_device_properties(0)
                cuda.update(name=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                            multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version())
        except Exception as exc:  # noqa: BLE001
            cuda["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            cuda["nvidia_smi"] = out.stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError) as exc:
            cuda["nvidia_smi"] = f"failed: {exc}"
    env["cuda"] = cuda
    return env


# ------------------------------------------------------------------------------------------- the parts
@dataclass
class Ctx:
    device: str
    tiny: bool
    data_dir: Path
    env: dict
    work: Path
    cpu_count: int = 1
    threads: int | None = None  # OMP_NUM_THREADS for the parts (None: as the environment has it)


@dataclass
class Part:
    name: str
    title: str
    script: str | None  # a file under benchmarks/, or None for the pytest part
    args: Callable[[Ctx, Path], list]  # (ctx, the part's JSON/XML output file) -> command-line arguments
    parse: Callable[[Any, Ctx], dict]  # (the output, ctx) -> {"figures", "details", "target", "headline"}
    modules: tuple = ()  # modules that must be importable, else the part is skipped
    data: tuple = ()  # paths under --data-dir that must exist, else the part is skipped
    cuda_only: bool = False
    timeout_s: tuple = (300.0, 120.0)  # (full, --tiny)
    min_s: tuple = (30.0, 5.0)  # do not start with less budget than this (full, --tiny)
    env: dict = field(default_factory=dict)
    drop_env: tuple = ()


def _num(v) -> float | None:
    """A finite float, else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _put(figures: dict, name: str, value) -> None:
    v = _num(value)
    if v is not None:
        figures[name] = v


# pytest -m cuda ------------------------------------------------------------------------------------
def cuda_test_files() -> list[str]:
    """The test files (under pytest.ini's testpaths) that mention the ``cuda`` marker: collecting only those keeps the part
    short and keeps an unrelated file's missing optional dependency (onnxruntime, lightning, ...) out of its counts."""
    import configparser

    cp = configparser.ConfigParser()
    cp.read(ROOT / "pytest.ini")
    roots = cp.get("pytest", "testpaths", fallback="tests").split()
    files = set()
    for r in roots:
        for f in (ROOT / r).rglob("*.py"):
            if (f.name.startswith("test_") or f.name.endswith("_test.py")) and "mark.cuda" in f.read_text(errors="replace"):
                files.add(f.relative_to(ROOT).as_posix())
    return sorted(files)


def pytest_args(ctx: Ctx, out: Path) -> list:
    return ["-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
            f"--junitxml={out}", *cuda_test_files()]


def pytest_parse(out: Path, ctx: Ctx) -> dict:
    root = ET.parse(out).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed, skipped = [], []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                failed.append({"test": name, "message": (el.get("message") or "")[:300]})
        el = case.find("skipped")
        if el is not None:
            skipped.append({"test": name, "message": (el.get("message") or "")[:300]})
    figures = {"passed": passed, "failed": counts["failures"], "errors": counts["errors"], "skipped": counts["skipped"],
               "tests": counts["tests"]}
    return {"figures": figures, "details": {"files": cuda_test_files(), "failed": failed, "skipped": skipped},
            "target": {"figure": "failed + errors", "op": "==", "value": 0, "note": "and at least one test passed"},
            "met": counts["failures"] == 0 and counts["errors"] == 0 and passed > 0,
            "headline": ("passed", passed),
            "note": "; ".join(f"{len(v)} {k}, e.g. {v[0]['test']}: {v[0]['message']}" for k, v in (("failed", failed), ("skipped", skipped)) if v)}


# bench_fft.py -------------------------------------------------------------------------------------
def fft_args(size: int) -> Callable[[Ctx, Path], list]:
    def args(ctx: Ctx, out: Path) -> list:
        a = ["--device", ctx.device, "--data-dir", ctx.data_dir, "--skip-probe", "--skip-loops", "--json", out]
        if ctx.tiny:
            n = 256 if size == 32 else 4
            a += ["--n", n, "--size", size, "--modes", "reuse,pair", "--repeats", 2, "--bw-mib", 16, "--bw-tries", 3]
        else:
            n = 10000 if size == 32 else 512
            a += ["--n", n, "--size", size, "--modes", "reuse,pair", "--repeats", 5]
        return a
    return args


def fft_parse(out: Path, ctx: Ctx) -> dict:
    d = json.loads(out.read_text())
    fa, mem = d["freqprobe"], d["memory"]
    figures: dict = {}
    _put(figures, "bandwidth_gb_s", mem["bandwidth_bytes_per_s"] / 1e9)
    _put(figures, "floor_per_radius_ms", mem["floor_per_radius_s"] * 1e3)
    for mode, r in fa.items():
        _put(figures, f"{mode}_per_radius_ms", r["per_radius_s"] * 1e3)
        _put(figures, f"{mode}_image_decompositions_per_s", r["image_decompositions_per_s"])
        _put(figures, f"{mode}_floor_fraction", r.get("floor_fraction"))
        _put(figures, f"{mode}_best_floor_fraction", r.get("best_floor_fraction"))
    mode = "reuse" if "reuse" in fa else next(iter(fa))
    _put(figures, "floor_fraction", fa[mode].get("floor_fraction"))
    target = FFT_FLOOR_CUDA if ctx.device == "cuda" else FFT_FLOOR_CPU
    frac = figures.get("floor_fraction")
    a = d["args"]
    return {"figures": figures, "details": {"batch": f"{a['n']}x3x{a['size']}x{a['size']}", "radii": a["radii"],
                                            "floor_fraction_mode": mode, "device": d["env"].get("device")},
            "target": {"figure": "floor_fraction", "op": ">=", "value": target},
            "met": None if frac is None else frac >= target, "headline": ("floor_fraction", frac)}


# bench_probe.py -----------------------------------------------------------------------------------
def probe_args(ctx: Ctx, out: Path) -> list:
    a = ["--device", ctx.device, "--data-dir", ctx.data_dir, "--json", out]
    if ctx.tiny:
        a += ["--n", 8, "--repeats", 1, "--bare-batches", 8, "--probe-batch", 8, "--precisions", "fp32"]
    else:
        a += ["--n", 10000, "--repeats", 3, "--precisions", "fp32,bf16"]
    return a


def probe_parse(out: Path, ctx: Ctx) -> dict:
    d = json.loads(out.read_text())
    figures, details = {}, {}
    for prec, p in d["precisions"].items():
        _put(figures, f"{prec}_ratio", p["ratio"])
        _put(figures, f"{prec}_floor_s", p["floor"]["median_s"])
        _put(figures, f"{prec}_probe_s", p["probe"]["median_s"])
        _put(figures, f"{prec}_min_prediction_agreement", min(p["prediction_agreement"].values()))
        _put(figures, f"{prec}_accuracy_original", p["probe"]["accuracy"].get("original"))
        details[prec] = {"floor_setting": {"batch": p["floor"]["batch"], "channels_last": p["floor"]["channels_last"]},
                         "engine": p["probe"].get("engine")}
    prec = "fp32" if "fp32" in d["precisions"] else next(iter(d["precisions"]))
    _put(figures, "ratio", d["precisions"][prec]["ratio"])
    details["n"] = d["env"].get("n")
    ratio = figures.get("ratio")
    return {"figures": figures, "details": details,
            "target": {"figure": "ratio", "op": "<=", "value": PROBE_RATIO, "note": f"probe / bare forwards, {prec}"},
            "met": None if ratio is None else ratio <= PROBE_RATIO, "headline": ("ratio", ratio)}


# bench_pgd.py -------------------------------------------------------------------------------------
def pgd_args(ctx: Ctx, out: Path) -> list:
    a = ["--device", ctx.device, "--data-dir", ctx.data_dir, "--json", out]
    if ctx.tiny:
        a += ["--n", 8, "--batch-size", 8, "--repeats", 1, "--steps", 3]
    else:
        a += ["--n", 10000, "--batch-size", 1000, "--repeats", 3]
    return a


def pgd_parse(out: Path, ctx: Ctx) -> dict:
    d = json.loads(out.read_text())
    baseline = d.get("baseline") or ("torchattacks" if "torchattacks" in d else None)
    figures: dict = {}
    _put(figures, "ours_img_s", d["ours"]["img_per_s"])
    _put(figures, "clean_accuracy", d.get("clean_accuracy"))
    _put(figures, "robust_accuracy_ours", d["ours"].get("robust_accuracy"))
    if baseline and baseline in d:
        _put(figures, "baseline_img_s", d[baseline]["img_per_s"])
        _put(figures, "robust_accuracy_baseline", d[baseline].get("robust_accuracy"))
        _put(figures, "ratio", d.get("ratio"))
        for k, v in (d.get("agreement") or {}).items():
            _put(figures, k, v)
    ratio = figures.get("ratio")
    return {"figures": figures,
            "details": {"baseline": baseline, "baseline_reason": d.get("baseline_reason"),
                        "torchattacks": d["env"].get("torchattacks"), "n": d["env"].get("n"), "batch_size": d["env"].get("batch_size"),
                        "steps": d.get("args", {}).get("steps")},
            "target": {"figure": "ratio", "op": ">=", "value": PGD_RATIO, "note": f"ours / {baseline or 'no baseline'} img/s"},
            "met": None if ratio is None else ratio >= PGD_RATIO, "headline": ("ratio", ratio)}


# bench_e2e.py (written by another engineer; its JSON keys as agreed) -------------------------------
def e2e_args(ctx: Ctx, out: Path) -> list:
    a = ["--data-dir", ctx.data_dir, "--device", ctx.device, "--model", "timm:resnet50", "--json", out]
    if ctx.tiny:
        a += ["--images", 16, "--size", 64, "--precision", "fp32", "--workers", "0,1,2", "--batch-size", 8, "--tiny"]
    else:
        n = max(2, min(8, ctx.cpu_count))
        a += ["--images", 5000, "--size", 224, "--precision", "bf16", "--workers", f"0,1,{n}", "--batch-size", 256]
    return a


E2E_KEYS = ("decode_img_s", "runs", "forward_s", "ratio_e2e", "target_e2e", "projected_imagenet_val_min")


def e2e_parse(out: Path, ctx: Ctx) -> dict:
    d = json.loads(out.read_text())
    details = {k: d.get(k) for k in E2E_KEYS}
    missing = [k for k in E2E_KEYS if k not in d]
    if missing:
        details["missing_keys"] = missing
    figures: dict = {}
    for k, v in (d.get("decode_img_s") or {}).items():
        _put(figures, f"decode_img_s_workers{k}", v)
    for run in d.get("runs") or []:
        w = run.get("workers")
        for key in ("img_s", "wall_s", "data_wait_s"):
            _put(figures, f"{key}_workers{w}", run.get(key))
    for k in ("forward_s", "ratio_e2e", "projected_imagenet_val_min"):
        _put(figures, k, d.get(k))
    runs = [r for r in d.get("runs") or [] if _num(r.get("img_s")) is not None]
    if runs:
        best = max(runs, key=lambda r: r["img_s"])
        _put(figures, "img_s", best["img_s"])
        details["img_s_from_workers"] = best.get("workers")
    target = _num(d.get("target_e2e")) or E2E_RATIO
    ratio = figures.get("ratio_e2e")
    return {"figures": figures, "details": details,
            "target": {"figure": "ratio_e2e", "op": "<=", "value": target, "note": "end-to-end wall / bare forwards"},
            "met": None if ratio is None else ratio <= target, "headline": ("ratio_e2e", ratio)}


# bench_coco_probe.py ------------------------------------------------------------------------------
def coco_args(ctx: Ctx, out: Path) -> list:
    a = ["--device", ctx.device, "--mini", ctx.data_dir / "coco_val2017_mini", "--json", out]
    if ctx.tiny:
        a += ["--images", 2, "--batch-size", 2, "--bare-batches", 1, "--min-size", 64]
    else:
        a += ["--images", 1000, "--batch-size", 8, "--bare-batches", 30, "--precision", "fp32"]
    return a


def coco_parse(out: Path, ctx: Ctx) -> dict:
    d = json.loads(out.read_text())
    figures: dict = {}
    for k in ("bare_images_per_s", "probe_forwards_per_s", "ratio", "probe_wall_s", "images"):
        _put(figures, k, d.get(k))
    for k, v in (d.get("timings") or {}).items():
        _put(figures, f"probe_{k}", v)
    ratio = figures.get("ratio")
    return {"figures": figures, "details": {"model": d.get("model"), "precision": d.get("precision"), "batch_size": d.get("batch_size")},
            "target": {"figure": "ratio", "op": ">=", "value": COCO_RATIO, "note": "probe forwards/s / bare images/s"},
            "met": None if ratio is None else ratio >= COCO_RATIO, "headline": ("ratio", ratio)}


# bench_heatmap.py ---------------------------------------------------------------------------------
def heatmap_args(ctx: Ctx, out: Path) -> list:
    a = ["--device", ctx.device, "--data-dir", ctx.data_dir, "--json", out]
    if ctx.tiny:
        a += ["--n", 4, "--max-freq", 2]
    else:
        a += ["--n", 1000, "--eps", "4"]
    return a


def heatmap_parse(out: Path, ctx: Ctx) -> dict:
    d = json.loads(out.read_text())
    figures: dict = {}
    for k in ("forwards_per_s", "bare_images_per_s", "ratio", "wall_s", "forwards", "frequencies"):
        _put(figures, k, d.get(k))
    for i, e in enumerate(d.get("mean_error") or []):
        _put(figures, f"mean_error_{i}", e)
    ratio = figures.get("ratio")
    return {"figures": figures, "details": {"n": d.get("n"), "eps": d.get("eps"), "precision": d.get("precision")},
            "target": {"figure": "ratio", "op": ">=", "value": HEATMAP_RATIO, "note": "probe forwards/s / bare images/s"},
            "met": None if ratio is None else ratio >= HEATMAP_RATIO, "headline": ("ratio", ratio)}


#: the heat map's forwards against the bare model's (its perturbations are cheap next to a forward)
HEATMAP_RATIO = 0.8


CIFAR = ("cifar10_test/cifar10_test_jpeg_q75.npz", "cifar10_resnet_akamaster/resnet20-12fca82f.th")
PARTS = [
    Part("pytest-cuda", "CUDA-marked tests", None, pytest_args, pytest_parse, modules=("pytest", "hypothesis", "freqprobe"),
         cuda_only=True, timeout_s=(240.0, 240.0), min_s=(30.0, 30.0), env={"FREQPROBE_TEST_CUDA": "1"}),
    Part("fft-32", "fft-radial vs the copy floor, 32 px", "bench_fft.py", fft_args(32), fft_parse, modules=("freqprobe",),
         timeout_s=(120.0, 90.0), min_s=(20.0, 5.0)),
    Part("fft-224", "fft-radial vs the copy floor, 224 px", "bench_fft.py", fft_args(224), fft_parse, modules=("freqprobe",),
         timeout_s=(120.0, 90.0), min_s=(20.0, 5.0)),
    Part("probe", "lfc-hfc probe vs bare forwards", "bench_probe.py", probe_args, probe_parse, modules=("freqprobe",), data=CIFAR,
         timeout_s=(240.0, 120.0), min_s=(40.0, 5.0)),
    Part("pgd", "PGD-10 vs torchattacks / plain loop", "bench_pgd.py", pgd_args, pgd_parse, modules=("freqprobe",), data=CIFAR,
         timeout_s=(180.0, 120.0), min_s=(30.0, 5.0)),
    Part("e2e", "image folder end to end (ImageNet-style)", "bench_e2e.py", e2e_args, e2e_parse, modules=("freqprobe", "timm"),
         timeout_s=(300.0, 120.0), min_s=(60.0, 5.0)),
    Part("heatmap", "fourier-heatmap on CIFAR (every frequency) vs bare forwards", "bench_heatmap.py", heatmap_args,
         heatmap_parse, modules=("freqprobe",), data=CIFAR, timeout_s=(240.0, 120.0), min_s=(30.0, 5.0)),
    Part("coco", "coco-map vs bare RetinaNet forwards", "bench_coco_probe.py", coco_args, coco_parse,
         modules=("freqprobe", "pycocotools", "torchvision"),
         data=("coco_val2017_mini/instances_val2017_mini.json", "coco_val2017_mini/val2017"),
         timeout_s=(240.0, 120.0), min_s=(60.0, 5.0), drop_env=("FREQPROBE_DISABLE_PLUGIN_AUTOLOAD",)),
]
PART_NAMES = [p.name for p in PARTS]
WHY_MODULE = {"pycocotools": "the coco data source reads its annotations through pycocotools.coco.COCO "
                             "(faster-coco-eval alone is not enough)",
              "hypothesis": "conftest.py imports it",
              "timm": "the ImageNet-style run uses timm:resnet50"}


# ------------------------------------------------------------------------------------------- running
def _kill_group(proc: subprocess.Popen) -> None:
    """Ends the process group this suite started for the part (its own session), TERM then KILL."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_command(cmd: list, env: dict, timeout: float, log: Path) -> tuple[int | None, float]:
    """(exit code or None on timeout, seconds); stdout and stderr go to ``log``."""
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc = None
        except BaseException:
            _kill_group(proc)
            raise
    return rc, time.perf_counter() - t0


def tail(path: Path, n: int = 1500) -> str:
    try:
        text = path.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""
    return text


def last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"(Error|Exception|error:|Traceback|Killed)", ln):
            return ln[:300]
    return lines[-1][:300] if lines else ""


def child_env(hidden: list, extra: dict | None = None, drop: tuple = (), threads: int | None = None) -> dict:
    env = dict(os.environ)
    for k in drop:
        env.pop(k, None)
    env[HIDE_ENV] = ",".join(hidden)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def new_part(name: str, title: str) -> dict:
    return {"name": name, "title": title, "status": "skipped", "reason": "", "figures": {}, "target": None, "met": None,
            "seconds": 0.0}


def skip_reason(part: Part, ctx: Ctx, scripts: dict, left_s: float, budget_s: float) -> str | None:
    cuda = ctx.env.get("cuda", {})
    if part.cuda_only and ctx.device != "cuda":
        return "no CUDA device"
    if ctx.device == "cuda" and not cuda.get("available"):
        return "no CUDA device (torch.cuda.is_available() is False on this machine" + (f": {cuda['error']}" if cuda.get("error") else "") + ")"
    need = part.min_s[1 if ctx.tiny else 0]
    if left_s < need:
        return f"the suite's budget is spent ({max(left_s, 0):.0f} s of {budget_s:.0f} s left; this part needs about {need:.0f} s)"
    script = scripts.get(part.name)
    if script is not None and not script.is_file():
        return f"{script} is not there (not written yet, or not in this checkout)"
    modules = ctx.env.get("modules", {})
    for m in part.modules:
        info = modules.get(m)
        if info is None or not info.get("importable"):
            err = (info or {}).get("error") or "environment probe failed"
            why = WHY_MODULE.get(m)
            return f"{m} is not importable ({err})" + (f"; {why}" if why else "")
    for rel in part.data:
        if not (ctx.data_dir / rel).exists():
            return f"missing {ctx.data_dir / rel} (pass --data-dir: the shared data with cifar10_test, cifar10_resnet_akamaster, coco_val2017_mini)"
    return None


def run_part(part: Part, ctx: Ctx, scripts: dict, hidden: list, extra_args: dict, timeouts: dict, deadline: float,
             budget_s: float) -> dict:
    res = new_part(part.name, part.title)
    left = deadline - time.monotonic()
    why = skip_reason(part, ctx, scripts, left, budget_s)
    if why:
        res["reason"] = why
        return res
    out = ctx.work / f"{part.name}.{'xml' if part.script is None else 'json'}"
    log = ctx.work / f"{part.name}.log"
    out.unlink(missing_ok=True)  # a --log-dir used before must not lend this run an old result
    target = [str(scripts[part.name])] if part.script else []
    args = [str(a) for a in part.args(ctx, out)] + extra_args.get(part.name, [])
    cmd = [sys.executable, "-c", LAUNCHER, *target, *args]
    own = timeouts.get(part.name, part.timeout_s[1 if ctx.tiny else 0])
    timeout = min(own, left)
    shown = [os.path.relpath(t, ROOT) if Path(t).is_relative_to(ROOT) else t for t in target]
    res["command"] = " ".join(shlex.quote(c) for c in ["python", *shown, *args])
    rc, secs = run_command(cmd, child_env(hidden, part.env, part.drop_env, ctx.threads), timeout, log)
    res["seconds"] = round(secs, 2)
    res["rc"] = rc
    res["log_tail"] = tail(log)
    if rc is None:
        res["status"] = "failed"
        res["reason"] = (f"timed out after {timeout:.0f} s" + (" (the suite's budget)" if timeout < own else "")
                         + f"; last output: {last_error_line(res['log_tail'])}")
        return res
    if not out.is_file():
        res["status"] = "failed"
        res["reason"] = f"exit code {rc}, no results written; last output: {last_error_line(res['log_tail'])}"
        return res
    try:
        parsed = part.parse(out, ctx)
    except Exception as exc:  # noqa: BLE001 - a results file the suite cannot read fails the part, not the suite
        res["status"] = "failed"
        res["reason"] = f"exit code {rc}; could not read {out.name}: {type(exc).__name__}: {exc}"
        return res
    res.update(status="ok", figures=parsed["figures"], target=parsed["target"], met=parsed["met"],
               details=parsed.get("details", {}), headline=parsed.get("headline", (None, None))[0])
    notes = []
    if rc != 0:
        notes.append(f"exit code {rc}" + ("" if part.script is None else " (the script's own verdict on its target)"))
    if parsed.get("note"):
        notes.append(parsed["note"])
    res["reason"] = "; ".join(notes)
    if part.name == "pgd" and parsed["details"].get("baseline") != "torchattacks":
        res["reason"] = ((res["reason"] + "; ") if res["reason"] else "") + \
            f"compared with {parsed['details'].get('baseline') or 'nothing'}: {parsed['details'].get('baseline_reason')}"
    return res


def probe_environment(hidden: list, work: Path, timeout: float) -> dict:
    out = work / "env.json"
    code = LAUNCHER
    cmd = [sys.executable, "-c", code, str(Path(__file__).resolve()), "--env-probe", str(out)]
    rc, secs = run_command(cmd, child_env(hidden), timeout, work / "env.log")
    if rc == 0 and out.is_file():
        env = json.loads(out.read_text())
    else:
        env = {"error": f"the environment probe failed (exit code {rc}): {last_error_line(tail(work / 'env.log'))}",
               "cpu_count": os.cpu_count(), "python": platform.python_version(), "hidden_modules": hidden, "cuda": {"available": False}}
    env["probe_seconds"] = round(secs, 2)
    try:
        env["loadavg"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        pass
    return env


# ------------------------------------------------------------------------------------------- report
def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0 or 0.01 <= abs(v) < 1e5:
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return f"{v:.3g}"
    return str(v)


def table(doc: dict) -> str:
    rows = [("part", "status", "s", "figure", "value", "target", "met", "note")]
    for p in doc["parts"]:
        fig = p.get("headline")
        val = p["figures"].get(fig) if fig else None
        t = p.get("target") or {}
        tgt = f"{t['op']} {fmt(t['value'])}" if t else ""
        met = {True: "yes", False: "NO", None: "-"}[p["met"]]
        note = p["reason"] if p["status"] != "ok" or p["reason"] else ""
        rows.append((p["name"], p["status"], f"{p['seconds']:.1f}", fig or "", fmt(val), tgt, met, note[:110]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    extra = []
    for p in doc["parts"]:
        if p["name"] == "e2e" and p["status"] == "ok":
            f = p["figures"]
            extra.append(f"e2e: {fmt(f.get('img_s'))} images/s, ImageNet-val (50,000) projected {fmt(f.get('projected_imagenet_val_min'))} min; "
                         + ", ".join(f"decode {k.removeprefix('decode_img_s_workers')} worker(s) {fmt(v)} img/s"
                                     for k, v in f.items() if k.startswith("decode_img_s_workers")))
    return "\n".join(lines + extra)


def write_json(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _kv(items: list, what: str) -> dict:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or name not in PART_NAMES:
            raise SystemExit(f"gpu_suite.py: {what} takes NAME=VALUE with NAME one of {', '.join(PART_NAMES)}: {item!r}")
        out[name] = value
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help=f"the shared data (default {DEFAULT_DATA})")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write every figure and target here (required)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default) or cpu (a dry run)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: a dry run of every part (what CI runs, with --device cpu)")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help=f"the whole suite's budget (default {DEFAULT_BUDGET_S:.0f} s)")
    ap.add_argument("--only", default=None, help=f"comma list of parts to run (default all: {','.join(PART_NAMES)})")
    ap.add_argument("--skip", default="", help="comma list of parts to leave out (recorded as skipped)")
    ap.add_argument("--hide", default="", help=f"comma list of modules to make unimportable in every subprocess (also {HIDE_ENV})")
    ap.add_argument("--extra", action="append", metavar="PART=ARGS", help="more arguments for a part's script (appended; repeatable)")
    ap.add_argument("--timeout", action="append", metavar="PART=S", help="a part's own timeout in seconds (repeatable)")
    ap.add_argument("--script", action="append", metavar="PART=PATH", help="run another file as a part's script")
    ap.add_argument("--log-dir", type=Path, default=None, help="keep each part's full output and result file here")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS for every part (default: 1 for a --device cpu run, so that a busy machine's "
                         "oversubscribed cores do not make the dry run crawl; else as the environment has it)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed as well")
    ap.add_argument("--env-probe", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.env_probe:  # the subprocess that records the environment
        args.env_probe.write_text(json.dumps(env_probe(), indent=2, default=str) + "\n")
        return 0
    if args.json is None:
        ap.error("--json FILE is required")

    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else None)
    t_start, started = time.monotonic(), _dt.datetime.now(_dt.timezone.utc)
    deadline = t_start + args.budget_s
    hidden = sorted({m.strip() for m in (os.environ.get(HIDE_ENV, "") + "," + args.hide).split(",") if m.strip()})
    chosen = PART_NAMES if args.only is None else [p.strip() for p in args.only.split(",") if p.strip()]
    left_out = {p.strip() for p in args.skip.split(",") if p.strip()}
    for name in [*chosen, *left_out]:
        if name not in PART_NAMES:
            ap.error(f"unknown part {name!r}; the parts: {', '.join(PART_NAMES)}")
    extra_args = {k: shlex.split(v) for k, v in _kv(args.extra, "--extra").items()}
    timeouts = {k: float(v) for k, v in _kv(args.timeout, "--timeout").items()}
    scripts = {p.name: BENCH / p.script for p in PARTS if p.script}
    scripts.update({k: Path(v).resolve() for k, v in _kv(args.script, "--script").items()})

    if args.log_dir:
        work = args.log_dir.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="freqprobe-gpu-suite-"))
    doc: dict = {"suite": "freqprobe gpu suite", "schema": 1,
                 "command": ["benchmarks/gpu_suite.py", *(argv if argv is not None else sys.argv[1:])],
                 "started": started.isoformat(timespec="seconds"), "device": args.device, "tiny": args.tiny,
                 "note": "--tiny: figures from tiny sizes, not measurements of the targets" if args.tiny else "",
                 "data_dir": str(args.data_dir), "budget_s": args.budget_s, "threads": threads, "hidden_modules": hidden,
                 "env": {}, "parts": []}
    try:
        print(f"gpu suite: device {args.device}{' (tiny)' if args.tiny else ''}, data {args.data_dir}, budget {args.budget_s:.0f} s"
              + (f", hiding {','.join(hidden)}" if hidden else ""), flush=True)
        env = probe_environment(hidden, work, timeout=120.0)
        doc["env"] = env
        cuda = env.get("cuda", {})
        print(f"environment ({env.get('probe_seconds')} s): python {env.get('python')}, torch {env.get('torch')}, "
              f"CUDA {cuda.get('torch_cuda')}, GPU {cuda.get('name') if cuda.get('available') else 'none'}, "
              f"{env.get('cpu_count')} CPUs" + (f"; {env['error']}" if env.get("error") else ""), flush=True)
        ctx = Ctx(device=args.device, tiny=args.tiny, data_dir=args.data_dir.resolve(), env=env, work=work,
                  cpu_count=env.get("cpu_count") or os.cpu_count() or 1, threads=threads)
        write_json(doc, args.json)
        for i, part in enumerate(PARTS, 1):
            if part.name not in chosen or part.name in left_out:
                r = new_part(part.name, part.title)
                r["reason"] = "left out (--only / --skip)"
            else:
                print(f"[{i}/{len(PARTS)}] {part.name}: {part.title} ...", flush=True)
                r = run_part(part, ctx, scripts, hidden, extra_args, timeouts, deadline, args.budget_s)
                print(f"    {r['status']} ({r['seconds']:.1f} s)" + (f": {r['reason']}" if r["reason"] else ""), flush=True)
            doc["parts"].append(r)
            doc["wall_s"] = round(time.monotonic() - t_start, 2)
            write_json(doc, args.json)
    finally:
        if not args.log_dir:
            shutil.rmtree(work, ignore_errors=True)
    counts = {s: sum(p["status"] == s for p in doc["parts"]) for s in ("ok", "failed", "skipped")}
    counts["met"] = sum(p["met"] is True for p in doc["parts"])
    counts["not_met"] = sum(p["met"] is False for p in doc["parts"])
    doc["summary"] = counts
    doc["wall_s"] = round(time.monotonic() - t_start, 2)
    write_json(doc, args.json)
    print("\n" + table(doc))
    print(f"\n{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped; targets met {counts['met']}, "
          f"missed {counts['not_met']}; {doc['wall_s']:.0f} s; wrote {args.json}")
    if args.tiny:
        print("(--tiny: the figures come from tiny sizes and say nothing about the targets; this run checks that every part works)")
    if counts["failed"]:
        return 1
    if args.device == "cuda" and not doc["env"].get("cuda", {}).get("available"):
        print("no CUDA device here: nothing was measured (use --device cpu --tiny for a dry run)")
        return 1
    return 1 if args.strict and counts["not_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
