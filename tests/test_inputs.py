"""Users' own data and models: class counts, label maps, normalisation, input sizes, bad inputs.

Every bad input is one ``Error: ...`` line, exit code 2, no traceback, nothing written to --out,
and it comes before any expensive work. The tests run in-process through :func:`freqprobe.cli.main`
(the ``cli`` fixture) with tiny models and data made in ``tmp_path``.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import freqprobe
from freqprobe.errors import UserFacingError

# ImageNet-1k indices of three WordNet ids (timm's imagenet_synsets.txt; ../shared/data/imagenet_val_samples/labels.csv)
WNIDS = {"n01443537": 1, "n02328150": 332, "n04505470": 878}

NET_1000 = """\
import sys
import torch
from torch import nn


def net(num_classes=1000, width=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))


def explodes(num_classes=10):
    raise ValueError("no GPU here, giving up")


def quits(num_classes=10):
    sys.exit(3)


class _Fails(nn.Module):
    def forward(self, x):
        raise RuntimeError("shapes do not line up in my model")


class _Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return (x * self.w).sum()


class _Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = net(4)

    def forward(self, x):
        return self.inner(x), x.mean()


class _Exits(nn.Module):
    def forward(self, x):
        sys.exit("bye")


def fails():
    return _Fails()


def scalar():
    return _Scalar()


def pair():
    return _Pair()


def exits_in_forward():
    return _Exits()
"""


# ------------------------------------------------------------------ helpers
def check_failure(rc, err, out: Path, *needles):
    """Exit 2, one ``Error:`` line (after any warning lines), no traceback, nothing at --out."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, err)
    assert not out.exists()
    if out.parent.exists():
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]
    return lines[0]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def netfile(tmp_path) -> Path:
    p = tmp_path / "nets.py"
    p.write_text(NET_1000)
    return p


def _load(netfile: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("nets_for_tests", netfile)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def ckpt_1000(netfile, tmp_path) -> Path:
    p = tmp_path / "net1000.pt"
    torch.save(_load(netfile).net(1000).state_dict(), p)
    return p


def make_folder(root: Path, classes, n=2, size=8, ext="png") -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"img{i}.{ext}")
    return root


def make_npz(path: Path, y, x=None, **extra) -> Path:
    y = np.asarray(y)
    if x is None:
        x = np.random.default_rng(0).integers(0, 256, (len(y), 8, 8, 3), dtype=np.uint8)
    np.savez(path, x=x, y=y, **extra)
    return path


def base(model, data, out, *extra):
    return ["run", "--model", model, "--data", data, "--radii", "4", "--out", out, "--device", "cpu", "-q", *extra]


# ------------------------------------------------------------------ class counts
def test_imagenet_checkpoint_on_wordnet_folder_uses_imagenet_indices(cli, netfile, ckpt_1000, tmp_path):
    """A 1000-class checkpoint on an ImageNet subset (3 WordNet-id folders): runs, labels are ImageNet indices."""
    data = make_folder(tmp_path / "subset", WNIDS)
    out = tmp_path / "out"
    rc, _, err = cli(*base(f"{netfile}:net", f"imagefolder:{data}", out, "--checkpoint", ckpt_1000,
                          "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"))
    assert rc == 0, err
    labels = {int(r["label"]) for r in read_csv(out / "samples.csv")}
    assert labels == set(WNIDS.values())
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["num_classes"] == 1000
    assert man["data"]["label_map"] == "imagenet-1k (WordNet ids)"
    assert man["data"]["class_to_idx"] == WNIDS
    assert man["data"]["class_names"][1] == "goldfish"


def test_checkpoint_sets_the_class_count_not_the_data(cli, netfile, ckpt_1000, tmp_path):
    """npz labels reaching 878 with a 1000-class checkpoint: the model keeps 1000 outputs (not 879)."""
    data = make_npz(tmp_path / "d.npz", [878, 3, 332, 0])
    out = tmp_path / "out"
    rc, _, err = cli(*base(f"{netfile}:net", f"npz:{data}", out, "--checkpoint", ckpt_1000,
                          "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"))
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["num_classes"] == 1000
    # a subset of a fixed label space (synth10) on a bigger model is run, with a warning that names the reading
    out2 = tmp_path / "out2"
    rc, _, err = cli(*base(f"{netfile}:net", "synth10", out2, "--checkpoint", ckpt_1000, "--limit", "4",
                          "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"))
    assert rc == 0, err
    assert "warning: the model outputs 1000 classes but synth10 has 10" in err


