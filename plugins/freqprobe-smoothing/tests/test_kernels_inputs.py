"""Numeric options of the smoothing plugin that used to publish NaN (issue 17): ``freqprobe kernels --rho 1e308`` wrote
NaN into kernels.csv with a dozen raw numpy warnings. A ρ whose smoothed kernels are not finite is refused in one line
(exit 2, nothing written); a ρ whose kernels are finite gets its exact numbers (no overflow of their squares); the same
for the ``smooth:rho=`` transform."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from freqprobe import ClassifierAdapter, UserFacingError
from freqprobe_smoothing.kernels import kernel_stats
from freqprobe_smoothing.smooth import SmoothTransform, check_rho, smooth_kernels

BIG_NET = '''
import torch
from torch import nn


def bignet(scale=1.0):
    """A small CNN whose first-layer weights lie in [0.5, 1] (times scale): Eq. 3 with rho = 1e308 overflows float64."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        m[0].weight.uniform_(0.5, 1.0).mul_(scale)
    return m
'''


@pytest.fixture
def use_pm(first_party_pm):
    return first_party_pm("smoothing")


@pytest.fixture
def big_net(tmp_path) -> str:
    p = tmp_path / "bignet.py"
    p.write_text(BIG_NET)
    return f"{p}:bignet"


def rows_of(out: Path) -> list[dict]:
    with open(out / "kernels.csv", newline="") as f:
        return list(csv.DictReader(f))


def one_line_refusal(rc: int, err: str, *needles: str) -> None:
    assert rc == 2 and err.startswith("Error: ") and len(err.strip().splitlines()) == 1, err
    assert "Warning" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_rho_whose_kernels_overflow_is_refused_nothing_written(cli, use_pm, big_net, tmp_path):
    out = tmp_path / "k"
    rc, _, err = cli("kernels", "--model", big_net, "--rho", "0,1,1e308", "--out", out)
    one_line_refusal(rc, err, "--rho: rho=1e+308", "overflow float64", "layer '0'", "stays finite", "smaller rho")
    assert not out.exists() and not list(tmp_path.glob(".k*"))


def test_huge_rho_with_finite_kernels_gets_exact_numbers(cli, use_pm, tiny_model_file, tmp_path):
    """ρ = 1e200 or 1e308 on weights of about 0.2: finite kernels (about ρ · their neighbour sums), whose squares
    overflow float64; the numbers are scale-free, so they are those of the neighbour-sum kernels."""
    out = tmp_path / "k"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy warning inside the command fails it
        rc, _, err = cli("kernels", "--model", f"{tiny_model_file}:tinynet", "--rho", "0,1e200,1e308", "--out", out, "-q")
    assert rc == 0, err
    assert "Warning" not in err, err
    rows = rows_of(out)
    assert [r["rho"] for r in rows] == ["0", "1e+200", "1e+308"]
    for r in rows:
        assert r["n_slices"] == "24" and math.isfinite(float(r["hf_energy_share"])) and math.isfinite(float(r["total_variation"]))
    import sys

    sys.path.insert(0, str(tiny_model_file.parent))
    try:
        from tinynet import tinynet
    finally:
        sys.path.remove(str(tiny_model_file.parent))
    w = tinynet()[0].weight.detach().double()
    limit = kernel_stats(smooth_kernels(w, 1.0) - w)  # the neighbour sums: what w + rho·N tends to
    for r in rows[1:]:
        assert float(r["hf_energy_share"]) == pytest.approx(limit["hf_energy_share"], abs=2e-6)
        assert float(r["total_variation"]) == pytest.approx(limit["total_variation"], abs=2e-6)


def test_kernel_stats_are_scale_free_without_overflow():
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w[2] = 0  # all-zero slices stay out of the means
    want = kernel_stats(w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernel_stats(w * 2.0 ** 1000) == want  # a power of two: exactly the same numbers
        assert kernel_stats(w * 2.0 ** -900) == want  # and downwards (squares of 2^-900 underflow)
        big = kernel_stats(w * 1e300)
    assert big["n_slices"] == want["n_slices"] == 15
    assert big["hf_energy_share"] == pytest.approx(want["hf_energy_share"], rel=1e-12)
    assert big["total_variation"] == pytest.approx(want["total_variation"], rel=1e-12)


def test_non_finite_weights_are_refused(cli, use_pm, tiny_model_file, tmp_path):
    import sys

    sys.path.insert(0, str(tiny_model_file.parent))
    try:
        from tinynet import tinynet
    finally:
        sys.path.remove(str(tiny_model_file.parent))
    m = tinynet()
    with torch.no_grad():
        m[0].weight[0, 0, 0, 0] = float("nan")
    torch.save(m.state_dict(), tmp_path / "nan.pt")
    out = tmp_path / "k"
    rc, _, err = cli("kernels", "--model", f"{tiny_model_file}:tinynet", "--checkpoint", tmp_path / "nan.pt",
                     "--rho", "0,1", "--out", out)
    one_line_refusal(rc, err, "NaN or inf before any smoothing")
    assert not out.exists()


def test_negative_zero_rho_is_zero(cli, use_pm, tiny_model_file, tmp_path):
    assert str(check_rho(-0.0)) == "0.0"
    out = tmp_path / "k"
    rc, _, err = cli("kernels", "--model", f"{tiny_model_file}:tinynet", "--rho=-0,1", "--out", out, "-q")
    assert rc == 0, err
    assert [r["rho"] for r in rows_of(out)] == ["0", "1"]  # not "-0"


def test_smooth_transform_refuses_a_rho_that_overflows_the_weights(cli, use_pm, tiny_model_file, tiny_npz, tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    before = net[0].weight.detach().clone()
    adapter = ClassifierAdapter(net)
    with pytest.raises(UserFacingError, match=r"smooth: rho=1e\+39 makes the smoothed kernels of layer '0' .* overflow float32"):
        SmoothTransform(rho=1e39).apply(adapter)
    assert torch.equal(net[0].weight, before)  # the model given is not changed
    assert torch.isfinite(SmoothTransform(rho=1e30).apply(adapter).module[0].weight).all()
    out = tmp_path / "run"
    rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--data", f"npz:{tiny_npz}", "--no-fit", "--radii", "2",
                     "--transform", "smooth:rho=1e39", "--out", out, "-q")
    one_line_refusal(rc, err, "smooth: rho=1e+39", "overflow float32")
    assert not out.exists()
