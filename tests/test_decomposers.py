"""The built-in decomposers against independent float64 numpy implementations of the paper's formulas.

fft-radial (§3.1): per channel, fft2, fftshift, keep distance from the centre (H//2, W//2) < r
(``exclusive``) or <= r (``inclusive``), ifftshift, ifft2, real part.
svd (§8): per channel, keep the top-k singular values.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st

import freqprobe
import reference
from freqprobe.builtins.decomposers import FFTRadialDecomposer, SVDDecomposer, max_kept_sq_distance
from freqprobe.errors import UnknownNameError, UserFacingError

PROP = settings(max_examples=30, deadline=None, derandomize=True)
F32_ATOL = 1e-5


# ---------------------------------------------------------------- independent references (tests/reference.py)
def ref_fft_radial(x: np.ndarray, r: float, rule: str) -> tuple[np.ndarray, np.ndarray]:
    return reference.fft_radial(x, r, rule)


def ref_svd(x: np.ndarray, k: int) -> np.ndarray:
    return reference.svd_dominant(x, k)


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*a, **kw)


def make_x(seed: int, shape, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random(shape)).to(dtype)


shapes = st.tuples(st.integers(1, 3), st.sampled_from([1, 3]), st.integers(1, 40), st.integers(1, 40))


@st.composite
def radius_for(draw, h: int, w: int) -> float:
    """Any radius, or one that lies exactly on an existing frequency distance (where the rules differ)."""
    kind = draw(st.sampled_from(["free", "integer", "boundary"]))
    if kind == "free":
        return draw(st.floats(0.05, 32.0, allow_nan=False))
    if kind == "integer":
        return float(draw(st.integers(1, 30)))
    u = draw(st.integers(0, h // 2))
    v = draw(st.integers(0, w // 2))
    assume(u or v)
    return math.sqrt(u * u + v * v)  # a scalar, correctly rounded square root: exactly the ring's radius


# ---------------------------------------------------------------- fft-radial properties
@PROP
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), data=st.data(),
       path=st.sampled_from(["auto", "fft", "chunked"]), fixed_r=st.none())
# found on an Intel AVX-512 machine, where torch's vectorised sqrt(2) was one ulp low (issue 5)
@example(shape=(1, 1, 2, 2), seed=0, data=None, path="auto", fixed_r=math.sqrt(2.0))
@example(shape=(1, 1, 2, 2), seed=0, data=None, path="fft", fixed_r=math.sqrt(2.0))
@example(shape=(1, 3, 7, 9), seed=1, data=None, path="chunked", fixed_r=math.sqrt(5.0))
@example(shape=(2, 1, 32, 32), seed=2, data=None, path="auto", fixed_r=5.0)
@example(shape=(1, 1, 40, 33), seed=3, data=None, path="fft", fixed_r=math.sqrt(13.0))
def test_fft_radial_matches_numpy_reference(shape, seed, data, path, fixed_r):
    n, c, h, w = shape
    r = fixed_r if fixed_r is not None else data.draw(radius_for(h, w), label="r")
    x = make_x(seed, shape)
    parts = {}
    for rule in ("exclusive", "inclusive"):
        dec = FFTRadialDecomposer(rule)
        if path == "fft":
            dec.MATMUL_MAX_SIDE = 0  # force the rfft2 path
        elif path == "chunked":
            dec.CHUNK_BYTES = 1  # one plane per chunk
        assert dec._use_basis(x) == (path != "fft")
        got = quiet(dec.decompose, x, r)
        assert set(got) == {"low", "high"}
        for t in got.values():
            assert t.dtype == torch.float32 and t.shape == x.shape and t.device == x.device and not t.is_complex()
        low, high = ref_fft_radial(x.numpy(), r, rule)
        np.testing.assert_allclose(got["low"].numpy(), low, atol=F32_ATOL, rtol=0)
        np.testing.assert_allclose(got["high"].numpy(), high, atol=F32_ATOL, rtol=0)
        np.testing.assert_allclose((got["low"] + got["high"]).numpy(), x.numpy(), atol=F32_ATOL, rtol=0)
        parts[rule] = got["low"]
    on_ring = bool(reference.on_ring(h, w, r).any())
    if data is not None:
        event(f"r on a frequency ring: {on_ring}")
    diff = (parts["exclusive"] - parts["inclusive"]).abs().max().item()
    if on_ring:
        assert diff > 1e-6, f"r={r} lies on a frequency ring of {h}x{w}; exclusive and inclusive must differ"
    else:
        assert diff == 0.0


@PROP
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), data=st.data())
def test_fft_radial_float64(shape, seed, data):
    n, c, h, w = shape
    r = data.draw(radius_for(h, w), label="r")
    rule = data.draw(st.sampled_from(["exclusive", "inclusive"]), label="rule")
    x = make_x(seed, shape, torch.float64)
    for force_fft in (False, True):
        dec = FFTRadialDecomposer(rule)
        if force_fft:
            dec.MATMUL_MAX_SIDE = 0
        got = quiet(dec.decompose, x, r)
        assert got["low"].dtype == torch.float64 and got["high"].dtype == torch.float64
        low, high = ref_fft_radial(x.numpy(), r, rule)
        np.testing.assert_allclose(got["low"].numpy(), low, atol=1e-10, rtol=0)
        np.testing.assert_allclose(got["high"].numpy(), high, atol=1e-10, rtol=0)


@PROP
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), r=st.floats(0.5, 30.0), rule=st.sampled_from(["exclusive", "inclusive"]))
def test_fft_radial_idempotent(shape, seed, r, rule):
    x = make_x(seed, shape)
    dec = FFTRadialDecomposer(rule)
    p = quiet(dec.decompose, x, r)
    low, high = p["low"].clone(), p["high"].clone()
    again = quiet(dec.decompose, low, r)
    torch.testing.assert_close(again["low"], low, atol=F32_ATOL, rtol=0)
    assert again["high"].abs().max().item() < F32_ATOL
    again = quiet(dec.decompose, high, r)
    torch.testing.assert_close(again["high"], high, atol=F32_ATOL, rtol=0)
    assert again["low"].abs().max().item() < F32_ATOL


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 1, 11, 9), (2, 3, 70, 65), (1, 1, 8, 40)])
@pytest.mark.parametrize("r", [5.0, 4.0, math.sqrt(2.0)])
def test_rules_differ_exactly_on_a_ring(shape, r):
    """r=5 is the distance of (3, 4) and (5, 0); the inclusive low part has exactly those extra bins."""
    x = make_x(11, shape)
    h, w = shape[-2:]
    assert reference.on_ring(h, w, r).any()
    exc = FFTRadialDecomposer("exclusive").decompose(x, r)["low"]
    inc = FFTRadialDecomposer("inclusive").decompose(x, r)["low"]
    assert (inc - exc).abs().max().item() > 1e-3
    # the difference is the inverse transform of the ring alone
    np.testing.assert_allclose((inc - exc).numpy(), reference.fft_ring(x.numpy(), r), atol=F32_ATOL, rtol=0)


@pytest.mark.parametrize("shape", [(2, 3, 70, 65), (1, 1, 65, 64), (2, 1, 64, 64), (1, 3, 33, 66)])
@pytest.mark.parametrize("rule", ["exclusive", "inclusive"])
def test_fft_radial_both_paths_large_sizes(shape, rule):
    x = make_x(sum(shape), shape)
    dec = FFTRadialDecomposer(rule)
    assert dec._use_basis(x) == (max(shape[-2:]) <= FFTRadialDecomposer.MATMUL_MAX_SIDE)
    radii = [1.0, 5.0, 7.5, 13.0, 30.0]
    results = {r: {k: v.clone() for k, v in p.items()} for r, p in dec.decompose_all(x, radii)}
    for r in radii:
        low, high = ref_fft_radial(x.numpy(), r, rule)
        np.testing.assert_allclose(results[r]["low"].numpy(), low, atol=F32_ATOL, rtol=0)
        np.testing.assert_allclose(results[r]["high"].numpy(), high, atol=F32_ATOL, rtol=0)


@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 1, 17, 40)])
def test_fft_radial_fused_high_gemm(monkeypatch, shape):
    """The CUDA variant of the real-basis path (high from one baddbmm), run on the CPU."""
    monkeypatch.setattr(FFTRadialDecomposer, "_fused_high", lambda self, device: True)
    x = make_x(21, shape)
    for rule in ("exclusive", "inclusive"):
        dec = FFTRadialDecomposer(rule)
        dec.CHUNK_BYTES = 2 * shape[-1] * shape[-2] * 4
        for out in (None, "pair"):
            bufs = {"low": torch.empty_like(x), "high": torch.empty_like(x)} if out else None
            for r, p in dec.decompose_all(x, [2.0, 5.0, math.sqrt(8.0)], out=bufs):
                low, high = ref_fft_radial(x.numpy(), r, rule)
                np.testing.assert_allclose(p["low"].numpy(), low, atol=F32_ATOL, rtol=0)
                np.testing.assert_allclose(p["high"].numpy(), high, atol=F32_ATOL, rtol=0)


def test_fft_radial_noncontiguous_input():
    base = make_x(1, (2, 20, 18, 3))
    x = base.permute(0, 3, 1, 2)  # channels-last strides
    assert not x.is_contiguous()
    xt = make_x(2, (2, 3, 26, 22)).transpose(-1, -2)  # 2x3x22x26, transposed planes
    xs = make_x(3, (2, 3, 140, 70))[..., ::2, :]  # strided rows, 70x70 -> rfft2 path
    for t in (x, xt, xs):
        before = t.clone()
        for rule in ("exclusive", "inclusive"):
            got = FFTRadialDecomposer(rule).decompose(t, 5.0)
            low, high = ref_fft_radial(t.numpy(), 5.0, rule)
            np.testing.assert_allclose(got["low"].numpy(), low, atol=F32_ATOL, rtol=0)
            np.testing.assert_allclose(got["high"].numpy(), high, atol=F32_ATOL, rtol=0)
        assert torch.equal(t, before)


@pytest.mark.parametrize("shape", [(3, 3, 24, 20), (2, 3, 70, 65)])
@pytest.mark.parametrize("contiguous_out", [True, False])
def test_fft_radial_out_buffers_reused(shape, contiguous_out):
    x = make_x(4, shape)
    n, c, h, w = shape
    if contiguous_out:
        out = {"low": torch.full(shape, float("nan")), "high": torch.full(shape, float("nan"))}
    else:
        out = {k: torch.full((n, h, w, c), float("nan")).permute(0, 3, 1, 2) for k in ("low", "high")}
        assert not out["low"].is_contiguous()
    dec = FFTRadialDecomposer()
    dec.CHUNK_BYTES = 3 * h * w * 4  # several chunks
    radii = [2.0, 6.0, 11.0]
    seen = []
    for r, parts in dec.decompose_all(x, radii, out=out):
        assert parts["low"] is out["low"] and parts["high"] is out["high"]
        low, high = ref_fft_radial(x.numpy(), r, "exclusive")
        np.testing.assert_allclose(parts["low"].numpy(), low, atol=F32_ATOL, rtol=0)
        np.testing.assert_allclose(parts["high"].numpy(), high, atol=F32_ATOL, rtol=0)
        seen.append(r)
    assert seen == radii
    # single-radius decompose with out= writes into the same buffers
    got = dec.decompose(x, 4.0, out=out)
    assert got["low"] is out["low"]
    np.testing.assert_allclose(out["low"].numpy(), ref_fft_radial(x.numpy(), 4.0, "exclusive")[0], atol=F32_ATOL, rtol=0)


@pytest.mark.parametrize("shape", [(3, 3, 24, 20), (2, 3, 70, 65), (5, 1, 17, 9)])
@pytest.mark.parametrize("contiguous_out", [True, False])
def test_fft_radial_per_radius_out_buffers(shape, contiguous_out):
    """out={r: {"low", "high"}}: the chunk-major path fills every radius's own buffers."""
    x = make_x(6, shape)
    n, c, h, w = shape
    radii = [1.5, 5.0, 7.0]
    if contiguous_out:
        out = {r: {k: torch.full(shape, float("nan")) for k in ("low", "high")} for r in radii}
    else:
        out = {r: {k: torch.full((n, h, w, c), float("nan")).permute(0, 3, 1, 2) for k in ("low", "high")} for r in radii}
    dec = FFTRadialDecomposer("inclusive")
    dec.CHUNK_BYTES = 2 * h * w * 4  # several chunks, the last one short
    got = list(dec.decompose_all(x, radii, out=out))
    assert [r for r, _ in got] == radii
    for r, parts in got:
        assert parts["low"] is out[r]["low"] and parts["high"] is out[r]["high"]
    for r in radii:  # check after all radii are done: no radius overwrote another's buffers
        low, high = ref_fft_radial(x.numpy(), r, "inclusive")
        np.testing.assert_allclose(out[r]["low"].numpy(), low, atol=F32_ATOL, rtol=0)
        np.testing.assert_allclose(out[r]["high"].numpy(), high, atol=F32_ATOL, rtol=0)


