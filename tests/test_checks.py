"""Issue 17: the core checks what plugins hand it — a decomposer's parts, an attack's images, a metric's values —
in every command that publishes; a violation is one PluginError line naming the plugin and its distribution
(exit code 2), and nothing is published.

In-process throughout: plugins registered at runtime on a fresh plugin manager, with the distribution a real
entry point would have (``pm.dists``); the commands through ``freqprobe.cli.main``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch

import freqprobe
import freqprobe.plugins
from freqprobe import Attack, Decomposer, Evaluator, Metric, PluginError, Probe, hookimpl
from freqprobe import guard, interfaces

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def use_pm(monkeypatch, pm):
    """The fresh manager as the process-wide default (what the CLI and ``freqprobe.run`` use)."""
    monkeypatch.setattr(freqprobe.plugins, "_default", pm)
    return pm


def _plugin(pm, name: str, **hooks) -> None:
    """Register a plugin ``name`` from distribution ``NAME 1.0`` implementing ``register_KIND`` hooks."""
    body = {}
    for hook, classes in hooks.items():
        def impl(self, _classes=classes):
            return list(_classes)

        impl.__name__ = hook
        body[hook] = hookimpl(impl)
    pm.dists[name] = f"{name} 1.0"
    pm.register(type("Plugin", (), body)(), name=name)


@pytest.fixture
def run_args(tiny_npz, tiny_model_file, tiny_weights, tmp_path):
    w = tiny_weights

    def args(*extra, out="run"):
        return ["run", "--model", f"{tiny_model_file}:tinynet", "--checkpoint", w, "--data", f"npz:{tiny_npz}",
                "--radii", "4", "--device", "cpu", "-q", "--batch-size", "8", "--out", tmp_path / out, *extra]

    return args


def _nothing_published(folder: Path) -> bool:
    """Neither the output nor its hidden unfinished folder is left."""
    return not folder.exists() and not (folder.parent / f".{folder.name}.partial").exists()


# ============================================================================ decomposers
class _Base(Decomposer):
    """Splits into a blurred part and the rest (box filter of odd size 2r+1)."""

    name = "ok-box"
    default_params = (1,)

    def low(self, x, r):
        k = 2 * int(r) + 1
        return torch.nn.functional.avg_pool2d(x, k, stride=1, padding=int(r), count_include_pad=False)

    def decompose(self, x, param, *, out=None):
        low = self.low(x, param)
        return {"low": low, "high": x - low}


class _Quarter(_Base):
    """low = high = x/4: parts that do not sum back to the image."""

    name = "box"

    def decompose(self, x, param, *, out=None):
        return {"low": 0.25 * x, "high": 0.25 * x}


class _Forgetful(_Base):
    """Writes its low part into the buffers it is given and forgets the high part."""

    name = "forgetful"

    def decompose(self, x, param, *, out=None):
        low = self.low(x, param)
        if out is None:
            return {"low": low, "high": x - low}
        out["low"].copy_(low)
        return out


class _NaN(_Base):
    """Returns NaN parts."""

    name = "nan-parts"

    def decompose(self, x, param, *, out=None):
        return {"low": torch.full_like(x, float("nan")), "high": x.clone()}


class _AmplitudePhase(_Base):
    """Two parts that are not additive (declared)."""

    name = "amp-phase"
    components = ("amplitude", "phase")
    additive = False

    def decompose(self, x, param, *, out=None):
        f = torch.fft.fft2(x)
        return {"amplitude": f.abs(), "phase": f.angle()}


class _AmplitudePhaseNaN(_AmplitudePhase):
    """Not additive, and NaN."""

    name = "amp-phase-nan"

    def decompose(self, x, param, *, out=None):
        parts = super().decompose(x, param)
        parts["phase"] = parts["phase"] * float("nan")
        return parts


DECOMPOSERS = [_Base, _Quarter, _Forgetful, _NaN, _AmplitudePhase, _AmplitudePhaseNaN]


@pytest.fixture
def dec_pm(use_pm):
    _plugin(use_pm, "boxplug", register_decomposers=DECOMPOSERS)
    return use_pm


def test_parts_that_do_not_sum_are_refused_in_one_line(dec_pm):
    x = torch.rand(2, 3, 16, 16)
    rng = float(x.max() - x.min())
    err = float((0.5 * x - x).abs().max())
    with pytest.raises(PluginError) as ei:
        freqprobe.decompose(x, "box", 4)
    msg = str(ei.value)
    assert msg == (f"decomposer 'box' from plugin 'boxplug' (boxplug 1.0): the parts do not sum back to the input at r=4 "
                   f"(max error {err:.2g} > {1e-4 * rng:.2g}, 1e-4 of the image range); a decomposer whose parts are not "
                   "additive sets additive = False")
    assert "\n" not in msg
    # float64: 1e-10 of the range
    with pytest.raises(PluginError, match=r"1e-10 of the image range"):
        freqprobe.decompose(x.double(), "box", 4)
    # a correct plugin decomposer passes, in both precisions
    for dtype in (torch.float32, torch.float64):
        parts = freqprobe.decompose(x.to(dtype), "ok-box", 2)
        assert torch.allclose(parts["low"] + parts["high"], x.to(dtype))


def test_nan_parts_are_refused_by_the_python_api(dec_pm):
    with pytest.raises(PluginError, match=r"^decomposer 'nan-parts' from plugin 'boxplug' \(boxplug 1.0\): decompose\(\) "
                                          r"returned NaN or inf in component 'low' at r=1 for finite input$"):
        freqprobe.decompose(torch.rand(2, 3, 8, 8), "nan-parts", 1)


def test_a_decomposer_that_is_not_additive_declares_it(dec_pm):
    x = torch.rand(2, 3, 8, 8)
    parts = freqprobe.decompose(x, "amp-phase", 1)  # additive = False: finiteness only
    assert set(parts) == {"amplitude", "phase"}
    with pytest.raises(PluginError, match=r"decomposer 'amp-phase-nan' .* NaN or inf in component 'phase'"):
        freqprobe.decompose(x, "amp-phase-nan", 1)
    assert Decomposer.additive is True  # the default


def test_the_input_itself_non_finite_is_not_the_decomposers_fault(dec_pm):
    x = torch.rand(1, 3, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    parts = freqprobe.decompose(x, "ok-box", 1)  # not blamed on the decomposer (a NaN input is reported elsewhere)
    assert set(parts) == {"low", "high"}


def test_value_check_edge_cases():
    """Finite parts whose sum overflows; half precision (summed in float32, 1e-2 of the range); an empty batch."""

    class Huge(_Base):
        name = "huge"

        def decompose(self, x, param, *, out=None):
            return {"low": torch.full_like(x, 3e38), "high": torch.full_like(x, 3e38)}

    with pytest.raises(PluginError, match=r"the parts do not sum back to the input at r=1 \(their sum is inf\)"):
        guard.decompose(Huge(), torch.rand(1, 3, 4, 4), 1)
    ok = _Base()
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.rand(2, 3, 8, 8).to(dtype)
        assert set(guard.decompose(ok, x, 1)) == {"low", "high"}
        with pytest.raises(PluginError, match=r"1e-2 of the image range"):
            guard.decompose(_Quarter(), x, 1)
    assert set(guard.decompose(_Quarter(), torch.rand(0, 3, 8, 8), 1)) == {"low", "high"}


@pytest.mark.parametrize("name", ["box", "forgetful", "nan-parts"])
def test_run_refuses_and_publishes_nothing(name, cli, dec_pm, run_args, tmp_path):
    rc, out, err = cli(*run_args("--decomposer", name, "--radii", "1,2"))
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"Error: decomposer '{name}' from plugin 'boxplug' (boxplug 1.0): ")
    assert "Traceback" not in err + out
    assert _nothing_published(tmp_path / "run")


def test_a_forgotten_buffer_is_caught_in_the_batch_it_spoils(dec_pm, tmp_path):
    """The loop hands a decomposer slices of one stack it reuses from batch to batch: the high part a decomposer does
    not write holds the previous batch's (or garbage); the check runs on every call, so the first spoiled batch fails."""
    from freqprobe.sources import DecomposerSource
    from freqprobe.testing import make_classifier, make_images

    calls = []
    real = guard.check_values

    def counting(*a, **k):
        calls.append(a[3])
        return real(*a, **k)

    adapter = make_classifier()
    images = make_images(n=8)
    data = _memory_data(images, adapter.predict(images).argmax(-1))
    for name, ok in (("ok-box", True), ("forgetful", False)):
        dec = freqprobe.get_decomposer(name)
        ctx = freqprobe.RunContext.create(adapter, data, dec, [1, 2], freqprobe.get_class("rescale", "none")(),
                                          device=torch.device("cpu"), pm=dec_pm, batch_size=2)
        calls.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(guard, "check_values", counting)
            if ok:
                ctx.evaluate([DecomposerSource(dec, [1, 2])], probe="t")
                assert calls == ["r=1", "r=2"] * 4  # every parameter of every batch
            else:
                with pytest.raises(PluginError, match=r"decomposer 'forgetful' from plugin 'boxplug' \(boxplug 1.0\)"):
                    ctx.evaluate([DecomposerSource(dec, [1, 2])], probe="t")
                assert len(calls) <= 2  # the first batch already


