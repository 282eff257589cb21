"""``freqprobe decompose`` of COCO data (images of different sizes): one float32 .npy per image and component,
PNGs under a named rescale, the original as PNG, manifest.json; .npz refused; stop/SIGKILL and --resume.

Through the command line when the plugin's ``coco`` data source can be registered (its hooks), else
through :func:`freqprobe.export.export_images` with a :class:`CocoDataSource` instance.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import freqprobe
from freqprobe import Batch, DataSource, UserFacingError
from freqprobe.builtins.decomposers import FFTRadialDecomposer
from freqprobe.export import export_images, export_npz
from freqprobe.journal import StopRequested, clear_stop, partial_dir, request_stop

PLUGIN = Path(__file__).resolve().parents[1]
from freqprobe_coco.data import CocoDataSource  # noqa: E402

pytest.importorskip("pycocotools")
Image = pytest.importorskip("PIL.Image")


# ---------------------------------------------------------------- set-up
@pytest.fixture
def coco(shared_data) -> tuple[Path, Path]:
    root = shared_data / "coco_val2017_mini"
    images, ann = root / "val2017", root / "instances_val2017_mini.json"
    if not (images.is_dir() and ann.is_file()):
        pytest.skip(f"COCO mini set not found at {root}")
    return images, ann


def first_files(ann: Path, n: int) -> list[str]:
    """The file names of the first ``n`` images in the data's order (image ids ascending), from the JSON itself."""
    imgs = sorted(json.loads(ann.read_text())["images"], key=lambda i: int(i["id"]))
    return [i["file_name"] for i in imgs[:n]]


def pil_image(path: Path) -> torch.Tensor:
    """The image as read with PIL: float32 3×H×W in [0, 1]."""
    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float() / 255.0


@pytest.fixture
def coco_cli(coco_pm):
    """The CLI with the ``coco`` data source registered (autoload is off in tests), or None when it is not."""
    return coco_pm if "coco" in freqprobe.collect("datasets", coco_pm) else None


@pytest.fixture
def export(cli, coco_cli, coco):
    """``export(out, *options) -> (rc, stdout, stderr)``: ``freqprobe decompose`` of the COCO mini set, or its function."""
    images, ann = coco

    def run(out: Path, *args: str) -> tuple[int, str, str]:
        if coco_cli is not None:
            return cli("decompose", "--data", f"coco:{images}:{ann}", "--device", "cpu", "-q", "--out", str(out), *args)
        return _export_in_process(images, ann, out, list(args))

    run.via_cli = coco_cli is not None
    return run


def _export_in_process(images: Path, ann: Path, out: Path, args: list[str]) -> tuple[int, str, str]:
    """What ``freqprobe decompose`` does with the options the tests use, through export_images."""
    opts = {"--radii": None, "--rescale": "minmax", "--limit": None, "--batch-size": None}
    dopts: dict = {}
    resume = False
    it = iter(args)
    for a in it:
        if a == "--resume":
            resume = True
        elif a == "--decomposer-opt":
            k, _, v = next(it).partition("=")
            dopts[k] = v
        else:
            opts[a] = next(it)
    data = CocoDataSource(f"{images}:{ann}")
    dec = FFTRadialDecomposer(**dopts)
    from freqprobe.runner import parse_params

    params = dec.check_params(parse_params(opts["--radii"]))
    rescale = freqprobe.get_class("rescale", opts["--rescale"])()
    limit = int(opts["--limit"]) if opts["--limit"] else None
    try:
        export_images(data, dec, params, out, rescale=rescale, limit=limit, resume=resume,
                      batch_size=int(opts["--batch-size"] or data.default_batch_size))
    except freqprobe.FreqprobeError as exc:
        return 2, "", f"Error: {exc}\n"
    return 0, f"wrote {out}\n", ""


