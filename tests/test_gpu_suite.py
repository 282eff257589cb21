"""benchmarks/gpu_suite.py: the CPU dry run CI runs (every part at tiny sizes, one JSON), and what the suite does with a
missing dependency, a crashing or hanging part, a spent budget and bench_e2e.py's JSON."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.py"
# The shared data as conftest.py's ``shared_data`` fixture finds it: ../shared/data beside the checkout.
SHARED_DATA = REPO.parent / "shared" / "data"
NEEDED = ("cifar10_test", "cifar10_resnet_akamaster", "coco_val2017_mini")
PARTS = ["pytest-cuda", "fft-32", "fft-224", "probe", "pgd", "e2e", "heatmap", "coco"]


def _suite_module():
    spec = importlib.util.spec_from_file_location("freqprobe_gpu_suite", SUITE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _data() -> Path:
    missing = [n for n in NEEDED if not (SHARED_DATA / n).is_dir()]
    if missing:
        pytest.skip(f"real test data not found at {SHARED_DATA} (../shared/data beside the checkout; missing {', '.join(missing)})")
    return SHARED_DATA


def _env() -> dict:
    env = dict(os.environ)
    env.pop("FREQPROBE_DISABLE_PLUGIN_AUTOLOAD", None)  # the coco part finds the coco plugin through its entry point
    env.pop("FREQPROBE_SUITE_HIDE", None)
    return env


def _run(args: list, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict, float]:
    out = Path(args[args.index("--json") + 1])
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SUITE), *map(str, args)], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - t0

    def no_nan(c):
        raise AssertionError(f"{out} holds {c}")

    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text(), parse_constant=no_nan), wall


def _parts(doc: dict) -> dict:
    return {p["name"]: p for p in doc["parts"]}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """``gpu_suite.py --device cpu --tiny``: the run CI makes, once for the module."""
    data = _data()
    out = tmp_path_factory.mktemp("suite") / "suite.json"
    return _run(["--device", "cpu", "--tiny", "--data-dir", data, "--json", out])


def test_dry_run_has_every_part_with_a_status(dry_run):
    proc, doc, wall = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]  # no part failed
    assert [p["name"] for p in doc["parts"]] == PARTS
    for p in doc["parts"]:
        assert p["status"] in ("ok", "failed", "skipped"), p
        assert isinstance(p["seconds"], (int, float)) and p["seconds"] >= 0
        for key in ("reason", "figures", "target", "met"):
            assert key in p, (p["name"], key)
        if p["status"] != "ok":
            assert p["reason"], p  # a part that did not run says why
    assert doc["device"] == "cpu" and doc["tiny"] is True
    assert doc["summary"]["failed"] == 0
    print(f"dry run: {wall:.1f} s wall\n{proc.stdout[proc.stdout.find('part '):]}")


def test_ok_parts_have_finite_figures_and_a_target(dry_run):
    _, doc, _ = dry_run
    ok = [p for p in doc["parts"] if p["status"] == "ok"]
    assert ok
    for p in ok:
        assert p["figures"], p["name"]
        for name, v in p["figures"].items():
            assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), (p["name"], name, v)
        t = p["target"]
        assert t["op"] in (">=", "<=", "==") and isinstance(t["value"], (int, float)), p["name"]
        assert t["figure"] in p["figures"] or p["name"] == "pytest-cuda", (p["name"], t)
        assert p["met"] in (True, False, None)
        if t["figure"] in p["figures"]:
            v, want = p["figures"][t["figure"]], t["value"]
            assert p["met"] == (v >= want if t["op"] == ">=" else v <= want), p["name"]


def test_the_cpu_parts_run_and_the_cuda_tests_are_skipped(dry_run):
    _, doc, _ = dry_run
    parts = _parts(doc)
    for name in ("fft-32", "fft-224", "probe", "pgd", "heatmap"):
        assert parts[name]["status"] == "ok", parts[name]
    assert parts["heatmap"]["figures"]["frequencies"] == 7 and parts["heatmap"]["figures"]["forwards"] == 4 * 8
    assert parts["pytest-cuda"]["status"] == "skipped" and parts["pytest-cuda"]["reason"] == "no CUDA device"
    assert 0 < parts["fft-32"]["figures"]["floor_fraction"] and parts["fft-32"]["target"]["value"] == 0.20  # the CPU target
    assert parts["probe"]["figures"]["fp32_min_prediction_agreement"] == 1.0  # the probe predicts as the bare forwards
    assert parts["pgd"]["details"]["baseline"] == "torchattacks" or parts["pgd"]["reason"]
    e2e = parts["e2e"]
    if not (REPO / "benchmarks" / "bench_e2e.py").is_file():
        assert e2e["status"] == "skipped" and "bench_e2e.py is not there" in e2e["reason"]
    if importlib.util.find_spec("pycocotools") is not None:
        assert parts["coco"]["status"] == "ok", parts["coco"]
    else:
        assert parts["coco"]["status"] == "skipped" and "pycocotools" in parts["coco"]["reason"]


def test_the_environment_is_recorded(dry_run):
    proc, doc, _ = dry_run
    env = doc["env"]
    for dist in ("torch", "torchvision", "timm", "pycocotools", "faster-coco-eval", "torchattacks"):
        assert dist in env["versions"]
    assert env["versions"]["torch"] and env["cpu_count"] >= 1 and env["cuda"]["available"] is False
    assert env["modules"]["freqprobe"]["importable"] is True
    table = proc.stdout[proc.stdout.find("part "):]
    assert "status" in table and all(name in table for name in PARTS)


FAKE_E2E = """\
import json, sys
out = sys.argv[sys.argv.index("--json") + 1]
assert sys.argv[sys.argv.index("--model") + 1] == "timm:resnet50"
json.dump({"decode_img_s": {"1": 410.5, "2": 790.0},
           "runs": [{"workers": 0, "wall_s": 9.0, "data_wait_s": 4.0, "img_s": 55.0},
                    {"workers": 2, "wall_s": 5.0, "data_wait_s": 0.2, "img_s": 100.0}],
           "forward_s": 4.5, "ratio_e2e": 1.11, "target_e2e": 1.2, "projected_imagenet_val_min": 8.3}, open(out, "w"))
