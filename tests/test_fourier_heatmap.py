"""``--probe fourier-heatmap`` (Yin et al. 2019): a model with a known answer, an independent numpy basis, the map's
symmetry, invariance to the batch size, and one-line refusals."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from freqprobe.builtins.heatmap import FourierPerturbationSource, frequencies, mirror, signs
from freqprobe.errors import UserFacingError
from freqprobe.interfaces import SourceBatch

DC_MODEL = '''
import os, signal
import torch

class DC(torch.nn.Module):
    """Sees only the mean of channel 0: class 1 when it is above 0.5 (asks for a stop at forward STOP_AT_CALL of a batch)."""
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        if len(x) == 8:  # a batch's forwards (of 8 images: one per variant here), not the core's checks
            self.calls += 1
            if self.calls == int(os.environ.get("STOP_AT_CALL", "0")):
                from freqprobe.journal import request_stop
                request_stop(signal.SIGINT)
        m = x[:, 0].mean(dim=(-2, -1))
        return torch.stack([0.5 - m, m - 0.5], dim=1) * 100

def dc():
    return DC()
'''


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def dc_data(tmp_path) -> tuple[Path, Path]:
    """8×8 images whose channel-0 mean is 0.45 (class 0) or 0.55 (class 1), plus zero-mean stripes, all within [0.25, 0.75]."""
    rng = np.random.default_rng(0)
    n = 40
    y = np.arange(n) % 2
    x = np.empty((n, 8, 8, 3), np.float64)
    for i in range(n):
        stripes = 0.1 * np.cos(np.pi * np.arange(8) * rng.integers(1, 4) / 4)[None, :] * np.ones((8, 1))
        stripes -= stripes.mean()
        for c in range(3):
            x[i, :, :, c] = (0.45 + 0.1 * y[i] if c == 0 else 0.5) + stripes
    data = tmp_path / "dc.npz"
    np.savez(data, x=x.astype(np.float32), y=y)
    model = tmp_path / "dc_model.py"
    model.write_text(DC_MODEL)
    return data, model


def run_heatmap(cli, out, data, model, *extra):
    rc, _, err = cli("run", "--model", f"{model}:dc", "--data", f"npz:{data}", "--probe", "fourier-heatmap", "--no-fit",
                     "--out", out, "-q", "--device", "cpu", *extra)
    assert rc == 0, err
    return {(int(r["u"]), int(r["v"])): r for r in read_csv(out / "heatmap_eps1.csv")}


def test_a_model_that_sees_only_the_dc_component(cli, tmp_path, dc_data):
    """Every frequency but (0, 0) has zero mean and nothing is clipped: no error; at (0, 0) the mean moves by ±1/8 and the
    prediction flips exactly where the sign opposes the class. The map covers the grid and is symmetric."""
    data, model = dc_data
    cells = run_heatmap(cli, tmp_path / "dc", data, model, "--heatmap-eps", "1", "--seed", "7")
    assert sorted(cells) == [(u, v) for u in range(-4, 4) for v in range(-4, 4)]
    r0 = signs(7, torch.arange(40), 0, 0, 3)[:, 0, 0, 0].numpy()
    y = np.arange(40) % 2
    want = float(np.mean((r0 > 0) == (y == 0)))  # class 0 pushed up, class 1 pushed down
    assert 0.2 < want < 0.8
    assert float(cells[(0, 0)]["error"]) == pytest.approx(want, abs=1e-6)
    assert all(float(c["error"]) == 0.0 for f, c in cells.items() if f != (0, 0))
    for (u, v), c in cells.items():
        assert c["error"] == cells[mirror(u, v, 8, 8)]["error"] and c["n"] == "40"
    summary = {(r["variant"], r["param"]): float(r["value"]) for r in read_csv(tmp_path / "dc" / "summary.csv")}
    assert summary[("original", "")] == 1.0
    assert summary[("heatmap", "all")] == pytest.approx(want / 64, abs=1e-6)
    assert summary[("heatmap", "<2")] == pytest.approx(want / 9, abs=1e-6)  # 9 cells closer than 8 / 4 = 2
    assert summary[("heatmap", ">=2")] == 0.0
    assert (tmp_path / "dc" / "heatmap_eps1.png").is_file() and not (tmp_path / "dc" / "samples.csv").exists()


def _numpy_basis(u: int, v: int, h: int, w: int) -> np.ndarray:
    """Independent of freqprobe's cosine: the inverse FFT of a spectrum that is one at (u, v) and its mirror."""
    spec = np.zeros((h, w), complex)
    spec[u % h, v % w] += 1
    spec[-u % h, -v % w] += 1
    b = np.real(np.fft.ifft2(spec))
    return b / np.linalg.norm(b)