def all_files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- layout and content
def test_export_arrays_pngs_and_manifest(export, coco, tmp_path):
    images, ann = coco
    out = tmp_path / "coco_r128"
    rc, stdout, err = export(out, "--radii", "128", "--limit", "3")
    assert rc == 0, err
    files = first_files(ann, 3)
    stems = [Path(f).stem for f in files]
    assert stems[0] == "000000000139"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "npy", "original", "png-minmax"]
    assert sorted(p.name for p in (out / "npy").iterdir()) == ["high_r128", "low_r128"]
    assert sorted(p.name for p in (out / "png-minmax").iterdir()) == ["high_r128", "low_r128"]
    for key in ("low_r128", "high_r128"):
        assert sorted(p.name for p in (out / "npy" / key).iterdir()) == sorted(f"{s}.npy" for s in stems)
        assert sorted(p.name for p in (out / "png-minmax" / key).iterdir()) == sorted(f"{s}.png" for s in stems)
    assert sorted(p.name for p in (out / "original").iterdir()) == sorted(f"{s}.png" for s in stems)
    assert not list(tmp_path.glob(".*partial*"))

    sizes = set()
    for f, stem in zip(files, stems):
        x = pil_image(images / f)
        sizes.add(tuple(x.shape))
        ref = freqprobe.decompose(x[None], "fft-radial", 128)
        low, high = np.load(out / "npy" / "low_r128" / f"{stem}.npy"), np.load(out / "npy" / "high_r128" / f"{stem}.npy")
        for got, want in ((low, ref["low"][0]), (high, ref["high"][0])):
            assert got.dtype == np.float32 and got.shape == tuple(x.shape)  # C×H×W at the image's own size
            np.testing.assert_array_equal(got, want.numpy())
        np.testing.assert_allclose(low + high, x.numpy(), atol=1e-5, rtol=0)  # lossless: float32 rounding only
        assert high.min() < 0  # no rescale on the arrays
        with Image.open(out / "original" / f"{stem}.png") as im, Image.open(images / f) as src:
            assert im.format == "PNG" and im.size == src.size
            np.testing.assert_array_equal(np.asarray(im), np.asarray(src.convert("RGB")))  # the decoded pixels, exactly
        h = high.astype(np.float64)
        expected = np.round((h - h.min()) / (h.max() - h.min()) * 255).transpose(1, 2, 0)
        with Image.open(out / "png-minmax" / "high_r128" / f"{stem}.png") as im:
            assert im.mode == "RGB" and np.abs(np.asarray(im).astype(int) - expected).max() <= 1
    assert len(sizes) > 1  # the point: images of different sizes

    man = json.loads((out / "manifest.json").read_text())
    assert man["decomposer"] == "fft-radial" and man["options"] == {"rule": "exclusive"} and man["params"] == [128.0]
    assert man["rescale"] == "minmax" and man["n"] == 3 and man["layout"] == "CHW" and man["dtype"] == "float32"
    assert man["data"]["name"] == "coco" and man["data"]["images_dir"] == str(images.resolve())
    assert man["folders"] == ["original", "npy/low_r128", "npy/high_r128", "png-minmax/low_r128", "png-minmax/high_r128"]
    if export.via_cli:
        assert stdout.startswith(f"wrote {out} (3 samples;")


