"""``--probe bands``: accuracy on band-pass images ``low(r[i+1]) − low(r[i])``, checked against tests/reference.py's float64
split, and :class:`freqprobe.BandSource` (the bands sum back to the top edge's low part; they compose with any base)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import freqprobe
import reference
from freqprobe.interfaces import SourceBatch, Variant, VariantSource


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def npz_images(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as d:
        return d["x"].transpose(0, 3, 1, 2).astype(np.float64) / 255.0, d["y"]


def tinynet(model_file: Path, weights: Path) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location(f"bands_{model_file.parent.name}", model_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.tinynet()
    net.load_state_dict(torch.load(weights, weights_only=True))
    return net.eval()


def low64(x: np.ndarray, r: float, rule: str) -> np.ndarray:
    return np.zeros_like(x) if r == 0 else reference.fft_radial(x, r, rule)[0]


@pytest.mark.parametrize("rule", ["exclusive", "inclusive"])
def test_band_accuracies_equal_a_float64_computation(cli, tmp_path, tiny_model_file, tiny_npz, tiny_weights, rule):
    """Each band's predictions and accuracy equal those of the float64 bands (both edges under the run's rule;
    ``low(0)`` the zero image even where the inclusive rule keeps the DC bin at r = 0)."""
    out = tmp_path / rule
    edges = [0, 1, 2.5, 4, 8]
    rc, stdout, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--checkpoint", tiny_weights, "--data", f"npz:{tiny_npz}",
                          "--probe", "bands", "--radii", ",".join(map(str, edges)), "--rule", rule, "--out", out, "-q",
                          "--device", "cpu")
    assert rc == 0, err
    x, y = npz_images(tiny_npz)
    net = tinynet(tiny_model_file, tiny_weights)
    samples = read_csv(out / "samples.csv")
    summary = {(r["variant"], r["param"]): float(r["value"]) for r in read_csv(out / "summary.csv") if r["metric"] == "accuracy"}
    assert list(summary) == [("original", ""), ("band", "0-1"), ("band", "1-2.5"), ("band", "2.5-4"), ("band", "4-8")]
    checked = 0
    for a, b in zip(edges, edges[1:]):
        band = low64(x, b, rule) - low64(x, a, rule)
        with torch.no_grad():
            logits = net(torch.from_numpy(band).float()).double()
        top2 = logits.topk(2, -1).values
        clear = (top2[:, 0] - top2[:, 1] > 1e-4).numpy()  # float32 against float64 bands: only near-ties may differ
        want = logits.argmax(-1).numpy()
        label = f"{a:g}-{b:g}"
        got = {int(r["index"]): int(r["pred"]) for r in samples if r["variant"] == "band" and r["param"] == label}
        assert len(got) == len(x)
        for i in np.flatnonzero(clear):
            assert got[int(i)] == want[i], (label, i)
        checked += int(clear.sum())
        if clear.all():
            assert summary[("band", label)] == pytest.approx(float((want == y).mean()), abs=1e-6)
    assert checked >= 0.9 * 4 * len(x)
    assert (out / "accuracy.png").is_file()
    from freqprobe.scores import hfc_reliance

    assert hfc_reliance(read_csv(out / "summary.csv")) == []  # bands are no radii: no HFC-reliance score
    rc, _, err = cli("report", out, "--out", tmp_path / f"{rule}.html")
    assert rc == 0, err
    page = (tmp_path / f"{rule}.html").read_text()
    assert "2.5-4" in page and "accuracy.png" in page


def test_bands_sum_back_to_the_top_edges_low_part_and_compose_with_a_base():
    dec = freqprobe.get_decomposer("fft-radial")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 20, 24, generator=g)
    src = freqprobe.BandSource(dec, [0, 3, 5.5, 9])
    got = dict(src.generate(SourceBatch(x, None, torch.arange(5)), None))
    assert [v.param for v in src.variants()] == [None, "0-3", "3-5.5", "5.5-9"]
    bands = [got[v] for v in src.variants()[1:]]
    low9 = dec.decompose(x, 9)["low"]
    assert torch.allclose(sum(bands), low9, atol=1e-6)
    want = torch.from_numpy(low64(x.double().numpy(), 5.5, "exclusive") - low64(x.double().numpy(), 3, "exclusive")).float()
    assert torch.allclose(bands[1], want, atol=1e-5)
    # into the engine's buffers, and images of different sizes one at a time
    bufs = {v: torch.full_like(x, float("nan")) for v in src.variants()[1:]}
    again = dict(src.generate(SourceBatch(x, None, torch.arange(5)), None, bufs))
    assert all(again[v] is bufs[v] and torch.equal(again[v], got[v]) for v in bufs)
    listed = dict(src.generate(SourceBatch([x[0], x[1, :, :16, :18]], None, torch.arange(2)), None))
    assert torch.allclose(listed[src.variants()[2]][0], bands[1][0], atol=1e-6)
    assert listed[src.variants()[2]][1].shape == (3, 16, 18)

    class Halved(VariantSource):  # stands for an attack: a variant with its own columns
        variant = Variant("adversarial", extra=(("attack", "halve"),))

        def variants(self):
            return [self.variant]

        def generate(self, batch, ctx, out=None):
            yield self.variant, batch.images * 0.5

    composed = freqprobe.BandSource(dec, [0, 3, 9], Halved())
    assert [(v.name, v.param, v.extra) for v in composed.variants()] == [
        ("adversarial", None, (("attack", "halve"),)), ("band", "0-3", (("attack", "halve"),)),
        ("band", "3-9", (("attack", "halve"),))]
    parts = dict(composed.generate(SourceBatch(x, None, torch.arange(5)), None))
    assert torch.allclose(parts[composed.variants()[2]], 0.5 * (low9 - dec.decompose(x, 3)["low"]), atol=1e-6)


def test_rank_bands_of_svd(cli, tmp_path, tiny_model_file, tiny_npz, tiny_weights):
    out = tmp_path / "svd"
    rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--checkpoint", tiny_weights, "--data", f"npz:{tiny_npz}",
                     "--probe", "bands", "--decomposer", "svd", "--params", "0,2,16", "--out", out, "-q", "--device", "cpu")
    assert rc == 0, err
    rows = read_csv(out / "summary.csv")
    assert [(r["variant"], r["param"]) for r in rows if r["metric"] == "accuracy"] == [("original", ""), ("band", "0-2"),
                                                                                        ("band", "2-16")]


@pytest.mark.parametrize("radii, needle", [
    ("4", "at least two band edges"),
    ("0,8,4", "band edges must increase; 8 is followed by 4"),
    ("0,4,4", "band edges must increase"),
    ("0,-4", "must be a positive number"),
    ("4,0", "must be a positive number"),
])
def test_bad_band_edges_are_one_line(cli, tmp_path, tiny_model_file, tiny_npz, tiny_weights, radii, needle):
    rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--checkpoint", tiny_weights, "--data", f"npz:{tiny_npz}",
                     "--probe", "bands", "--radii", radii, "--out", tmp_path / "bad", "-q")
    lines = [s for s in err.splitlines() if s.startswith("Error:")]
    assert rc == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "bad").exists()