def test_timm_head_sized_from_checkpoint(tmp_path):
    timm = pytest.importorskip("timm")
    ck = tmp_path / "r10t_7.pt"
    torch.save(timm.create_model("resnet10t", num_classes=7).state_dict(), ck)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = freqprobe.build_model("timm:resnet10t", checkpoint=ck, num_classes=4)
        assert adapter.module.fc.out_features == 7
        # an explicit --model-arg num_classes wins (and then the checkpoint does not fit)
        with pytest.raises(UserFacingError, match="shape conflicts"):
            freqprobe.build_model("timm:resnet10t", checkpoint=ck, num_classes=4, model_args={"num_classes": 5})


def test_labels_beyond_the_model_outputs(cli, netfile, tmp_path):
    ck = tmp_path / "net4.pt"
    torch.save(_load(netfile).net(4).state_dict(), ck)
    data = make_npz(tmp_path / "d.npz", [0, 1, 5, 2])
    out = tmp_path / "out"
    rc, _, err = cli(*base(f"{netfile}:net", f"npz:{data}", out, "--checkpoint", ck, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"))
    line = check_failure(rc, err, out, "labels up to 5 (6 classes)", "outputs only 4 classes", "trained on these classes")
    assert "num_classes=6" not in line  # the old, wrong advice for a model with weights
    # a model without weights: the advice is num_classes
    rc, _, err = cli(*base(f"{netfile}:net", f"npz:{data}", out, "--model-arg", "num_classes=3", "--no-fit"))
    check_failure(rc, err, out, "labels up to 5", "outputs only 3", "num_classes=6")


def test_explicit_class_map(cli, netfile, ckpt_1000, tmp_path):
    data = make_folder(tmp_path / "pets", ["cat", "dog"])
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"cat": 281, "dog": 207}))
    out = tmp_path / "out"
    args = base(f"{netfile}:net", f"imagefolder:{data}", out, "--checkpoint", ckpt_1000, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")
    rc, _, err = cli(*args, "--class-map", cmap)
    assert rc == 0, err
    assert {int(r["label"]) for r in read_csv(out / "samples.csv")} == {207, 281}
    assert json.loads((out / "manifest.json").read_text())["data"]["class_to_idx"] == {"cat": 281, "dog": 207}
    # a map that misses a folder, or --class-map for data that has no folders
    cmap.write_text(json.dumps({"cat": 281}))
    out2 = tmp_path / "out2"
    rc, _, err = cli(*base(f"{netfile}:net", f"imagefolder:{data}", out2, "--checkpoint", ckpt_1000), "--class-map", cmap)
    check_failure(rc, err, out2, "no index for 1 class folder", "dog")
    npz = make_npz(tmp_path / "d.npz", [0, 1])
    rc, _, err = cli(*base(f"{netfile}:net", f"npz:{npz}", out2, "--checkpoint", ckpt_1000), "--class-map", cmap)
    check_failure(rc, err, out2, "--class-map applies to imagefolder")
    # decompose takes the same map ("imagenet": WordNet ids -> ImageNet indices)
    wn = make_folder(tmp_path / "wn", WNIDS, n=1)
    rc, _, err = cli("decompose", "--data", f"imagefolder:{wn}", "--class-map", "imagenet", "--radii", "4", "--out", tmp_path / "d.npz.out.npz", "-q")
    assert rc == 0, err
    assert sorted(np.load(tmp_path / "d.npz.out.npz")["y"].tolist()) == sorted(WNIDS.values())


# ------------------------------------------------------------------ normalisation
def test_timm_module_brings_its_pretrained_cfg(tmp_path):
    timm = pytest.importorskip("timm")
    m = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    adapter = freqprobe.build_model(m)
    assert adapter.mean == pytest.approx(tuple(m.pretrained_cfg["mean"]))
    assert adapter.std == pytest.approx(tuple(m.pretrained_cfg["std"]))
    assert adapter.info["normalisation_from"] == "pretrained_cfg"
    assert freqprobe.build_model(m, mean=[0.5] * 3, std=[0.2] * 3).info["normalisation_from"] == "override"
    # freqprobe.run(module): the same mean/std, and no "unnormalised" warning
    data = make_npz(tmp_path / "d.npz", [0, 1, 2, 0])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = freqprobe.run(m, data=f"npz:{data}", params="4", device="cpu", out=tmp_path / "out")
    man = result.extras["manifest"]["model"]
    assert man["mean"] == pytest.approx(list(m.pretrained_cfg["mean"])) and man["normalisation_from"] == "pretrained_cfg"
    assert not [w for w in seen if "unnormalised" in str(w.message)]
    with pytest.warns(UserWarning, match=r"unnormalised \(no mean/std known for Sequential\)"):
        freqprobe.run(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3)), data=f"npz:{data}", params="4",
                      device="cpu", out=tmp_path / "out2")


