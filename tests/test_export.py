"""``freqprobe decompose``: .npz and PNG export, and how bad input fails (exit 2, one line, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import freqprobe
from freqprobe.builtins.decomposers import FFTRadialDecomposer
from freqprobe.export import export_npz, export_png


def run_cli(cli, *args: str) -> tuple[int, str, str]:
    return cli("decompose", "-q", *args)


def raw_images(npz) -> np.ndarray:
    """The fixture's uint8 N×H×W×C images as float32 N×C×H×W in [0, 1]."""
    with np.load(npz) as d:
        return (d["x"].astype(np.float32) / 255.0).transpose(0, 3, 1, 2)


def leftovers(folder, *keep) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# ---------------------------------------------------------------- npz
def test_npz_export_fft_radial(cli, tiny_npz, tmp_path):
    out = tmp_path / "parts.npz"
    rc, stdout, err = run_cli(cli, "--data", f"npz:{tiny_npz}", "--decomposer", "fft-radial", "--radii", "4,8",
                              "--batch-size", "10", "--out", str(out))
    assert rc == 0, err
    assert f"wrote {out} (24 samples" in stdout
    with np.load(out) as d:
        assert set(d.files) == {"x", "y", "layout", "low_r4", "high_r4", "low_r8", "high_r8"}
        arrs = {k: d[k] for k in d.files}
    assert str(arrs["layout"]) == "NCHW" and arrs["y"].dtype == np.int64
    x = arrs["x"]
    assert x.dtype == np.float32 and x.shape == (24, 3, 16, 16)
    np.testing.assert_array_equal(x, raw_images(tiny_npz))
    assert np.issubdtype(arrs["y"].dtype, np.integer)
    np.testing.assert_array_equal(arrs["y"], np.arange(24) % 4)
    xt = torch.from_numpy(x)
    for r in (4, 8):
        low, high = arrs[f"low_r{r}"], arrs[f"high_r{r}"]
        assert low.dtype == np.float32 and high.dtype == np.float32 and low.shape == x.shape
        np.testing.assert_allclose(low + high, x, atol=1e-5, rtol=0)
        ref = freqprobe.decompose(xt, "fft-radial", r)
        np.testing.assert_allclose(low, ref["low"].numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(high, ref["high"].numpy(), atol=1e-6, rtol=0)
    assert not np.allclose(arrs["low_r4"], arrs["low_r8"], atol=1e-3)
    assert leftovers(tmp_path) == ["parts.npz", "tiny.npz"]


def test_npz_export_rule_limit_and_fractional_radius(cli, tiny_npz, tmp_path):
    out = tmp_path / "inc.npz"
    rc, _, err = run_cli(cli, "--data", f"npz:{tiny_npz}", "--radii", "5,2.5", "--rule", "inclusive",
                         "--limit", "5", "--out", str(out))
    assert rc == 0, err
    with np.load(out) as d:
        assert set(d.files) == {"x", "y", "layout", "low_r5", "high_r5", "low_r2.5", "high_r2.5"}
        assert d["x"].shape == (5, 3, 16, 16) and d["y"].shape == (5,)
        xt = torch.from_numpy(d["x"])
        for r, key in ((5, "low_r5"), (2.5, "low_r2.5")):
            ref = freqprobe.decompose(xt, "fft-radial", r, rule="inclusive")["low"].numpy()
            np.testing.assert_allclose(d[key], ref, atol=1e-6, rtol=0)
        exc = freqprobe.decompose(xt, "fft-radial", 5)["low"].numpy()
        assert np.abs(d["low_r5"] - exc).max() > 1e-3  # the rule reached the export


def test_npz_export_svd(cli, tiny_npz, tmp_path):
    out = tmp_path / "svd.npz"
    rc, stdout, err = run_cli(cli, "--data", f"npz:{tiny_npz}", "--decomposer", "svd", "--radii", "1,3",
                              "--batch-size", "7", "--out", str(out))
    assert rc == 0, err
    with np.load(out) as d:
        assert set(d.files) == {"x", "y", "layout", "dominant_k1", "trailing_k1", "dominant_k3", "trailing_k3"}
        x = d["x"]
        for k in (1, 3):
            dom, trl = d[f"dominant_k{k}"], d[f"trailing_k{k}"]
            assert dom.dtype == np.float32 and dom.shape == (24, 3, 16, 16)
            np.testing.assert_allclose(dom + trl, x, atol=1e-5, rtol=0)
            ref = freqprobe.decompose(torch.from_numpy(x), "svd", k)["dominant"].numpy()
            np.testing.assert_allclose(dom, ref, atol=1e-5, rtol=0)
            assert np.linalg.matrix_rank(dom[0, 0].astype(np.float64), tol=1e-4) == k


def test_npz_export_rescale_applies_to_components_only(cli, tiny_npz, tmp_path):
    out = tmp_path / "clip.npz"
    rc, _, err = run_cli(cli, "--data", f"npz:{tiny_npz}", "--radii", "4", "--rescale", "clip", "--out", str(out))
    assert rc == 0, err
    with np.load(out) as d:
        np.testing.assert_array_equal(d["x"], raw_images(tiny_npz))
        raw = freqprobe.decompose(torch.from_numpy(d["x"]), "fft-radial", 4)
        np.testing.assert_allclose(d["high_r4"], raw["high"].clamp(0, 1).numpy(), atol=1e-6, rtol=0)
        assert d["high_r4"].min() == 0.0 and raw["high"].min() < 0


def test_degenerate_radius_warns_once_per_export(cli, tiny_npz, tmp_path):
    out = tmp_path / "whole.npz"
    rc, _, err = run_cli(cli, "--data", f"npz:{tiny_npz}", "--radii", "4,12", "--batch-size", "5", "--out", str(out))
    assert rc == 0
    lines = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "r=12 covers the whole 16x16 spectrum" in lines[0]
    with np.load(out) as d:
        np.testing.assert_allclose(d["low_r12"], d["x"], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- PNG
def test_png_export_layout_and_content(cli, tiny_npz, tmp_path):
    from PIL import Image

    out = tmp_path / "pngs"
    rc, stdout, err = run_cli(cli, "--data", f"npz:{tiny_npz}", "--radii", "4,8", "--limit", "6", "--batch-size", "4",
                              "--out", str(out))
    assert rc == 0, err
    folders = ["original", "low_r4", "high_r4", "low_r8", "high_r8"]
    assert sorted(p.name for p in out.iterdir()) == sorted(folders + ["manifest.json"])
    names = [f"{i:05d}_label{i % 4}.png" for i in range(6)]
    for f in folders:
        assert sorted(p.name for p in (out / f).iterdir()) == names
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["decomposer"] == "fft-radial" and manifest["rescale"] == "minmax" and manifest["n"] == 6
    assert manifest["params"] == [4.0, 8.0] and manifest["options"] == {"rule": "exclusive"}

    x = raw_images(tiny_npz)[:6]
    with Image.open(out / "original" / names[5]) as im:
        assert im.size == (16, 16) and im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), np.round(x[5].transpose(1, 2, 0) * 255).astype(np.uint8))
    high = freqprobe.decompose(torch.from_numpy(x), "fft-radial", 8)["high"].numpy().astype(np.float64)
    h5 = high[5]
    expected = np.round((h5 - h5.min()) / (h5.max() - h5.min()) * 255).transpose(1, 2, 0)  # the default minmax
    with Image.open(out / "high_r8" / names[5]) as im:
        assert im.size == (16, 16)
        assert np.abs(np.asarray(im).astype(int) - expected).max() <= 1
    assert leftovers(tmp_path) == ["pngs", "tiny.npz"]


