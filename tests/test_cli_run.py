"""`freqprobe run` end to end: output files, manifest, determinism, checkpoints, model sources, bad inputs.

Most tests call :func:`freqprobe.cli.main` in-process: it is what the console script runs
(``entry() = sys.exit(main())``) and the only place that maps freqprobe errors to exit code 2.
(click's ``CliRunner`` against the ``cli`` group would not: errors would escape as exceptions.)
A few tests run the real console script in a subprocess.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import reference

REPO = Path(__file__).resolve().parents[1]
MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)


# ------------------------------------------------------------------ helpers


def read_csv(path: Path):
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return r.fieldnames, list(r)


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def freqprobe_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "freqprobe"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "freqprobe.cli"]


def assert_clean_failure(rc, err, out_dir: Path, *needles):
    """Exit 2, a short message, no traceback, nothing written (no out dir, no partial sibling)."""
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.startswith("Error: "), err
    assert len(err.strip().splitlines()) <= 8, err
    for n in needles:
        assert n.lower() in err.lower(), (n, err)
    assert not out_dir.exists()
    parent = out_dir.parent
    if parent.exists():
        assert not [p.name for p in parent.iterdir() if p.name.startswith(f".{out_dir.name}.partial")]


@pytest.fixture
def tiny_weights(tiny_model_file, tiny_npz, tmp_path) -> Path:
    """A state_dict for tinynet whose predictions vary between images and depend on high frequencies."""
    m = load_module(tiny_model_file, "tinynet_for_weights").tinynet()
    x, _ = npz_images(tiny_npz)
    with torch.no_grad():
        m[0].weight.sub_(m[0].weight.mean((2, 3), keepdim=True))  # zero-sum kernels: edge detectors
        f = m[:4](normalise(x))
        m[4].weight.copy_(m[4].weight * 3 / (f.std(0) + 1e-8))  # standardised features -> spread-out logits
        m[4].bias.copy_(-(m[4].weight @ f.mean(0)))
    p = tmp_path / "tiny_weights.pt"
    torch.save(m.state_dict(), p)
    return p


def reference_model(tiny_model_file, weights: Path):
    mod = load_module(tiny_model_file, "tinynet_reference")
    m = mod.tinynet()
    m.load_state_dict(torch.load(weights, weights_only=True))
    return m.eval()


def npz_images(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = np.load(path)
    x = d["x"].astype(np.float64).transpose(0, 3, 1, 2) / 255.0
    return x, d["y"]


def numpy_fft_split(x: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Independent fft-radial (exclusive rule), tests/reference.py."""
    return reference.fft_radial(x, r, "exclusive")


