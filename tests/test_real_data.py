"""Real data (../shared/data, skipped when absent): the paper's experiment on a pretrained CIFAR-10 ResNet-20,
and the torchvision MNIST reader on the original MNIST test files."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch


REPO = Path(__file__).resolve().parents[1]
IMAGENET_MEAN = "0.485,0.456,0.406"  # akamaster trainer.py normalisation (see SOURCE.md)
IMAGENET_STD = "0.229,0.224,0.225"
RESNET20_SHA256 = "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"  # from SOURCE.md




def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_resnet20_lfc_hfc_on_cifar10(cli, shared_data, tmp_path):
    ckpt = shared_data / "cifar10_resnet_akamaster" / "resnet20-12fca82f.th"
    data = shared_data / "cifar10_test" / "cifar10_test_first100_lossless.npz"
    model_file = REPO / "tests" / "fixtures" / "cifar_resnet.py"
    out = tmp_path / "resnet20"
    rc, stdout, err = cli("run", "--model", f"{model_file}:resnet20", "--checkpoint", ckpt, "--data", f"npz:{data}",
                          "--mean", IMAGENET_MEAN, "--std", IMAGENET_STD, "--radii", "4,8,16",
                          "--gallery-size", "3", "--out", out, "--device", "cpu", "-q", "--batch-size", "100")
    assert rc == 0, err

    rows = read_csv(out / "summary.csv")
    acc = {(r["variant"], r["param"]): float(r["value"]) for r in rows if r["metric"] == "accuracy"}
    assert {r["n"] for r in rows} == {"100"}
    original = acc[("original", "")]
    low = [acc[("low", r)] for r in ("4", "8", "16")]
    high = [acc[("high", r)] for r in ("4", "8", "16")]
    assert original >= 0.90  # SOURCE.md: 94 % on these 100 images
    assert all(a < b for a, b in zip(low, low[1:])), low  # more of the spectrum kept -> better
    assert low[0] <= original - 0.5, (low[0], original)  # r=4 keeps almost nothing the model uses
    assert low[-1] >= 0.75  # r=16 of a 32x32 image keeps most of it
    assert all(a > b for a, b in zip(high, high[1:])), high  # the high part loses what the low part gains
    assert high[-1] <= 0.3

    # the clean accuracy agrees with a plain PyTorch evaluation of the same checkpoint
    import cifar_resnet

    net = cifar_resnet.resnet20()
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()})
    net.eval()
    d = np.load(data)
    x = torch.from_numpy(d["x"]).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        pred = net(x).argmax(1).numpy()
    assert original == pytest.approx(float((pred == d["y"]).mean()), abs=1e-9)
    samples = read_csv(out / "samples.csv")
    assert len(samples) == 100 * 7
    assert [int(s["pred"]) for s in samples if s["variant"] == "original"] == pred.tolist()

    # every output file is there
    names = {p.name for p in out.iterdir()}
    assert {"summary.csv", "samples.csv", "manifest.json", "accuracy.png", "figure2.csv"} <= names
    fig2 = read_csv(out / "figure2.csv")
    assert fig2, "a pretrained ResNet has samples that are right on the high part and wrong on the low part"
    for r in {g["param"] for g in fig2}:
        assert f"figure2_r{r}.png" in names
        assert sum(g["param"] == r for g in fig2) <= 3
    assert names <= {"summary.csv", "samples.csv", "manifest.json", "accuracy.png", "figure2.csv"} | {f"figure2_r{r}.png" for r in (4, 8, 16)}

    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["checkpoint_sha256"] == RESNET20_SHA256
    assert man["model"]["checkpoint_kind"] == "state_dict"
    assert man["model"]["mean"] == pytest.approx([0.485, 0.456, 0.406]) and man["model"]["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert man["data"]["n"] == 100 and man["data"]["n_evaluated"] == 100
    assert man["model"]["fitted"] is None


def _idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def test_mnist_reader_on_original_test_files(cli, shared_data, tmp_path):
    """``--data mnist`` reads torchvision's layout (``ROOT/MNIST/raw/*-ubyte``). torchvision insists that all four
    raw files exist, even for the test split; the shared data has only the t10k files, so the two training files
    are empty placeholders here (the test split never opens them)."""
    src = shared_data / "mnist_test"
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(src / f"{name}.gz", "rb") as fi, open(raw / name, "wb") as fo:
            shutil.copyfileobj(fi, fo)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"")
    images, labels = _idx(src / "t10k-images-idx3-ubyte.gz"), _idx(src / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)

    exported = tmp_path / "mnist.npz"
    rc, _, err = cli("decompose", "--data", "mnist", "--data-root", tmp_path / "root", "--limit", "16",
                     "--radii", "4", "--out", exported, "--device", "cpu", "-q")
    assert rc == 0, err
    d = np.load(exported)
    assert d["x"].shape == (16, 1, 28, 28)
    np.testing.assert_allclose(d["x"][:, 0], images[:16] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(d["y"], labels[:16])
    np.testing.assert_allclose(d["low_r4"] + d["high_r4"], d["x"], atol=1e-5)


def test_resnet20_published_numbers_and_settings_that_must_not_change_them(cli, shared_data, tmp_path):
    """The first-100 numbers the core landed with, exactly, whatever the forward batch or memory format."""
    ckpt = shared_data / "cifar10_resnet_akamaster" / "resnet20-12fca82f.th"
    data = shared_data / "cifar10_test" / "cifar10_test_first100_lossless.npz"
    model_file = REPO / "tests" / "fixtures" / "cifar_resnet.py"
    preds = {}
    for name, extra in {"default": [], "contiguous": ["--no-channels-last"], "one-variant-per-forward": ["--forward-batch", "100"],
                        "whole-stack": ["--forward-batch", "900"], "small-batches": ["--batch-size", "7"]}.items():
        out = tmp_path / name
        rc, _, err = cli("run", "--model", f"{model_file}:resnet20", "--checkpoint", ckpt, "--data", f"npz:{data}",
                         "--mean", IMAGENET_MEAN, "--std", IMAGENET_STD, "--radii", "4,8,12,16", "--batch-size", "100",
                         *extra, "--out", out, "--device", "cpu", "-q")
        assert rc == 0, err
        acc = {(r["variant"], r["param"]): float(r["value"]) for r in read_csv(out / "summary.csv")}
        assert acc[("original", "")] == 0.94
        assert [acc[("low", r)] for r in ("4", "8", "12", "16")] == [0.24, 0.39, 0.85, 0.90]
        assert [acc[("high", r)] for r in ("4", "8", "12", "16")] == [0.46, 0.30, 0.16, 0.08]
        rows = read_csv(out / "samples.csv")
        preds[name] = sorted((r["variant"], r["param"], int(r["index"]), int(r["pred"])) for r in rows)
    assert all(p == preds["default"] for p in preds.values())
