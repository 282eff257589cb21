"""The embedded synth10 data set and the fit-then-probe path of the quickstart."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import freqprobe
from freqprobe import synth
from freqprobe.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures"

SMALL_CNN = f"{FIXTURES / 'small_cnn.py'}:small_cnn"


def grating_amplitudes(grey: np.ndarray) -> np.ndarray:
    """(N, 10): amplitude of each class's grating in N grey H×W images, by projection onto cos/sin."""
    n, h, w = grey.shape
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    amps = np.empty((n, len(synth.GRATING_FREQS)))
    for k, (fy, fx) in enumerate(synth.GRATING_FREQS):
        arg = 2 * np.pi * (fy * yy + fx * xx) / synth.IMAGE_SIZE
        c, s = np.cos(arg), np.sin(arg)
        pc = np.tensordot(grey, c, axes=([1, 2], [0, 1])) / (c * c).sum()
        ps = np.tensordot(grey, s, axes=([1, 2], [0, 1])) / max((s * s).sum(), 1e-9)
        amps[:, k] = np.hypot(pc, ps)
    return amps


def test_shapes_balance_and_determinism():
    x, y = synth.make_synth10("test", n=200, seed=3)
    assert x.shape == (200, 32, 32, 3) and x.dtype == np.uint8
    assert y.dtype == np.int64 and np.bincount(y, minlength=10).tolist() == [20] * 10
    x2, y2 = synth.make_synth10("test", n=200, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = synth.make_synth10("test", n=200, seed=4)
    xt, _ = synth.make_synth10("train", n=200, seed=3)
    assert not np.array_equal(x, x3) and not np.array_equal(x, xt)
    assert len(synth.CLASS_NAMES) == 10 == len(set(synth.CLASS_NAMES))
    with pytest.raises(ValueError, match="unknown split"):
        synth.make_synth10("val")


def test_gratings_lie_outside_radius_16():
    for fy, fx in synth.GRATING_FREQS:
        assert math.hypot(fy, fx) > 16  # in the high part for every default radius


def test_high_frequency_cue_names_the_label_and_survives_only_in_the_high_part():
    x, y = synth.make_synth10("test", n=300, seed=0)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    parts = freqprobe.decompose(xt, "fft-radial", 16)
    grey = {k: v.mean(1).numpy().astype(np.float64) for k, v in {"x": xt, **parts}.items()}
    amp = {k: grating_amplitudes(g) for k, g in grey.items()}
    # a matched filter on the image (and on its high part) recovers the label: the cue is always true
    assert (amp["x"].argmax(1) == y).mean() > 0.97
    assert (amp["high"].argmax(1) == y).mean() > 0.97
    own = amp["high"][np.arange(len(y)), y]
    lo, hi = synth.GRATING_AMP
    assert np.median(own) == pytest.approx((lo + hi) / 2, rel=0.15)  # faint: 6-10 / 255
    # the low part holds none of it
    assert amp["low"][np.arange(len(y)), y].max() < 0.1 * lo


def test_low_frequency_cue_conflicts_at_the_documented_rate():
    x, y, obj = synth.make_synth10("test", n=3000, seed=0, with_object_class=True)
    x2, y2 = synth.make_synth10("test", n=3000, seed=0)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    # a random class replaces the object with prob CONFLICT_PROB; 1 in 10 of those is the label again
    assert abs((obj != y).mean() - synth.CONFLICT_PROB * 0.9) < 0.03
    # the object's colour is its class's: the pixels closest to the class colour sit inside the object
    cols = np.array([c[2] for c in synth._CLASSES])
    img = x.astype(np.float64) / 255
    d = np.linalg.norm(img - cols[obj][:, None, None, :], axis=-1)  # (N, H, W)
    assert np.median((d < 0.2).sum(axis=(1, 2))) > 40  # a solid patch of the object colour in every image


def test_fit_then_probe_on_synth10(tmp_path, capsys):
    """No weights given: the model is fitted on synth10's train split, saved, then probed."""
    out = tmp_path / "run"
    rc = main(["run", "--model", SMALL_CNN, "--fit-epochs", "1", "--fit-lr", "0.003",
               "--limit", "200", "--radii", "4,16", "--device", "cpu", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "No weights given" in cap.out + cap.err and "fitting" in cap.out + cap.err
    man = json.loads((out / "manifest.json").read_text())
    fitted = man["model"]["fitted"]
    assert fitted["optimizer"] == "Adam" and fitted["batch_size"] == 100 and fitted["epochs"] == 1
    assert fitted["train_n"] == synth.TRAIN_SIZE and fitted["lr"] == 0.003
    assert man["timings"]["fit_s"] > 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    acc = {(r["variant"], r["param"]): float(r["value"]) for r in rows if r["metric"] == "accuracy"}
    assert acc[("original", "")] > 0.3  # learnt something in one epoch (chance is 0.1)
    # the data set's point: the fitted model reads the faint grating, which only the high part keeps
    assert acc[("high", "16")] > acc[("low", "16")] + 0.3
    # the saved weights reproduce the probe exactly
    out2 = tmp_path / "again"
    rc = main(["run", "--model", SMALL_CNN, "--checkpoint",
               str(out / "model.pt"), "--limit", "200", "--radii", "4,16", "--device", "cpu", "--out", str(out2), "-q"])
    assert rc == 0
    assert (out2 / "samples.csv").read_text() == (out / "samples.csv").read_text()