def normalise(x: np.ndarray, mean=MEAN, std=STD) -> torch.Tensor:
    t = torch.from_numpy(x).float()
    return (t - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def forward(model, x: np.ndarray, mean=MEAN, std=STD):
    with torch.no_grad():
        logits = model(normalise(x, mean, std))
    prob = torch.softmax(logits.double(), -1)
    top2 = prob.topk(2, -1).values
    conf, pred = prob.max(-1)
    return pred.numpy(), conf.numpy(), (top2[:, 0] - top2[:, 1]).numpy()


def run_args(model_file, data, weights, out, *extra):
    return ["run", "--model", f"{model_file}:tinynet", "--data", f"npz:{data}", "--checkpoint", weights,
            "--probe", "lfc-hfc", "--radii", "4,8", "--out", out, "--device", "cpu", "-q",
            "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), *extra]


# ------------------------------------------------------------------ a full run
def test_run_writes_consistent_outputs(cli, monkeypatch, tiny_model_file, tiny_npz, tiny_weights, tmp_path):
    out = tmp_path / "out"
    args = run_args(tiny_model_file, tiny_npz, tiny_weights, out)
    monkeypatch.setattr(sys, "argv", ["freqprobe", *map(str, args)])
    rc, stdout, err = cli(*args)
    assert rc == 0, err
    assert "results in" in stdout and "original" in stdout
    n = 24

    # summary.csv: exact columns, one row per variant/param, consistent with samples.csv
    cols, summary = read_csv(out / "summary.csv")
    assert cols == ["probe", "transform", "decomposer", "variant", "param", "metric", "value", "n"]
    assert [(r["variant"], r["param"]) for r in summary] == [("original", ""), ("low", "4"), ("high", "4"), ("low", "8"), ("high", "8"),
                                                           ("hfc-reliance", "")]  # the score's row last (tests/test_scores.py)
    assert {r["probe"] for r in summary} == {"lfc-hfc"}
    assert {r["decomposer"] for r in summary} == {"fft-radial"}
    assert {r["metric"] for r in summary} == {"accuracy"}
    assert {r["transform"] for r in summary} == {""}
    assert {r["n"] for r in summary} == {str(n)}

    cols, samples = read_csv(out / "samples.csv")
    assert cols == ["index", "label", "variant", "param", "pred", "confidence"]
    assert len(samples) == n * 5
    by_variant: dict = {}
    for s in samples:
        by_variant.setdefault((s["variant"], s["param"]), []).append(s)
    assert set(by_variant) == {(r["variant"], r["param"]) for r in summary if r["variant"] != "hfc-reliance"}
    _, y = npz_images(tiny_npz)
    for key, rows in by_variant.items():
        assert [int(s["index"]) for s in rows] == list(range(n))
        assert [int(s["label"]) for s in rows] == y.tolist()
        acc = np.mean([int(s["pred"]) == int(s["label"]) for s in rows])
        value = next(float(r["value"]) for r in summary if (r["variant"], r["param"]) == key)
        assert value == pytest.approx(acc, abs=1e-6), key

    # predictions and confidences match an independent forward pass (same normalisation, numpy FFT split)
    model = reference_model(tiny_model_file, tiny_weights)
    x, _ = npz_images(tiny_npz)
    inputs = {("original", ""): x}
    for r in (4, 8):
        low, high = numpy_fft_split(x, r)
        inputs[("low", str(r))], inputs[("high", str(r))] = low, high
    preds_seen = set()
    for key, xs in inputs.items():
        pred, conf, margin = forward(model, xs)
        got_pred = np.array([int(s["pred"]) for s in by_variant[key]])
        got_conf = np.array([float(s["confidence"]) for s in by_variant[key]])
        np.testing.assert_allclose(got_conf, conf, atol=2e-4, err_msg=str(key))
        sure = margin > 1e-3
        np.testing.assert_array_equal(got_pred[sure], pred[sure], err_msg=str(key))
        preds_seen |= set(pred.tolist())
    assert len(preds_seen) > 1  # the check above is not vacuous

    # manifest
    man = json.loads((out / "manifest.json").read_text())
    import timm

    import freqprobe

    assert man["versions"]["freqprobe"] == freqprobe.__version__
    assert man["versions"]["torch"] == torch.__version__
    assert man["versions"]["timm"] == timm.__version__
    assert man["command"].startswith("freqprobe run") and "--radii 4,8" in man["command"]
    assert man["seed"] == 0
    assert man["device"] == "cpu"
    assert man["model"]["spec"] == f"{tiny_model_file}:tinynet"
    assert man["model"]["checkpoint_sha256"] == hashlib.sha256(tiny_weights.read_bytes()).hexdigest()
    assert Path(man["model"]["checkpoint"]) == tiny_weights.resolve()
    assert man["model"]["mean"] == pytest.approx(list(MEAN)) and man["model"]["std"] == pytest.approx(list(STD))
    assert man["data"]["spec"] == f"npz:{tiny_npz}"
    assert man["data"]["n"] == n and man["data"]["n_evaluated"] == n
    assert man["decomposer"]["name"] == "fft-radial"
    assert man["decomposer"]["options"] == {"rule": "exclusive"}
    assert man["decomposer"]["params"] == [4.0, 8.0]
    assert man["rescale"]["policy"] == "none"
    for stage in ("load_s", "probe_s", "write_s", "decompose_s", "inference_s", "total_s"):
        assert isinstance(man["timings"][stage], float) and man["timings"][stage] >= 0, stage
    assert set(man["outputs"]) == {p.name for p in out.iterdir()}

    # plots and the Figure-2 gallery: its selection follows from samples.csv
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, fig2 = read_csv(out / "figure2.csv")
    for r in ("4", "8"):
        pick = [i for i in range(n)
                if all(int(by_variant[k][i]["pred"]) == y[i] for k in [("original", ""), ("high", r)])
                and int(by_variant[("low", r)][i]["pred"]) != y[i]]
        assert [int(g["index"]) for g in fig2 if g["param"] == r] == pick[:8]
        assert (out / f"figure2_r{r}.png").exists() == bool(pick)
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_figure2_gallery_written(cli, tiny_model_file, tiny_npz, tiny_weights, tmp_path):
    """Labels = the model's own predictions, so the original is always right and the gallery gets filled."""
    model = reference_model(tiny_model_file, tiny_weights)
    x, _ = npz_images(tiny_npz)
    pred, _, _ = forward(model, x)
    data = tmp_path / "self_labelled.npz"
    np.savez(data, x=np.load(tiny_npz)["x"], y=pred, class_names=np.array(["a", "b", "c", "d"]))
    out = tmp_path / "out"
    rc, _, err = cli(*run_args(tiny_model_file, data, tiny_weights, out, "--gallery-size", "2"))
    assert rc == 0, err
    _, summary = read_csv(out / "summary.csv")
    assert float(summary[0]["value"]) == 1.0
    _, fig2 = read_csv(out / "figure2.csv")
    assert fig2, "expected at least one Figure-2 sample"
    for r in {g["param"] for g in fig2}:
        rows = [g for g in fig2 if g["param"] == r]
        assert len(rows) <= 2
        for g in rows:
            assert g["pred_original"] == g["label"] == g["pred_high"] and g["pred_low"] != g["label"]
        assert (out / f"figure2_r{r}.png").read_bytes()[:4] == b"\x89PNG"


def test_same_seed_is_deterministic_and_rescale_recorded(cli, tiny_model_file, tiny_npz, tiny_weights, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        rc, _, err = cli(*run_args(tiny_model_file, tiny_npz, tiny_weights, out, "--seed", "7", "--rescale", "clip"))
        assert rc == 0, err
        outs.append(out)
    for name in ("summary.csv", "samples.csv", "figure2.csv"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    man = json.loads((outs[0] / "manifest.json").read_text())
    assert man["rescale"]["policy"] == "clip"
    assert man["seed"] == 7


def test_svd_decomposer(cli, tiny_model_file, tiny_npz, tiny_weights, tmp_path):
    out = tmp_path / "out"
    args = run_args(tiny_model_file, tiny_npz, tiny_weights, out, "--decomposer", "svd")
    args[args.index("4,8")] = "1,2"
    rc, stdout, err = cli(*args)
    assert rc == 0, err
    _, summary = read_csv(out / "summary.csv")
    assert [(r["decomposer"], r["variant"], r["param"]) for r in summary] == [
        ("svd", "original", ""), ("svd", "dominant", "1"), ("svd", "trailing", "1"), ("svd", "dominant", "2"), ("svd", "trailing", "2"),
        ("svd", "hfc-reliance", "")]
    man = json.loads((out / "manifest.json").read_text())
    assert man["decomposer"]["name"] == "svd" and man["decomposer"]["params"] == [1, 2]
    _, samples = read_csv(out / "samples.csv")
    assert len(samples) == 24 * 5


def test_failure_mid_probe_leaves_nothing(cli, tiny_npz, tmp_path):
    """An error after the temporary folder exists: it is removed, --out never appears."""
    f = tmp_path / "bomb.py"
    f.write_text(
        "import torch\nfrom torch import nn\nfrom freqprobe.errors import UserFacingError\n\n"
        "class Bomb(nn.Module):\n"
        "    def __init__(self, num_classes=4):\n"
        "        super().__init__(); self.lin = nn.Linear(3, num_classes); self.calls = 0\n"
        "    def forward(self, x):\n"
        "        self.calls += 1\n"
        "        if self.calls > 3:\n"
        "            raise UserFacingError('model exploded on call %d' % self.calls)\n"
        "        return self.lin(x.mean((2, 3)))\n\n"
        "def bomb(num_classes=4):\n    return Bomb(num_classes)\n"
    )
    out = tmp_path / "runs" / "out"
    rc, _, err = cli("run", "--model", f"{f}:bomb", "--data", f"npz:{tiny_npz}", "--no-fit", "--radii", "4,8",
                     "--batch-size", "4", "--out", out, "--device", "cpu", "-q")
    assert_clean_failure(rc, err, out, "exploded on call 4")
    assert not (tmp_path / "runs").exists()  # the folder made for the output goes too


def test_existing_nonempty_out_refused(cli, tiny_model_file, tiny_npz, tiny_weights, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = cli(*run_args(tiny_model_file, tiny_npz, tiny_weights, out))
    assert rc == 2 and "already exists" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------ checkpoint variants
def _tiny(tiny_model_file, **kw):
    return load_module(tiny_model_file, "tinynet_ckpt").tinynet(**kw)


def _weights_variants(tiny_model_file, tmp_path):
    m = _tiny(tiny_model_file)
    sd = m.state_dict()
    from safetensors.torch import save_file

    files = {}
    files["nested_state_dict"] = tmp_path / "nested.pth"
    torch.save({"state_dict": sd, "epoch": 3, "best_prec1": 0.5}, files["nested_state_dict"])
    files["nested_model_module_prefix"] = tmp_path / "nested_model.th"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}, "optimizer": {}}, files["nested_model_module_prefix"])
    files["safetensors"] = tmp_path / "w.safetensors"
    save_file(sd, str(files["safetensors"]))
    files["torchscript"] = tmp_path / "scripted.pt"
    with _quiet():
        torch.jit.save(torch.jit.script(m), str(files["torchscript"]))
    return m, files


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *a):
        self._w.__exit__(*a)


@pytest.mark.parametrize("variant,kind", [
    ("nested_state_dict", "state_dict"),
    ("nested_model_module_prefix", "state_dict"),
    ("safetensors", "safetensors"),
    ("torchscript", "torchscript"),
])
def test_checkpoint_variants_load(variant, kind, tiny_model_file, tmp_path):
    from freqprobe import build_model

    ref, files = _weights_variants(tiny_model_file, tmp_path)
    with _quiet():
        adapter = build_model(f"{tiny_model_file}:tinynet", checkpoint=files[variant], num_classes=4)
    assert adapter.info["checkpoint_kind"] == kind
    assert adapter.info["checkpoint_sha256"] == hashlib.sha256(files[variant].read_bytes()).hexdigest()
    got, want = adapter.module.state_dict(), ref.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_checkpoint_variants_through_cli(cli, tiny_model_file, tiny_npz, tmp_path):
    """module.-prefixed nested checkpoint and a TorchScript file as the model itself, via the CLI."""
    ref, files = _weights_variants(tiny_model_file, tmp_path)
    outs = {}
    with _quiet():
        for name, model, ckpt in [("sd", f"{tiny_model_file}:tinynet", files["nested_model_module_prefix"]),
                                  ("ts", f"torchscript:{files['torchscript']}", None)]:
            outs[name] = tmp_path / f"out_{name}"
            args = ["run", "--model", model, "--data", f"npz:{tiny_npz}", "--radii", "4", "--out", outs[name], "--device", "cpu", "-q"]
            if ckpt:
                args += ["--checkpoint", ckpt]
            rc, _, err = cli(*args)
            assert rc == 0, err
    # same weights, no normalisation either way: identical per-sample outputs
    assert (outs["sd"] / "samples.csv").read_text() == (outs["ts"] / "samples.csv").read_text()
    man = json.loads((outs["ts"] / "manifest.json").read_text())
    assert man["model"]["source"] == "torchscript" and man["model"]["has_weights"] is True
    assert man["model"]["fitted"] is None


def test_pickled_module_needs_trust(cli, tiny_model_file, tiny_npz, tmp_path):
    full = tmp_path / "full.pt"
    torch.save(_tiny(tiny_model_file), full)
    out = tmp_path / "out"
    base = ["run", "--model", f"{tiny_model_file}:tinynet", "--data", f"npz:{tiny_npz}", "--checkpoint", full,
            "--radii", "4", "--out", out, "--device", "cpu", "-q"]
    rc, _, err = cli(*base)
    assert_clean_failure(rc, err, out, "--trust-checkpoint")
    assert len(err.strip().splitlines()) == 1
    rc, _, err = cli(*base, "--trust-checkpoint")
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["checkpoint_kind"] == "pickled-module"


def test_mismatching_state_dict(cli, tiny_model_file, tiny_npz, tmp_path):
    sd = _tiny(tiny_model_file).state_dict()
    sd.pop("4.bias")
    sd["extra.weight"] = torch.zeros(2)
    sd["0.weight"] = torch.zeros(8, 3, 5, 5)
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    out = tmp_path / "out"
    rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--data", f"npz:{tiny_npz}", "--checkpoint", bad,
                     "--out", out, "--device", "cpu", "-q")
    assert_clean_failure(rc, err, out, "missing keys (1): 4.bias", "unexpected keys (1): extra.weight",
                         "shape conflicts (1): 0.weight: checkpoint (8, 3, 5, 5) vs model (8, 3, 3, 3)")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 64, b"hello, not a checkpoint\n", "truncated"])