def test_unnormalised_run_gets_a_notice(cli, netfile, tmp_path):
    ck = tmp_path / "net4.pt"
    torch.save(_load(netfile).net(4).state_dict(), ck)
    data = make_npz(tmp_path / "d.npz", [0, 1, 2, 3])
    out = tmp_path / "out"
    rc, _, err = cli(*base(f"{netfile}:net", f"npz:{data}", out, "--checkpoint", ck))
    assert rc == 0, err
    assert "warning: the model gets [0,1] pixels unnormalised" in err and "--mean/--std" in err
    # 0-255 statistics: run, with a notice
    rc, _, err = cli(*base(f"{netfile}:net", f"npz:{data}", tmp_path / "o2", "--checkpoint", ck,
                          "--mean", "123.7,116.3,103.5", "--std", "58.4,57.1,57.4"))
    assert rc == 0, err
    assert err.count("0–255 scale") == 1 and "unnormalised" not in err


@pytest.mark.parametrize("extra,needles", [
    (["--mean", "0.5,0.5,0.5"], ["--mean given without --std"]),
    (["--std", "0.2,0.2,0.2"], ["--std given without --mean"]),
    (["--mean", "nan,0.5,0.5", "--std", "0.2,0.2,0.2"], ["--mean must be finite"]),
    (["--mean", "0.5,0.5,0.5", "--std", "inf,0.2,0.2"], ["--std must be finite"]),
])
def test_bad_mean_std(extra, needles, cli, netfile, tmp_path):
    data = make_npz(tmp_path / "d.npz", [0, 1])
    out = tmp_path / "out"
    rc, _, err = cli(*base(f"{netfile}:net", f"npz:{data}", out, "--no-fit", *extra))
    check_failure(rc, err, out, *needles)


# ------------------------------------------------------------------ input sizes
def test_fixed_input_size_is_one_line_before_compute(cli, tmp_path, monkeypatch):
    pytest.importorskip("timm")
    data = make_folder(tmp_path / "imgs", ["a", "b"], n=1)
    out = tmp_path / "out"
    called = []
    monkeypatch.setattr(freqprobe.ModelAdapter, "predict", lambda self, x: called.append(1))
    rc, _, err = cli(*base("timm:vit_tiny_patch16_224", f"imagefolder:{data}", out, "--no-fit", "--image-size", "160"))
    check_failure(rc, err, out, "takes only 224×224 images (fixed input size)", "160×160", "--image-size 224")
    assert not called  # refused before the model ran


@pytest.mark.parametrize("size", ["-3", "0"])
def test_bad_image_size(size, cli, netfile, tmp_path):
    data = make_folder(tmp_path / "imgs", ["a", "b"], n=1)
    out = tmp_path / "out"
    rc, _, err = cli(*base(f"{netfile}:net", f"imagefolder:{data}", out, "--no-fit", "--image-size", size))
    check_failure(rc, err, out, "--image-size must be a positive")
    rc, _, err = cli("decompose", "--data", f"imagefolder:{data}", "--image-size", size, "--out", out, "-q")
    check_failure(rc, err, out, "--image-size must be a positive")