def _memory_data(images, labels):
    from freqprobe import Batch, DataSource

    class Memory(DataSource):
        name = "memory"

        def __init__(self):
            super().__init__(None)
            self.num_classes = 10

        def __len__(self):
            return len(images)

        def load(self, idx):
            i = torch.as_tensor(idx, dtype=torch.int64)
            return Batch(images[i], labels[i], i)

    return Memory()


@pytest.mark.parametrize("name", ["box", "forgetful", "nan-parts"])
@pytest.mark.parametrize("fmt", ["npz", "png"])
def test_decompose_command_refuses_and_exports_nothing(name, fmt, cli, dec_pm, tiny_npz, tmp_path):
    out = tmp_path / ("d.npz" if fmt == "npz" else "d")
    rc, _, err = cli("decompose", "--data", f"npz:{tiny_npz}", "--decomposer", name, "--radii", "1", "--batch-size", "8",
                     "--out", out, "-q")
    assert rc == 2, err
    assert f"Error: decomposer '{name}' from plugin 'boxplug' (boxplug 1.0): " in err and "Traceback" not in err
    assert _nothing_published(out)
    rc, _, err = cli("decompose", "--data", f"npz:{tiny_npz}", "--decomposer", "ok-box", "--radii", "1", "--out", out, "-q")
    assert rc == 0, err


