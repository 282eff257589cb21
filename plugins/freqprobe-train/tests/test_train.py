"""`freqprobe train` on real MNIST images (the shared test-only IDX files, split with --holdout): every heuristic,
shuffled labels, tracked curves against a direct evaluation of the saved checkpoints, resume, the tracker API."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import freqprobe
from freqprobe import StopRequested
from freqprobe.journal import clear_stop, request_stop  # test-only: a stop as a signal handler asks for it




def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_heuristic_runs_one_epoch_in_a_grid(cli, tmp_path, mnist):
    out = tmp_path / "grid"
    rc, stdout, err = cli("train", "--model", "paper:lenet", *mnist, "--limit", "300", "--test-limit", "100", "--epochs", "1",
                          "--track-samples", "50", "--grid", "preset=vanilla,dropout,mixup,batchnorm,adversarial",
                          "--out", out, "-q")
    assert rc == 0, err
    names = json.loads((out / "grid.json").read_text())["runs"]
    assert names == ["vanilla", "dropout0.5", "mixup0.5", "bn", "adv-pgd"], names
    for name in names:
        rows = read_csv(out / name / "curves.csv")
        assert list(rows[0]) == ["epoch", "split", "variant", "param", "metric", "value", "n"]
        assert {(r["split"], r["variant"], r["param"]) for r in rows if r["metric"] == "accuracy"} >= {
            ("train", "original", ""), ("test", "original", ""), ("train", "low", "4"), ("test", "high", "16")}
        man = json.loads((out / name / "manifest.json").read_text())
        assert man["epochs_done"] == 1 and man["setting"] == name
        assert (out / name / "checkpoints" / f"{name}_epoch001.pt").is_file()
    models = {n: json.loads((out / n / "manifest.json").read_text())["model_args"] for n in names}
    assert models["bn"]["bn"] is True and models["dropout0.5"]["dropout"] == 0.5
    grid = read_csv(out / "grid.csv")
    assert {r["setting"] for r in grid} == set(names)
    assert (out / "comparison.png").stat().st_size > 10_000


def test_other_heuristics_one_epoch(cli, tmp_path, mnist):
    """Optimizers, batch size, shuffled labels and training on a part, each for one epoch."""
    common = ["--model", "paper:lenet", *mnist, "--limit", "200", "--test-limit", "50", "--epochs", "1", "--track-samples", "40", "-q"]
    for extra, name in ((["--optimizer", "sgd"], "sgd"), (["--optimizer", "rmsprop", "--batch-size", "50"], "rmsprop-bs50"),
                        (["--labels", "shuffled"], "shuffled"), (["--train-on", "low:8"], "low-r8"),
                        (["--train-on", "high:4", "--optimizer", "adagrad"], "high-r4-adagrad"),
                        (["--optimizer", "adadelta", "--init", "default"], "adadelta-init-default")):
        out = tmp_path / name
        rc, _, err = cli("train", *common, *extra, "--out", out)
        assert rc == 0, (extra, err)
        assert json.loads((out / "manifest.json").read_text())["setting"] == name


def test_shuffled_labels_follow_the_seed(mnist, train_pm, shared_data):
    from freqprobe_train.data import all_labels
    from freqprobe_train.train import TrainSettings, open_splits

    def labels(seed, kind="shuffled"):
        s = TrainSettings(model="paper:lenet", data="mnist", data_root=str(shared_data / "mnist_test"), holdout=0.2,
                          limit=500, labels=kind, seed=seed)
        train, _, _ = open_splits(s, train_pm)
        return all_labels(train)

    natural, a, b, c = labels(0, "natural"), labels(0), labels(0), labels(1)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and (a != natural).mean() > 0.8
    np.testing.assert_array_equal(np.bincount(a, minlength=10), np.bincount(natural, minlength=10))  # a permutation


def test_curves_equal_a_direct_evaluation_of_the_checkpoints(cli, tmp_path, mnist, train_pm, shared_data):
    out = tmp_path / "run"
    rc, _, err = cli("train", "--model", "paper:lenet", *mnist, "--limit", "400", "--test-limit", "150", "--epochs", "2",
                     "--track-samples", "0", "--out", out, "-q")
    assert rc == 0, err
    curves = read_csv(out / "curves.csv")
    from freqprobe_train.train import TrainSettings, open_splits

    s = TrainSettings(model="paper:lenet", data="mnist", data_root=str(shared_data / "mnist_test"), holdout=0.2, limit=400,
                      test_limit=150)
    _, test, _ = open_splits(s, train_pm)
    for epoch, ckpt in ((1, out / "checkpoints" / "vanilla_epoch001.pt"), (2, out / "model.pt")):
        res = freqprobe.run("paper:lenet", checkpoint=ckpt, data=test, params="4,8,12,16", batch_size=500, device="cpu",
                            model_args={"in_chans": 1, "image_size": 28}, out=tmp_path / f"eval{epoch}", pm=train_pm)
        got = {(r["variant"], "" if r["param"] is None else f"{r['param']:g}"): f"{r['value']:.6f}" for r in res.summary
               if r["variant"] != "hfc-reliance"}  # the run's one-number summary is not a tracked curve
        tracked = {(r["variant"], r["param"]): r["value"] for r in curves
                   if r["split"] == "test" and r["epoch"] == str(epoch) and r["metric"] == "accuracy"}
        assert got == tracked, epoch
    # the checkpoint says it was trained on raw [0, 1] pixels: the run used no normalisation
    man = json.loads((tmp_path / "eval2" / "manifest.json").read_text())
    assert man["model"]["mean"] is None and man["model"]["normalisation_from"] == "checkpoint"


def test_resume_continues_and_ends_with_the_same_curves(tmp_path, mnist, train_pm, shared_data):
    from freqprobe_train.train import TrainSettings, train

    s = TrainSettings(model="paper:lenet", data="mnist", data_root=str(shared_data / "mnist_test"), holdout=0.2, limit=300,
                      test_limit=60, epochs=3, track_samples=40, mixup=0.5, dropout=0.5, device="cpu")
    quiet = lambda m: None  # noqa: E731
    train(s, tmp_path / "ref", pm=train_pm, say=quiet)

    calls = {"n": 0}

    def progress(stage, total):  # asks for a stop (as a SIGINT does) in the middle of epoch 2
        def cb(n):
            calls["n"] += 1
            if stage == "epoch 2" and calls["n"] == 5:
                request_stop(signal.SIGINT)
        return cb

    with pytest.raises(StopRequested, match=r"epoch 2.*epochs 1-1 are kept in .*--resume"):
        train(s, tmp_path / "out", pm=train_pm, say=quiet, progress=progress)
    clear_stop()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["epochs_done"] == 1
    epochs = []
    train(s, tmp_path / "out", pm=train_pm, resume=True, say=lambda m: epochs.append(m))
    assert any("resuming" in m and "after epoch 1" in m for m in epochs)
    assert sum("epoch 1/" in m for m in epochs) == 0  # no finished epoch is recomputed
    ref = (tmp_path / "ref" / "curves.csv").read_text()
    fit_free = lambda t: [ln for ln in t.splitlines() if ",fit," not in ln]  # noqa: E731
    assert fit_free((tmp_path / "out" / "curves.csv").read_text()) == fit_free(ref)
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "out" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    # more epochs later: --epochs 4 --resume after 3
    import dataclasses

    train(dataclasses.replace(s, epochs=4), tmp_path / "out", pm=train_pm, resume=True, say=quiet)
    rows = read_csv(tmp_path / "out" / "curves.csv")
    assert sorted({int(r["epoch"]) for r in rows}) == [1, 2, 3, 4]
    assert (tmp_path / "out" / "checkpoints" / "dropout0.5-mixup0.5_epoch004.pt").is_file()


@pytest.mark.parametrize("args, needle", [
    (["--model", "timm:resnet18", "--bn"], "--bn/--no-bn switches BatchNorm in the paper's architectures"),
    (["--train-on", "middle:3"], "--train-on must be low:R or high:R"),
    (["--optimizer", "adamw"], "Did you mean"),
    (["--grid", "bach_size=10,20"], "Did you mean: batch_size"),
    (["--preset", "mixupp"], "Did you mean: mixup"),
    (["--adversarial", "pgdd"], "Did you mean: pgd"),
    (["--holdout", "1.5"], "--holdout must be a fraction"),
    (["--model", "paper:lenett"], "Did you mean: lenet"),
    (["--labels", "random"], "--labels must be natural or shuffled"),
])
def test_bad_training_inputs_are_one_line(cli, tmp_path, mnist, args, needle):
    full = ["--model", "paper:lenet", *mnist, "--limit", "100", "--epochs", "1", *args]
    if full.count("--model") > 1:
        i = full.index("--model")
        del full[i:i + 2]
    rc, _, err = cli("train", *full, "--out", tmp_path / "x")
    assert rc == 2 and "Traceback" not in err and needle in err, err
    assert not (tmp_path / "x" / "train_state.pt").exists()


def test_resume_refusals(cli, tmp_path, mnist):
    base = ["train", "--model", "paper:lenet", *mnist, "--limit", "100", "--epochs", "1", "--track-samples", "20", "-q"]
    rc, _, err = cli(*base, "--out", tmp_path / "none", "--resume")
    assert rc == 2 and "nothing to resume" in err
    assert cli(*base, "--out", tmp_path / "r")[0] == 0
    rc, _, err = cli(*base, "--out", tmp_path / "r")
    assert rc == 2 and "Traceback" not in err, err  # a finished run is not overwritten
    rc, _, err = cli(*base, "--out", tmp_path / "r", "--resume")
    assert rc == 2 and "already been trained for 1 epochs" in err
    rc, _, err = cli(*[a if a != "100" else "120" for a in base], "--epochs", "2", "--out", tmp_path / "r", "--resume")
    assert rc == 2 and "other settings (limit differ)" in err, err


def test_tracker_in_a_users_training_loop(mnist, train_pm, shared_data):
    """The public tracker on a plain module from a hand-written loop: mode and memory format restored, rows tidy."""
    from freqprobe_train.tracker import FrequencyTracker

    data = freqprobe.open_data("mnist", root=shared_data / "mnist_test", pm=train_pm)
    from freqprobe_train.data import first

    tracker = FrequencyTracker({"test": first(data, 64, "--limit")}, radii=(4, 16), device="cpu", batch_size=32, pm=train_pm)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 10))
    net.train()
    rows = tracker.track(net, 1)
    assert net.training and net[0].weight.is_contiguous()
    assert [(r["variant"], r["param"]) for r in rows] == [("original", None), ("low", 4.0), ("high", 4.0), ("low", 16.0),
                                                          ("high", 16.0)]
    assert all(r["split"] == "test" and r["epoch"] == 1 and r["n"] == 64 and 0 <= r["value"] <= 1 for r in rows)
    with torch.no_grad():  # an independent check of the original-image accuracy
        x, y, _ = next(iter(first(data, 64, "x").batches(64)))
        acc = float((net.eval()(x).argmax(1) == y).float().mean())
    assert rows[0]["value"] == pytest.approx(acc, abs=1e-9)


def test_lightning_callback(mnist, train_pm, shared_data):
    L = pytest.importorskip("lightning", reason="lightning is not installed (optional): the callback is not exercised here")
    from freqprobe_train.data import first
    from freqprobe_train.tracker import FrequencyTracker

    data = first(freqprobe.open_data("mnist", root=shared_data / "mnist_test", pm=train_pm), 64, "--limit")

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    x, y, _ = next(iter(data.batches(64)))
    loader = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=16)
    tracker = FrequencyTracker({"test": data}, radii=(8,), device="cpu", pm=train_pm)
    trainer = L.Trainer(max_epochs=2, callbacks=[tracker.lightning_callback()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, accelerator="cpu")
    trainer.fit(Net(), loader)
    assert sorted({r["epoch"] for r in tracker.rows}) == [1, 2] and len(tracker.rows) == 6


def test_grid_from_a_config_file(cli, tmp_path, mnist, shared_data):
    """A TOML config: the settings and a grid table (natural vs shuffled labels), command-line flags win."""
    cfg = tmp_path / "grid.toml"
    cfg.write_text(f'''model = "paper:lenet"
data = "mnist"
data_root = "{shared_data / 'mnist_test'}"
holdout = 0.2
limit = 150
test_limit = 50
epochs = 3
track_samples = 30

[grid]
labels = ["natural", "shuffled"]
''')
    out = tmp_path / "g"
    rc, _, err = cli("train", "--config", cfg, "--epochs", "1", "--out", out, "-q")
    assert rc == 0, err
    assert json.loads((out / "grid.json").read_text())["runs"] == ["vanilla", "shuffled"]
    for name in ("vanilla", "shuffled"):
        man = json.loads((out / name / "manifest.json").read_text())
        assert man["epochs_done"] == 1 and man["settings"]["limit"] == 150  # --epochs 1 won over the file's 3
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "paper:lenet"\nepoch = 3\n')
    rc, _, err = cli("train", "--config", bad, "--out", tmp_path / "b")
    assert rc == 2 and "Did you mean: epochs" in err, err


def test_timm_model_trains_on_raw_pixels_and_its_checkpoint_says_so(cli, tmp_path, train_pm):
    """A timm model (whose pretrained_cfg has ImageNet statistics) trains on [0, 1] pixels; `freqprobe run` with its
    model.pt uses no normalisation and gives the tracked test accuracy."""
    out = tmp_path / "timm"
    rc, _, err = cli("train", "--model", "timm:resnet10t", "--data", "synth10", "--limit", "200", "--test-limit", "100",
                     "--epochs", "1", "--track-samples", "0", "--out", out, "-q")
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["mean"] is None and man["model"]["std"] is None
    rc, _, err = cli("run", "--model", "timm:resnet10t", "--checkpoint", out / "model.pt", "--data", "synth10", "--limit", "100",
                     "--batch-size", "500", "--out", tmp_path / "eval", "-q")
    assert rc == 0, err
    got = {(r["variant"], r["param"]): r["value"] for r in read_csv(tmp_path / "eval" / "summary.csv")
           if r["variant"] != "hfc-reliance"}
    tracked = {(r["variant"], r["param"]): r["value"] for r in read_csv(out / "curves.csv")
               if r["split"] == "test" and r["metric"] == "accuracy"}
    assert got == tracked


def test_torchrun_ddp_trains_like_one_process(tmp_path, mnist):
    """Two gloo processes (DistributedDataParallel, each a slice of every batch) track the same curves as one process;
    the weights differ only by the gradient reduction order (float rounding)."""
    import os
    import socket
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FREQPROBE_DISABLE_PLUGIN_AUTOLOAD", None)
    args = ["train", "--model", "paper:lenet", *mnist, "--limit", "300", "--test-limit", "100", "--epochs", "2",
            "--track-samples", "0", "--mixup", "0.5", "-q"]
    one = subprocess.run([sys.executable, "-m", "freqprobe", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "freqprobe", *args,
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Grad strides" not in two.stderr
    tracked = lambda p: [ln for ln in (p / "curves.csv").read_text().splitlines() if ",fit," not in ln]  # noqa: E731
    assert tracked(tmp_path / "two") == tracked(tmp_path / "one")
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["processes"] == 2
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["state_dict"]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


# ----------------------------------------------------------------------------- the plugin on its own
FIRST_PARTY = {"attacks", "smoothing", "coco", "train"}


def test_hook_module_imports_without_torch():
    """`freqprobe --help` loads every hook module: this one must not pull in torch (the implementation is loaded in the hooks)."""
    import subprocess
    import sys

    code = "import sys, freqprobe_train.hooks; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_train_alone_trains_reports_and_refuses_an_attack_in_one_line(first_party_pm, capsys, tmp_path):
    """Only this plugin registered (attacks, smoothing and coco switched off): training, a grid and their report
    sections work; --adversarial (attacks come from the attacks plugin) is one line, exit 2, before anything is written."""
    from freqprobe.cli import main

    pm = first_party_pm("train")
    assert {name for name, _ in pm.list_name_plugin()} & FIRST_PARTY == {"train"}

    def cli(*args):
        capsys.readouterr()
        rc = main([str(a) for a in args])
        got = capsys.readouterr()
        return rc, got.out, got.err

    base = ["train", "--model", "paper:lenet", "--data", "synth10", "--limit", "60", "--test-limit", "30", "--epochs", "1",
            "--track-samples", "20", "--radii", "4,8", "-q"]
    for extra in (["--adversarial", "pgd"], ["--preset", "adversarial"], ["--grid", "preset=vanilla,adversarial"],
                  ["--adversarial", "pgd:steps=3"]):
        rc, _, err = cli(*base, *extra, "--out", tmp_path / "adv")
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (extra, err)
        assert err.startswith("Error: Unknown attack 'pgd'.") and "freqprobe-attacks" in err, err
        assert not (tmp_path / "adv").exists()
    rc, _, err = cli(*base, "--out", tmp_path / "run")
    assert rc == 0, err
    rc, _, err = cli(*base, "--grid", "preset=vanilla,mixup", "--out", tmp_path / "grid")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "grid").iterdir()) == ["comparison.png", "grid.csv", "grid.json", "mixup0.5",
                                                                      "vanilla"]
    rc, _, err = cli("report", tmp_path / "run", tmp_path / "grid", "--out", tmp_path / "report.html")
    assert rc == 0, err
    page = (tmp_path / "report.html").read_text()
    assert "<h2>run — setting vanilla · model paper:lenet" in page
    assert "<h2>grid — training grid</h2>" in page
    assert page.count('<section class="run sub"><h3>') == 2 and "<h3>mixup0.5 — setting mixup0.5 · model paper:lenet" in page
    assert page.count("<figcaption class=meta>curves.png</figcaption>") == 3
    assert page.count("<figcaption class=meta>comparison.png</figcaption>") == 1
    assert "<p class=meta>accuracy at the last epoch</p>" in page and "<p class=meta>loss at the last epoch</p>" in page
    assert '<th class=l>setting</th><th class=l>epoch</th><th class=l>split</th><th class=l>variant</th><th>—</th><th>4</th>' \
           '<th>8</th>' in page


def test_report_of_a_training_folder_needs_this_plugin(first_party_pm, cli, tmp_path):
    """The core's report knows no training folder: with the plugin switched off it is refused in one line."""
    rc, _, err = cli("train", "--model", "paper:lenet", "--data", "synth10", "--limit", "30", "--test-limit", "20",
                     "--epochs", "1", "--track-samples", "10", "--radii", "8", "--out", tmp_path / "run", "-q")
    assert rc == 0, err
    first_party_pm("attacks", "smoothing", "coco")
    rc, _, err = cli("report", tmp_path / "run", "--out", tmp_path / "r.html")
    assert rc == 2 and "is not a freqprobe run folder" in err and len(err.strip().splitlines()) == 1, err