def test_fft_radial_per_radius_out_missing_radius():
    x = make_x(7, (2, 3, 16, 16))
    out = {4.0: {"low": torch.empty_like(x), "high": torch.empty_like(x)}}
    with pytest.raises(UserFacingError, match=r"no buffers for r=8"):
        list(FFTRadialDecomposer().decompose_all(x, [4.0, 8.0], out=out))


def test_fft_radial_decompose_all_equals_separate_calls():
    x = make_x(5, (4, 3, 32, 32))
    dec = FFTRadialDecomposer()
    radii = [4.0, 8.0, 12.0, 16.0]
    together = {r: {k: v.clone() for k, v in p.items()} for r, p in dec.decompose_all(x, radii)}
    assert list(together) == radii
    for r in radii:
        single = FFTRadialDecomposer().decompose(x, r)
        torch.testing.assert_close(together[r]["low"], single["low"], atol=1e-6, rtol=0)


# ---------------------------------------------------------------- mask
@pytest.mark.parametrize("rule,counts", [("exclusive", [45, 193, 437, 793]), ("inclusive", [49, 197, 441, 795])])
def test_mask_counts_32x32(rule, counts):
    dec = FFTRadialDecomposer(rule)
    for r, expected in zip((4, 8, 12, 16), counts):
        m = dec.mask(32, 32, r, full=True)
        assert m.shape == (32, 32)
        assert int(m.sum().item()) == expected
        # independent count on the centred spectrum
        assert int(reference.kept(32, 32, r, rule).sum()) == expected