def test_builtins_are_not_rechecked_per_call(use_pm, monkeypatch, cli, run_args):
    """The built-in decomposers are verified by the test suite (tests/test_decomposers.py, against a float64
    reference): no check of their values per call, so freqprobe.decompose keeps its speed. A subclass of a built-in
    that a plugin registers, or that nobody registered, is checked."""
    from freqprobe.builtins.decomposers import FFTRadialDecomposer

    calls = []
    real = guard.check_values
    monkeypatch.setattr(guard, "check_values", lambda *a, **k: (calls.append(a[0].name), real(*a, **k)))
    x = torch.rand(2, 3, 16, 16)
    for name in ("fft-radial", "svd"):
        freqprobe.decompose(x, name, 2)
    rc, _, err = cli(*run_args())
    assert rc == 0, err
    assert calls == []

    class Sub(FFTRadialDecomposer):
        """A plugin's variant of a built-in."""

        name = "fft-sub"

    _plugin(use_pm, "subplug", register_decomposers=[Sub])
    freqprobe.decompose(x, "fft-sub", 2)
    assert calls == ["fft-sub"]
    assert guard.verified(freqprobe.get_decomposer("fft-radial")) and not guard.verified(Sub())
    guard.decompose(Sub(), x, 2)  # decompose_with: the plugin path
    assert calls == ["fft-sub", "fft-sub"]


def test_train_decompose_with_checks_a_plugin_decomposer(dec_pm):
    from freqprobe.plugin import decompose_with

    with pytest.raises(PluginError, match="decomposer 'box' from plugin 'boxplug'"):
        decompose_with(freqprobe.get_decomposer("box"), torch.rand(2, 3, 8, 8), 1)


# ============================================================================ attacks
class _Shift(Attack):
    """Moves every pixel by `size` (a multiple of eps) along a fixed sign pattern; `bug` breaks the answer."""

    name = "shift"
    options = {"size": 1.0, "bug": ""}

    def forward(self, images01, labels):
        g = torch.Generator().manual_seed(self.seed)
        sign = (torch.randint(0, 2, images01.shape, generator=g) * 2 - 1).to(images01)
        adv = images01 + self.opts["size"] * self.eps * sign
        bug = self.opts["bug"]
        if bug == "nan":
            adv = adv * float("nan")
        elif bug == "dtype":
            adv = adv.double()
        elif bug == "shape":
            adv = adv[:1]
        return adv if bug == "range" else adv.clamp(0, 1)


