"""The smoothing plugin: Eq. 3 as the transform ``smooth`` against an independent float64 reference, and ``freqprobe kernels``."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from freqprobe import ModelAdapter, UnknownNameError, UserFacingError
from freqprobe_smoothing.kernels import hf_energy_shares, kernel_stats, total_variations
from freqprobe_smoothing.smooth import SmoothTransform, first_conv, smooth_kernels

REPO = Path(__file__).resolve().parents[3]


# ----------------------------------------------------------------------------- the reference
def reference_smooth(weight, rho: float) -> np.ndarray:
    """Eq. 3 written out, in float64: every [kh, kw] slice on its own, edge-replicated, centre 1 and 8 neighbours ρ."""
    w = np.asarray(weight, dtype=np.float64)
    out = np.empty_like(w)
    kh, kw = w.shape[2:]
    for o in range(w.shape[0]):
        for i in range(w.shape[1]):
            p = np.pad(w[o, i], 1, mode="edge")  # out-of-bound neighbours duplicated from the boundary
            for y in range(kh):
                for x in range(kw):
                    neighbours = sum(p[y + 1 + dy, x + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
                    out[o, i, y, x] = w[o, i, y, x] + rho * neighbours
    return out


def state(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


# ----------------------------------------------------------------------------- Eq. 3 itself
@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (5, 2, 5, 5), (3, 1, 4, 6)])
@pytest.mark.parametrize("rho", [0.0, 0.1, 0.25, 0.5, 1.0, 2.5])
def test_smooth_kernels_equals_the_float64_reference(shape, rho):
    g = torch.Generator().manual_seed(hash(shape) % 1000)
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    got = smooth_kernels(w, rho)
    assert got.dtype == torch.float64 and got.shape == w.shape
    np.testing.assert_allclose(got.numpy(), reference_smooth(w.numpy(), rho), rtol=1e-12, atol=1e-12)


def test_a_3x3_kernel_by_hand():
    w = torch.arange(9, dtype=torch.float64).reshape(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
    got = smooth_kernels(w, 1.0)[0, 0]
    # centre: 4 + (0+1+2+3+5+6+7+8); corner (0,0): 0 + (0+0+1 + 0+1 + 3+3+4), the outside duplicated from the edge
    assert got[1, 1] == 4 + 32 and got[0, 0] == 0 + 12 and got[2, 2] == 8 + (4 + 5 + 5 + 7 + 7 + 8 + 8 + 8)


def test_channels_are_never_mixed():
    """The authors' PyTorch port smoothed across channels (their issue #2); here only [kh, kw] is smoothed."""
    w = torch.zeros(2, 3, 5, 5)
    w[:, 1] = torch.randn(2, 5, 5)
    got = smooth_kernels(w, 0.5)
    assert torch.count_nonzero(got[:, 0]) == 0 and torch.count_nonzero(got[:, 2]) == 0
    np.testing.assert_allclose(got[:, 1:2].double().numpy(), reference_smooth(w[:, 1:2].numpy(), 0.5), rtol=1e-5, atol=1e-6)


def test_rho_zero_is_the_identity_and_dtypes_are_kept():
    w = torch.randn(8, 3, 3, 3)
    assert torch.equal(smooth_kernels(w, 0.0), w)
    half = smooth_kernels(w.half(), 0.5)
    assert half.dtype == torch.float16
    np.testing.assert_allclose(half.double().numpy(), reference_smooth(w.half().double().numpy(), 0.5), rtol=2e-3, atol=2e-3)


# ----------------------------------------------------------------------------- the transform on real model families
def _timm(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10)


def _torchvision():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return tv.models.resnet18(weights=None, num_classes=10)


def _user():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 5, padding=2), nn.ReLU(), nn.Conv2d(6, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 4))


MODELS = {
    "timm-resnet18 (7x7 conv1)": (lambda: _timm("resnet18"), "conv1", (7, 7)),
    "timm-resnet10t (deep stem)": (lambda: _timm("resnet10t"), "conv1.0", (3, 3)),
    "torchvision-resnet18": (_torchvision, "conv1", (7, 7)),
    "user-sequential (5x5)": (_user, "0", (5, 5)),
}