# ---------------------------------------------------------------- exact boundary (issue 5)
def _count_on_grid(h: int, w: int, k: int) -> tuple[int, int]:
    """Bins with u² + v² < k and <= k on the centred h×w grid, by integer arithmetic alone."""
    us = range(-(h // 2), h - h // 2)
    vs = range(-(w // 2), w - w // 2)
    below = sum(1 for u in us for v in vs if u * u + v * v < k)
    upto = sum(1 for u in us for v in vs if u * u + v * v <= k)
    return below, upto


# (h, w, r, exclusive count, inclusive count): radii exactly on a ring of bins
TIES = [
    (2, 2, math.sqrt(2.0), 3, 4),  # the corner bin; what failed on AVX-512
    (7, 7, math.sqrt(5.0), 13, 21),  # (±1, ±2), (±2, ±1)
    (9, 5, math.sqrt(5.0), *_count_on_grid(9, 5, 5)),
    (32, 32, 5.0, 69, 81),  # (±3, ±4), (±4, ±3), (±5, 0), (0, ±5)
    (32, 32, 4.0, 45, 49),  # the published radii
    (32, 32, 8.0, 193, 197),
    (32, 32, 12.0, 437, 441),
    (32, 32, 16.0, 793, 795),
    (32, 32, math.sqrt(2.0), 5, 9),
    (33, 20, math.sqrt(50.0), *_count_on_grid(33, 20, 50)),  # (1, 7), (5, 5), (7, 1)
    (70, 65, math.sqrt(65.0), *_count_on_grid(70, 65, 65)),  # rfft path by default; (1, 8), (4, 7), ...
    (1, 9, 2.0, 3, 5),
]

PATHS = ["basis-pair", "basis-per-radius", "basis-chunked", "fft", "fft-per-radius", "float64",
         pytest.param("cuda", marks=pytest.mark.cuda)]


def _kept_count_by_impulse(dec: FFTRadialDecomposer, h: int, w: int, r: float, path: str) -> tuple[int, np.ndarray]:
    """Run the decomposition on a unit impulse: its low part is the inverse FFT of the mask, so
    low[0, 0] * h * w is the number of kept bins and the whole low part says which ones."""
    dtype = torch.float64 if path == "float64" else torch.float32
    device = "cuda" if path == "cuda" else "cpu"
    x = torch.zeros(2, 1, h, w, dtype=dtype, device=device)
    x[:, :, 0, 0] = 1.0
    if path.startswith("fft"):
        dec.MATMUL_MAX_SIDE = 0
    elif path == "basis-chunked":
        dec.CHUNK_BYTES = 1
    if path in ("basis-per-radius", "fft-per-radius"):
        out = {r: {"low": torch.empty_like(x), "high": torch.empty_like(x)}}
        low = dict(dec.decompose_all(x, [r], out=out))[r]["low"]
    elif path == "basis-pair":
        low = dec.decompose(x, r, out={"low": torch.empty_like(x), "high": torch.empty_like(x)})["low"]
    else:
        low = dec.decompose(x, r)["low"]
    low = low.double().cpu().numpy()
    return int(round(low[0, 0, 0, 0] * h * w)), low


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("h,w,r,n_exc,n_inc", TIES)
def test_radius_on_a_tie_keeps_exact_bin_counts(h, w, r, n_exc, n_inc, path):
    impulse = np.zeros((2, 1, h, w))
    impulse[:, :, 0, 0] = 1.0
    for rule, expected in (("exclusive", n_exc), ("inclusive", n_inc)):
        dec = FFTRadialDecomposer(rule)
        assert int(quiet(dec.mask, h, w, r, full=True).sum()) == expected
        assert int(reference.kept(h, w, r, rule).sum()) == expected
        count, low = quiet(_kept_count_by_impulse, dec, h, w, r, path)
        assert count == expected, (rule, path)
        np.testing.assert_allclose(low, reference.fft_radial(impulse, r, rule)[0], atol=1e-6, rtol=0)


TRITON_CHECK = r"""
import math, os, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
import reference
from freqprobe.builtins.decomposers import FFTRadialDecomposer

def make(rule):
    d = FFTRadialDecomposer(rule)
    d.TRITON = "force"  # the CUDA kernel, run on CPU tensors by Triton's interpreter
    return d

cases = [((2, 3, 32, 32), [4.0, 8.0, 12.0, 16.0, math.sqrt(2.0)]), ((1, 2, 7, 9), [1.0, math.sqrt(5.0), 3.5]),
         ((2, 1, 28, 28), [5.0, 19.0]), ((1, 1, 64, 40), [3.0, 10.0]), ((0, 3, 32, 32), [4.0])]
for shape, radii in cases:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
    for rule in ("exclusive", "inclusive"):
        d = make(rule)
        assert d._use_triton(x) == (shape[0] > 0), shape
        n, c, h, w = shape
        outs = {r: {k: torch.full((n, h, w, c), float("nan")).permute(0, 3, 1, 2) for k in ("low", "high")} for r in radii}
        for r, p in d.decompose_all(x, radii, out=outs):
            assert p["low"] is outs[r]["low"]
        for r in radii:
            lo, hi = reference.fft_radial(x.numpy(), r, rule)
            np.testing.assert_allclose(outs[r]["low"].numpy(), lo, atol=1e-5, rtol=0)
            np.testing.assert_allclose(outs[r]["high"].numpy(), hi, atol=1e-5, rtol=0)
# exact bin counts on ties, through the kernel (an impulse's low part is the inverse FFT of the mask)
for h, w, r, n_exc, n_inc in [(2, 2, math.sqrt(2.0), 3, 4), (32, 32, 5.0, 69, 81), (32, 32, 16.0, 793, 795), (7, 7, math.sqrt(5.0), 13, 21)]:
    x = torch.zeros(1, 1, h, w)
    x[0, 0, 0, 0] = 1.0
    for rule, want in (("exclusive", n_exc), ("inclusive", n_inc)):
        low = make(rule).decompose(x, r)["low"]
        assert round(float(low[0, 0, 0, 0]) * h * w) == want, (h, w, r, rule, float(low[0, 0, 0, 0]) * h * w)
assert FFTRadialDecomposer._triton_broken is None
print("ok")
"""


def test_triton_kernel_through_the_interpreter(tmp_path):
    """The CUDA kernel's arithmetic, checked on CPU: Triton's interpreter runs it on CPU tensors."""
    pytest.importorskip("triton", reason="triton is not installed (it ships with CUDA builds of torch)")
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "check.py"
    script.write_text(TRITON_CHECK)
    env = dict(os.environ, TRITON_INTERPRET="1")
    p = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-3000:]


def test_triton_failure_falls_back_to_the_exact_paths(monkeypatch, caplog):
    """Without a usable Triton (here: a CPU tensor and no interpreter) the result is the same, with one warning."""
    from freqprobe.builtins import _radial_triton

    monkeypatch.setattr(FFTRadialDecomposer, "_triton_broken", None)
    monkeypatch.setattr(_radial_triton, "available", lambda: True)

    def broken(*a, **k):
        raise RuntimeError("no CUDA driver")

    monkeypatch.setattr(_radial_triton, "lowpass", broken)
    x = make_x(12, (2, 3, 32, 32))
    dec = FFTRadialDecomposer()
    dec.TRITON = "force"
    with caplog.at_level("WARNING", logger="freqprobe.decomposers"):
        got = {r: {k: v.clone() for k, v in p.items()} for r, p in dec.decompose_all(x, [4.0, 8.0])}
    assert "Triton kernel is unavailable (RuntimeError: no CUDA driver)" in caplog.text
    for r in (4.0, 8.0):
        np.testing.assert_allclose(got[r]["low"].numpy(), ref_fft_radial(x.numpy(), r, "exclusive")[0], atol=F32_ATOL, rtol=0)
    assert not dec._use_triton(x)  # remembered for the process


@settings(max_examples=300, deadline=None, derandomize=True)
@given(k=st.integers(0, 20000), nudge=st.sampled_from([-2, -1, 0, 1, 2]), rule=st.sampled_from(["exclusive", "inclusive"]))
@example(k=2, nudge=0, rule="exclusive")
@example(k=2, nudge=0, rule="inclusive")
def test_max_kept_sq_distance_is_the_float_comparison_of_the_correctly_rounded_distance(k, nudge, rule):
    """r = √k and its float neighbours: the threshold agrees with comparing math.sqrt(j) to r for every j."""
    r = math.sqrt(k)
    for _ in range(abs(nudge)):
        r = math.nextafter(r, math.inf if nudge > 0 else 0.0)
    kmax = max_kept_sq_distance(r, rule)
    for j in range(max(0, k - 3), k + 4):
        keep = math.sqrt(j) < r if rule == "exclusive" else math.sqrt(j) <= r
        assert keep == (j <= kmax), (j, r, kmax)


def test_max_kept_sq_distance_edges():
    assert max_kept_sq_distance(math.sqrt(2.0), "exclusive") == 1
    assert max_kept_sq_distance(math.sqrt(2.0), "inclusive") == 2
    assert max_kept_sq_distance(math.nextafter(math.sqrt(2.0), 0), "inclusive") == 1
    assert max_kept_sq_distance(0.0, "exclusive") == -1 and max_kept_sq_distance(0.0, "inclusive") == 0
    assert max_kept_sq_distance(-1.0, "inclusive") == -1 and max_kept_sq_distance(float("nan"), "inclusive") == -1
    assert max_kept_sq_distance(4.5, "exclusive") == max_kept_sq_distance(4.5, "inclusive") == 20
    assert max_kept_sq_distance(2.3, "exclusive") == 5  # a decimal radius far from any ring
    with pytest.raises(ValueError):
        max_kept_sq_distance(2.0, "inclusiv")


@pytest.mark.parametrize("h,w", [(32, 32), (7, 5), (1, 9), (10, 3)])
@pytest.mark.parametrize("rule", ["exclusive", "inclusive"])
def test_mask_layout_is_unshifted(h, w, rule):
    dec = FFTRadialDecomposer(rule)
    for r in (1.0, 2.0, math.sqrt(5), 3.5):
        centred = reference.kept(h, w, r, rule)
        full = dec.mask(h, w, r, full=True).numpy()
        np.testing.assert_array_equal(full, np.fft.ifftshift(centred).astype(np.float32))
        half = dec.mask(h, w, r).numpy()
        assert half.shape == (h, w // 2 + 1)
        np.testing.assert_array_equal(half, full[:, : w // 2 + 1])


# ---------------------------------------------------------------- degenerate radius warning
def test_degenerate_radius_warns_once_per_size_and_radius():
    x = make_x(6, (2, 3, 32, 32))
    dec = FFTRadialDecomposer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parts = dec.decompose(x, 22)  # farthest bin is at 22.63: r=22 leaves some high part
    assert parts["high"].abs().max().item() > 1e-4
    with pytest.warns(UserWarning, match=r"r=23 covers the whole 32x32 spectrum") as rec:
        parts = dec.decompose(x, 23)
    assert len([w for w in rec if "covers the whole" in str(w.message)]) == 1
    torch.testing.assert_close(parts["low"], x, atol=F32_ATOL, rtol=0)
    assert parts["high"].abs().max().item() < F32_ATOL
    # once: the same instance, size and radius do not warn again (decompose_all, mask, rfft path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dec.decompose(x, 23)
        list(dec.decompose_all(x, [23, 22]))
        dec.mask(32, 32, 23, full=True)
        dec.MATMUL_MAX_SIDE = 0
        dec.decompose(x, 23)
    # but another size or radius does, once
    with pytest.warns(UserWarning, match=r"r=24 covers the whole 32x32") as rec:
        list(dec.decompose_all(x, [24, 24]))
    assert len(rec) == 1
    with pytest.warns(UserWarning, match=r"covers the whole 31x31"):
        dec.decompose(make_x(7, (1, 1, 31, 31)), 23)
    # the once-set is per decomposer instance
    with pytest.warns(UserWarning, match="covers the whole"):
        FFTRadialDecomposer().decompose(x, 23)


def test_degenerate_radius_inclusive_boundary():
    dmax = math.sqrt(16 * 16 + 16 * 16)
    x = make_x(8, (1, 1, 32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FFTRadialDecomposer("exclusive").decompose(x, dmax)  # the farthest bin is still high
    with pytest.warns(UserWarning, match="rule inclusive"):
        parts = FFTRadialDecomposer("inclusive").decompose(x, dmax)
    assert parts["high"].abs().max().item() < F32_ATOL


# ---------------------------------------------------------------- svd
@PROP
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), k=st.integers(1, 12))
def test_svd_matches_numpy_reference(shape, seed, k):
    n, c, h, w = shape
    x64 = make_x(seed, shape, torch.float64)
    dec = SVDDecomposer()
    got64 = quiet(dec.decompose, x64, k)
    assert set(got64) == {"dominant", "trailing"}
    ref = ref_svd(x64.numpy(), k)
    np.testing.assert_allclose(got64["dominant"].numpy(), ref, atol=1e-9, rtol=0)
    np.testing.assert_allclose(got64["trailing"].numpy(), x64.numpy() - ref, atol=1e-9, rtol=0)

    x = x64.float()
    got = quiet(dec.decompose, x, k)
    for t in got.values():
        assert t.dtype == torch.float32 and t.shape == x.shape and t.device == x.device
    np.testing.assert_allclose((got["dominant"] + got["trailing"]).numpy(), x.numpy(), atol=F32_ATOL, rtol=0)
    # the float32 top-k projection is well defined only with a gap after the k-th singular value
    s = np.linalg.svd(x.double().numpy(), compute_uv=False)
    if k < s.shape[-1]:
        assume((s[..., k - 1] - s[..., k]).min() > 1e-2)
    np.testing.assert_allclose(got["dominant"].numpy(), ref_svd(x.numpy(), k), atol=1e-4, rtol=0)


@PROP
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), k=st.integers(1, 12))
def test_svd_dominant_rank_and_idempotence(shape, seed, k):
    x = make_x(seed, shape, torch.float64)
    dec = SVDDecomposer()
    dom = quiet(dec.decompose, x, k)["dominant"].clone()
    a = dom.numpy()
    smax = max(np.linalg.svd(x.numpy(), compute_uv=False).max(), 1.0)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            assert np.linalg.matrix_rank(a[i, j], tol=1e-9 * smax) <= k
    again = quiet(dec.decompose, dom, k)
    torch.testing.assert_close(again["dominant"], dom, atol=1e-9, rtol=0)
    assert again["trailing"].abs().max().item() < 1e-9
    # float32 as well
    dom32 = quiet(dec.decompose, x.float(), k)["dominant"].clone()
    torch.testing.assert_close(quiet(dec.decompose, dom32, k)["dominant"], dom32, atol=1e-4, rtol=0)


def test_svd_out_buffers_and_full_rank_warning():
    x = make_x(9, (2, 3, 6, 9))
    out = {"dominant": torch.empty_like(x), "trailing": torch.empty_like(x)}
    dec = SVDDecomposer()
    for k, parts in dec.decompose_all(x, [1, 3], out=out):
        assert parts["dominant"] is out["dominant"]
        np.testing.assert_allclose(parts["dominant"].numpy(), ref_svd(x.numpy(), k), atol=1e-4, rtol=0)
    with pytest.warns(UserWarning, match=r"k=6 keeps every singular value of a 6x9 image"):
        parts = dec.decompose(x, 6)
    assert parts["trailing"].abs().max().item() < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dec.decompose(x, 6)  # once per instance, size and k
        dec.decompose(x, 5)  # below full rank: no warning


# ---------------------------------------------------------------- parameters and names
@pytest.mark.parametrize("bad,msg", [
    (0, "must be a positive number"),
    (-4, "must be a positive number"),
    ("-0.5", "must be a positive number"),
    ("nan", "must be a positive number"),
    ("inf", "must be a positive number"),
    ("x", "is not a number"),
    ("", "is not a number"),
    (None, "is not a number"),
])
def test_fft_radial_bad_radius(bad, msg):
    dec = freqprobe.get_decomposer("fft-radial")
    with pytest.raises(UserFacingError, match=msg) as ei:
        dec.check_param(bad)
    assert str(ei.value).startswith("fft-radial: r=")


def test_fft_radial_good_radius_normalised():
    dec = freqprobe.get_decomposer("fft-radial")
    assert dec.check_param("4") == 4.0 and isinstance(dec.check_param("4"), float)
    assert dec.check_param(" 2.5 ") == 2.5


@pytest.mark.parametrize("bad,msg", [
    (0, "must be a positive number"),
    (-1, "must be a positive number"),
    ("0", "must be a positive number"),
    (2.5, "must be a whole number"),
    ("2.5", "must be a whole number"),
    ("0.5", "must be a"),
    ("x", "is not a number"),
])
def test_svd_bad_rank(bad, msg):
    dec = freqprobe.get_decomposer("svd")
    with pytest.raises(UserFacingError, match=msg) as ei:
        dec.check_param(bad)
    assert str(ei.value).startswith("svd: k=")


def test_svd_good_rank_normalised():
    dec = freqprobe.get_decomposer("svd")
    assert dec.check_param("3") == 3 and isinstance(dec.check_param("3"), int)
    assert dec.check_param(4.0) == 4


def test_unknown_decomposer_name(pm):
    with pytest.raises(UnknownNameError, match=r"Unknown decomposer 'fft-radail'\. Did you mean: fft-radial\?") as ei:
        freqprobe.get_decomposer("fft-radail", pm)
    assert isinstance(ei.value, KeyError)
    assert "Available: fft-radial, svd" in str(ei.value)
    with pytest.raises(UnknownNameError, match="Did you mean: svd"):
        freqprobe.get_decomposer("svdd", pm)


def test_bad_decomposer_options(pm):
    with pytest.raises(UserFacingError, match=r"unknown boundary rule 'inclusiv'; use one of: exclusive, inclusive"):
        freqprobe.get_decomposer("fft-radial", pm, rule="inclusiv")
    with pytest.raises(UserFacingError, match=r"decomposer 'svd' takes no options \(got rule='inclusive'\)"):
        freqprobe.get_decomposer("svd", pm, rule="inclusive")
    assert freqprobe.get_decomposer("fft-radial", pm, rule="inclusive").options() == {"rule": "inclusive"}


def test_degenerate_radius_warning_points_at_the_callers_code():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        freqprobe.decompose(torch.rand(1, 1, 32, 32), "fft-radial", 30)
    assert len(rec) == 1 and rec[0].filename == __file__


@pytest.mark.parametrize("name,shape", [("fft-radial", (0, 3, 32, 32)), ("fft-radial", (0, 3, 100, 90)), ("svd", (0, 3, 8, 8))])
def test_empty_batch_gives_empty_components(name, shape):
    parts = freqprobe.decompose(torch.rand(shape), name, 2)
    assert len(parts) == 2 and all(v.shape == shape for v in parts.values())
