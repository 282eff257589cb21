"""freqprobe-filters: the gaussian and butterworth decomposers against an independent float64 numpy
reference, their limits, ``out=`` buffers, options, and the plugin found through its entry point.

Run from the freqprobe checkout's root (the root ``conftest.py`` supplies the fixtures) after
``pip install --no-deps --no-build-isolation -e examples/freqprobe-filters``.
"""

from __future__ import annotations

import csv
import importlib.metadata
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    import freqprobe_filters  # noqa: F401
except ImportError:  # not installed: the in-process tests still run; the entry-point test skips
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import freqprobe
import freqprobe_filters.hooks
from freqprobe import UserFacingError
from freqprobe.builtins.decomposers import FFTRadialDecomposer
from freqprobe_filters import ButterworthDecomposer, GaussianDecomposer

#: N×C×H×W: square, odd, non-square (odd × even, even × odd), a single plane
SHAPES = [(2, 3, 16, 16), (1, 1, 7, 9), (3, 2, 5, 12), (1, 3, 15, 8), (1, 1, 1, 6)]
RADII = [0.7, 3.0, 8.5]
FILTERS = [("gaussian", {}), ("butterworth", {}), ("butterworth", {"order": 1}), ("butterworth", {"order": 5})]


def make(name: str, **options):
    return {"gaussian": GaussianDecomposer, "butterworth": ButterworthDecomposer}[name](**options)


# ----------------------------------------------------------------------------- the reference
def reference_transfer(name: str, h: int, w: int, r: float, order: int = 2) -> np.ndarray:
    """H on the full (h, w) unshifted FFT grid, written from the formulas in float64."""
    fu = np.fft.fftfreq(h) * h
    fv = np.fft.fftfreq(w) * w
    d = np.sqrt(fu[:, None] ** 2 + fv[None, :] ** 2)
    if name == "gaussian":
        return np.exp(-(d**2) / (2.0 * r**2))
    return 1.0 / (1.0 + (d / r) ** (2 * order))


def reference_low(x: np.ndarray, name: str, r: float, order: int = 2) -> np.ndarray:
    """Per channel: full complex FFT, times H, inverse FFT, real part (the paper's recipe), in float64."""
    x = np.asarray(x, dtype=np.float64)
    H = reference_transfer(name, x.shape[-2], x.shape[-1], r, order)
    out = np.empty_like(x)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[n, c] = np.real(np.fft.ifft2(np.fft.fft2(x[n, c]) * H))
    return out


def images(shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)


# ----------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("name,opts", FILTERS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_numpy_reference_and_sums_back(name, opts, shape, dtype):
    x = images(shape, dtype)
    dec = make(name, **opts)
    ref_x = x.double().numpy()
    for r in RADII:
        parts = dec.decompose(x, r)
        assert set(parts) == {"low", "high"}
        low, high = parts["low"], parts["high"]
        assert low.shape == x.shape and high.shape == x.shape
        assert low.dtype == dtype and high.dtype == dtype
        # the parts sum back to x, to the rounding of one subtraction
        tol = 1e-6 if dtype == torch.float32 else 1e-14
        torch.testing.assert_close(low + high, x, atol=tol, rtol=0)
        ref = reference_low(ref_x, name, r, **opts)
        atol = 2e-6 if dtype == torch.float32 else 1e-12
        np.testing.assert_allclose(low.double().numpy(), ref, atol=atol, rtol=0, err_msg=f"{name} {opts} r={r} {shape}")
        np.testing.assert_allclose(high.double().numpy(), ref_x - ref, atol=atol, rtol=0)