def test_png_export_grayscale_and_svd(cli, tmp_path):
    from PIL import Image

    src = tmp_path / "gray.npz"
    rng = np.random.default_rng(1)
    np.savez(src, x=rng.integers(0, 256, size=(3, 12, 20), dtype=np.uint8), y=np.array([2, 0, 1]))
    out = tmp_path / "svd_pngs"
    out.mkdir()  # an existing empty folder is fine
    rc, _, err = run_cli(cli, "--data", f"npz:{src}", "--decomposer", "svd", "--radii", "2", "--rescale", "clip",
                         "--out", str(out))
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["dominant_k2", "manifest.json", "original", "trailing_k2"]
    assert sorted(p.name for p in (out / "dominant_k2").iterdir()) == ["00000_label2.png", "00001_label0.png", "00002_label1.png"]
    with Image.open(out / "dominant_k2" / "00001_label0.png") as im:
        assert im.mode == "L" and im.size == (20, 12)  # PIL size is (width, height)


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing written
def assert_clean_failure(rc, out, err, tmp_path, *needles, keep=("tiny.npz",)):
    assert rc == 2
    text = (out + err).strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    assert text.startswith("Error: ")
    for n in needles:
        assert n in text
    assert leftovers(tmp_path, *keep) == []


@pytest.mark.parametrize("target", ["bad.npz", "bad_dir"])
def test_unknown_decomposer(cli, tiny_npz, tmp_path, target):
    rc, out, err = run_cli(cli, "--data", f"npz:{tiny_npz}", "--decomposer", "fft-radail", "--radii", "4",
                           "--out", str(tmp_path / target))
    assert_clean_failure(rc, out, err, tmp_path, "Unknown decomposer 'fft-radail'", "Did you mean: fft-radial?")