@pytest.mark.parametrize("case", sorted(MODELS))
def test_smooth_on_timm_torchvision_and_user_models(case):
    build, layer, size = MODELS[case]
    module = build()
    before = state(module)
    adapter = ModelAdapter(module, spec=case, info={"has_weights": True})
    t = SmoothTransform(rho=0.5)
    new = t.apply(adapter)
    assert new is not adapter and new.module is not module
    # the original is untouched
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert "smoothed" not in adapter.info
    # the first conv equals the float64 reference; nothing else changed
    after = new.module.state_dict()
    key = f"{layer}.weight"
    assert tuple(after[key].shape[-2:]) == size
    np.testing.assert_allclose(after[key].double().numpy(), reference_smooth(before[key].double().numpy(), 0.5), rtol=1e-5, atol=1e-6)
    assert [k for k in after if not torch.equal(after[k], before[k])] == [key]
    assert new.info["smoothed"] == [{"layer": layer, "rho": 0.5, "kernel": list(size)}]
    assert t.label() == "smooth:rho=0.5"


def test_first_conv_finds_a_vits_patch_embedding():
    vit = _timm("vit_tiny_patch16_224")
    name, conv = first_conv(vit)
    assert name == "patch_embed.proj" and conv.kernel_size == (16, 16)


def test_layer_option_picks_a_named_conv():
    module = _torchvision()
    before = state(module)
    t = SmoothTransform(rho=1, layer="layer1.0.conv2")
    new = t.apply(ModelAdapter(module))
    after = new.module.state_dict()
    assert [k for k in after if not torch.equal(after[k], before[k])] == ["layer1.0.conv2.weight"]
    np.testing.assert_allclose(after["layer1.0.conv2.weight"].double().numpy(),
                               reference_smooth(before["layer1.0.conv2.weight"].double().numpy(), 1.0), rtol=1e-5, atol=1e-5)
    assert t.label() == "smooth:layer=layer1.0.conv2,rho=1"
    # layer=0 from the command line arrives as an int: a Sequential's first module
    assert SmoothTransform(rho=0.5, layer=0).apply(ModelAdapter(_user())).info["smoothed"][0]["layer"] == "0"


def test_grouped_and_depthwise_convs_and_torchscript():
    torch.manual_seed(0)
    dw = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 3, groups=2))
    w0, w1 = dw[0].weight.detach().clone(), dw[1].weight.detach().clone()
    new = SmoothTransform(rho=0.25, layer="1").apply(SmoothTransform(rho=0.5).apply(ModelAdapter(dw)))
    np.testing.assert_allclose(new.module[0].weight.detach().double().numpy(), reference_smooth(w0.double().numpy(), 0.5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.module[1].weight.detach().double().numpy(), reference_smooth(w1.double().numpy(), 0.25), rtol=1e-5, atol=1e-6)
    assert [r["layer"] for r in new.info["smoothed"]] == ["0", "1"]
    assert torch.equal(dw[0].weight, w0)
    # a TorchScript module: its layers are walked by their original names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated, still loaded by users
        scripted = torch.jit.script(_user())
    ws = scripted.state_dict()["0.weight"].clone()
    smoothed = SmoothTransform(rho=0.5).apply(ModelAdapter(scripted))
    np.testing.assert_allclose(smoothed.module.state_dict()["0.weight"].double().numpy(), reference_smooth(ws.double().numpy(), 0.5),
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(scripted.state_dict()["0.weight"], ws)
    x = torch.rand(2, 3, 12, 12)
    assert not torch.allclose(smoothed.predict(x), ModelAdapter(scripted).predict(x))


@pytest.mark.cuda
def test_smooth_on_a_cuda_model_equals_the_cpu_result():
    module = _torchvision()
    cpu = SmoothTransform(rho=0.5).apply(ModelAdapter(module)).module.conv1.weight.detach()
    gpu = SmoothTransform(rho=0.5).apply(ModelAdapter(module).to("cuda")).module.conv1.weight.detach()
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)


def test_rho_zero_transform_keeps_the_outputs():
    module = _user()
    x = torch.rand(3, 3, 12, 12)
    new = SmoothTransform(rho=0).apply(ModelAdapter(module))
    assert torch.equal(new.predict(x), ModelAdapter(module).predict(x))


BAD = {
    "no rho": (dict(), "smooth needs rho, e.g. --transform smooth:rho=0.5"),
    "negative rho": (dict(rho=-0.5), "smooth: rho=-0.5 must be a finite number >= 0"),
    "rho nan": (dict(rho="nan"), "smooth: rho='nan' must be a finite number >= 0"),
    "rho inf": (dict(rho=math.inf), "must be a finite number >= 0"),
    "rho text": (dict(rho="abc"), "smooth: rho='abc' must be a finite number"),
    "rho bool": (dict(rho=True), "must be a finite number"),
    "unknown option": (dict(rh=0.5), "Did you mean: rho?"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_options_are_one_line_errors(case):
    options, message = BAD[case]
    with pytest.raises(UserFacingError) as e:
        SmoothTransform(**options)
    assert message in one_line(e.value)


def test_bad_layers_are_one_line_errors():
    tv = ModelAdapter(_torchvision(), spec="torchvision:resnet18")
    with pytest.raises(UnknownNameError) as e:
        SmoothTransform(rho=0.5, layer="conv").apply(tv)
    assert one_line(e.value).startswith("Unknown conv layer 'conv'. Did you mean: conv1")
    with pytest.raises(UserFacingError) as e:
        SmoothTransform(rho=0.5, layer="bn1").apply(tv)
    assert one_line(e.value).startswith("smooth: layer 'bn1' of torchvision:resnet18 is a BatchNorm2d, not a Conv2d")
    pointwise = ModelAdapter(nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3)), spec="pw.py:net")
    with pytest.raises(UserFacingError) as e:
        SmoothTransform(rho=0.5).apply(pointwise)
    assert one_line(e.value) == ("smooth: layer '0' of pw.py:net has 1×1 kernels; Eq. 3 needs kernels of at least 3×3; "
                                 "pick a larger one with layer=NAME, e.g. layer=1")
    with pytest.raises(UserFacingError) as e:
        SmoothTransform(rho=0.5).apply(ModelAdapter(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), spec="mlp.py:mlp"))
    assert one_line(e.value) == "smooth: mlp.py:mlp has no Conv2d layer; Eq. 3 smooths 2-D convolution kernels"


