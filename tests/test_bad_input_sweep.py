"""A catalogue of bad command lines, each run in-process through the console entry: exit 2, one
``Error:`` line that says what was wrong (the needle), no traceback, nothing written.

The classes of problem have tests of their own (test_inputs, test_resume, test_plugin_hardening,
test_cli_run); this sweep is the regression guard that no bad input ends in a traceback.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

NET = (
    "import torch\nfrom torch import nn\n"
    "def net(num_classes=4):\n    torch.manual_seed(0)\n"
    "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))\n"
    "def notmodule():\n    return 3\n"
    "def gray(num_classes=4):\n    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))\n"
)

M = ["--model", "m.py:net", "--no-fit", "--device", "cpu", "-q"]
D = ["--data", "npz:t.npz"]

CASES = {
    "bad source": (["run", "--model", "timx:resnet18"], "Unknown model source 'timx'. Did you mean: timm?"),
    "bad timm name": (["run", "--model", "timm:resnet1800", "--no-fit"], "Did you mean: resnet18"),
    "empty spec": (["run", "--model", ""], "malformed model spec ''"),
    "colon only": (["run", "--model", ":"], "malformed model spec ':'"),
    "missing file": (["run", "--model", "nofile.py:net"], "model file not found: nofile.py"),
    "syntax error in file": (["run", "--model", "syntax.py:f"], "error while importing syntax.py: SyntaxError"),
    "misspelled callable": (["run", "--model", "m.py:nett", *D], "Did you mean: net?"),
    "callable returns int": (["run", "--model", "m.py:notmodule", *D], "returned int, neither a torch.nn.Module nor a callable"),
    "1-channel model, RGB data": (["run", "--model", "m.py:gray", "--no-fit", *D], "failed on a batch of this data's 3×16×16 images"),
    "NaN images": (["run", *M, "--data", "npz:nan.npz"], "non-finite pixel value(s) (NaN)"),
    "npz without y": (["run", *M, "--data", "npz:noy.npz"], "must hold arrays 'x' and 'y'; it has: x"),
    "negative labels": (["run", *M, "--data", "npz:neg.npz"], "labels must be non-negative"),
    "string labels": (["run", *M, "--data", "npz:str.npz"], "labels must be integers"),
    "float images > 1": (["run", *M, "--data", "npz:big.npz"], "float images must lie in [0,1]"),
    "5-D images": (["run", *M, "--data", "npz:5d.npz"], "images must be N×H×W×C or N×H×W"),
    "not a zip": (["run", *M, "--data", "npz:garbage.npz"], "is not an .npz file"),
    "folder as npz": (["run", *M, "--data", "npz:."], "npz file not found"),
    "unknown data": (["run", *M, "--data", "cifar11"], "Did you mean: cifar10, cifar100?"),
    "missing image folder": (["run", *M, "--data", "imagefolder:nope"], "image folder not found: nope"),
    "radii letters": (["run", *M, *D, "--radii", "a,b"], "r='a' is not a number"),
    "radii empty": (["run", *M, *D, "--radii", ""], "malformed parameter list"),
    "radius negative": (["run", *M, *D, "--radii", "-4"], "r='-4' must be a positive number"),
    "radius nan": (["run", *M, *D, "--radii", "nan"], "r='nan' must be a positive number"),
    "radius inf": (["run", *M, *D, "--radii", "inf"], "r='inf' must be a positive number"),
    "fractional svd rank": (["run", *M, *D, "--decomposer", "svd", "--radii", "2.5"], "must be a whole number"),
    "unknown rescale": (["run", *M, *D, "--rescale", "clamp"], "Did you mean: clip?"),
    "unknown metric": (["run", *M, *D, "--metric", "acc"], "Did you mean: accuracy?"),
    "unknown transform": (["run", *M, *D, "--transform", "smoothx:rho=0.5"], "Unknown transform 'smoothx'"),
    "unknown probe": (["run", *M, *D, "--probe", "lfc"], "Did you mean: lfc-hfc?"),
    "unknown probe option": (["run", *M, *D, "--probe-opt", "gallery=3"], "Did you mean: gallery_size?"),
    "probe option type": (["run", *M, *D, "--probe-opt", "gallery_size=abc"], "gallery_size='abc' must be a int"),
    "probe option malformed": (["run", *M, *D, "--probe-opt", "gallery_size"], "use KEY=VALUE"),
    "unknown decomposer option": (["run", *M, *D, "--decomposer-opt", "foo=1"], "Unknown option of decomposer 'fft-radial' 'foo'. Available: rule, unit."),
    "svd takes no options": (["run", *M, *D, "--decomposer", "svd", "--decomposer-opt", "rule=x"], "decomposer 'svd' takes no options"),
    "bad rule": (["run", *M, *D, "--decomposer-opt", "rule=both"], "unknown boundary rule 'both'"),
    "batch size 0": (["run", *M, *D, "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    "batch size -1": (["run", *M, *D, "--batch-size", "-1"], "--batch-size must be at least 1, got -1"),
    "limit 0": (["run", *M, *D, "--limit", "0"], "--limit must be at least 1"),
    "forward batch 0": (["run", *M, *D, "--forward-batch", "0"], "--forward-batch must be at least 1"),
    "fit epochs 0": (["run", "--model", "m.py:net", *D, "--fit-epochs", "0"], "--fit-epochs must be at least 1"),
    "fit lr nan": (["run", "--model", "m.py:net", *D, "--fit-lr", "nan"], "--fit-lr must be a positive number"),
    "nothing to fit on": (["run", "--model", "m.py:net", *D], "has no training split to fit it on"),
    "mean of 2 values": (["run", *M, *D, "--mean", "0.5,0.5", "--std", "0.2,0.2"], "pass --mean/--std with 3 values"),
    "mean words": (["run", *M, *D, "--mean", "a,b,c", "--std", "1,1,1"], "--mean must be comma-separated numbers"),
    "std zero": (["run", *M, *D, "--mean", "0,0,0", "--std", "0,1,1"], "--std values must be positive"),
    "checkpoint of another model": (["run", "--model", "m.py:net", "--checkpoint", "wrong.pt", *D], "does not fit the model architecture"),
    "empty checkpoint": (["run", "--model", "m.py:net", "--checkpoint", "empty.pt", *D], "could not read checkpoint empty.pt"),
    "missing checkpoint": (["run", "--model", "m.py:net", "--checkpoint", "nope.pt", *D], "checkpoint not found: nope.pt"),
    "checkpoint and pretrained": (["run", "--model", "timm:resnet18", "--checkpoint", "wrong.pt", "--pretrained", *D],
                                  "pass either --pretrained or --checkpoint, not both"),
    "model-arg malformed": (["run", *M, *D, "--model-arg", "num_classes"], "malformed --model-arg 'num_classes'"),
    "model-arg unknown": (["run", *M, *D, "--model-arg", "foo=1"], "rejected --model-arg"),
    "timm model-arg unknown": (["run", "--model", "timm:resnet18", "--no-fit", *D, "--model-arg", "foo=1"], "timm:resnet18 rejected --model-arg"),
    "tf32 on the CPU": (["run", *M, *D, "--precision", "tf32"], "--precision tf32 is a CUDA setting"),
    "cuda without a GPU": (["run", *M, *D, "--device", "cuda"], "torch sees no CUDA GPU"),
    "device gpu": (["run", *M, *D, "--device", "gpu"], "unknown device 'gpu'; available here: auto, cpu"),
    "device mps": (["run", *M, *D, "--device", "mps"], "available here: auto, cpu"),
    "out is a device file": (["run", *M, *D, "--out", "/dev/null"], "--out /dev/null is an existing file"),
    "seed too large": (["run", *M, *D, "--seed", "99999999999999999999"], "--seed must be a whole number from 0 to"),
    "seed negative": (["run", *M, *D, "--seed", "-1"], "--seed must be a whole number from 0 to"),
    "gallery size -1": (["run", *M, *D, "--gallery-size", "-1"], "must be 0 or more, got -1"),
    "image size 0": (["run", *M, *D, "--image-size", "0"], "--image-size must be a positive number"),
    "class map on npz": (["run", *M, *D, "--class-map", "imagenet"], "--class-map applies to imagefolder: data"),
    "class map file missing": (["run", *M, "--data", "imagefolder:imgs", "--class-map", "nope.json"], "--class-map file not found"),
    "resume without out": (["run", *M, *D, "--resume"], "--resume needs the --out folder"),
    "decompose onto existing file": (["decompose", "--data", "npz:t.npz", "--out", "t.npz"], "t.npz already exists"),
    "decompose into missing folder": (["decompose", "--data", "npz:t.npz", "--out", "nope/x.npz"], "folder nope does not exist"),
    "decompose batch 0": (["decompose", "--data", "npz:t.npz", "--out", "o.npz", "--batch-size", "0"], "--batch-size must be at least 1"),
    "decompose radii": (["decompose", "--data", "npz:t.npz", "--out", "o.npz", "--radii", "x"], "r='x' is not a number"),
    "decompose rescale": (["decompose", "--data", "npz:t.npz", "--out", "o.npz", "--rescale", "nope"], "Unknown rescale policy 'nope'"),
    "decompose split train of npz": (["decompose", "--data", "npz:t.npz", "--out", "o.npz", "--split", "train"], "has no train split"),
    "decompose seed": (["decompose", "--data", "npz:t.npz", "--out", "o.npz", "--seed", "-5"], "--seed must be a whole number"),
    "decompose device": (["decompose", "--data", "npz:t.npz", "--out", "o.npz", "--device", "xla"], "available here"),
    "list unknown kind": (["list", "decomposerz"], "Did you mean: decomposers?"),
    "switch off a built-in": (["-p", "no:freqprobe.builtins.decomposers", "list"], "cannot be switched off"),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    r = np.random.default_rng(0)
    np.savez(d / "t.npz", x=r.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8), y=np.arange(24) % 4)
    np.savez(d / "nan.npz", x=np.full((4, 8, 8, 3), np.nan, np.float32), y=np.arange(4))
    np.savez(d / "noy.npz", x=np.zeros((4, 8, 8, 3), np.uint8))
    np.savez(d / "neg.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=-np.ones(4, int))
    np.savez(d / "str.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array(list("abcd")))
    np.savez(d / "big.npz", x=np.zeros((4, 8, 8, 3), np.float32) + 2, y=np.arange(4))
    np.savez(d / "5d.npz", x=np.zeros((4, 1, 8, 8, 3), np.uint8), y=np.arange(4))
    (d / "garbage.npz").write_bytes(b"not a zip")
    (d / "m.py").write_text(NET)
    (d / "syntax.py").write_text("def f(:\n")
    torch.save({"w": torch.zeros(3)}, d / "wrong.pt")
    (d / "empty.pt").write_bytes(b"")
    (d / "imgs" / "a").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(d / "imgs" / "a" / "0.png")
    return d


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line(case, workdir, cli, monkeypatch):
    args, needle = CASES[case]
    monkeypatch.chdir(workdir)
    before = sorted(p.name for p in workdir.iterdir())
    rc, out, err = cli(*args)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
    assert rc == 2, (rc, err)
    assert "Traceback" not in out + err
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert needle in lines[0], lines[0]
    assert sorted(p.name for p in workdir.iterdir()) == before  # nothing written, no partial folder
