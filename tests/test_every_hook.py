"""Every hook, implemented by a small third-party plugin registered at run time, and used end to end.

Each test registers a plugin class (``@freqprobe.hookimpl`` methods) on a fresh plugin manager as
``thirdparty``, runs freqprobe with what it registered (the console entry or ``freqprobe.run``) and
checks the numbers against a computation of its own. The last test makes sure that every hook in
:mod:`freqprobe.hookspecs` is implemented by some test's plugin.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from torch import nn

import freqprobe
import freqprobe.cli
import freqprobe.plugins
import freqprobe.runner
import freqprobe_attacks.hooks
import reference
from freqprobe import IncompatibleError, UnknownNameError, UserFacingError, hookspecs

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def use_pm(monkeypatch, pm):
    """The test's plugin manager as the one the console entry and ``freqprobe.run`` use."""
    monkeypatch.setattr(freqprobe.plugins, "_default", pm)
    return pm


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def npz_images(path):
    with np.load(path) as d:
        return torch.from_numpy(d["x"]).permute(0, 3, 1, 2).float().div(255), torch.from_numpy(d["y"]).long()


def load_callable(path: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"every_hook_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def accuracy_rows(rows):
    """``(variant, param) -> value`` of the accuracy rows of a summary (CSV rows or ProbeResult.summary)."""
    out = {}
    for r in rows:
        if r["metric"] == "accuracy":
            p = r["param"]
            out[(r["variant"], "" if p in (None, "") else f"{float(p):g}")] = float(r["value"])
    return out


def preds_by_variant(samples):
    """``(variant, param) -> {index: pred}`` from samples.csv rows."""
    out: dict = {}
    for r in samples:
        p = r["param"]
        out.setdefault((r["variant"], "" if p == "" else f"{float(p):g}"), {})[int(r["index"])] = int(r["pred"])
    return out


# ----------------------------------------------------------------------------- register_datasets
def stripe_image(i: int) -> np.ndarray:
    """Image ``i`` of the stripes data: a square wave of period 16, 8, 4 or 2 pixels (by ``i // 2``),
    horizontal stripes (varying down the rows) for even ``i``, vertical for odd, plus a little seeded noise."""
    period = (16, 8, 4, 2)[(i // 2) % 4]
    wave = np.where((np.arange(16) // (period // 2)) % 2 == 0, 0.2, 0.8)
    plane = np.repeat(wave[:, None], 16, 1) if i % 2 == 0 else np.repeat(wave[None, :], 16, 0)
    noise = np.random.default_rng(1000 + i).uniform(0, 0.05, size=(3, 16, 16))
    return (plane[None] * np.array([1.0, 0.9, 0.8])[:, None, None] + noise).astype(np.float32)


class StripesData(freqprobe.DataSource):
    """Sixteen 3×16×16 images of horizontal (label 0) or vertical (label 1) stripes."""

    name = "stripes"
    num_classes = 2
    class_names = ("horizontal", "vertical")
    N = 16

    def __len__(self):
        return self.N

    def load(self, indices):
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        images = torch.from_numpy(np.stack([stripe_image(int(i)) for i in idx]))
        return freqprobe.Batch(images, idx % 2, idx)


class StripesPlugin:
    @freqprobe.hookimpl
    def register_datasets(self):
        return [StripesData]


class StripeNet(nn.Module):
    """Logits (mean |vertical difference|, mean |horizontal difference|): horizontal stripes change down the rows."""

    def forward(self, x):
        dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean((1, 2, 3))
        dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean((1, 2, 3))
        return torch.stack([dy, dx], 1)


def stripe_logits64(x: np.ndarray) -> np.ndarray:
    dy = np.abs(np.diff(x, axis=-2)).mean((1, 2, 3))
    dx = np.abs(np.diff(x, axis=-1)).mean((1, 2, 3))
    return np.stack([dy, dx], 1)


def test_register_datasets_a_third_party_data_source_is_run(pm, tmp_path):
    pm.register(StripesPlugin(), "thirdparty")
    assert freqprobe.get_class("datasets", "stripes", pm) is StripesData
    data = freqprobe.open_data("stripes", pm=pm)
    assert len(data) == 16 and data.num_classes == 2
    batches = list(data.batches(5))
    assert [len(b.indices) for b in batches] == [5, 5, 5, 1]
    labels = torch.cat([b.targets for b in batches])
    assert labels.tolist() == [i % 2 for i in range(16)]
    x = torch.cat([b.images for b in batches])
    assert x.shape == (16, 3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    with pytest.raises(UserFacingError, match="takes no argument"):
        freqprobe.open_data("stripes:7", pm=pm)

    with pytest.warns(UserWarning, match="unnormalised"):  # (StripeNet takes raw pixels)
        result = freqprobe.run(StripeNet(), data="stripes", params="4", batch_size=5, device="cpu", out=tmp_path / "run", pm=pm)
    assert {r["n"] for r in result.summary} == {16}
    got = accuracy_rows(result.summary)
    assert {("original", ""), ("low", "4"), ("high", "4")} <= set(got)

    # independently: the float64 reference split and the same detector in numpy
    x64 = np.stack([stripe_image(i) for i in range(16)]).astype(np.float64)
    y = np.arange(16) % 2
    low, high = reference.fft_radial(x64, 4)
    for (variant, param), imgs in {("original", ""): x64, ("low", "4"): low, ("high", "4"): high}.items():
        logits = stripe_logits64(imgs)
        margin = np.abs(logits[:, 0] - logits[:, 1])
        assert margin.min() > 1e-5, (variant, margin.min())  # no near-ties: float32 and float64 agree on every argmax
        assert got[(variant, param)] == pytest.approx(float((logits.argmax(1) == y).mean()), abs=1e-9), variant
    # the stripes are recognised; the low part at r=4 has lost the 4- and 2-pixel stripes
    assert got[("original", "")] == 1.0 and got[("high", "4")] == 1.0 and got[("low", "4")] < 1.0

    out = Path(result.extras["out_dir"])
    samples = read_csv(out / "samples.csv")
    assert {(int(r["index"]), int(r["label"])) for r in samples} == {(i, i % 2) for i in range(16)}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["name"] == "stripes" and manifest["data"]["n"] == 16 and manifest["data"]["n_evaluated"] == 16
    assert manifest["data"]["class_names"] == ["horizontal", "vertical"]


# ----------------------------------------------------------------------------- register_rescale_policies
class Halve(freqprobe.RescalePolicy):
    """Feed component images at half intensity (x / 2)."""

    name = "halve"

    def apply(self, x):
        return x / 2


class HalvePlugin:
    @freqprobe.hookimpl
    def register_rescale_policies(self):
        return [Halve]


SPY_MODEL = '''
import numpy as np
import torch
from torch import nn


class Spy(nn.Module):
    """Logits (m, -m, 0, 0) with m the mean pixel; every input it is fed is saved to ``dump``."""

    def __init__(self, dump):
        super().__init__()
        self.dump, self.seen = dump, []

    def forward(self, x):
        self.seen.append(x.detach().float().contiguous().clone())
        np.save(self.dump, torch.cat(self.seen).numpy())
        m = x.mean((1, 2, 3))
        z = torch.zeros_like(m)
        return torch.stack([m, -m, z, z], 1)


def spy(dump, num_classes=4):
    return Spy(dump)
'''


def test_register_rescale_policies_the_model_sees_halved_components(cli, use_pm, tiny_npz, tmp_path):
    use_pm.register(HalvePlugin(), "thirdparty")
    model = tmp_path / "spy.py"
    model.write_text(SPY_MODEL)
    dump, out = tmp_path / "seen.npy", tmp_path / "run"
    rc, stdout, err = cli("list", "rescale")
    assert rc == 0 and re.search(r"^\s*halve\s+thirdparty\b.*half intensity", stdout, re.M), stdout
    rc, _, err = cli("run", "--model", f"{model}:spy", "--model-arg", f"dump={dump}", "--no-fit", "--data", f"npz:{tiny_npz}",
                     "--radii", "4,8", "--rescale", "halve", "--batch-size", "32", "--device", "cpu", "-q", "--out", out)
    assert rc == 0, err
    x, _ = npz_images(tiny_npz)
    n = len(x)
    samples = read_csv(out / "samples.csv")
    order = []  # the variants in the order of the one batch's rows (the order they were stacked for the model)
    for r in samples:
        key = (r["variant"], r["param"])
        if key not in order:
            order.append(key)
    assert order == [("original", ""), ("low", "4"), ("high", "4"), ("low", "8"), ("high", "8")]
    seen = torch.from_numpy(np.load(dump))[-len(order) * n:].view(len(order), n, *x.shape[1:])
    for i, (variant, param) in enumerate(order):
        if variant == "original":  # the policy applies to components only (applies_to_original is False)
            want = x
        else:
            part = freqprobe.decompose(x, "fft-radial", float(param))[variant]
            ref = torch.from_numpy(reference.fft_radial(x.double().numpy(), float(param))[variant == "high"]).float()
            torch.testing.assert_close(part, ref, atol=1e-5, rtol=0)
            want = part / 2
        torch.testing.assert_close(seen[i], want, atol=1e-6, rtol=0, msg=f"{variant} {param}")
    # and what the model returned from those inputs is what samples.csv holds
    for r in samples:
        i = order.index((r["variant"], r["param"]))
        m = float(seen[i][int(r["index"])].double().mean())
        if abs(m) > 1e-5:  # (a high part's mean is ~0: its sign is rounding)
            assert int(r["pred"]) == (0 if m > 0 else 1)
        assert float(r["confidence"]) == pytest.approx(1 / (1 + np.exp(-2 * abs(m)) + 2 * np.exp(-abs(m))), abs=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rescale"] == {"policy": "halve", "applies_to_original": False}


# ----------------------------------------------------------------------------- register_attacks
class SignNoise(freqprobe.Attack):
    """x + eps * sign(seeded Gaussian noise), clamped to [0, 1]."""

    name = "sign-noise"
    #: (seed, clean images) of every call, for the test's own computation
    calls: list = []

    def forward(self, images01, labels):
        SignNoise.calls.append((self.seed, images01.detach().cpu().clone()))
        return sign_noise(images01, self.eps, self.seed)


def sign_noise(images01, eps, seed):
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(images01.shape, generator=g, dtype=torch.float64).sign()
    return (images01 + eps * noise.to(images01.device, images01.dtype)).clamp(0, 1)


class SignNoisePlugin:
    @freqprobe.hookimpl
    def register_attacks(self):
        return [SignNoise]


NET = (
    "import torch\nfrom torch import nn\n"
    "def net(num_classes=4):\n    torch.manual_seed(0)\n"
    "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 16 * 16, num_classes))\n"
)
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def test_register_attacks_robust_accuracy_is_the_attack_s(cli, use_pm, tiny_npz, tmp_path):
    use_pm.register(freqprobe_attacks.hooks, "attacks")  # the robustness probe
    use_pm.register(SignNoisePlugin(), "thirdparty")
    netfile = tmp_path / "net.py"
    netfile.write_text(NET)
    out = tmp_path / "run"
    SignNoise.calls.clear()
    rc, stdout, err = cli("run", "--model", f"{netfile}:net", "--no-fit", "--data", f"npz:{tiny_npz}", "--probe", "robustness",
                          "--attack", "sign-noise", "--eps", "0.1", "--radii", "4", "--batch-size", "12", "--device", "cpu",
                          "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "-q", "--out", out)
    assert rc == 0, err
    rows = read_csv(out / "summary.csv")
    acc = {(r["variant"], r["param"], r["attack"], r["eps"]): float(r["value"]) for r in rows if r["metric"] == "accuracy"}
    assert {r["attack"] for r in rows if r["attack"]} == {"sign-noise"}
    assert ("low", "4", "sign-noise", "0.1") in acc  # the frequency view of the adversarial images

    # our own computation: the same clean images (two batches of 12), the attack's seeds, the model by hand
    x, y = npz_images(tiny_npz)
    assert len(SignNoise.calls) == 2 and len({s for s, _ in SignNoise.calls}) == 2  # a seed per batch
    torch.testing.assert_close(torch.cat([imgs for _, imgs in SignNoise.calls]), x, atol=0, rtol=0)
    adv = torch.cat([sign_noise(imgs, 0.1, seed) for seed, imgs in SignNoise.calls])
    assert float((adv - x).abs().max()) == pytest.approx(0.1, abs=1e-6)
    module = load_callable(netfile, "net")().eval()
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        clean_pred = module((x - m) / s).argmax(1)
        adv_pred = module((adv - m) / s).argmax(1)
    assert acc[("original", "", "", "")] == pytest.approx(float((clean_pred == y).float().mean()), abs=1e-6)  # (6 decimals)
    assert acc[("adversarial", "", "sign-noise", "0.1")] == pytest.approx(float((adv_pred == y).float().mean()), abs=1e-6)
    by_sample = {int(r["index"]): int(r["pred"]) for r in read_csv(out / "samples.csv")
                 if r["variant"] == "adversarial" and r["attack"] == "sign-noise"}
    assert [by_sample[i] for i in range(len(x))] == adv_pred.tolist()
    assert (adv_pred != clean_pred).any()  # the attack changed some predictions: its images were evaluated
    # the perturbation's spectrum is measured on the attack's own perturbation
    frac = [float(r["value"]) for r in rows if r["metric"] == "perturbation-low-fraction"]
    delta = (adv - x).double().numpy()
    low, _ = reference.fft_radial(delta, 4)
    assert frac == [pytest.approx(float((low ** 2).sum() / (delta ** 2).sum()), abs=1e-5)]


# ----------------------------------------------------------------------------- register_transforms
class ScaleFirstConv(freqprobe.Transform):
    """Multiply the first Conv2d's kernels by a factor (bias unchanged)."""

    name = "scale-first-conv"
    options = {"factor": 1.0}

    def apply(self, adapter):
        conv = next(m for m in adapter.module.modules() if isinstance(m, nn.Conv2d))
        with torch.no_grad():
            conv.weight.mul_(self.opts["factor"])
        return adapter


class ScaleFirstConvPlugin:
    @freqprobe.hookimpl
    def register_transforms(self):
        return [ScaleFirstConv]


def test_register_transforms_predictions_are_the_rewritten_model_s(cli, use_pm, tiny_npz, tiny_model_file, tmp_path):
    use_pm.register(ScaleFirstConvPlugin(), "thirdparty")
    out = tmp_path / "run"
    rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--no-fit", "--data", f"npz:{tiny_npz}", "--radii", "4",
                     "--transform", "scale-first-conv:factor=2", "--device", "cpu", "-q", "--out", out)
    assert rc == 0, err
    rows = read_csv(out / "summary.csv")
    assert {r["transform"] for r in rows} == {"scale-first-conv:factor=2"}
    assert json.loads((out / "manifest.json").read_text())["transform"] == "scale-first-conv:factor=2"

    # the model rewritten by hand (tinynet seeds itself: the same initial weights)
    net = load_callable(tiny_model_file, "tinynet")
    plain, rewritten = net().eval(), net().eval()
    with torch.no_grad():
        rewritten[0].weight.mul_(2)
    x, y = npz_images(tiny_npz)
    parts = freqprobe.decompose(x, "fft-radial", 4)
    images = {("original", ""): x, ("low", "4"): parts["low"], ("high", "4"): parts["high"]}
    samples = read_csv(out / "samples.csv")
    acc = accuracy_rows(rows)
    changed = 0
    for key, imgs in images.items():
        with torch.no_grad():
            conf, pred = rewritten(imgs).softmax(1).max(1)
            conf0, pred0 = plain(imgs).softmax(1).max(1)
        got = {int(r["index"]): (int(r["pred"]), float(r["confidence"])) for r in samples if (r["variant"], r["param"]) == key}
        assert [got[i][0] for i in range(len(x))] == pred.tolist(), key
        assert [got[i][1] for i in range(len(x))] == pytest.approx(conf.tolist(), abs=1e-5)
        assert acc[key] == pytest.approx(float((pred == y).float().mean()), abs=1e-6)  # (summary.csv: 6 decimals)
        changed += int((pred != pred0).sum()) + int((conf - conf0).abs().gt(1e-3).sum())
    assert changed > 0  # the rewrite matters: the untransformed model would not have passed the checks above


# ----------------------------------------------------------------------------- register_commands
@click.command("hello")
@click.option("--name", default="world", show_default=True, help="Whom to greet.")
def hello_command(name):
    """Greet someone (a third-party command)."""
    n = len(freqprobe.list_entries("decomposers"))
    click.echo(f"hello, {name}! freqprobe knows {n} decomposers")


class HelloPlugin:
    @freqprobe.hookimpl
    def register_commands(self, cli):
        cli.add_command(hello_command)


def test_register_commands_a_third_party_command_runs(cli, use_pm, monkeypatch):
    use_pm.register(HelloPlugin(), "thirdparty")
    want = len(freqprobe.list_entries("decomposers", pm=use_pm))
    rc, out, err = cli("hello", "--name", "x")
    assert (rc, out, err) == (0, f"hello, x! freqprobe knows {want} decomposers\n", "")
    rc, out, err = cli("hello")
    assert rc == 0 and out.startswith("hello, world!")
    rc, out, err = cli("--help")
    assert rc == 0 and re.search(r"^\s+hello\s+Greet someone", out, re.M), out
    for core in ("run", "decompose", "list", "plugins", "report"):
        assert re.search(rf"^\s+{core}\s", out, re.M)
    rc, out, err = cli("hello", "--help")
    assert rc == 0 and "--name TEXT" in out and "Whom to greet." in out
    rc, out, err = cli("plugins", "--json")
    assert rc == 0, err
    [mine] = [p for p in json.loads(out)["plugins"] if p["name"] == "thirdparty"]
    assert "register_commands" in mine["hooks"]


# ----------------------------------------------------------------------------- register_adapters
class Regressor(freqprobe.ModelAdapter):
    """A regression model: one number per image."""

    name = "regressor"
    task = "regression"
    sample_columns = ("pred",)

    def sample_values(self, outputs, targets):
        return {"pred": outputs.float().reshape(len(outputs), -1)[:, 0]}

    def check_data(self, data, device):
        x = next(iter(data.batches(2))).images
        out = self.predict(x.to(device))
        if not isinstance(out, torch.Tensor) or out.reshape(len(x), -1).shape[1] != 1:
            raise IncompatibleError(f"{self.spec} must return one number per image")


class Brightness(freqprobe.DataSource):
    """Ten random 3×8×8 images; the target is each image's mean pixel."""

    name = "brightness"
    task = "regression"
    num_classes = 0

    def __init__(self, argument=None, *, seed=0, **options):
        super().__init__(argument, **options)
        self.x = torch.from_numpy(np.random.default_rng(7).uniform(0, 1, size=(10, 3, 8, 8)).astype(np.float32))

    def __len__(self):
        return len(self.x)

    def load(self, indices):
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        return freqprobe.Batch(self.x[idx], self.x[idx].double().mean((1, 2, 3)), idx)

    def target_columns(self, targets):
        return {"target": targets}


class SquaredError(freqprobe.Metric):
    """Mean squared error of a regression model's predictions."""

    name = "mse"
    task = "regression"

    def __init__(self, ctx=None):
        super().__init__(ctx)
        self.add_state("sse", 0.0)
        self.add_state("count", 0)

    def update(self, outputs, targets):
        self.sse += float((outputs.double().reshape(-1) - targets.double()).pow(2).sum())
        self.count += len(targets)

    def compute(self):
        return self.sse / self.count


class RegressionProbe(freqprobe.Probe):
    """Regression error on the original images and their low/high parts."""

    name = "regression-error"
    requires = {"task": "regression"}
    default_metrics = ("mse",)


class RegressionPlugin:
    @freqprobe.hookimpl
    def register_adapters(self):
        return [Regressor]

    @freqprobe.hookimpl
    def register_datasets(self):
        return [Brightness]

    @freqprobe.hookimpl
    def register_metrics(self):
        return [SquaredError]

    @freqprobe.hookimpl
    def register_probes(self):
        return [RegressionProbe]


class MeanPixel(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x.mean((1, 2, 3))


def test_register_adapters_a_model_of_a_new_task_is_wrapped_and_run(pm, tiny_model_file, tmp_path):
    pm.register(RegressionPlugin(), "thirdparty")
    assert freqprobe.runner.adapter_for("regression", pm) is Regressor
    assert freqprobe.runner.adapter_for("classification", pm) is freqprobe.ClassifierAdapter
    assert [e.name for e in freqprobe.list_entries("adapters", "regressor", pm)] == ["regressor"]
    adapter = freqprobe.build_model(MeanPixel(), task="regression", mean=[0.5], std=[0.25], pm=pm)
    assert type(adapter) is Regressor and adapter.task == "regression" and adapter.info["has_weights"] is True
    x = torch.rand(5, 3, 8, 8)
    out = adapter.predict(x)
    torch.testing.assert_close(out, ((x - 0.5) / 0.25).mean((1, 2, 3)))
    vals = adapter.sample_values(out, None)
    assert list(vals) == ["pred"] and vals["pred"].shape == (5,)
    # a model spec is wrapped by the task the run asks for, too
    assert type(freqprobe.build_model(f"{tiny_model_file}:tinynet", task="regression", model_args={"num_classes": 1}, pm=pm)) is Regressor
    # an unknown task: one line
    with pytest.raises(UserFacingError) as e:
        freqprobe.build_model(MeanPixel(), task="segmentation", pm=pm)
    assert str(e.value).startswith("no model adapter for segmentation models is installed (a plugin provides one")
    with pytest.raises(UserFacingError, match="^no model adapter for regression models is installed \\(a plugin provides one"):
        freqprobe.runner.adapter_for("regression", freqprobe.get_plugin_manager(autoload=False))

    # end to end: a regression run; the mean pixel keeps the DC term, which the low part keeps and the high part loses
    with pytest.warns(UserWarning, match="unnormalised"):  # (the mean pixel of raw pixels is the target)
        result = freqprobe.run(MeanPixel(), probe="regression-error", data="brightness", params="2", device="cpu",
                               out=tmp_path / "run", pm=pm)
    mse = {(r["variant"], r["param"]): r["value"] for r in result.summary if r["metric"] == "mse"}
    targets = Brightness().x.double().mean((1, 2, 3)).numpy()
    assert mse[("original", None)] == pytest.approx(0.0, abs=1e-12)
    assert mse[("low", 2.0)] == pytest.approx(0.0, abs=1e-12)
    assert mse[("high", 2.0)] == pytest.approx(float((targets ** 2).mean()), rel=1e-5)
    samples = read_csv(Path(result.extras["out_dir"]) / "samples.csv")
    assert list(samples[0]) == ["index", "target", "variant", "param", "pred"]
    for r in samples:
        if r["variant"] != "high":
            assert float(r["pred"]) == pytest.approx(targets[int(r["index"])], abs=1e-6)
            assert float(r["target"]) == pytest.approx(targets[int(r["index"])], abs=1e-6)  # (CSVs hold 6 decimals)
    manifest = json.loads((Path(result.extras["out_dir"]) / "manifest.json").read_text())
    assert manifest["model"]["task"] == "regression" and manifest["metrics"] == ["mse"]


# ----------------------------------------------------------------------------- register_model_sources
TOY_MEAN, TOY_STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def toy_cnn(num_classes: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(width * 8 * 8, num_classes))


class ToySource(freqprobe.ModelSource):
    """Tiny CNNs for 16×16 images: toy:cnn (--model-arg width=N)."""

    name = "toy"

    def build(self, target, *, pretrained=False, num_classes=None, model_args=None):
        if target != "cnn":
            raise UnknownNameError("toy model", target, ["cnn"])
        if pretrained:
            raise UserFacingError("toy models have no pretrained weights")
        return freqprobe.BuiltModel(toy_cnn(num_classes or 10, int(model_args.get("width", 6))), mean=TOY_MEAN, std=TOY_STD,
                                    input_size=(3, 16, 16), info={"toy": target})


class ToyPlugin:
    @freqprobe.hookimpl
    def register_model_sources(self):
        return [ToySource]


def test_register_model_sources_a_second_source_builds_the_model_of_a_run(cli, use_pm, tiny_npz, tmp_path):
    use_pm.register(ToyPlugin(), "thirdparty")
    torch.manual_seed(3)
    trained = toy_cnn(4, 5).eval()
    weights = tmp_path / "toy.pt"
    torch.save(trained.state_dict(), weights)
    out = tmp_path / "run"
    rc, _, err = cli("run", "--model", "toy:cnn", "--model-arg", "width=5", "--checkpoint", weights, "--data", f"npz:{tiny_npz}",
                     "--radii", "4", "--device", "cpu", "-q", "--out", out)
    assert rc == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    model = manifest["model"]
    assert (model["source"], model["provided_by"], model["toy"]) == ("toy", "thirdparty", "cnn")
    assert model["has_weights"] is True and model["normalisation_from"] == "toy"
    assert tuple(model["mean"]) == TOY_MEAN and tuple(model["std"]) == TOY_STD

    x, y = npz_images(tiny_npz)
    m, s = torch.tensor(TOY_MEAN).view(1, 3, 1, 1), torch.tensor(TOY_STD).view(1, 3, 1, 1)
    parts = freqprobe.decompose(x, "fft-radial", 4)
    acc = accuracy_rows(read_csv(out / "summary.csv"))
    preds = preds_by_variant(read_csv(out / "samples.csv"))
    for key, imgs in {("original", ""): x, ("low", "4"): parts["low"], ("high", "4"): parts["high"]}.items():
        with torch.no_grad():
            pred = trained((imgs - m) / s).argmax(1)
        assert [preds[key][i] for i in range(len(x))] == pred.tolist(), key
        assert acc[key] == pytest.approx(float((pred == y).float().mean()), abs=1e-6)  # (summary.csv: 6 decimals)
    # the source's own errors reach the user as one line
    rc, _, err = cli("run", "--model", "toy:cnnn", "--no-fit", "--data", f"npz:{tiny_npz}", "--device", "cpu", "-q",
                     "--out", tmp_path / "bad")
    assert rc == 2 and "Unknown toy model 'cnnn'" in err and "Traceback" not in err
    rc, out_, _ = cli("list", "models", "toy")
    assert rc == 0 and re.search(r"^\s*toy\s+thirdparty\b", out_, re.M), out_


class PickledToySource(ToySource):
    """toy models whose checkpoints are this source's own format: ``pickle.dump({"toy_weights": {key: numpy array}})``."""

    name = "toypkl"
    reads_checkpoints = True
    calls: list = []

    def build(self, target, *, pretrained=False, num_classes=None, model_args=None):
        built = super().build(target, pretrained=pretrained, num_classes=num_classes, model_args={"width": 5})
        built.info["args_seen"] = dict(model_args)
        return built

    def load_checkpoint(self, built, path, *, strict=True):
        import pickle

        type(self).calls.append((path, strict))
        if path.endswith(".pt"):
            state = torch.load(path, weights_only=True)
        else:
            with open(path, "rb") as f:
                state = {k: torch.from_numpy(v) for k, v in pickle.load(f)["toy_weights"].items()}
        built.module.load_state_dict(state, strict=strict)
        return {"checkpoint_kind": "toy-pickle", "keys": len(state)}


class PickledToyPlugin:
    @freqprobe.hookimpl
    def register_model_sources(self):
        return [PickledToySource]


def test_a_source_reads_its_own_checkpoint_format_after_the_cores_trust_check(cli, use_pm, tiny_npz, tmp_path, pickle_payload):
    """``reads_checkpoints``: the core refuses an untrusted pickle (nothing unpickled: a payload would create a file),
    then hands the path to ``load_checkpoint``; the manifest has the source's facts and the file's sha256."""
    import hashlib
    import pickle

    use_pm.register(PickledToyPlugin(), "thirdparty")
    use_pm.register(ToyPlugin(), "toys")
    torch.manual_seed(3)
    trained = toy_cnn(4, 5).eval()
    pkl = tmp_path / "toy.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"toy_weights": {k: v.numpy() for k, v in trained.state_dict().items()}}, f)
    marker = pickle_payload.marker
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"toy_weights": pickle_payload}, f)
    PickledToySource.calls.clear()
    base = ["run", "--model", "toypkl:cnn", "--data", f"npz:{tiny_npz}", "--radii", "4", "--device", "cpu", "-q"]
    for f in (pkl, evil):
        rc, _, err = cli(*base, "--checkpoint", f, "--out", tmp_path / "refused")
        assert rc == 2 and "is a Python pickle" in err and "--trust-checkpoint" in err and "Traceback" not in err, err
    assert not marker.exists() and not (tmp_path / "refused").exists() and PickledToySource.calls == []

    out = tmp_path / "run"
    rc, _, err = cli(*base, "--checkpoint", pkl, "--trust-checkpoint", "--model-arg", "SOLVER.BASE_LR=0.1", "--out", out)
    assert rc == 0, err
    assert PickledToySource.calls == [(str(pkl), True)]
    model = json.loads((out / "manifest.json").read_text())["model"]
    assert model["checkpoint_kind"] == "toy-pickle" and model["keys"] == len(trained.state_dict())
    assert model["checkpoint_sha256"] == hashlib.sha256(pkl.read_bytes()).hexdigest() and model["has_weights"] is True
    assert model["args_seen"] == {"SOLVER.BASE_LR": 0.1}  # a dotted --model-arg key reaches the source as typed
    x, _ = npz_images(tiny_npz)
    m, s = torch.tensor(TOY_MEAN).view(1, 3, 1, 1), torch.tensor(TOY_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = trained((x - m) / s).argmax(1).tolist()
    preds = preds_by_variant(read_csv(out / "samples.csv"))
    assert [preds[("original", "")][i] for i in range(len(x))] == want  # the file's weights, not fitted ones

    tensors = tmp_path / "toy.pt"  # tensors only: no trust needed, and the source still reads it
    torch.save(trained.state_dict(), tensors)
    rc, _, err = cli(*base, "--checkpoint", tensors, "--non-strict", "--out", tmp_path / "pt")
    assert rc == 0, err
    assert PickledToySource.calls[-1] == (str(tensors), False)
    rc, _, err = cli(*base, "--checkpoint", tmp_path / "missing.pkl", "--out", tmp_path / "m")
    assert rc == 2 and "checkpoint not found" in err
    # a source that leaves checkpoints to the core: a raw pickle is not a torch file (and is not unpickled)
    rc, _, err = cli("run", "--model", "toy:cnn", "--data", f"npz:{tiny_npz}", "--checkpoint", evil, "--trust-checkpoint",
                     "--device", "cpu", "-q", "--out", tmp_path / "core")
    assert rc == 2 and "is a plain Python pickle, not a torch file" in err and not marker.exists(), err


# ----------------------------------------------------------------------------- add_options
class ScaleProbe(freqprobe.Probe):
    """Accuracy on the original images scaled by the plugin's own --scale option (read from the run's configuration)."""

    name = "scaled"

    def sources(self, ctx):
        return [ScaledSource(float(ctx.config.get("scale") or 1.0))]


class ScaledSource(freqprobe.VariantSource):
    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.variant = freqprobe.Variant("scaled", self.scale)

    def variants(self):
        return [self.variant]

    def generate(self, batch, ctx, out=None):
        yield self.variant, batch.images * self.scale


class ScalePlugin:
    @freqprobe.hookimpl
    def register_probes(self):
        return [ScaleProbe]

    @freqprobe.hookimpl
    def add_options(self, parser):
        parser.add_option("--scale", type=float, probe="scaled", help="Multiply the images by this ({probes}).")


def test_add_options_a_plugin_option_reaches_its_probe_and_the_manifest(cli, use_pm, tiny_npz, tiny_model_file, tmp_path):
    use_pm.register(ScalePlugin(), "thirdparty")
    rc, out, _ = cli("run", "--help")
    assert rc == 0 and "--scale FLOAT" in out and "scaled" in out  # the help lists the registry's probes
    common = ("--model", f"{tiny_model_file}:tinynet", "--no-fit", "--data", f"npz:{tiny_npz}", "--device", "cpu", "-q")
    rc, _, err = cli("run", *common, "--probe", "scaled", "--scale", "0.5", "--out", tmp_path / "half")
    assert rc == 0, err
    rows = read_csv(tmp_path / "half" / "summary.csv")
    assert [(r["variant"], r["param"]) for r in rows] == [("scaled", "0.5")]
    manifest = json.loads((tmp_path / "half" / "manifest.json").read_text())
    assert manifest["plugin_options"] == {"thirdparty": {"scale": 0.5}}
    # the model saw the halved images: its predictions are those of the module on x / 2
    net = load_callable(tiny_model_file, "tinynet")()
    x, _ = npz_images(tiny_npz)
    with torch.no_grad():
        want = net(x * 0.5).argmax(-1)
    got = [int(r["pred"]) for r in read_csv(tmp_path / "half" / "samples.csv")]
    assert got == want.tolist()
    # the option belongs to its probe: with another one it is refused in one line
    rc, _, err = cli("run", *common, "--scale", "2", "--out", tmp_path / "no")
    assert rc == 2 and "--scale is an option of probe 'scaled' (from plugin 'thirdparty')" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "no").exists()
    # the Python API takes it as a keyword
    res = freqprobe.run(f"{tiny_model_file}:tinynet", fit=False, data=f"npz:{tiny_npz}", device="cpu", probe="scaled", scale=0.25,
                        out=tmp_path / "api", pm=use_pm)
    assert [r["param"] for r in res.summary] == [0.25]


class ClashPlugin:
    @freqprobe.hookimpl
    def add_options(self, parser):
        parser.add_option("--scale", type=int, help="the same option again")


def test_add_options_two_plugins_declaring_one_option_are_refused(pm):
    from freqprobe.plugins import collect_options

    pm.register(ScalePlugin(), "first")
    pm.register(ClashPlugin(), "second")
    with pytest.warns(freqprobe.PluginWarning, match="duplicate option --scale"):
        opts = collect_options(pm, "run")
    assert "scale" not in opts
    assert {e.name for e in pm.load_errors if "duplicate option --scale" in e.error} == {"first", "second"}

    class CoreClash:
        @freqprobe.hookimpl
        def add_options(self, parser):
            parser.add_option("--limit", type=int)

    pm2 = freqprobe.get_plugin_manager(autoload=False)
    pm2.register(CoreClash(), "clash")
    with pytest.warns(freqprobe.PluginWarning, match="option --limit is the core's"):
        assert collect_options(pm2, "run")["limit"].plugin == "freqprobe"


# ----------------------------------------------------------------------------- report_folder
class NotesPlugin:
    """A third-party folder kind: NOTES.txt."""

    @freqprobe.hookimpl
    def report_folder(self, folder, report):
        notes = folder / "NOTES.txt"
        if not notes.is_file():
            return None
        h = f"h{report.level}"
        return f"<{h}>{report.escape(folder.name)} — notes</{h}><pre>{report.escape(notes.read_text())}</pre>" + report.subfolders(
            folder, report.level + 1)


def test_report_folder_a_plugin_s_folder_kind_is_rendered(cli, use_pm, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "NOTES.txt").write_text("x < y & done")
    rc, _, err = cli("report", folder, "--out", tmp_path / "r.html")
    assert rc == 2 and "no installed report section recognises it" in err  # not registered yet
    use_pm.register(NotesPlugin(), "thirdparty")
    rc, _, err = cli("report", folder, "--out", tmp_path / "r.html")
    assert rc == 0, err
    page = (tmp_path / "r.html").read_text()
    assert "<h2>mine — notes</h2><pre>x &lt; y &amp; done</pre>" in page


# ----------------------------------------------------------------------------- every hook has a test
def test_every_hookspec_has_a_test_that_implements_it():
    specs = sorted(name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "freqprobe_spec"))
    assert "register_decomposers" in specs and "manifest_entries" in specs and len(specs) >= 12
    files = [*REPO.glob("tests/**/*.py"), *REPO.glob("plugins/*/tests/**/*.py"), *REPO.glob("examples/*/tests/**/*.py"),
             REPO / "examples" / "plugin_examples.py"]
    text = "\n".join(p.read_text(encoding="utf-8") for p in files if p.is_file())
    missing = [name for name in specs if not re.search(rf"\bdef {re.escape(name)}\(", text)]
    assert not missing, f"hooks that no test's plugin implements: {', '.join(missing)}"
