"""``freqprobe.decompose`` / ``get_decomposer`` and the rescale policies, against hand-written numpy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import freqprobe
import reference
from freqprobe.errors import UnknownNameError, UserFacingError


def ref_low(x: np.ndarray, r: float, rule: str = "exclusive") -> np.ndarray:
    """Paper §3.1 low part in float64 numpy (tests/reference.py)."""
    return reference.fft_radial(x, r, rule)[0]


def ref_dominant(x: np.ndarray, k: int) -> np.ndarray:
    return reference.svd_dominant(x, k)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32))


# ---------------------------------------------------------------- decompose
def test_decompose_fft_radial(x, pm):
    before = x.clone()
    parts = freqprobe.decompose(x, "fft-radial", 4, pm=pm)
    assert isinstance(parts, dict) and list(parts) == ["low", "high"]
    for t in parts.values():
        assert t.shape == x.shape and t.dtype == torch.float32 and t.device == x.device
        assert t.data_ptr() != x.data_ptr()
    np.testing.assert_allclose(parts["low"].numpy(), ref_low(x.numpy(), 4), atol=1e-5, rtol=0)
    np.testing.assert_allclose(parts["high"].numpy(), x.numpy() - ref_low(x.numpy(), 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(parts["low"] + parts["high"], x, atol=1e-5, rtol=0)
    assert torch.equal(x, before)


def test_decompose_defaults_are_fft_radial_r8(x):
    parts = freqprobe.decompose(x)
    assert set(parts) == {"low", "high"}
    np.testing.assert_allclose(parts["low"].numpy(), ref_low(x.numpy(), 8), atol=1e-5, rtol=0)


def test_decompose_rule_option(x):
    # r=5 lies on a frequency ring ((3, 4) from the centre), so the rules differ there
    exc = freqprobe.decompose(x, "fft-radial", 5)
    inc = freqprobe.decompose(x, "fft-radial", 5, rule="inclusive")
    np.testing.assert_allclose(exc["low"].numpy(), ref_low(x.numpy(), 5, "exclusive"), atol=1e-5, rtol=0)
    np.testing.assert_allclose(inc["low"].numpy(), ref_low(x.numpy(), 5, "inclusive"), atol=1e-5, rtol=0)
    assert (exc["low"] - inc["low"]).abs().max().item() > 1e-3
    torch.testing.assert_close(inc["low"] + inc["high"], x, atol=1e-5, rtol=0)
    # off a ring the two rules agree
    torch.testing.assert_close(freqprobe.decompose(x, "fft-radial", 5.5, rule="inclusive")["low"],
                               freqprobe.decompose(x, "fft-radial", 5.5)["low"], atol=0, rtol=0)


def test_decompose_parameter_as_string(x):
    torch.testing.assert_close(freqprobe.decompose(x, "fft-radial", "4")["low"], freqprobe.decompose(x, "fft-radial", 4.0)["low"])


def test_decompose_svd(x):
    before = x.clone()
    parts = freqprobe.decompose(x, "svd", 2)
    assert list(parts) == ["dominant", "trailing"]
    for t in parts.values():
        assert t.shape == x.shape and t.dtype == torch.float32 and t.device == x.device
    np.testing.assert_allclose(parts["dominant"].numpy(), ref_dominant(x.numpy(), 2), atol=1e-4, rtol=0)
    torch.testing.assert_close(parts["dominant"] + parts["trailing"], x, atol=1e-5, rtol=0)
    assert torch.equal(x, before)


def test_decompose_noncontiguous_input_untouched():
    base = torch.from_numpy(np.random.default_rng(1).random((2, 12, 10, 3), dtype=np.float32))
    x = base.permute(0, 3, 1, 2)
    before = base.clone()
    parts = freqprobe.decompose(x, "fft-radial", 3)
    assert torch.equal(base, before)
    np.testing.assert_allclose(parts["low"].numpy(), ref_low(x.numpy(), 3), atol=1e-5, rtol=0)


def test_decompose_float64_input():
    x = torch.from_numpy(np.random.default_rng(2).random((2, 1, 9, 7)))
    before = x.clone()
    parts = freqprobe.decompose(x, "fft-radial", 2.5)
    assert parts["low"].dtype == torch.float64 and parts["high"].dtype == torch.float64
    # float64 in, float64 precision out (both code paths: basis for small, rfft for > 64 sides)
    np.testing.assert_allclose(parts["low"].numpy(), ref_low(x.numpy(), 2.5), atol=1e-12, rtol=0)
    torch.testing.assert_close(parts["low"] + parts["high"], x, atol=1e-12, rtol=0)
    assert torch.equal(x, before)
    big = torch.from_numpy(np.random.default_rng(3).random((1, 2, 70, 66)))
    np.testing.assert_allclose(freqprobe.decompose(big, "fft-radial", 9)["low"].numpy(), ref_low(big.numpy(), 9), atol=1e-12, rtol=0)
    svd = freqprobe.decompose(x, "svd", 2)
    assert svd["dominant"].dtype == torch.float64
    torch.testing.assert_close(svd["dominant"] + svd["trailing"], x, atol=1e-12, rtol=0)


def test_decompose_half_precision_input_is_computed_in_float32():
    x = torch.from_numpy(np.random.default_rng(4).random((2, 3, 16, 16))).to(torch.bfloat16)
    parts = freqprobe.decompose(x, "fft-radial", 4)
    assert parts["low"].dtype == torch.bfloat16
    np.testing.assert_allclose(parts["low"].float().numpy(), ref_low(x.float().numpy(), 4), atol=2e-2, rtol=0)


def test_decompose_degenerate_radius_warns(x):
    with pytest.warns(UserWarning, match="covers the whole 16x16 spectrum"):
        parts = freqprobe.decompose(x, "fft-radial", 12)  # farthest bin of 16x16 at 11.31
    torch.testing.assert_close(parts["low"], x, atol=1e-5, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        freqprobe.decompose(x, "fft-radial", 11)


@pytest.mark.parametrize("images,msg", [
    (torch.rand(3, 8, 8), "N×C×H×W"),
    (torch.rand(1, 1, 3, 8, 8), "N×C×H×W"),
    (np.zeros((1, 3, 8, 8), np.float32), "N×C×H×W tensor, got ndarray"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "float images"),
])
def test_decompose_bad_images(images, msg):
    with pytest.raises(UserFacingError, match=msg):
        freqprobe.decompose(images, "fft-radial", 4)


@pytest.mark.parametrize("name,param,msg", [
    ("fft-radial", 0, "r=0 must be a positive number"),
    ("fft-radial", -3.5, "r=-3.5 must be a positive number"),
    ("fft-radial", "abc", "r='abc' is not a number"),
    ("svd", 0, "k=0 must be a positive number"),
    ("svd", 1.5, "k=1.5 must be a whole number"),
])
def test_decompose_bad_param(x, name, param, msg):
    with pytest.raises(UserFacingError, match=msg):
        freqprobe.decompose(x, name, param)


def test_decompose_unknown_name_and_option(x):
    with pytest.raises(UnknownNameError, match=r"Did you mean: fft-radial\?"):
        freqprobe.decompose(x, "fft_radial", 4)
    with pytest.raises(UserFacingError, match="unknown boundary rule"):
        freqprobe.decompose(x, "fft-radial", 4, rule="closed")


def test_get_decomposer_decompose_all_matches_decompose(x):
    dec = freqprobe.get_decomposer("fft-radial")
    assert isinstance(dec, freqprobe.Decomposer)
    assert dec.components == ("low", "high") and dec.param_name == "r"
    got = [(r, parts["low"].clone()) for r, parts in dec.decompose_all(x, [2, 4, 8, 11])]
    assert [r for r, _ in got] == [2, 4, 8, 11]
    for r, low in got:
        torch.testing.assert_close(low, freqprobe.decompose(x, "fft-radial", r)["low"], atol=1e-6, rtol=0)
    svd = freqprobe.get_decomposer("svd")
    assert svd.components == ("dominant", "trailing") and svd.param_name == "k"


# ---------------------------------------------------------------- rescale policies
def policy(name: str, pm=None):
    return freqprobe.get_class("rescale", name, pm)()


@pytest.fixture
def comps() -> torch.Tensor:
    """Component-like images: a zero-mean high part, an in-range image, a constant one, an all-negative one."""
    rng = np.random.default_rng(3)
    a = rng.normal(0, 0.3, (2, 4, 5)).astype(np.float32)
    b = rng.random((2, 4, 5)).astype(np.float32) * 0.5
    c = np.full((2, 4, 5), 0.25, np.float32)
    d = -rng.random((2, 4, 5)).astype(np.float32) - 0.1
    return torch.from_numpy(np.stack([a, b, c, d]))


def test_rescale_policies_registered(pm):
    assert set(freqprobe.collect("rescale", pm)) == {"none", "clip", "minmax", "paper"}
    assert policy("paper", pm).applies_to_original is True
    assert not any(policy(n, pm).applies_to_original for n in ("none", "clip", "minmax"))
    with pytest.raises(UnknownNameError, match="Did you mean: minmax"):
        freqprobe.get_class("rescale", "min-max", pm)


def test_rescale_none(comps):
    before = comps.clone()
    np.testing.assert_array_equal(policy("none").apply(comps).numpy(), before.numpy())
    assert torch.equal(comps, before)


def test_rescale_clip(comps):
    before = comps.clone()
    got = policy("clip").apply(comps).numpy()
    a = before.numpy()
    expected = np.where(a < 0, 0.0, np.where(a > 1, 1.0, a)).astype(np.float32)
    np.testing.assert_array_equal(got, expected)
    assert got.min() == 0.0 and torch.equal(comps, before)


def test_rescale_minmax(comps):
    before = comps.clone()
    got = policy("minmax").apply(comps).numpy()
    a = before.numpy().astype(np.float64)
    expected = np.empty_like(a)
    for i in range(len(a)):  # each image by its own min and max, over all channels
        lo, hi = a[i].min(), a[i].max()
        expected[i] = (a[i] - lo) / (hi - lo) if hi > lo else 0.0
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    for i in (0, 1, 3):
        assert got[i].min() == pytest.approx(0.0, abs=1e-7) and got[i].max() == pytest.approx(1.0, abs=1e-6)
    assert (got[2] == 0).all()
    assert torch.equal(comps, before)


def test_rescale_paper(comps):
    before = comps.clone()
    zeros = torch.zeros(1, 2, 4, 5)
    inp = torch.cat([comps, zeros])
    got = policy("paper").apply(inp).numpy()
    a = inp.numpy().astype(np.float64)
    expected = np.empty_like(a)
    for i in range(len(a)):  # the authors' code: x / max(x) per image, where the maximum is positive
        m = a[i].max()
        expected[i] = a[i] / m if m > 0 else a[i]
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert got[0].max() == pytest.approx(1.0) and got[0].min() < 0  # not a min-max stretch
    np.testing.assert_array_equal(got[3], a[3].astype(np.float32))  # all-negative: unchanged
    np.testing.assert_array_equal(got[4], 0.0)
    assert torch.equal(comps, before)
