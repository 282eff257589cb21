"""``imagefolder:`` decodes every Pillow mode to the right [0, 1] values (issue 17).

A 16-bit sample v reads as v / 65535, so an image saved in 16 bits as 257·u gives exactly the values of
its 8-bit version u / 255 (before, Pillow's ``convert("RGB")`` clipped ``I;16`` to 255: all white).
Real files on disk (PNG, TIFF, PGM) through the real data source and through ``freqprobe run``.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from freqprobe import UserFacingError
from freqprobe.builtins.datasets import ImageFolderDataSource

CLASSES = ("bright", "dark")  # sorted: bright = 0, dark = 1


def gray_images(n: int = 3, size: int = 8) -> dict[str, list[np.ndarray]]:
    """8-bit grey images per class: bright ones (150..230) and dark ones (20..100)."""
    rng = np.random.default_rng(17)
    return {"bright": [rng.integers(150, 231, (size, size), dtype=np.uint8) for _ in range(n)],
            "dark": [rng.integers(20, 101, (size, size), dtype=np.uint8) for _ in range(n)]}


def write_pgm16(path: Path, a: np.ndarray) -> None:
    """A binary 16-bit PGM (Pillow opens it as mode ``I``)."""
    path.write_bytes(f"P5\n{a.shape[1]} {a.shape[0]}\n65535\n".encode() + a.astype(">u2").tobytes())


WRITERS = {
    "L png": lambda p, u: Image.fromarray(u).save(p.with_suffix(".png")),
    "I;16 png": lambda p, u: Image.fromarray(u.astype(np.uint16) * 257).save(p.with_suffix(".png")),
    "I;16B tiff": lambda p, u: Image.frombytes("I;16B", u.shape[::-1], (u.astype(np.uint16) * 257).astype(">u2").tobytes())
    .save(p.with_suffix(".tiff")),
    "I pgm": lambda p, u: write_pgm16(p.with_suffix(".pgm"), u.astype(np.uint16) * 257),
    "F tiff": lambda p, u: Image.fromarray(u.astype(np.float32) / np.float32(255)).save(p.with_suffix(".tiff")),
}
MODES = {"L png": "L", "I;16 png": "I;16", "I;16B tiff": "I;16B", "I pgm": "I", "F tiff": "F"}


def make_folder(root: Path, kind: str) -> Path:
    for cls, images in gray_images().items():
        (root / cls).mkdir(parents=True)
        for i, u in enumerate(images):
            WRITERS[kind](root / cls / f"{i}", u)
    return root


def decoded(root: Path, **kw) -> torch.Tensor:
    ds = ImageFolderDataSource(str(root), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL warning may leak
        return ds.load(np.arange(len(ds))).images


@pytest.mark.parametrize("kind", ["I;16 png", "I;16B tiff", "I pgm", "F tiff"])
def test_deep_image_is_bit_exact_its_8bit_version(tmp_path, kind):
    eight = make_folder(tmp_path / "eight", "L png")
    deep = make_folder(tmp_path / "deep", kind)
    first = next((deep / "bright").iterdir())
    with Image.open(first) as im:
        assert im.mode == MODES[kind], im.mode  # the file really is in that mode
    x8, xd = decoded(eight), decoded(deep)
    want = torch.from_numpy(np.stack([gray_images()[c][i] for c in CLASSES for i in range(3)])).float() / 255
    assert torch.equal(x8, want[:, None].expand(-1, 3, -1, -1))
    assert xd.dtype == torch.float32 and xd.shape == x8.shape
    assert torch.equal(xd, x8)  # bit for bit


def test_deep_image_resized_stays_in_range_and_near_its_8bit_version(tmp_path):
    eight = make_folder(tmp_path / "eight", "L png")
    deep = make_folder(tmp_path / "deep", "I;16 png")
    x8, xd = decoded(eight, image_size=5), decoded(deep, image_size=5)
    assert xd.shape == x8.shape == (6, 3, 5, 5)
    assert float(xd.min()) >= 0 and float(xd.max()) <= 1
    assert float((xd - x8).abs().max()) <= 1 / 255 + 1e-6  # the 8-bit resize rounds to 8 bits, the 16-bit one does not


def test_full_16bit_range_reads_v_over_65535(tmp_path):
    (tmp_path / "a").mkdir()
    v = np.array([[0, 1, 257, 32768], [65534, 65535, 12345, 40000]], dtype=np.uint16)
    Image.fromarray(v).save(tmp_path / "a" / "x.png")
    x = decoded(tmp_path)[0]
    assert torch.equal(x[0], torch.from_numpy(v.astype(np.float32) / np.float32(65535)))
    assert float(x.max()) == 1.0 and float(x.min()) == 0.0


def _rgb(rng, shape=(6, 6)) -> np.ndarray:
    return rng.integers(0, 256, (*shape, 3), dtype=np.uint8)


def test_other_modes_decode_to_their_colours_without_warnings(tmp_path):
    """LA, RGBA (alpha dropped: the colours as stored), P with a transparency table, 1, CMYK (K = 0: 255 - C)."""
    rng = np.random.default_rng(3)
    files, want = {}, {}
    grey, alpha = rng.integers(0, 256, (6, 6), dtype=np.uint8), rng.integers(0, 256, (6, 6), dtype=np.uint8)
    files["la"] = Image.fromarray(np.stack([grey, alpha], -1), "LA")
    want["la"] = np.repeat(grey[..., None], 3, -1)
    rgb = _rgb(rng)
    files["rgba"] = Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1), "RGBA")
    want["rgba"] = rgb
    palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    idx = rng.integers(0, 4, (6, 6), dtype=np.uint8)
    p = Image.fromarray(idx, "P")
    p.putpalette(palette.reshape(-1).tolist())
    p.info["transparency"] = bytes([0, 128, 255, 255])  # a per-entry alpha table: PIL warns on convert("RGB")
    files["p"] = p
    want["p"] = palette[idx]
    bits = rng.integers(0, 2, (6, 6)).astype(bool)
    files["one"] = Image.fromarray(bits).convert("1")
    want["one"] = np.repeat((bits * 255).astype(np.uint8)[..., None], 3, -1)
    cmy = _rgb(rng)
    files["cmyk"] = Image.fromarray(np.concatenate([cmy, np.zeros((6, 6, 1), np.uint8)], -1), "CMYK")
    want["cmyk"] = 255 - cmy
    for name, im in files.items():
        (tmp_path / name).mkdir()
        im.save(tmp_path / name / ("x.png" if name != "cmyk" else "x.tiff"),
                **({"transparency": im.info["transparency"]} if name == "p" else {}))
        with Image.open(next((tmp_path / name).iterdir())) as back:
            assert back.mode == {"la": "LA", "rgba": "RGBA", "p": "P", "one": "1", "cmyk": "CMYK"}[name]
    ds = ImageFolderDataSource(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = ds.load(np.arange(len(ds))).images
    for i, folder in enumerate(ds.folders):
        expect = torch.from_numpy(want[folder]).permute(2, 0, 1).float() / 255
        assert torch.equal(x[i], expect), folder


@pytest.mark.parametrize("name, make, needle", [
    ("int32", lambda p: Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(p / "x.tiff"), "[0, 70000]"),
    ("float", lambda p: Image.fromarray(np.array([[0.0, 2.0]], dtype=np.float32)).save(p / "x.tiff"), "[0, 1]"),
])
def test_values_no_scale_fits_are_refused_in_one_line(tmp_path, cli, name, make, needle):
    (tmp_path / "d" / "a").mkdir(parents=True)
    make(tmp_path / "d" / "a")
    ds = ImageFolderDataSource(str(tmp_path / "d"))
    with pytest.raises(UserFacingError) as e:
        ds.load(np.arange(1))
    assert "x.tiff" in str(e.value) and needle in str(e.value) and "\n" not in str(e.value)
    rc, _, err = cli("decompose", "--data", f"imagefolder:{tmp_path / 'd'}", "--radii", "1", "--out", tmp_path / "o.npz", "-q")
    assert rc == 2 and err.startswith("Error: ") and len(err.strip().splitlines()) == 1 and "x.tiff" in err, err
    assert not (tmp_path / "o.npz").exists()


BRIGHTNESS_MODEL = '''
import torch
from torch import nn


class Brightness(nn.Module):
    """Class 0 (bright) when the mean pixel is above 0.5, else class 1 (dark)."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([m - 0.5, 0.5 - m], 1) * 10


def brightness(num_classes=2):
    return Brightness()
'''


def test_accuracy_through_a_run_is_the_same_in_16_bits(cli, tmp_path):
    model = tmp_path / "brightness.py"
    model.write_text(BRIGHTNESS_MODEL)
    outs = {}
    for kind in ("L png", "I;16 png"):
        root = make_folder(tmp_path / kind.replace(" ", "_").replace(";", ""), kind)
        out = outs[kind] = tmp_path / f"run-{root.name}"
        rc, _, err = cli("run", "--model", f"{model}:brightness", "--data", f"imagefolder:{root}", "--no-fit",
                         "--radii", "2,4", "--out", out, "-q")
        assert rc == 0, err
    with open(outs["L png"] / "summary.csv", newline="") as f:
        orig = [r for r in csv.DictReader(f) if r["variant"] == "original" and r["metric"] == "accuracy"]
    assert float(orig[0]["value"]) == 1.0  # the model is right on every 8-bit image
    for name in ("summary.csv", "samples.csv"):
        assert (outs["I;16 png"] / name).read_bytes() == (outs["L png"] / name).read_bytes(), name