# ----------------------------------------------------------------------------- through the command line
@pytest.fixture
def use_pm(first_party_pm):
    """The default plugin manager the CLI uses, with this plugin registered and the other first-party ones off."""
    return first_party_pm("smoothing")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_with_transform_smooth(cli, use_pm, tiny_npz, tiny_model_file, tmp_path):
    common = ["run", "--model", f"{tiny_model_file}:tinynet", "--data", f"npz:{tiny_npz}", "--no-fit", "--radii", "4",
              "--device", "cpu", "-q"]
    rc, out, err = cli(*common, "--transform", "smooth:rho=0.5", "--out", tmp_path / "s")
    assert rc == 0, err
    rc, _, err = cli(*common, "--transform", "smooth:rho=0", "--out", tmp_path / "z")
    assert rc == 0, err
    rows = read_csv(tmp_path / "s" / "summary.csv")
    assert {r["transform"] for r in rows} == {"smooth:rho=0.5"}
    assert {r["transform"] for r in read_csv(tmp_path / "z" / "summary.csv")} == {"smooth:rho=0"}
    conf = {d: [r["confidence"] for r in read_csv(tmp_path / d / "samples.csv")] for d in ("s", "z")}
    assert len(conf["s"]) == len(conf["z"]) > 0 and conf["s"] != conf["z"]
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["transform"] == "smooth:rho=0.5"
    assert manifest["model"]["smoothed"] == [{"layer": "0", "rho": 0.5, "kernel": [3, 3]}]


@pytest.mark.parametrize("transform, message", [
    ("smooth", "Error: smooth needs rho, e.g. --transform smooth:rho=0.5"),
    ("smooth:rho=-1", "Error: smooth: rho=-1 must be a finite number >= 0"),
    ("smooth:rho=nan", "Error: smooth: rho='nan' must be a finite number >= 0"),
    ("smooth:rho=0.5,layer=conv", "Error: Unknown conv layer 'conv'. Available: 0."),
])
def test_run_refuses_bad_smooth_options_in_one_line(cli, use_pm, tiny_npz, tiny_model_file, tmp_path, transform, message):
    rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--data", f"npz:{tiny_npz}", "--no-fit", "--radii", "4",
                     "--device", "cpu", "-q", "--transform", transform, "--out", tmp_path / "o")
    assert rc == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- the two numbers and `freqprobe kernels`
def test_hf_energy_share_and_total_variation_definitions():
    const = np.ones((1, 1, 3, 3))
    assert hf_energy_shares(const)[0] == pytest.approx(0) and total_variations(const)[0] == 0
    checker = np.array([[1.0, -1, 1], [-1, 1, -1], [1, -1, 1]])
    # Parseval: 1 - (Σw)² / (kh·kw·Σw²) = 1 - 1/81
    assert hf_energy_shares(checker)[0] == pytest.approx(1 - 1 / 81)
    assert total_variations(checker)[0] == pytest.approx(12 * 2 / 9)
    g = np.random.default_rng(0).normal(size=(20, 3, 5, 5))
    s = g.reshape(-1, 5, 5)
    np.testing.assert_allclose(hf_energy_shares(g), 1 - s.sum((1, 2)) ** 2 / (25 * (s ** 2).sum((1, 2))), rtol=1e-12)
    zero = np.zeros((2, 1, 3, 3))
    zero[1, 0] = checker
    stats = kernel_stats(zero)  # an all-zero slice is left out of the means
    assert stats["n_slices"] == 1 and stats["hf_energy_share"] == pytest.approx(1 - 1 / 81)