def test_png_folder_carries_the_rescale_and_arrays_ignore_it(export, coco, tmp_path):
    images, ann = coco
    out = tmp_path / "clip"
    rc, _, err = export(out, "--radii", "128", "--limit", "1", "--rescale", "clip")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "npy", "original", "png-clip"]
    stem = Path(first_files(ann, 1)[0]).stem
    high = np.load(out / "npy" / "high_r128" / f"{stem}.npy")
    assert high.min() < 0  # the arrays are never rescaled
    with Image.open(out / "png-clip" / "high_r128" / f"{stem}.png") as im:
        want = np.round(np.clip(high, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
        np.testing.assert_array_equal(np.asarray(im), want)
    assert json.loads((out / "manifest.json").read_text())["rescale"] == "clip"


def test_relative_radius_unit_nyquist(export, coco, tmp_path):
    images, ann = coco
    out = tmp_path / "nyq"
    rc, _, err = export(out, "--radii", "0.5", "--decomposer-opt", "unit=nyquist", "--limit", "2")
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    assert man["options"] == {"rule": "exclusive", "unit": "nyquist"} and man["params"] == [0.5]
    shapes = []
    for f in first_files(ann, 2):  # 640×426 landscape, then 424×640 portrait
        x = pil_image(images / f)
        h, w = x.shape[1:]
        shapes.append((h, w))
        got = np.load(out / "npy" / "low_r0.5" / f"{Path(f).stem}.npy")
        px = freqprobe.decompose(x[None], "fft-radial", 0.5 * min(h, w) / 2)["low"][0].numpy()  # r_px = r·min(H,W)/2
        np.testing.assert_allclose(got, px, atol=1e-6, rtol=0)
        rel = freqprobe.decompose(x[None], "fft-radial", 0.5, unit="nyquist")["low"][0].numpy()
        np.testing.assert_array_equal(got, rel)
    assert shapes[0] != shapes[1]


# ---------------------------------------------------------------- .npz refused
def test_npz_output_is_refused_in_one_line(export, coco, cli, tmp_path):
    images, ann = coco
    target = tmp_path / "coco.npz"
    if export.via_cli:
        rc, out, err = export(target, "--radii", "128", "--limit", "2")
        text = (out + err).strip()
        assert rc == 2 and "Traceback" not in text
        assert len(text.splitlines()) == 1, text
        assert text.startswith("Error: ") and "images of different sizes cannot share one array" in text and "folder" in text
    else:
        data = CocoDataSource(f"{images}:{ann}")
        with pytest.raises(UserFacingError, match="images of different sizes cannot share one array") as ei:
            export_npz(data, FFTRadialDecomposer(), [128.0], target, limit=2)
        assert len(str(ei.value).splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---------------------------------------------------------------- batch size
def test_default_batch_size_is_the_datas(cli, coco_cli, coco, tiny_npz, tmp_path, monkeypatch):
    import freqprobe.export as ex

    images, ann = coco
    seen = []
    monkeypatch.setattr(ex, "export_images", lambda *a, **k: seen.append(("images", k["batch_size"])) or [])
    monkeypatch.setattr(ex, "export_npz", lambda *a, **k: seen.append(("npz", k["batch_size"])) or [])
    assert cli("decompose", "--data", f"npz:{tiny_npz}", "--out", tmp_path / "t.npz", "-q")[0] == 0
    assert seen == [("npz", 256)]  # data without a default of its own: 256, as before
    if coco_cli is None:
        pytest.skip("the coco data source is not registered: the CLI part of this test needs it")
    for extra, want in (((), 8), (("--batch-size", "3"), 3)):
        seen.clear()
        rc, _, err = cli("decompose", "--data", f"coco:{images}:{ann}", "--limit", "2", "--out", tmp_path / f"b{want}",
                         "-q", *extra)
        assert rc == 0, err
        assert seen == [("images", want)]


# ---------------------------------------------------------------- any data whose batches are lists
class Ragged(DataSource):
    """Lists of random images of three sizes, no sample_name(): files are named by the zero-padded index."""

    name = "ragged"
    num_classes = 1

    def __len__(self) -> int:
        return 5

    def load(self, indices):
        sizes = [(12, 20), (16, 16), (9, 14)]
        imgs = [torch.from_numpy(np.random.default_rng(int(i)).integers(0, 256, (3, *sizes[int(i) % 3]))).float() / 255
                for i in indices]
        return Batch(imgs, [{} for _ in indices], torch.as_tensor(np.asarray(indices, dtype=np.int64)))


def test_list_data_without_sample_name_uses_the_index(tmp_path):
    data = Ragged()
    rescale = freqprobe.get_class("rescale", "minmax")()
    folders = export_images(data, FFTRadialDecomposer(), [2.0, 3.0], tmp_path / "r", rescale=rescale, batch_size=2)
    assert folders == ["original", "npy/low_r2", "npy/high_r2", "npy/low_r3", "npy/high_r3",
                       "png-minmax/low_r2", "png-minmax/high_r2", "png-minmax/low_r3", "png-minmax/high_r3"]
    names = [f"{i:05d}" for i in range(5)]
    for f in folders:
        suffix = ".npy" if f.startswith("npy/") else ".png"
        assert sorted(p.name for p in (tmp_path / "r" / f).iterdir()) == [n + suffix for n in names]
    x = data.load(np.array([4])).images[0]
    got = np.load(tmp_path / "r" / "npy" / "high_r3" / "00004.npy")
    np.testing.assert_array_equal(got, freqprobe.decompose(x[None], "fft-radial", 3)["high"][0].numpy())
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["names"] == "index"


# ---------------------------------------------------------------- stop, SIGKILL and resume
class Stopper(FFTRadialDecomposer):
    """Asks for a stop while decomposing the ``at``-th image (the export stops at the batch boundary after it)."""

    at = 2
    calls = 0

    def decompose_all(self, x, params, *, out=None):
        type(self).calls += 1
        if type(self).calls == self.at:
            request_stop(signal.SIGTERM)
        yield from super().decompose_all(x, params, out=out)


def test_stop_then_resume_gives_identical_files(coco, tmp_path):
    images, ann = coco
    data = CocoDataSource(f"{images}:{ann}")
    rescale = freqprobe.get_class("rescale", "minmax")()
    out, ref = tmp_path / "out", tmp_path / "ref"
    Stopper.calls = 0
    try:
        with pytest.raises(StopRequested, match=r"stopped by SIGTERM after 2 of 3 samples; the finished part is kept in"):
            export_images(data, Stopper(), [128.0], out, rescale=rescale, limit=3, batch_size=2)
    finally:
        clear_stop()
    part = partial_dir(out)
    assert part.is_dir() and not out.exists()
    assert json.loads((part / "journal.json").read_text())["done"] == 2
    stem = Path(first_files(ann, 3)[2]).stem
    (part / "npy" / "low_r128" / f"{stem}.npy").write_bytes(b"half-written")  # a file of the unfinished batch
    export_images(data, FFTRadialDecomposer(), [128.0], out, rescale=rescale, limit=3, batch_size=2, resume=True)
    export_images(data, FFTRadialDecomposer(), [128.0], ref, rescale=rescale, limit=3, batch_size=2)
    assert not part.exists()
    files = all_files(ref)
    assert files == all_files(out) and len(files) == 3 * 5 + 1
    assert all((ref / f).read_bytes() == (out / f).read_bytes() for f in files)


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[3])
    import freqprobe
    from freqprobe.builtins.decomposers import FFTRadialDecomposer
    from freqprobe.export import export_images
    from freqprobe_coco.data import CocoDataSource

    class Killer(FFTRadialDecomposer):
        calls = 0
        def decompose_all(self, x, params, *, out=None):
            type(self).calls += 1
            if type(self).calls == 3:  # the first image of the second batch
                os.kill(os.getpid(), signal.SIGKILL)
            yield from super().decompose_all(x, params, out=out)

    export_images(CocoDataSource(sys.argv[1]), Killer(), [128.0], sys.argv[2],
                  rescale=freqprobe.get_class("rescale", "minmax")(), limit=3, batch_size=2)
""")


def test_sigkill_then_resume_matches(export, coco, tmp_path):
    images, ann = coco
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    ref, out = tmp_path / "ref", tmp_path / "out"
    opts = ("--radii", "128", "--limit", "3", "--batch-size", "2")
    assert export(ref, *opts)[0] == 0
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    got = subprocess.run([sys.executable, str(script), f"{images}:{ann}", str(out), str(PLUGIN)], env=env,
                         capture_output=True, timeout=300)
    assert got.returncode == -signal.SIGKILL, got.stderr.decode()
    part = partial_dir(out)
    assert part.is_dir() and not out.exists()
    assert json.loads((part / "journal.json").read_text())["done"] == 2  # one batch of 2 finished
    rc, _, err = export(out, *opts, "--resume")
    assert rc == 0, err
    assert not part.exists()
    files = all_files(ref)
    assert files == all_files(out) and len(files) == 3 * 5 + 1
    assert all((ref / f).read_bytes() == (out / f).read_bytes() for f in files)