"""


def test_missing_dependency_crash_hang_and_e2e_json(tmp_path):
    """One run: pycocotools and torchattacks hidden, fft-32 crashes, fft-224 hangs, e2e is a stand-in writing the agreed keys."""
    data = _data()
    (tmp_path / "crash.py").write_text("raise RuntimeError('boom in the part')\n")
    (tmp_path / "hang.py").write_text("import time\nprint('hanging', flush=True)\ntime.sleep(300)\n")
    (tmp_path / "e2e.py").write_text(FAKE_E2E)
    out = tmp_path / "suite.json"
    proc, doc, wall = _run(["--device", "cpu", "--tiny", "--data-dir", data, "--json", out, "--only", "fft-32,fft-224,pgd,e2e,coco",
                            "--hide", "pycocotools,torchattacks", "--script", f"fft-32={tmp_path / 'crash.py'}",
                            "--script", f"fft-224={tmp_path / 'hang.py'}", "--timeout", "fft-224=3",
                            "--script", f"e2e={tmp_path / 'e2e.py'}"])
    parts = _parts(doc)
    assert proc.returncode == 1  # a part failed
    assert [p["name"] for p in doc["parts"]] == PARTS and doc["hidden_modules"] == ["pycocotools", "torchattacks"]
    assert parts["coco"]["status"] == "skipped" and "pycocotools is not importable" in parts["coco"]["reason"]
    assert doc["env"]["modules"]["pycocotools"]["importable"] is False
    # torchattacks hidden: PGD still runs, against the plain loop, and says so
    assert parts["pgd"]["status"] == "ok", parts["pgd"]
    assert parts["pgd"]["details"]["baseline"] == "plain" and "torchattacks is not importable" in parts["pgd"]["reason"]
    assert parts["pgd"]["figures"]["identical_predictions"] >= 0 and parts["pgd"]["figures"]["baseline_img_s"] > 0
    # a crash and a hang cost their own part only
    assert parts["fft-32"]["status"] == "failed" and "boom in the part" in parts["fft-32"]["reason"]
    assert parts["fft-224"]["status"] == "failed" and "timed out after 3 s" in parts["fft-224"]["reason"]
    assert parts["fft-224"]["seconds"] < 20
    for name in ("pytest-cuda", "probe"):
        assert parts[name]["status"] == "skipped" and "left out" in parts[name]["reason"]
    # bench_e2e.py's keys, copied
    e2e = parts["e2e"]
    assert e2e["status"] == "ok", e2e
    f = e2e["figures"]
    assert f["decode_img_s_workers1"] == 410.5 and f["decode_img_s_workers2"] == 790.0
    assert f["img_s"] == 100.0 and f["projected_imagenet_val_min"] == 8.3 and f["ratio_e2e"] == 1.11
    assert e2e["target"] == {"figure": "ratio_e2e", "op": "<=", "value": 1.2, "note": e2e["target"]["note"]} and e2e["met"] is True
    assert e2e["details"]["runs"][1]["workers"] == 2


def test_budget_launcher_and_pytest_counts(tmp_path):
    """Without a subprocess of the suite: the budget check, the launcher's hiding, the junit counts of the pytest part."""
    g = _suite_module()
    ctx = g.Ctx(device="cpu", tiny=True, data_dir=tmp_path, env={"modules": {"freqprobe": {"importable": True}}}, work=tmp_path)
    fft = next(p for p in g.PARTS if p.name == "fft-32")
    assert "budget is spent" in g.skip_reason(fft, ctx, {}, left_s=1.0, budget_s=480)
    assert g.skip_reason(fft, ctx, {}, left_s=100.0, budget_s=480) is None
    probe = next(p for p in g.PARTS if p.name == "probe")
    assert "missing" in g.skip_reason(probe, ctx, {}, left_s=100.0, budget_s=480)  # no shared data in tmp_path
    cuda = next(p for p in g.PARTS if p.name == "pytest-cuda")
    assert g.skip_reason(cuda, ctx, {}, left_s=100.0, budget_s=480) == "no CUDA device"

    script = tmp_path / "imp.py"
    script.write_text("import sys\ntry:\n    import json\nexcept ImportError as e:\n    print('hidden:', e)\nelse:\n    print('seen', sys.argv[1:])\n")
    run = lambda hide: subprocess.run([sys.executable, "-c", g.LAUNCHER, str(script), "a", "b"], capture_output=True, text=True,  # noqa: E731
                                      env={**os.environ, g.HIDE_ENV: hide}, timeout=60).stdout
    assert run("") == "seen ['a', 'b']\n"
    assert run("json").startswith("hidden:")

    (tmp_path / "test_x.py").write_text("import pytest\n\ndef test_a():\n    pass\n\ndef test_b():\n    assert 0\n\n"
                                        "def test_c():\n    pytest.skip('no gpu here')\n")
    xml = tmp_path / "r.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:freqprobe", "-p", "no:cacheprovider", str(tmp_path / "test_x.py"),
                    f"--junitxml={xml}", "--rootdir", str(tmp_path), "-c", os.devnull], cwd=tmp_path, capture_output=True, timeout=120)
    r = g.pytest_parse(xml, ctx)
    assert r["figures"] == {"passed": 1, "failed": 1, "errors": 0, "skipped": 1, "tests": 3} and r["met"] is False
    assert r["details"]["skipped"][0]["message"].endswith("no gpu here") and "test_b" in r["details"]["failed"][0]["test"]