@pytest.mark.parametrize("size", [3, 5, 7])
def test_smoothing_lowers_the_high_frequency_share_of_random_kernels(size):
    w = torch.randn(64, 3, size, size, generator=torch.Generator().manual_seed(size), dtype=torch.float64)
    hf = [kernel_stats(smooth_kernels(w, rho))["hf_energy_share"] for rho in (0, 0.1, 0.25, 0.5, 1.0)]
    tv = [kernel_stats(smooth_kernels(w, rho))["total_variation"] for rho in (0, 0.1, 0.25, 0.5, 1.0)]
    assert hf == sorted(hf, reverse=True) and hf[0] - hf[-1] > 0.05
    assert tv == sorted(tv, reverse=True) and tv[0] - tv[-1] > 0.3


def test_kernels_command_on_two_checkpoints(cli, use_pm, tiny_model_file, tmp_path):
    sys.path.insert(0, str(tiny_model_file.parent))
    try:
        from tinynet import tinynet
    finally:
        sys.path.remove(str(tiny_model_file.parent))
    natural = tinynet()
    torch.save(natural.state_dict(), tmp_path / "natural.pt")
    smoother = tinynet()  # a stand-in for an adversarially trained model: the same kernels, already smoothed
    with torch.no_grad():
        smoother[0].weight.copy_(smooth_kernels(smoother[0].weight, 1.0))
    torch.save(smoother.state_dict(), tmp_path / "robust.pt")
    out = tmp_path / "k"
    rc, stdout, err = cli("kernels", "--model", f"{tiny_model_file}:tinynet", "--checkpoint", tmp_path / "natural.pt",
                          "--checkpoint", tmp_path / "robust.pt", "--rho", "0,0.5,1", "--out", out)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["kernels.csv", "kernels.png", "manifest.json"]
    assert (out / "kernels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_csv(out / "kernels.csv")
    assert [(Path(r["checkpoint"]).name, r["rho"]) for r in rows] == [
        (c, rho) for rho in ("0", "0.5", "1") for c in ("natural.pt", "robust.pt")]
    assert {(r["layer"], r["kernel"], r["n_kernels"], r["n_slices"]) for r in rows} == {("0", "3x3", "8", "24")}
    hf = {(Path(r["checkpoint"]).stem, float(r["rho"])): float(r["hf_energy_share"]) for r in rows}
    assert hf[("robust", 0)] < hf[("natural", 0)]
    assert hf[("natural", 1)] < hf[("natural", 0.5)] < hf[("natural", 0)]
    assert hf[("robust", 0)] == pytest.approx(hf[("natural", 1)], abs=1e-6)  # the same kernels
    expected = kernel_stats(natural[0].weight)
    assert float(rows[0]["hf_energy_share"]) == pytest.approx(expected["hf_energy_share"], abs=1e-6)
    assert float(rows[0]["total_variation"]) == pytest.approx(expected["total_variation"], abs=1e-6)
    assert stdout.splitlines()[0].split() == ["checkpoint", "rho", "layer", "kernel", "hf_energy_share", "total_variation"]
    assert "natural.pt" in stdout and f"results in {out}/" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layer"] == "0" and manifest["rho"] == [0, 0.5, 1] and len(manifest["checkpoints"]) == 2
    assert manifest["command"].startswith("freqprobe kernels --model") and {"versions", "created"} <= set(manifest)
    assert [r["label"] for r in manifest["rows"]] == ["natural.pt", "robust.pt"] * 3
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no unfinished state left


def test_kernels_command_refuses_bad_input_in_one_line(cli, use_pm, tiny_model_file, tmp_path):
    base = ["kernels", "--model", f"{tiny_model_file}:tinynet"]
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    cases = [
        (["--out", full], f"Error: output folder {full} already exists and is not empty"),
        (["--rho=-1", "--out", tmp_path / "o"], "Error: --rho: rho=-1.0 must be a finite number >= 0"),
        (["--rho", "0,0.5,0", "--out", tmp_path / "o"], "Error: --rho 0 is given twice"),
        (["--rho", "0,x", "--out", tmp_path / "o"], "Error: --rho must be comma-separated numbers >= 0 like 0,0.5,1, got 'x'"),
        (["--layer", "conv1", "--out", tmp_path / "o"], "Error: Unknown conv layer 'conv1'. Available: 0."),
        (["--checkpoint", tmp_path / "missing.pt", "--out", tmp_path / "o"], "Error: checkpoint not found"),
        (["--n-kernels", "0", "--out", tmp_path / "o"], "Error: --n-kernels must be at least 1"),
    ]
    for args, message in cases:
        rc, _, err = cli(*base, *args)
        assert rc == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1, (args, err)
        assert not (tmp_path / "o").exists()


def test_kernels_on_the_akamaster_resnets(cli, use_pm, shared_data, tmp_path):
    """The numbers docs/smoothing.md quotes (CIFAR-10 ResNet-20 and ResNet-56, akamaster)."""
    ckpts = shared_data / "cifar10_resnet_akamaster"
    model = REPO / "tests" / "fixtures" / "cifar_resnet.py"
    out = tmp_path / "k"
    rc, _, err = cli("kernels", "--model", f"{model}:resnet20", "--model", f"{model}:resnet56",
                     "--checkpoint", ckpts / "resnet20-12fca82f.th", "--checkpoint", ckpts / "resnet56-4bfd9763.th",
                     "--rho", "0,0.25,0.5,1", "--out", out, "-q")
    assert rc == 0, err
    got = {(Path(r["checkpoint"]).name.split("-")[0], r["rho"]): (float(r["hf_energy_share"]), float(r["total_variation"]))
           for r in read_csv(out / "kernels.csv")}
    documented = {  # docs/smoothing.md
        ("resnet20", "0"): (0.812100, 1.683191), ("resnet56", "0"): (0.767490, 1.601886),
        ("resnet20", "0.25"): (0.652103, 1.083702), ("resnet56", "0.25"): (0.597360, 0.979625),
        ("resnet20", "0.5"): (0.609352, 0.922926), ("resnet56", "0.5"): (0.556009, 0.832871),
        ("resnet20", "1"): (0.588750, 0.868320), ("resnet56", "1"): (0.537985, 0.780513),
    }
    assert set(got) == set(documented)
    for key, (hf, tv) in documented.items():
        assert got[key] == pytest.approx((hf, tv), abs=2e-6), key


def test_the_installed_entry_point_is_found():
    """Without the test suite's autoload switch, `freqprobe list transforms` finds `smooth` through the entry point."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FREQPROBE_DISABLE_PLUGIN_AUTOLOAD", "FREQPROBE_LOAD_PLUGINS", "FREQPROBE_DISABLE_PLUGINS")}
    script = Path(sys.executable).with_name("freqprobe")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "freqprobe.cli"]
    proc = subprocess.run([*cmd, "list", "transforms"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines() if len(line.split()) >= 2}
    assert listed.get("smooth") == "smoothing", proc.stdout


# ----------------------------------------------------------------------------- the plugin on its own
FIRST_PARTY = {"attacks", "smoothing", "coco", "train"}


def test_hook_module_imports_without_torch():
    """`freqprobe --help` loads every hook module: this one must not pull in torch (the implementation is loaded in the hooks)."""
    code = "import sys, freqprobe_smoothing.hooks; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_smoothing_alone(cli, use_pm, tiny_npz, tiny_model_file, tmp_path):
    """Only this plugin registered (attacks, coco and train switched off): its transform and its command work, and
    what the other plugins add is absent."""
    assert {name for name, _ in use_pm.list_name_plugin()} & FIRST_PARTY == {"smoothing"}
    rc, out, err = cli("list", "transforms")
    assert rc == 0 and "smooth" in out.split(), (out, err)
    rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--data", f"npz:{tiny_npz}", "--no-fit", "--radii", "4",
                     "--device", "cpu", "-q", "--transform", "smooth:rho=0.5", "--out", tmp_path / "s")
    assert rc == 0, err
    rc, out, err = cli("kernels", "--model", f"{tiny_model_file}:tinynet", "--rho", "0,1", "--out", tmp_path / "k", "-q")
    assert rc == 0, err
    assert out == f"results in {tmp_path / 'k'}/ (kernels.png, kernels.csv, manifest.json)\n" and err == ""
    assert [r["checkpoint"] for r in read_csv(tmp_path / "k" / "kernels.csv")] == ["", ""]
    rc, _, err = cli("train", "--model", "paper:lenet", "--out", tmp_path / "t")
    assert rc == 2 and "No such command 'train'" in err, err