class _ShiftL2(_Shift):
    """The same moves, as an L2 attack (class attribute)."""

    name = "shift-l2"
    norm = "l2"


class _NeedsGrad(Attack):
    """One gradient step that does not enable gradients itself: relies on the core calling it with autograd."""

    name = "needs-grad"

    def forward(self, images01, labels):
        x = images01.requires_grad_(True)  # the core hands it a copy: changing it is harmless
        loss = torch.nn.functional.cross_entropy(self.adapter.forward(x), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        return (images01.detach() + self.eps * grad.sign()).clamp(0, 1)


ATTACKS = [_Shift, _ShiftL2, _NeedsGrad]


@pytest.fixture
def atk_pm(first_party_pm):
    pm = first_party_pm("attacks")
    _plugin(pm, "atkplug", register_attacks=ATTACKS)
    return pm


def _attack(pm, name, eps=0.03, **opts):
    from freqprobe.testing import make_classifier

    return freqprobe.get_class("attacks", name, pm)(make_classifier(), eps=eps, seed=0, **opts)


ATTACK_CASES = {
    # options: what the message says after "attack 'shift' from plugin 'atkplug' (atkplug 1.0) "
    "outside-ball": ({"size": 2.0}, r"left the L∞ ε-ball: sample \d+ moved by 0.0[3-6]\d* in L∞ norm > eps=0.03 \(\+1e-06 for rounding\)"),
    "outside-01": ({"bug": "range"}, r"left \[0, 1\]: the adversarial images range over \[-0.0[0-9]*, 1.0[0-9]*\]"),
    "nan": ({"bug": "nan"}, r"returned non-finite values \(NaN or inf\) in 3072 of 3072 pixels"),
    "dtype": ({"bug": "dtype"}, r"returned torch.float64 for torch.float32 images \(dtype must be preserved\)"),
    "shape": ({"bug": "shape"}, r"returned shape \(1, 3, 16, 16\) for images of shape \(4, 3, 16, 16\)"),
}


@pytest.mark.parametrize("case", sorted(ATTACK_CASES))
def test_attack_answer_checked(case, atk_pm):
    opts, msg = ATTACK_CASES[case]
    atk = _attack(atk_pm, "shift", **opts)
    x = torch.rand(4, 3, 16, 16)
    y = torch.zeros(4, dtype=torch.int64)
    keep = x.clone()
    with torch.inference_mode():  # as the evaluation loop calls it
        with pytest.raises(PluginError, match=r"^attack 'shift' from plugin 'atkplug' \(atkplug 1.0\) " + msg + "$"):
            atk(x, y)
    assert torch.equal(x, keep)
    assert _attack(atk_pm, "shift", size=1.0)(x, y).shape == x.shape  # within the ball: fine


def test_the_norm_the_attack_declares(atk_pm):
    x = torch.rand(2, 3, 16, 16) * 0.5 + 0.25
    y = torch.zeros(2, dtype=torch.int64)
    _attack(atk_pm, "shift", eps=0.1)(x, y)  # ±eps per pixel: inside the L∞ ball
    with pytest.raises(PluginError, match=r"attack 'shift-l2' .* left the L2 ε-ball: sample \d+ moved by 2.77\d* in L2 norm "
                                          r"> eps=0.1"):
        _attack(atk_pm, "shift-l2", eps=0.1)(x, y)  # the same moves are far outside the L2 ball of that radius (√768 ε)
    _attack(atk_pm, "shift-l2", eps=0.1, size=0.03)(x, y)
    # an option `norm` overrides the class attribute (the first-party pgd's option)
    pgd = _attack(atk_pm, "pgd", eps=0.5, norm="l2", steps=1)
    assert pgd.budget_norm() == "l2" and _attack(atk_pm, "shift").budget_norm() == "linf"
    assert _attack(atk_pm, "shift-l2").budget_norm() == "l2"


def test_forward_runs_with_autograd_inside_inference_mode(atk_pm):
    from freqprobe.testing import make_classifier, make_images

    adapter = make_classifier()
    x = make_images()
    y = adapter.predict(x).argmax(-1)
    atk = freqprobe.get_class("attacks", "needs-grad", atk_pm)(adapter, eps=8 / 255)
    with torch.inference_mode():
        xi = x.clone()  # an inference tensor, as the loop's images are
        adv = atk(xi, y)
    assert not adv.is_inference() and not xi.requires_grad
    assert float((adv - x).abs().max()) == pytest.approx(8 / 255, abs=1e-6)
    assert (adapter.predict(adv).argmax(-1) != y).any()  # it did attack


def test_attack_refused_in_a_run_not_blamed_on_the_model(cli, atk_pm, run_args, tmp_path):
    for spec, msg in (("shift:size=2", "left the L∞ ε-ball"), ("shift:bug=nan", "returned non-finite values (NaN or inf)"),
                      ("shift:bug=range", "left [0, 1]")):
        rc, out, err = cli(*run_args("--probe", "robustness", "--attack", spec, "--eps", "0.03"))
        assert rc == 2, err
        line = err.strip().splitlines()[-1]
        assert line.startswith("Error: attack 'shift' from plugin 'atkplug' (atkplug 1.0) ") and msg in line, line
        assert "the model returned" not in err and "Traceback" not in err + out
        assert _nothing_published(tmp_path / "run")
    rc, out, err = cli(*run_args("--probe", "robustness", "--attack", "shift", "--attack", "needs-grad",
                                 "--attack", "fgsm", "--eps", "0.03"))
    assert rc == 0, err


def test_kit_and_core_agree(atk_pm):
    """check_attack asserts exactly what the core refuses: same rules, same tolerance, same norm rule."""
    import freqprobe_testing as kit
    from freqprobe.testing import check_attack, make_classifier, make_images

    assert (kit.EPS_TOL, kit.L2_RTOL) == (interfaces.EPS_TOL, interfaces.L2_RTOL)
    assert (kit.FLOAT32_RTOL, kit.FLOAT64_RTOL) == (guard.SUM_RTOL["float32"][0], guard.SUM_RTOL["float64"][0])
    adapter = make_classifier()
    x = make_images()
    y = adapter.predict(x).argmax(-1)
    eps = 8 / 255
    for cls, opts in ((_Shift, {}), (_Shift, {"size": 1.05}), (_Shift, {"bug": "range"}), (_Shift, {"bug": "nan"}),
                      (_ShiftL2, {"size": 0.01}), (_ShiftL2, {})):
        try:
            cls(adapter, eps=eps, **opts)(x, y)
            core = None
        except PluginError as exc:
            core = str(exc)
        try:
            check_attack(cls, adapter, x, y, eps=eps, **opts)
            kit_says = None
        except AssertionError as exc:
            kit_says = str(exc)
        assert (core is None) == (kit_says is None), (cls.name, opts, core, kit_says)
        if core is not None:
            assert core.split(") ", 1)[1] in kit_says


def test_adversarial_problem_measures_from_the_nearest_valid_image():
    """Input that leaves [0, 1] (a part without rescaling, as train's train_on=low with --rescale none feeds an
    attack): a clamping attack within eps of it is not refused."""
    x = torch.tensor([[-0.5, 0.2, 1.4]]).view(1, 1, 1, 3)
    adv = (x + 0.03).clamp(0, 1)
    assert interfaces.adversarial_problem(x, adv, 0.03) is None
    assert "ε-ball" in interfaces.adversarial_problem(x, adv + 0.1 * (adv < 0.9), 0.03)


# ============================================================================ metrics
class _Constant(Metric):
    """Returns `value` whatever it saw."""

    name = "nan-metric"
    value = float("nan")

    def __init__(self, ctx=None):
        super().__init__(ctx)
        self.add_state("n", 0)

    def update(self, outputs, targets):
        self.n += len(targets)

    def compute(self):
        return self.value


class _Inf(_Constant):
    """Returns inf."""

    name = "inf-metric"
    value = float("inf")


class _Dict(_Constant):
    """Several numbers, one NaN."""

    name = "dict-metric"

    def compute(self):
        return {"fine": 0.5, "broken": float("nan")}


class _Undefined(Evaluator):
    """A probe's evaluator whose rows may legitimately be NaN ("undefined")."""

    name = "undefined"

    def process(self, step):
        pass

    def rows(self):
        return [{"variant": "original", "param": None, "metric": "undefined-witness", "value": float("nan")}]


class _UndefinedProbe(Probe):
    """lfc-hfc's variants plus an evaluator with a NaN row."""

    name = "undefined-probe"

    def evaluators(self, ctx):
        return [_Undefined(ctx)]


@pytest.fixture
def metric_pm(use_pm):
    _plugin(use_pm, "metplug", register_metrics=[_Constant, _Inf, _Dict], register_probes=[_UndefinedProbe])
    return use_pm


@pytest.mark.parametrize("name,value,what", [("nan-metric", "nan", ""), ("inf-metric", "inf", ""),
                                             ("dict-metric", "nan", " (broken)")])
def test_nonfinite_metric_refused(name, value, what, cli, metric_pm, run_args, tmp_path):
    rc, out, err = cli(*run_args("--metric", "accuracy", "--metric", name))
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert line == (f"Error: metric '{name}' from plugin 'metplug' (metplug 1.0) returned {value}{what} for original over 24 "
                    "samples; a metric's compute() must give finite numbers (NaN only before any sample); nothing was "
                    "published (--allow-nonfinite publishes such values as they are)")
    assert "Traceback" not in err + out and _nothing_published(tmp_path / "run")


def test_nonfinite_metric_names_the_variant(metric_pm):
    from freqprobe.engine import _check_metric_values

    m = Metric.build(_Constant, None, freqprobe.Variant("low", 4.0, component=True))
    ctx = type("Ctx", (), {"decomposer": freqprobe.get_decomposer("fft-radial")})()
    with pytest.raises(PluginError, match=r"returned nan for low r=4 over 7 samples"):
        _check_metric_values(m, m.rows(), 7, ctx)


def test_allow_nonfinite_publishes_metric_values_as_they_are(cli, metric_pm, run_args, tmp_path):
    rc, _, err = cli(*run_args("--metric", "accuracy", "--metric", "nan-metric", "--allow-nonfinite"))
    assert rc == 0, err
    rows = [r.split(",") for r in (tmp_path / "run" / "summary.csv").read_text().splitlines()[1:]]
    values = [r[6] for r in rows if r[5] == "nan-metric"]
    assert len(values) == 3 and all(math.isnan(float(v)) for v in values)


def test_probe_evaluator_nan_rows_are_not_refused(cli, metric_pm, run_args, tmp_path):
    rc, _, err = cli(*run_args("--probe", "undefined-probe"))
    assert rc == 0, err
    text = (tmp_path / "run" / "summary.csv").read_text()
    assert "undefined-witness" in text


def test_metric_of_zero_samples_is_nan_not_an_error():
    from freqprobe.builtins.metrics import AccuracyMetric

    m = Metric.build(AccuracyMetric, None, None)
    m.reset()
    assert math.isnan(m.compute())  # the documented answer of a metric that saw nothing


# ============================================================================ docs for plugin authors
def _examples():
    path = REPO / "examples" / "plugin_examples.py"
    spec = importlib.util.spec_from_file_location("plugin_examples_checks", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return path.read_text(), mod


def test_docs_show_the_tested_attack_example():
    text, _ = _examples()
    docs = (REPO / "docs" / "plugins.md").read_text()
    for part in ("attack", "probe"):
        code = re.search(rf"# --8<-- \[start:{part}\]\n(.*?)# --8<-- \[end:{part}\]\n", text, re.S).group(1)
        assert f"```python\n{code}```" in docs, f"docs/plugins.md does not show examples/plugin_examples.py's {part} block"
    for kind in ("decomposer", "attack", "metric", "evaluator", "model outputs", "data"):
        assert re.search(rf"^\| {kind}", docs, re.M | re.I), f"the table of what the core checks has no row for {kind}"


def test_the_docs_attack_passes_the_kit_and_a_run(cli, first_party_pm, run_args, tmp_path):
    from freqprobe.testing import check_attack, make_classifier, make_images

    _, mod = _examples()
    adapter = make_classifier()
    x = make_images()
    y = adapter.predict(x).argmax(-1)
    for steps in (1, 3):
        adv = check_attack(mod.GradientL2, adapter, x, y, eps=0.5, steps=steps)
        assert (adapter.predict(adv).argmax(-1) != y).any()
    pm = first_party_pm("attacks")
    pm.register(mod, "examples")
    rc, _, err = cli(*run_args("--probe", "robustness", "--attack", "grad-l2:steps=2", "--eps", "0.5"))
    assert rc == 0, err
    rows = (tmp_path / "run" / "summary.csv").read_text()
    assert "grad-l2:steps=2" in rows
    sys.modules.pop("plugin_examples_checks", None)


def test_first_party_plugins_still_import():
    importlib.import_module("freqprobe_attacks.attacks")