def test_corrupt_checkpoint(cli, content, tiny_model_file, tiny_npz, tmp_path):
    bad = tmp_path / "bad.pt"
    if content == "truncated":
        good = tmp_path / "good.pt"
        torch.save(_tiny(tiny_model_file).state_dict(), good)
        content = good.read_bytes()[:300]
    bad.write_bytes(content)
    out = tmp_path / "out"
    rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--data", f"npz:{tiny_npz}", "--checkpoint", bad,
                     "--out", out, "--device", "cpu", "-q")
    assert_clean_failure(rc, err, out, "could not read checkpoint", "corrupt")
    assert "trust" not in err  # a broken file is not a pickled-objects file
    assert len(err.strip().splitlines()) == 1


def test_missing_checkpoint(cli, tiny_model_file, tiny_npz, tmp_path):
    out = tmp_path / "out"
    rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--data", f"npz:{tiny_npz}",
                     "--checkpoint", tmp_path / "nope.pt", "--out", out, "--device", "cpu", "-q")
    assert_clean_failure(rc, err, out, "checkpoint not found", "nope.pt")
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ bad inputs
@pytest.fixture
def no_network(monkeypatch):
    """Every outgoing connection fails at once, as on an offline machine."""

    def refuse(self, *a, **k):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


BAD_INPUTS = {
    "unknown-source": (["--model", "foo:bar", "--checkpoint", "{w}"], ["Unknown model source 'foo'", "timm", "torchvision"]),
    "unknown-timm": (["--model", "timm:resnet1", "--no-fit"], ["Unknown timm model 'resnet1'", "Did you mean", "resnet18"]),
    "unknown-probe": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--probe", "lfc-hf"], ["Unknown probe 'lfc-hf'", "lfc-hfc"]),
    "unknown-decomposer": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--decomposer", "fft-radail"], ["Unknown decomposer", "fft-radial"]),
    "unknown-dataset": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--data", "cifar1O"], ["Unknown dataset 'cifar1O'", "Did you mean", "cifar10"]),
    "no-colon": (["--model", "nocolon"], ["malformed model spec 'nocolon'", "SOURCE:NAME"]),
    "empty-callable": (["--model", "{m}:"], ["malformed model spec", "file.py:callable"]),
    "radius-0": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--radii", "0"], ["r='0'", "positive"]),
    "radius-neg": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--radii", "-4"], ["r='-4'", "positive"]),
    "radius-abc": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--radii", "abc"], ["r='abc'", "not a number"]),
    "radius-empty-item": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--radii", "4,,8"], ["malformed parameter list"]),
    "class-count": (["--model", "{m}:tinynet", "--model-arg", "num_classes=3", "--no-fit"], ["class-count mismatch", "3", "4", "num_classes=4"]),
    "mean-length": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--mean", "0.5,0.5", "--std", "0.2,0.2"], ["--mean", "3 channels"]),
    "mean-not-numbers": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--mean", "a,b,c"], ["--mean must be comma-separated numbers"]),
    "std-zero": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--std", "0,1,1"], ["--std values must be positive"]),
    "npz-missing-keys": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--data", "npz:{badnpz}"], ["must hold arrays 'x' and 'y'", "images"]),
    "npz-missing-file": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--data", "npz:{tmp}/none.npz"], ["npz file not found"]),
    "model-file-missing": (["--model", "{tmp}/nonet.py:tinynet"], ["model file not found"]),
    "model-callable-missing": (["--model", "{m}:tinynot", "--checkpoint", "{w}"], ["tinynot", "Did you mean: tinynet"]),
    "no-weights-no-train-split": (["--model", "{m}:tinynet"], ["no training split", "--checkpoint"]),
    "pretrained-and-checkpoint": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--pretrained"], ["either --pretrained or --checkpoint"]),
    "bad-model-arg": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--model-arg", "width"], ["malformed --model-arg", "KEY=VALUE"]),
    "limit-0": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--limit", "0"], ["--limit must be at least 1"]),
    "unknown-rescale": (["--model", "{m}:tinynet", "--checkpoint", "{w}", "--rescale", "clipp"], ["Unknown rescale policy 'clipp'", "clip"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exit_2(case, cli, tiny_model_file, tiny_npz, tiny_weights, tmp_path):
    bad_npz = tmp_path / "bad.npz"
    np.savez(bad_npz, images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.zeros(2, np.int64))
    args, needles = BAD_INPUTS[case]
    fmt = {"m": tiny_model_file, "w": tiny_weights, "badnpz": bad_npz, "tmp": tmp_path}
    args = [a.format(**fmt) for a in args]
    if "--data" not in args:
        args += ["--data", f"npz:{tiny_npz}"]
    out = tmp_path / "runs" / "out"
    rc, _, err = cli("run", *args, "--out", out, "--device", "cpu", "-q")
    assert_clean_failure(rc, err, out, *needles)
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_cifar10_offline_names_data_root(cli, no_network, tiny_model_file, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--model-arg", "num_classes=10", "--data", "cifar10",
                     "--data-root", empty, "--no-fit", "--out", out, "--device", "cpu", "-q")
    assert_clean_failure(rc, err, out, "cifar10", "--data-root")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("hub_offline_flag", [True, False])
def test_pretrained_offline_fails_fast_in_process(hub_offline_flag, cli, monkeypatch, no_network, tiny_npz, tmp_path):
    """With HF_HUB_OFFLINE set, and without it on a machine where nothing can be reached."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", hub_offline_flag)
    out = tmp_path / "out"
    budget = 15 + 10 * _seconds(lambda: __import__("timm").create_model("resnet18"))  # a busy machine gets longer
    t0 = time.perf_counter()
    rc, _, err = cli("run", "--model", "timm:resnet18", "--pretrained", "--data", f"npz:{tiny_npz}",
                     "--out", out, "--device", "cpu", "-q")
    assert time.perf_counter() - t0 < budget  # no retries against an unreachable hub (they take minutes)
    assert_clean_failure(rc, err, out, "--checkpoint", "timm:resnet18")
    assert len(err.strip().splitlines()) == 1


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_subprocess_pretrained_unreachable_hub(tiny_npz, tmp_path):
    """The real console script: HF_HUB_OFFLINE unset but the hub unreachable -> fast exit 2, no traceback."""
    env = dict(os.environ)
    env.pop("HF_HUB_OFFLINE", None)
    env["HF_ENDPOINT"] = "https://127.0.0.1:9"  # nothing listens: connection refused at once
    env["HF_HOME"] = str(tmp_path / "hf")
    env["FREQPROBE_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    out = tmp_path / "out"
    # what starting the command costs on this machine now (a busy CI machine: tens of seconds), plus a margin that
    # retries against an unreachable hub (minutes of backoff) would exceed
    budget = 20 + 2 * _seconds(lambda: subprocess.run([sys.executable, "-c", "import freqprobe.cli, timm, torch"], check=True))
    t0 = time.perf_counter()
    p = subprocess.run([*freqprobe_cmd(), "run", "--model", "timm:resnet18", "--pretrained", "--data", f"npz:{tiny_npz}",
                        "--out", str(out), "--device", "cpu", "-q"], env=env, capture_output=True, text=True, timeout=300)
    assert time.perf_counter() - t0 < budget, "should fail fast (process start and import included)"
    assert_clean_failure(p.returncode, p.stderr, out, "--checkpoint")
    assert p.stdout == ""


def test_subprocess_bad_input_exit_2(tiny_model_file, tiny_npz, tmp_path):
    out = tmp_path / "out"
    p = subprocess.run([*freqprobe_cmd(), "run", "--model", f"{tiny_model_file}:tinynet", "--data", f"npz:{tiny_npz}",
                        "--no-fit", "--radii", "4,-4", "--out", str(out), "--device", "cpu", "-q"],
                       capture_output=True, text=True, timeout=120)
    assert_clean_failure(p.returncode, p.stderr, out, "r='-4'")
    assert len(p.stderr.strip().splitlines()) == 1


def test_subprocess_usage_error_exit_2(tmp_path):
    p = subprocess.run([*freqprobe_cmd(), "run", "--data", "synth10"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "--model" in p.stderr


# ------------------------------------------------------------------ timm / torchvision sources
def test_timm_source_offline_normalisation(cli, no_network, tiny_npz, tmp_path):
    import timm

    cfg = timm.get_pretrained_cfg("resnet18")
    out = tmp_path / "timm"
    rc, _, err = cli("run", "--model", "timm:resnet18", "--model-arg", "num_classes=4", "--data", f"npz:{tiny_npz}",
                     "--no-fit", "--limit", "8", "--radii", "4", "--out", out, "--device", "cpu", "-q")
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["source"] == "timm" and man["model"]["timm_name"] == "resnet18"
    assert man["model"]["has_weights"] is False and man["model"]["fitted"] is None
    assert man["model"]["mean"] == pytest.approx(list(cfg.mean)) and man["model"]["std"] == pytest.approx(list(cfg.std))
    assert man["model"]["normalisation_from"] == "timm"
    assert man["data"]["n_evaluated"] == 8
    _, summary = read_csv(out / "summary.csv")
    assert {r["n"] for r in summary} == {"8"}

    out2 = tmp_path / "timm_override"
    rc, _, err = cli("run", "--model", "timm:resnet18", "--model-arg", "num_classes=4", "--data", f"npz:{tiny_npz}",
                     "--no-fit", "--limit", "8", "--radii", "4", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                     "--out", out2, "--device", "cpu", "-q")
    assert rc == 0, err
    man = json.loads((out2 / "manifest.json").read_text())
    assert man["model"]["mean"] == [0.5, 0.5, 0.5] and man["model"]["std"] == [0.25, 0.25, 0.25]
    assert man["model"]["normalisation_from"] == "override"


def test_torchvision_source_offline(cli, no_network, tiny_npz, tmp_path):
    out = tmp_path / "tv"
    rc, _, err = cli("run", "--model", "torchvision:resnet18", "--model-arg", "num_classes=4", "--data", f"npz:{tiny_npz}",
                     "--no-fit", "--limit", "4", "--radii", "4", "--out", out, "--device", "cpu", "-q", "--batch-size", "4")
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["source"] == "torchvision" and man["model"]["torchvision_name"] == "resnet18"
    assert man["model"]["mean"] == pytest.approx([0.485, 0.456, 0.406], abs=1e-6)
    _, samples = read_csv(out / "samples.csv")
    assert len(samples) == 4 * 3