@pytest.mark.parametrize("radii,needle", [
    ("4,x", "r='x' is not a number"),
    ("4,,8", "malformed parameter list"),
    ("0", "r='0' must be a positive number"),
    ("-2", "must be a positive number"),
])
def test_bad_radii(cli, tiny_npz, tmp_path, radii, needle):
    rc, out, err = run_cli(cli, "--data", f"npz:{tiny_npz}", "--radii", radii, "--out", str(tmp_path / "bad.npz"))
    assert_clean_failure(rc, out, err, tmp_path, needle)


@pytest.mark.parametrize("ranks,needle", [("0", "k='0' must be a positive number"), ("1.5", "k='1.5' must be a whole number"),
                                          ("two", "k='two' is not a number")])
def test_bad_svd_ranks(cli, tiny_npz, tmp_path, ranks, needle):
    rc, out, err = run_cli(cli, "--data", f"npz:{tiny_npz}", "--decomposer", "svd", "--radii", ranks,
                           "--out", str(tmp_path / "bad.npz"))
    assert_clean_failure(rc, out, err, tmp_path, needle)


def test_bad_rule_is_a_usage_error(cli, tiny_npz, tmp_path):
    rc, out, err = run_cli(cli, "--data", f"npz:{tiny_npz}", "--rule", "closed", "--out", str(tmp_path / "bad.npz"))
    assert rc == 2 and "Traceback" not in out + err and "'closed' is not one of" in err
    assert leftovers(tmp_path, "tiny.npz") == []


def test_existing_npz_is_not_overwritten(cli, tiny_npz, tmp_path):
    out = tmp_path / "keep.npz"
    out.write_bytes(b"precious")
    rc, o, e = run_cli(cli, "--data", f"npz:{tiny_npz}", "--radii", "4", "--out", str(out))
    assert_clean_failure(rc, o, e, tmp_path, "already exists", keep=("tiny.npz", "keep.npz"))
    assert out.read_bytes() == b"precious"


def test_missing_data_file(cli, tmp_path):
    rc, out, err = run_cli(cli, "--data", f"npz:{tmp_path / 'nope.npz'}", "--out", str(tmp_path / "o.npz"))
    assert_clean_failure(rc, out, err, tmp_path, "npz file not found", keep=())


# ---------------------------------------------------------------- failures mid-export leave nothing behind
class FailsOnSecondBatch(FFTRadialDecomposer):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def decompose_all(self, x, params, *, out=None):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom in batch 2")
        yield from super().decompose_all(x, params, out=out)


@pytest.mark.parametrize("exporter", ["npz", "png"])
def test_failure_mid_export_leaves_nothing(tiny_npz, tmp_path, exporter):
    data = freqprobe.open_data(f"npz:{tiny_npz}")
    dec = FailsOnSecondBatch()
    rescale = freqprobe.get_class("rescale", "minmax")()
    target = tmp_path / ("out.npz" if exporter == "npz" else "out")
    with pytest.raises(RuntimeError, match="boom in batch 2"):
        if exporter == "npz":
            export_npz(data, dec, [4.0], target, batch_size=8)
        else:
            export_png(data, dec, [4.0], target, rescale=rescale, batch_size=8)
    assert dec.calls == 2
    assert leftovers(tmp_path, "tiny.npz") == []