def test_workers_train_the_same_model(cli, tmp_path):
    """--workers: the training images of an image folder read in worker processes train the same model, epoch for epoch."""
    import numpy as np
    import torch
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 12)):
        for i in range(n):
            d = tmp_path / "folder" / split / f"c{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, size=(36, 36, 3), dtype=np.uint8)).save(d / f"{i}.jpg", quality=90)
    base = ["train", "--model", "paper:lenet", "--data", f"imagefolder:{tmp_path / 'folder'}", "--epochs", "2",
            "--batch-size", "8", "--track-samples", "0", "--radii", "4", "--device", "cpu", "-q"]
    for w in (0, 2):
        rc, _, err = cli(*base, "--workers", str(w), "--out", tmp_path / f"w{w}")
        assert rc == 0, err
    a, b = (torch.load(tmp_path / f"w{w}" / "model.pt", map_location="cpu", weights_only=True) for w in (0, 2))
    sa, sb = (x.get("state_dict", x) for x in (a, b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    keep = ("epoch", "split", "variant", "param", "accuracy", "loss", "n")
    ca, cb = ([{k: v for k, v in r.items() if k in keep} for r in read_csv(tmp_path / f"w{w}" / "curves.csv")] for w in (0, 2))
    assert ca == cb and len(ca) > 0
    rc, _, err = cli(*base, "--workers", "-2", "--out", tmp_path / "bad")
    assert rc == 2 and "--workers must be a number of worker processes" in err and not (tmp_path / "bad").exists()