def test_the_map_equals_an_independent_computation(cli, tmp_path, tiny_model_file, tiny_npz, tiny_weights):
    out = tmp_path / "tiny"
    rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--checkpoint", tiny_weights, "--data", f"npz:{tiny_npz}",
                     "--probe", "fourier-heatmap", "--heatmap-eps", "3", "--max-freq", "3", "--out", out, "-q", "--device", "cpu")
    assert rc == 0, err
    cells = {(int(r["u"]), int(r["v"])): float(r["error"]) for r in read_csv(out / "heatmap_eps3.csv")}
    assert set(cells) == {(u, v) for u in range(-8, 8) for v in range(-8, 8) if u * u + v * v <= 9}
    spec = importlib.util.spec_from_file_location("hm_tinynet", tiny_model_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.tinynet()
    net.load_state_dict(torch.load(tiny_weights, weights_only=True))
    net.eval()
    with np.load(tiny_npz) as d:
        x = d["x"].transpose(0, 3, 1, 2).astype(np.float64) / 255.0
        y = d["y"]
    for (u, v), err_ in cells.items():
        r = signs(0, torch.arange(len(x)), *min((u, v), mirror(u, v, 16, 16)), 3).double().numpy()
        img = np.clip(x + r * 3 * _numpy_basis(u, v, 16, 16), 0, 1)
        with torch.no_grad():
            logits = net(torch.from_numpy(img).float()).double()
        top2 = logits.topk(2, -1).values
        ties = int((top2[:, 0] - top2[:, 1] <= 1e-4).sum())
        want = float((logits.argmax(-1).numpy() != y).mean())
        assert abs(err_ - want) <= ties / len(x) + 1e-6, (u, v)


def test_batch_size_and_workers_give_the_same_map(cli, tmp_path, dc_data):
    data, model = dc_data
    run_heatmap(cli, tmp_path / "a", data, model, "--heatmap-eps", "1")
    run_heatmap(cli, tmp_path / "b", data, model, "--heatmap-eps", "1", "--batch-size", "7", "--workers", "2")
    for name in ("heatmap_eps1.csv", "summary.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_stop_and_resume_give_the_same_map(tmp_path, dc_data, monkeypatch, pm):
    import freqprobe
    from freqprobe.journal import StopRequested, clear_stop

    data, model = dc_data
    kw = dict(data=f"npz:{data}", probe="fourier-heatmap", probe_options={"eps": "1,2"}, batch_size=8, fit=False,
              device="cpu", pm=pm)
    freqprobe.run(f"{model}:dc", out=tmp_path / "ref", **kw)
    monkeypatch.setenv("STOP_AT_CALL", str(2 * 69 + 1))  # in batch 3 (1 + 34 frequencies x 2 budgets per batch)
    try:
        with pytest.raises(StopRequested, match=r"stopped after 24 of 40 samples"):
            freqprobe.run(f"{model}:dc", out=tmp_path / "out", **kw)
    finally:
        clear_stop()
    monkeypatch.delenv("STOP_AT_CALL")
    freqprobe.run(f"{model}:dc", out=tmp_path / "out", resume=True, **kw)
    for name in ("heatmap_eps1.csv", "heatmap_eps2.csv", "summary.csv"):
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name


def test_frequencies_are_one_of_each_mirror_pair():
    for h, w in [(8, 8), (7, 9), (6, 5)]:
        got = frequencies(h, w)
        cover = set(got) | {mirror(u, v, h, w) for u, v in got}
        assert len(cover) == h * w and len(set(got)) == len(got)
        assert len(got) == (h * w + sum(mirror(u, v, h, w) == (u, v) for u in range(-(h // 2), h - h // 2)
                                        for v in range(-(w // 2), w - w // 2))) // 2


def test_images_of_several_sizes_are_refused():
    src = FourierPerturbationSource((8, 8), [1.0], frequencies(8, 8, 1), 0)
    with pytest.raises(UserFacingError, match="images of several sizes"):
        list(src.generate(SourceBatch([torch.rand(3, 8, 8), torch.rand(3, 9, 8)], None, torch.arange(2)), None))


@pytest.mark.parametrize("args, needle", [
    (["--radii", "4"], "takes no radii or ranks"),
    (["--heatmap-eps", "-1"], "must be positive"),
    (["--heatmap-eps", "x"], "comma-separated numbers"),
    (["--max-freq", "-2"], "max_freq must be 0 (none) or a positive radius"),
    (["--metric", "top5-accuracy"], "keep the accuracy metric"),
])
def test_bad_heatmap_input_is_one_line(cli, tmp_path, dc_data, args, needle):
    data, model = dc_data
    rc, _, err = cli("run", "--model", f"{model}:dc", "--data", f"npz:{data}", "--probe", "fourier-heatmap", "--no-fit",
                     "--out", tmp_path / "bad", *args)
    lines = [s for s in err.splitlines() if s.startswith("Error:")]
    assert rc == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "bad").exists()