# ------------------------------------------------------------------ splits, non-finite data, non-strict
def test_decompose_split_train_without_train_split(cli, tmp_path):
    npz = make_npz(tmp_path / "d.npz", [0, 1])
    flat = make_folder(tmp_path / "flat", ["a", "b"], n=1)
    out = tmp_path / "out.npz"
    rc, _, err = cli("decompose", "--data", f"npz:{npz}", "--split", "train", "--out", out, "-q")
    check_failure(rc, err, out, "has no train split")
    rc, _, err = cli("decompose", "--data", f"imagefolder:{flat}", "--split", "train", "--out", out, "-q")
    check_failure(rc, err, out, "has no train split")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_images_refused_at_load(bad, cli, netfile, tmp_path):
    x = np.random.default_rng(0).random((5, 8, 8, 3)).astype(np.float32)
    x[3, 1, 2, 0] = bad
    x[4, 0, 0, :] = bad
    data = make_npz(tmp_path / "d.npz", [0, 1, 0, 1, 0], x=x)
    out = tmp_path / "out"
    rc, _, err = cli(*base(f"{netfile}:net", f"npz:{data}", out, "--no-fit"))
    check_failure(rc, err, out, "4 non-finite pixel value(s)", "in 2 of 5 images", "first in image 3")
    x[:] = np.nan  # all-NaN float images
    make_npz(tmp_path / "d.npz", [0, 1, 0, 1, 0], x=x)
    rc, _, err = cli("decompose", "--data", f"npz:{data}", "--out", tmp_path / "o.npz", "-q")
    check_failure(rc, err, tmp_path / "o.npz", "non-finite", "in 5 of 5 images")


def test_non_strict_says_what_is_missing(cli, netfile, tmp_path):
    sd = _load(netfile).net(4).state_dict()
    ck = tmp_path / "partial.pt"
    torch.save({"4.bias": sd["4.bias"], "other.weight": torch.zeros(3)}, ck)
    data = make_npz(tmp_path / "d.npz", [0, 1, 2, 3])
    out = tmp_path / "out"
    rc, _, err = cli(*base(f"{netfile}:net", f"npz:{data}", out, "--checkpoint", ck, "--non-strict",
                          "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"))
    assert rc == 0, err
    assert "warning: loaded" in err and "with --non-strict: 3 of 4 model weights missing (0.weight, 0.bias, 4.weight)" in err
    assert "1 checkpoint weights unused (other.weight)" in err


# ------------------------------------------------------------------ no tracebacks
def test_corrupt_jpeg_in_imagefolder(cli, netfile, ckpt_1000, tmp_path):
    data = make_folder(tmp_path / "imgs", ["a", "b"], n=3, size=32, ext="jpg")
    bad = data / "b" / "img1.jpg"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # truncated: found mid-run
    out = tmp_path / "out"
    rc, _, err = cli(*base(f"{netfile}:net", f"imagefolder:{data}", out, "--checkpoint", ckpt_1000, "--batch-size", "2",
                          "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"))
    check_failure(rc, err, out, f"could not read image {bad}", "truncated", "remove or replace it")
    rc, _, err = cli("decompose", "--data", f"imagefolder:{data}", "--radii", "4", "--out", tmp_path / "o.npz", "-q")
    check_failure(rc, err, tmp_path / "o.npz", f"could not read image {bad}")
    (data / "a" / "img0.jpg").write_bytes(b"not a jpeg at all")  # found by the first check
    pngs = tmp_path / "pngs"
    rc, _, err = cli("decompose", "--data", f"imagefolder:{data}", "--radii", "4", "--out", pngs, "-q")
    check_failure(rc, err, pngs, f"could not read image {data / 'a' / 'img0.jpg'}")


@pytest.mark.parametrize("callable_,needles", [
    ("explodes", ["nets.py:explodes failed while building the model", "ValueError: no GPU here"]),
    ("quits", ["nets.py:quits failed while building the model", "sys.exit(3)"]),
    ("fails", ["failed on a batch of this data's 3×8×8 images", "RuntimeError: shapes do not line up"]),
    ("exits_in_forward", ["failed on a batch", "sys.exit('bye')"]),
    ("scalar", ["returned a scalar", "N×K logits"]),
    ("pair", ["returned a tuple of 2 items", "N×K logits"]),
])
def test_model_callable_failures(callable_, needles, cli, netfile, tmp_path):
    data = make_npz(tmp_path / "d.npz", [0, 1, 2, 3])
    out = tmp_path / "out"
    rc, _, err = cli(*base(f"{netfile}:{callable_}", f"npz:{data}", out, "--no-fit"))
    check_failure(rc, err, out, *needles)