@pytest.mark.parametrize("name", ["gaussian", "butterworth"])
def test_full_mask_matches_reference_and_half_mask(name):
    dec = make(name)
    for h, w in [(8, 8), (7, 9), (5, 12), (15, 8)]:
        for r in (0.5, 2.0, 4.3):
            full = dec.mask(h, w, r, dtype=torch.float64, full=True).numpy()
            np.testing.assert_allclose(full, reference_transfer(name, h, w, r), atol=1e-15, rtol=0)
            # symmetric under f -> -f, which is what makes the low part real
            np.testing.assert_array_equal(full, np.roll(full[::-1, ::-1], (1, 1), axis=(0, 1)))
            half = dec.mask(h, w, r, dtype=torch.float64).numpy()
            np.testing.assert_array_equal(half, full[:, : w // 2 + 1])


def test_decompose_all_matches_decompose():
    x = images((2, 3, 11, 14))
    for dec in (GaussianDecomposer(), ButterworthDecomposer(order=3)):
        got = list(dec.decompose_all(x, [2, 5.5, 9]))
        assert [r for r, _ in got] == [2, 5.5, 9]
        for r, parts in got:
            one = dec.decompose(x, r)
            torch.testing.assert_close(parts["low"], one["low"], atol=0, rtol=0)
            torch.testing.assert_close(parts["high"], one["high"], atol=0, rtol=0)


def test_through_the_core_api(pm):
    """freqprobe.decompose with the plugin registered: the core's contract checks pass, options reach the class."""
    pm.register(freqprobe_filters.hooks, "filters")
    x = images((2, 3, 9, 10))
    for name, opts in [("gaussian", {}), ("butterworth", {"order": 4})]:
        parts = freqprobe.decompose(x, name, 3, pm=pm, **opts)
        ref = reference_low(x.double().numpy(), name, 3.0, **opts)
        np.testing.assert_allclose(parts["low"].double().numpy(), ref, atol=2e-6, rtol=0)
    assert freqprobe.get_decomposer("butterworth", pm=pm, order=4).options() == {"order": 4}
    assert freqprobe.get_decomposer("gaussian", pm=pm).options() == {}


# ----------------------------------------------------------------------------- limits
@pytest.mark.parametrize("name", ["gaussian", "butterworth"])
def test_huge_radius_keeps_everything(name):
    x = images((2, 3, 13, 10), torch.float64)
    parts = make(name).decompose(x, 1e6)
    torch.testing.assert_close(parts["low"], x, atol=1e-9, rtol=0)
    assert parts["high"].abs().max() < 1e-9


@pytest.mark.parametrize("name", ["gaussian", "butterworth"])
@pytest.mark.parametrize("r", [1e-300, 0.05, 1.0, 8.0])
def test_dc_gain_is_one(name, r):
    """A constant image is entirely low at every radius (H(0) = 1), even where r² underflows."""
    for dtype in (torch.float32, torch.float64):
        x = torch.full((2, 3, 7, 12), 0.37, dtype=dtype)
        parts = make(name).decompose(x, r)
        torch.testing.assert_close(parts["low"], x, atol=1e-6 if dtype == torch.float32 else 1e-14, rtol=0)
        assert parts["high"].abs().max() < 1e-6
    # a tiny radius keeps only the mean of each plane
    x = images((1, 3, 9, 8), torch.float64)
    low = make(name).decompose(x, 1e-300)["low"]
    torch.testing.assert_close(low, x.mean(dim=(-2, -1), keepdim=True).expand_as(x), atol=1e-14, rtol=0)


def test_values_at_the_radius():
    """H(r) = e^-1/2 (gaussian) and 1/2 (butterworth, any order): bins (3, 4) and (5, 0) lie on the ring r = 5."""
    g = GaussianDecomposer().mask(16, 16, 5.0, dtype=torch.float64, full=True)
    assert math.isclose(g[3, 4].item(), math.exp(-0.5), rel_tol=1e-15) and math.isclose(g[5, 0].item(), math.exp(-0.5), rel_tol=1e-15)
    for order in (1, 2, 7):
        b = ButterworthDecomposer(order=order).mask(16, 16, 5.0, dtype=torch.float64, full=True)
        assert b[3, 4].item() == 0.5 and b[-5, 0].item() == 0.5 and b[0, 0].item() == 1.0


def cosine(h: int, w: int, u: int, v: int) -> torch.Tensor:
    """A 1×1×h×w image holding only the frequencies ±(u, v) (a delta pair in the spectrum)."""
    i = torch.arange(h, dtype=torch.float64).view(-1, 1)
    j = torch.arange(w, dtype=torch.float64).view(1, -1)
    return (0.5 + 0.25 * torch.cos(2 * math.pi * (u * i / h + v * j / w))).view(1, 1, h, w)


@pytest.mark.parametrize("h,w", [(32, 32), (31, 24)])
def test_large_order_butterworth_is_the_hard_cut_away_from_the_ring(h, w):
    r = 6.0
    bw = ButterworthDecomposer(order=64)
    hard = FFTRadialDecomposer(rule="inclusive")
    # the masks agree wherever the bin is at least half a bin from the ring
    fu = np.fft.fftfreq(h) * h
    fv = np.fft.fftfreq(w) * w
    d = np.sqrt(fu[:, None] ** 2 + fv[None, :] ** 2)
    away = np.abs(d - r) >= 0.5
    m_bw = bw.mask(h, w, r, dtype=torch.float64, full=True).numpy()
    m_hard = hard.mask(h, w, r, full=True).double().numpy()
    np.testing.assert_allclose(m_bw[away], m_hard[away], atol=1e-4, rtol=0)
    # a delta-like image: one frequency well inside the radius is all low, one well outside all high
    inside, outside = cosine(h, w, 2, 1), cosine(h, w, 9, 7)
    lo_in = bw.decompose(inside, r)["low"]
    lo_out = bw.decompose(outside, r)["low"]
    torch.testing.assert_close(lo_in, inside, atol=1e-6, rtol=0)
    torch.testing.assert_close(lo_out, torch.full_like(outside, 0.5), atol=1e-6, rtol=0)  # only the DC (0.5) is low
    torch.testing.assert_close(lo_in, hard.decompose(inside, r)["low"], atol=1e-6, rtol=0)
    torch.testing.assert_close(lo_out, hard.decompose(outside, r)["low"], atol=1e-6, rtol=0)
    # smaller orders leak: the outside frequency is partly low
    assert (ButterworthDecomposer(order=1).decompose(outside, r)["low"] - 0.5).abs().max() > 0.01


# ----------------------------------------------------------------------------- buffers, dtypes, caching
@pytest.mark.parametrize("name", ["gaussian", "butterworth"])
def test_out_buffers_are_written(name):
    dec = make(name)
    x = images((2, 3, 9, 12))
    want = {r: dec.decompose(x, r) for r in (2, 5)}
    # decompose: one {component: tensor} mapping
    out = {"low": torch.full_like(x, float("nan")), "high": torch.full_like(x, float("nan"))}
    got = dec.decompose(x, 2, out=out)
    assert got["low"] is out["low"] and got["high"] is out["high"]
    torch.testing.assert_close(out["low"], want[2]["low"], atol=0, rtol=0)
    torch.testing.assert_close(out["high"], want[2]["high"], atol=0, rtol=0)
    # non-contiguous buffers (slices of a stack along a later axis) are written too
    stack = torch.full((2, 3, 12, 9), float("nan")).transpose(-2, -1)
    stack2 = torch.full_like(stack, float("nan"))
    got = dec.decompose(x, 5, out={"low": stack, "high": stack2})
    assert got["low"] is stack and got["high"] is stack2
    torch.testing.assert_close(stack, want[5]["low"], atol=0, rtol=0)
    torch.testing.assert_close(stack2, want[5]["high"], atol=0, rtol=0)
    # decompose_all: one mapping rewritten per radius, and {param: {component: tensor}}
    shared = {"low": torch.empty_like(x), "high": torch.empty_like(x)}
    for r, parts in dec.decompose_all(x, [2, 5], out=shared):
        assert parts["low"] is shared["low"] and parts["high"] is shared["high"]
        torch.testing.assert_close(parts["low"], want[r]["low"], atol=0, rtol=0)
    per = {r: {"low": torch.empty_like(x), "high": torch.empty_like(x)} for r in (2, 5)}
    results = dict(dec.decompose_all(x, [2, 5], out=per))
    for r in (2, 5):
        assert results[r]["low"] is per[r]["low"] and results[r]["high"] is per[r]["high"]
        torch.testing.assert_close(per[r]["low"], want[r]["low"], atol=0, rtol=0)
        torch.testing.assert_close(per[r]["high"], want[r]["high"], atol=0, rtol=0)


def test_half_precision_and_empty_batches():
    dec = ButterworthDecomposer()
    x = images((2, 3, 8, 10))
    parts = dec.decompose(x.half(), 3)
    assert parts["low"].dtype == torch.float16 and parts["high"].dtype == torch.float16
    torch.testing.assert_close(parts["low"].float(), dec.decompose(x, 3)["low"], atol=2e-3, rtol=0)
    empty = torch.empty(0, 3, 8, 10)
    parts = GaussianDecomposer().decompose(empty, 3)
    assert parts["low"].shape == empty.shape and parts["high"].shape == empty.shape


def test_masks_are_cached_per_size_radius_device_dtype():
    dec = GaussianDecomposer()
    m = dec.mask(8, 9, 3.0, "cpu", torch.float32)
    assert dec.mask(8, 9, 3, torch.device("cpu"), torch.float32) is m
    for other in [(9, 8, 3.0, "cpu", torch.float32), (8, 9, 4.0, "cpu", torch.float32), (8, 9, 3.0, "cpu", torch.float64)]:
        assert dec.mask(*other) is not m
    assert dec.mask(8, 9, 3.0, "cpu", torch.float64).dtype == torch.float64
    dec.decompose(images((1, 1, 8, 9)), 3.0)
    assert dec.mask(8, 9, 3.0, "cpu", torch.float32) is m  # decompose used the cached one
    # bounded: the least recently used transfer functions are dropped
    for n in range(dec.MAX_CACHED + 5):
        dec.mask(4 + n, 4, 1.0)
    assert len(dec._masks) == dec.MAX_CACHED


@pytest.mark.cuda
def test_cuda_matches_cpu():
    x = images((2, 3, 15, 12))
    for dec in (GaussianDecomposer(), ButterworthDecomposer(order=3)):
        for dtype in (torch.float32, torch.float64):
            cpu = dec.decompose(x.to(dtype), 4)
            gpu = dec.decompose(x.to(dtype).cuda(), 4)
            assert gpu["low"].is_cuda and gpu["high"].is_cuda
            tol = 1e-6 if dtype == torch.float32 else 1e-13
            torch.testing.assert_close(gpu["low"].cpu(), cpu["low"], atol=tol, rtol=0)
            torch.testing.assert_close(gpu["high"].cpu(), cpu["high"], atol=tol, rtol=0)


# ----------------------------------------------------------------------------- options
def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg, msg
    return msg


def test_options():
    assert ButterworthDecomposer().options() == {"order": 2}
    assert ButterworthDecomposer(order=7).options() == {"order": 7}
    assert ButterworthDecomposer(order=3.0).options() == {"order": 3}  # "order=3.0" on the command line
    assert GaussianDecomposer().options() == {}


@pytest.mark.parametrize("order", [0, -1, 2.5, True, "abc", float("nan"), float("inf"), 1001, None])
def test_bad_order_is_one_line(order):
    with pytest.raises(UserFacingError) as info:
        ButterworthDecomposer(order=order)
    msg = one_line(info.value)
    assert msg.startswith("butterworth: order=") and "whole number from 1 to 1000" in msg


def test_bad_options_through_the_registry(pm):
    pm.register(freqprobe_filters.hooks, "filters")
    for opts in ({"order": 0}, {"order": -1}):
        with pytest.raises(UserFacingError) as info:
            freqprobe.get_decomposer("butterworth", pm=pm, **opts)
        assert "butterworth: order=" in one_line(info.value)
    with pytest.raises(UserFacingError) as info:
        freqprobe.get_decomposer("butterworth", pm=pm, ordr=3)
    msg = one_line(info.value)
    assert "ordr" in msg and "order" in msg
    with pytest.raises(UserFacingError) as info:
        freqprobe.get_decomposer("gaussian", pm=pm, order=3)
    assert "takes no options" in one_line(info.value)


def test_bad_options_on_the_command_line(cli, pm, monkeypatch, tiny_npz, tmp_path):
    import freqprobe.plugins

    pm.register(freqprobe_filters.hooks, "filters")
    monkeypatch.setattr(freqprobe.plugins, "_default", pm)
    for opt, needle in [("order=0", "butterworth: order=0"), ("order=-1", "butterworth: order=-1"), ("steep=3", "steep")]:
        rc, out, err = cli("decompose", "--data", f"npz:{tiny_npz}", "--decomposer", "butterworth", "--decomposer-opt", opt,
                           "--radii", "2", "--out", tmp_path / "x.npz", "-q")
        assert rc == 2, (opt, out, err)
        assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1 and needle in err, err
        assert "Traceback" not in err
        assert not (tmp_path / "x.npz").exists()


# ----------------------------------------------------------------------------- as an installed plugin
def freqprobe_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "freqprobe"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "freqprobe.cli"]


def test_found_through_its_entry_point():
    try:
        dist = importlib.metadata.distribution("freqprobe-filters")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("freqprobe-filters is not installed (pip install -e examples/freqprobe-filters)")
    assert [(ep.name, ep.value) for ep in dist.entry_points if ep.group == "freqprobe"] == [("filters", "freqprobe_filters.hooks")]
    env = dict(os.environ)  # the root conftest switches third-party autoload off; this test is about autoload
    for var in ("FREQPROBE_DISABLE_PLUGIN_AUTOLOAD", "FREQPROBE_DISABLE_PLUGINS", "FREQPROBE_LOAD_PLUGINS"):
        env.pop(var, None)
    p = subprocess.run([*freqprobe_cmd(), "list", "decomposers"], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    rows = {parts[0]: parts[1] for parts in (line.split() for line in p.stdout.splitlines()) if len(parts) >= 2}
    assert rows.get("gaussian") == "filters" and rows.get("butterworth") == "filters", p.stdout
    assert rows.get("fft-radial") == "freqprobe.builtins.decomposers"
    # and switched off again by name
    env["FREQPROBE_DISABLE_PLUGINS"] = "filters"
    p = subprocess.run([*freqprobe_cmd(), "list", "decomposers"], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    assert "gaussian" not in p.stdout and "butterworth" not in p.stdout


def test_a_probe_runs_with_it(tiny_npz, tiny_model_file, tmp_path):
    pm = freqprobe.get_plugin_manager(autoload=False)
    pm.register(freqprobe_filters.hooks, "filters")
    result = freqprobe.run(f"{tiny_model_file}:tinynet", probe="lfc-hfc", data=f"npz:{tiny_npz}", fit=False,
                           decomposer="gaussian", params="2,4", out=tmp_path / "run", pm=pm, device="cpu")
    assert result.components == ("low", "high") and result.param_name == "r"
    rows = {(r["variant"], float(r["param"])) for r in result.summary if r["variant"] in ("low", "high")}
    assert rows == {("low", 2.0), ("high", 2.0), ("low", 4.0), ("high", 4.0)}
    assert all(r["decomposer"] == "gaussian" for r in result.summary if r["variant"] in ("low", "high"))
    with open(tmp_path / "run" / "summary.csv", newline="") as f:
        written = [(r["variant"], r["param"]) for r in csv.DictReader(f)]
    for key in [("low", "2"), ("high", "2"), ("low", "4"), ("high", "4")]:
        assert key in written, written
