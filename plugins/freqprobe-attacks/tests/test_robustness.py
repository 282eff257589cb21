"""The robustness probe end to end: Table 2's clean/robust accuracy, the perturbation's spectrum,
Corollary 1 witnesses, options, errors, resume — on real files through the console entry."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
import signal

import numpy as np
import pytest
import torch

import freqprobe
from freqprobe import StopRequested
from freqprobe.journal import clear_stop, request_stop

NET = (
    "import torch\nfrom torch import nn\n"
    "def net(num_classes=4):\n    torch.manual_seed(0)\n"
    "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 16 * 16, num_classes))\n"
)
MEAN, STD = "0.4,0.5,0.6", "0.2,0.25,0.3"


@pytest.fixture
def apm(first_party_pm):
    """The default plugin manager with the attacks plugin registered (autoload is off in tests)."""
    return first_party_pm("attacks")


@pytest.fixture
def netfile(tmp_path):
    p = tmp_path / "net.py"
    p.write_text(NET)
    return p


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def args(netfile, npz, out, *extra):
    return ["run", "--model", f"{netfile}:net", "--data", f"npz:{npz}", "--probe", "robustness", "--no-fit",
            "--mean", MEAN, "--std", STD, "--radii", "4,8", "--batch-size", "10", "--device", "cpu", "-q",
            "--out", str(out), *extra]


def adapter_for(netfile):
    spec = __import__("importlib.util").util.spec_from_file_location("robnet", netfile)
    mod = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return freqprobe.build_model(mod.net(), mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])


def images_of(npz):
    with np.load(npz) as d:
        return torch.from_numpy(d["x"]).permute(0, 3, 1, 2).float().div(255), torch.from_numpy(d["y"]).long()


def test_table2_columns_and_robust_accuracy_equal_a_direct_attack(cli, apm, netfile, tiny_npz, tmp_path):
    out = tmp_path / "out"
    rc, stdout, err = cli(*args(netfile, tiny_npz, out, "--attack", "fgsm", "--attack", "pgd:steps=3,random_start=false",
                                "--eps", "0.03,8/255"))
    assert rc == 0, err
    rows = read(out / "summary.csv")
    assert list(rows[0]) == ["probe", "transform", "decomposer", "variant", "param", "attack", "eps", "metric", "value", "n"]
    acc = {(r["variant"], r["param"], r["attack"], r["eps"]): float(r["value"]) for r in rows if r["metric"] == "accuracy"}
    labels = {r["attack"] for r in rows if r["attack"]}
    assert labels == {"fgsm", "pgd:random_start=false,steps=3"}
    # clean accuracy (Eq. 1) and robust accuracy (Eq. 2), recomputed here from a direct attack
    x, y = images_of(tiny_npz)
    adapter = adapter_for(netfile)
    clean = (adapter.predict(x).argmax(1) == y).float().mean().item()
    assert acc[("original", "", "", "")] == pytest.approx(clean, abs=1e-6)
    fgsm_cls = freqprobe.get_class("attacks", "fgsm", apm)
    for e in (0.03, 8 / 255):
        adv = fgsm_cls(adapter, eps=e)(x, y)
        robust = (adapter.predict(adv).argmax(1) == y).float().mean().item()
        assert acc[("adversarial", "", "fgsm", f"{e:g}")] == pytest.approx(robust, abs=1e-6)
        assert robust <= clean
    # the frequency view: low/high parts of the adversarial images are variants of their own
    assert ("low", "4", "fgsm", "0.03") in acc and ("high", "8", "pgd:random_start=false,steps=3", "0.03") in acc
    samples = read(out / "samples.csv")
    assert list(samples[0])[:6] == ["index", "label", "variant", "param", "attack", "eps"]
    assert "attack" in stdout and "fgsm" in stdout


def reference_low_energy(delta: np.ndarray, r: float) -> float:
    """‖low(δ)‖² with an independent mask: bins at distance < r (centred spectrum, scalar sqrt), float64."""
    n, c, h, w = delta.shape
    f = np.fft.fftshift(np.fft.fft2(delta.astype(np.float64)), axes=(-2, -1))
    mask = np.array([[math.sqrt((i - h // 2) ** 2 + (j - w // 2) ** 2) < r for j in range(w)] for i in range(h)])
    low = np.fft.ifft2(np.fft.ifftshift(f * mask, axes=(-2, -1))).real
    return float((low ** 2).sum())


def test_perturbation_low_fraction_equals_a_float64_reference(cli, apm, netfile, tiny_npz, tmp_path):
    out = tmp_path / "out"
    rc, _, err = cli(*args(netfile, tiny_npz, out, "--attack", "fgsm", "--eps", "0.05"))
    assert rc == 0, err
    got = {r["param"]: float(r["value"]) for r in read(out / "summary.csv") if r["metric"] == "perturbation-low-fraction"}
    x, y = images_of(tiny_npz)
    adapter = adapter_for(netfile)
    delta = (freqprobe.get_class("attacks", "fgsm", apm)(adapter, eps=0.05)(x, y) - x).numpy()
    total = float((delta.astype(np.float64) ** 2).sum())
    for r in ("4", "8"):
        assert got[r] == pytest.approx(reference_low_energy(delta, float(r)) / total, abs=1.5e-6)
    assert 0 < got["4"] < got["8"] < 1  # FGSM's sign perturbation is mostly high-frequency


def test_corollary1_witnesses_agree_with_the_per_sample_table(cli, apm, netfile, tiny_npz, tmp_path):
    out = tmp_path / "out"
    rc, _, err = cli(*args(netfile, tiny_npz, out, "--attack", "fgsm", "--eps", "0.03,0.5", "--radii", "2,4"))
    assert rc == 0, err
    samples = read(out / "samples.csv")
    pred = {(s["variant"], s["param"], int(s["index"])): (int(s["pred"]), int(s["label"])) for s in samples if not s["attack"]}
    expected = sorted((float(p), i) for (v, p, i), (pl, lab) in pred.items()
                      if v == "low" and pred[("original", "", i)][0] == lab and pl != lab)
    wit = read(out / "corollary1.csv")
    assert sorted((float(w["param"]), int(w["index"])) for w in wit) == expected
    assert expected, "the tiny model should have some witnesses at r=2"
    x, _ = images_of(tiny_npz)
    for w in wit:
        i, r = int(w["index"]), float(w["param"])
        d = (x[i:i + 1] - freqprobe.decompose(x[i:i + 1], "fft-radial", r)["low"]).flatten()
        assert float(w["linf"]) == pytest.approx(d.abs().max().item(), abs=2e-6)
        assert float(w["l2"]) == pytest.approx(d.norm().item(), abs=2e-5)
    summary = read(out / "summary.csv")
    frac = {r["param"]: float(r["value"]) for r in summary if r["metric"] == "corollary1-witnesses"}
    assert frac["2"] == pytest.approx(sum(1 for p, _ in expected if p == 2.0) / 24, abs=1e-6)
    within = {(r["param"], r["eps"]): float(r["value"]) for r in summary if r["metric"] == "corollary1-within-eps"}
    assert within[("2", "0.5")] >= within[("2", "0.03")]


def test_frequency_off_gives_table2_variants_only(cli, apm, netfile, tiny_npz, tmp_path):
    out = tmp_path / "out"
    rc, _, err = cli(*args(netfile, tiny_npz, out, "--attack", "fgsm", "--eps", "0.03", "--probe-opt", "frequency=false"))
    assert rc == 0, err
    rows = read(out / "summary.csv")
    assert sorted({(r["variant"], r["attack"]) for r in rows}) == [("adversarial", "fgsm"), ("original", "")]
    assert not (out / "corollary1.csv").exists()


def test_default_attacks_and_eps_are_table2s(cli, apm, netfile, tiny_npz, tmp_path):
    out = tmp_path / "out"
    rc, _, err = cli(*args(netfile, tiny_npz, out, "--probe-opt", "frequency=false", "--limit", "10"))
    assert rc == 0, err
    got = sorted({(r["attack"], r["eps"]) for r in read(out / "summary.csv") if r["variant"] == "adversarial"})
    assert got == [(a, e) for a in ("fgsm", "pgd") for e in ("0.03", "0.06", "0.09")]


@pytest.mark.parametrize("extra,needle", [
    (("--attack", "fgsn"), "Unknown attack 'fgsn'. Did you mean: fgsm?"),
    (("--attack", "pgd:step=3"), "Did you mean: steps?"),
    (("--attack", "pgd:steps=0"), "steps"),
    (("--attack", "pgd:norm=l3"), "l3"),
    (("--attack", "fgsm", "--attack", "fgsm"), "given twice"),
    (("--eps", "0,0.1"), "--eps values must be positive"),
    (("--eps", "a"), "--eps must be comma-separated numbers"),
    (("--eps", "0.1,0.1"), "given twice"),
])
def test_bad_attack_inputs_are_one_line(cli, apm, netfile, tiny_npz, tmp_path, extra, needle):
    out = tmp_path / "out"
    rc, _, err = cli(*args(netfile, tiny_npz, out, *extra))
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert needle in err
    assert not out.exists()


@pytest.mark.parametrize("extra,flag", [(("--attack", "fgsm"), "--attack"), (("--eps", "0.03"), "--eps")])
def test_attack_options_with_another_probe_are_one_line(cli, apm, netfile, tiny_npz, tmp_path, extra, flag):
    a = args(netfile, tiny_npz, tmp_path / "o", *extra)
    a[a.index("robustness")] = "lfc-hfc"
    rc, _, err = cli(*a)
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{flag} is an option of probe 'robustness' (from plugin 'attacks')" in err and "probe 'lfc-hfc'" in err
    assert not (tmp_path / "o").exists()


def test_without_the_plugin_its_options_are_gone(cli, apm, netfile, tiny_npz, tmp_path):
    """``-p no:attacks``: --attack/--eps are not in ``run --help``, and using one is one line naming the plugin."""
    rc, out, err = cli("run", "--help")
    assert rc == 0 and "--attack" in out and "--eps" in out and "fgsm" in out  # {attacks}: the registry's names
    rc, _, err = cli("-p", "no:attacks", *args(netfile, tiny_npz, tmp_path / "o", "--attack", "fgsm"))
    errors = [line for line in err.splitlines() if line.startswith("Error:")]  # after click's usage lines
    assert rc == 2 and "Traceback" not in err and len(errors) == 1, err
    assert "--attack is an option of the plugin 'attacks', which is switched off" in errors[0]
    rc, out, err = cli("-p", "no:attacks", "run", "--help")
    assert rc == 0, err
    assert "--attack" not in out and "--eps" not in out
    assert not (tmp_path / "o").exists()


def test_pgd_random_start_is_seeded_and_resume_is_identical(apm, netfile, tiny_npz, tmp_path):
    """PGD's random starts come from the seed and the batch: a stopped and resumed run equals an uninterrupted one."""
    kw = dict(data=f"npz:{tiny_npz}", probe="robustness", fit=False, mean=MEAN, std=STD, params="4", batch_size=8,
              device="cpu", attacks=["pgd:steps=2"], eps="0.05", pm=apm)
    ref = freqprobe.run(f"{netfile}:net", out=tmp_path / "a", **kw)
    freqprobe.run(f"{netfile}:net", out=tmp_path / "b", **kw)
    assert (tmp_path / "a" / "samples.csv").read_bytes() == (tmp_path / "b" / "samples.csv").read_bytes()
    other = freqprobe.run(f"{netfile}:net", out=tmp_path / "c", seed=1, **kw)
    conf = lambda res: res.samples.column("confidence", variant="adversarial")  # noqa: E731
    assert not np.array_equal(conf(ref), conf(other))

    class StopSecond(freqprobe.Evaluator):
        calls = 0

        def process(self, step):
            type(self).calls += 1
            if type(self).calls == 2:
                request_stop(signal.SIGTERM)

    from freqprobe_attacks.probe import RobustnessProbe

    orig = RobustnessProbe.evaluators
    try:
        RobustnessProbe.evaluators = lambda self, ctx: orig(self, ctx) + [StopSecond()]
        with pytest.raises(StopRequested, match="stopped after 16 of 24 samples"):
            freqprobe.run(f"{netfile}:net", out=tmp_path / "d", **kw)
    finally:
        RobustnessProbe.evaluators = orig
        clear_stop()
    freqprobe.run(f"{netfile}:net", out=tmp_path / "d", resume=True, **kw)
    for name in ("summary.csv", "samples.csv", "corollary1.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "d" / name).read_bytes(), name


def test_real_resnet20_first100(cli, apm, shared_data, tmp_path):
    """The akamaster ResNet-20 on the first 100 lossless CIFAR-10 test images: FGSM and PGD lower its accuracy."""
    REPO = Path(__file__).resolve().parents[3]

    out = tmp_path / "r20"
    rc, _, err = cli("run", "--model", f"{REPO / 'tests' / 'fixtures' / 'cifar_resnet.py'}:resnet20",
                     "--checkpoint", shared_data / "cifar10_resnet_akamaster" / "resnet20-12fca82f.th",
                     "--data", f"npz:{shared_data / 'cifar10_test' / 'cifar10_test_first100_lossless.npz'}",
                     "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--probe", "robustness",
                     "--attack", "fgsm", "--attack", "pgd:steps=5", "--eps", "8/255", "--probe-opt", "frequency=false",
                     "--batch-size", "100", "--device", "cpu", "-q", "--out", out)
    assert rc == 0, err
    acc = {(r["variant"], r["attack"]): float(r["value"]) for r in read(out / "summary.csv") if r["metric"] == "accuracy"}
    assert acc[("original", "")] == 0.94
    assert acc[("adversarial", "fgsm")] < 0.5 and acc[("adversarial", "pgd:steps=5")] <= acc[("adversarial", "fgsm")]
    man = json.loads((out / "manifest.json").read_text())
    assert man["variant_sources"][1]["attacks"] == ["fgsm", "pgd:steps=5"]


def _same(a, b) -> bool:
    """Equal values, NaN equal to NaN (bit for bit for floats)."""
    if isinstance(a, float) and isinstance(b, float):
        return (a != a and b != b) or a == b
    return a == b


def test_evaluators_split_in_two_and_merged_equal_one_pass(apm, netfile, tiny_npz):
    """The probe's evaluators on two halves of the batches (shards), merged through the evaluator contract, give
    the summary rows and witnesses of one pass, bit for bit (float sums are added in batch order)."""
    from freqprobe import RunContext
    from freqprobe.engine import run_loop, summarize
    from freqprobe_attacks.probe import RobustnessProbe

    adapter = adapter_for(netfile)
    data = freqprobe.open_data(f"npz:{tiny_npz}", pm=apm)
    dec = freqprobe.get_decomposer("fft-radial", apm)
    parts = dict(metrics=(freqprobe.get_class("metrics", "accuracy", apm),), device=torch.device("cpu"), pm=apm,
                 batch_size=5, seed=3, attacks=["fgsm", "pgd:steps=2"], eps="0.03,0.1", allow_nonfinite=True)

    def evaluate(shard):
        ctx = RunContext.create(adapter, data, dec, (2, 4), freqprobe.get_class("rescale", "none", apm)(), shard=shard, **parts)
        probe = RobustnessProbe()
        sources = probe.sources(ctx)
        return ctx, sources, run_loop(ctx, sources, evaluators=probe.evaluators(ctx), samples=False)

    ctx, sources, whole = evaluate(None)
    _, _, first = evaluate((0, 2))
    _, _, second = evaluate((1, 2))
    assert first.n == 14 and second.n == 10  # batches 0, 2, 4 (5+5+4 samples) and 1, 3 of five
    first.merge(second)
    one = summarize(ctx, whole, sources, probe="robustness")
    merged = summarize(ctx, first, sources, probe="robustness")
    assert len(one.summary) == len(merged.summary)
    assert any(r["metric"] == "perturbation-low-fraction" for r in one.summary)
    for a, b in zip(one.summary, merged.summary):
        assert list(a) == list(b) and all(_same(a[k], b[k]) for k in a), (a, b)
    assert one.extras["corollary1"] == merged.extras["corollary1"]
    # the saved state of a half loads back and merges the same (how resume and torchrun move it)
    _, _, again = evaluate((0, 2))
    for ev, saved in zip(again.evaluators, [ev.state_dict() for ev in evaluate((0, 2))[2].evaluators]):
        ev.load_state_dict(saved)
    again.merge(evaluate((1, 2))[2])
    assert [r["value"] for r in summarize(ctx, again, sources, probe="robustness").summary if r["metric"] != "accuracy"] == \
           [r["value"] for r in one.summary if r["metric"] != "accuracy"]