def test_module_that_exits_on_import(cli, tmp_path):
    f = tmp_path / "bye.py"
    f.write_text("import sys\nsys.exit('not today')\n")
    out = tmp_path / "out"
    rc, _, err = cli(*base(f"{f}:net", "synth10", out, "--no-fit"))
    check_failure(rc, err, out, "error while importing", "sys.exit('not today')")


@pytest.mark.parametrize("extra,needles", [
    (["--fit-lr", "-1"], ["--fit-lr must be a positive number"]),
    (["--fit-lr", "0"], ["--fit-lr must be a positive number"]),
    (["--fit-lr", "nan"], ["--fit-lr must be a positive number"]),
    (["--gallery-size", "-1"], ["gallery_size", "must be 0 or more"]),
    (["--device", "mps"], ["mps", "available here: auto, cpu"]),
    (["--device", "xla"], ["xla", "available here: auto, cpu"]),
    (["--device", "cuda"], ["no CUDA GPU", "available here: auto, cpu"]),
    (["--device", "gpu0"], ["unknown device 'gpu0'", "available here: auto, cpu"]),
])
def test_bad_numbers_and_devices_refused_before_loading(extra, needles, cli, netfile, tmp_path, monkeypatch):
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    import freqprobe.runner as runner

    monkeypatch.setattr(runner, "open_data", lambda *a, **k: pytest.fail("data opened before the options were checked"))
    out = tmp_path / "out"
    args = [a for a in base(f"{netfile}:net", "synth10", out) if a not in ("--device", "cpu")]
    rc, _, err = cli(*args, *extra)
    check_failure(rc, err, out, *needles)


def test_decompose_unknown_device(cli, tmp_path):
    out = tmp_path / "o.npz"
    rc, _, err = cli("decompose", "--data", "synth10", "--device", "mps", "--out", out, "-q")
    check_failure(rc, err, out, "mps", "available here")


def test_duplicate_radii_say_what_was_dropped(cli, netfile, tmp_path):
    data = make_npz(tmp_path / "d.npz", [0, 1, 2, 3])
    out = tmp_path / "out"
    args = [a for a in base(f"{netfile}:net", f"npz:{data}", out, "--no-fit") if a != "4"]
    args[args.index("--radii") + 1:args.index("--radii") + 1] = ["8,4,8"]
    rc, _, err = cli(*args)
    assert rc == 0, err
    assert "warning: dropped duplicate r=8 from 8,4,8" in err
    rc, _, err = cli("decompose", "--data", f"npz:{data}", "--radii", "8,4,8", "--out", tmp_path / "o.npz", "-q")
    assert rc == 0 and "warning: dropped duplicate r=8" in err, err


@pytest.mark.parametrize("how", ["raise", "oom", "exit"])
def test_model_failing_mid_run_is_one_line(cli, tiny_npz, tmp_path, how):
    """A model that works on the core's check but fails later in the run: one line naming the batch, exit 2."""
    f = tmp_path / "late.py"
    body = {"raise": "raise ValueError('bad shape in layer 3')", "oom": "raise RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB')",
            "exit": "import sys; sys.exit(3)"}[how]
    f.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Late(nn.Module):\n"
        "    def __init__(self):\n        super().__init__(); torch.manual_seed(0); self.lin = nn.Linear(3, 4)\n"
        "    def forward(self, x):\n"
        f"        if len(x) > 2:\n            {body}\n"
        "        return self.lin(x.mean((2, 3)))\n\n"
        "def late(num_classes=4):\n    return Late()\n"
    )
    out = tmp_path / "out"
    rc, _, err = cli("run", "--model", f"{f}:late", "--data", f"npz:{tiny_npz}", "--no-fit", "--radii", "4", "--batch-size", "4",
                     "--out", out, "--device", "cpu", "-q")
    assert rc == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("Error: the model ") and "failed in batch 1 (4 images of 3×16×16)" in line
    assert {"raise": "ValueError: bad shape in layer 3", "oom": "lower --forward-batch", "exit": "sys.exit(3)"}[how] in line
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())
