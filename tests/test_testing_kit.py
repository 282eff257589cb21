"""freqprobe.testing, the plugin-testing kit: the built-ins pass its checks, its fixtures arrive through the
pytest11 entry point, and its checks catch broken plugins."""

from __future__ import annotations

import pytest
import torch

import freqprobe
from freqprobe.builtins.metrics import AccuracyMetric
from freqprobe.testing import check_attack, check_decomposer, check_metric

pytest_plugins = ["pytester"]

_PM = freqprobe.get_plugin_manager(autoload=False)
DECOMPOSERS = sorted(freqprobe.collect("decomposers", _PM))
METRICS = sorted(freqprobe.collect("metrics", _PM))


def _attacks_pm():
    import freqprobe_attacks.hooks

    pm = freqprobe.get_plugin_manager(autoload=False)
    pm.register(freqprobe_attacks.hooks, "attacks")
    return pm


_ATTACK_ENTRIES = {n: e for n, e in freqprobe.collect("attacks", _attacks_pm()).items() if e.plugin == "attacks"}
#: options each first-party attack is checked with; an attack not listed is checked with its defaults
_ATTACK_CASES = {"fgsm": [{}], "pgd": [{"steps": 2}, {"steps": 2, "norm": "l2"}]}
ATTACKS = [(n, opts) for n in sorted(_ATTACK_ENTRIES) for opts in _ATTACK_CASES.get(n, [{}])]


def _logits_and_targets(n: int = 13, k: int = 10):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, k, generator=g), torch.randint(0, k, (n,), generator=g)


# -- (a) the built-ins pass the same checks -----------------------------------------------------


def test_registry_is_covered():
    assert {"fft-radial", "svd"} <= set(DECOMPOSERS)
    assert {"accuracy", "top5-accuracy"} <= set(METRICS)
    assert {"fgsm", "pgd"} <= set(_ATTACK_ENTRIES)


@pytest.mark.freqprobe_conformance
@pytest.mark.parametrize("name", DECOMPOSERS)
def test_builtin_decomposer(name, freqprobe_pm, freqprobe_images):
    cls = freqprobe.get_class("decomposers", name, freqprobe_pm)
    dec = check_decomposer(cls, freqprobe_images)  # the class's default_params (svd: ranks 1, 2, 4, 8)
    assert isinstance(dec, cls)


@pytest.mark.freqprobe_conformance
def test_builtin_decomposer_instance_with_options(freqprobe_images):
    from freqprobe.builtins.decomposers import FFTRadialDecomposer

    check_decomposer(FFTRadialDecomposer(rule="inclusive", unit="nyquist"), freqprobe_images, params=[0.25, 0.5])


@pytest.mark.freqprobe_conformance
@pytest.mark.parametrize("name,options", ATTACKS, ids=[n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in ATTACKS])
def test_first_party_attack(name, options, freqprobe_classifier, freqprobe_images, freqprobe_labels):
    eps = 0.25 if options.get("norm") == "l2" else 8 / 255
    adv = check_attack(_ATTACK_ENTRIES[name].cls, freqprobe_classifier, freqprobe_images, freqprobe_labels, eps=eps, **options)
    assert not torch.equal(adv, freqprobe_images)  # it did attack


@pytest.mark.freqprobe_conformance
@pytest.mark.parametrize("name", METRICS)
def test_builtin_metric(name, freqprobe_pm):
    outputs, targets = _logits_and_targets()
    got = check_metric(freqprobe.get_class("metrics", name, freqprobe_pm), outputs, targets)
    assert set(got) == {name}


def test_fixtures(freqprobe_images, freqprobe_classifier, freqprobe_labels, freqprobe_pm):
    from freqprobe.testing import make_classifier, make_images

    x = freqprobe_images
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(x, make_images())  # deterministic
    low = freqprobe.decompose(x, "fft-radial", 4, pm=freqprobe_pm)
    assert float(low["low"].std()) > 0.05 and float(low["high"].std()) > 0.05  # both parts non-trivial
    assert isinstance(freqprobe_classifier, freqprobe.ModelAdapter) and not freqprobe_classifier.module.training
    logits = freqprobe_classifier.predict(x)
    assert logits.shape == (4, 10)
    assert torch.equal(logits, make_classifier().predict(x))
    assert freqprobe_labels.dtype == torch.int64 and freqprobe_labels.shape == (4,)
    assert len(set(freqprobe_labels.tolist())) > 1  # the predictions depend on the image
    acc = AccuracyMetric()
    acc.update(logits, freqprobe_labels)
    assert acc.compute() == 1.0
    assert set(DECOMPOSERS) == set(freqprobe.collect("decomposers", freqprobe_pm))


# -- (b) the fixtures through the entry point; a failing check --------------------------------

PLUGIN_AUTHOR_TEST = '''
import pytest
import torch

from freqprobe import Decomposer
from freqprobe.builtins.metrics import AccuracyMetric
from freqprobe.testing import check_decomposer


class MeanDecomposer(Decomposer):
    """Per-channel mean (low) and the rest (high)."""

    name = "mean"
    param_name = "k"
    default_params = (1,)

    def decompose(self, x, param, *, out=None):
        low = x.mean(dim=(-2, -1), keepdim=True).expand_as(x).clone()
        return {"low": low, "high": x - low}


class BrokenDecomposer(MeanDecomposer):
    """The high part is the whole image."""

    name = "broken"

    def decompose(self, x, param, *, out=None):
        return {"low": super().decompose(x, param)["low"], "high": x.clone()}


@pytest.mark.freqprobe_conformance
def test_mean_decomposer(freqprobe_images):
    check_decomposer(MeanDecomposer, freqprobe_images, params=[1, 2])


def test_fixtures(freqprobe_images, freqprobe_classifier, freqprobe_labels, freqprobe_pm):
    assert freqprobe_images.shape == (4, 3, 32, 32)
    acc = AccuracyMetric()
    acc.update(freqprobe_classifier.predict(freqprobe_images), freqprobe_labels)
    assert acc.compute() == 1.0
    freqprobe_pm.register(__import__(__name__), "myplugin")


def test_broken_decomposer(freqprobe_images):
    check_decomposer(BrokenDecomposer, freqprobe_images)
'''


def test_kit_through_entry_point(pytester, monkeypatch):
    """A plugin author's test file, run in a fresh pytest process: no conftest, the kit arrives through pytest11."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makepyfile(test_myplugin=PLUGIN_AUTHOR_TEST)
    result = pytester.runpytest_subprocess("--strict-markers", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*AssertionError: check_decomposer('broken') at k=1 (float32): the components ('low', 'high') do not sum back "
        "to the input: max abs error *",
        "FAILED test_myplugin.py::test_broken_decomposer*",
    ])


def test_kit_switched_off(pytester, monkeypatch):
    """``-p no:freqprobe`` keeps the kit out: its fixtures are unknown."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makepyfile("def test_x(freqprobe_images):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:freqprobe", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'freqprobe_images' not found*"])


class _MeanDecomposer(freqprobe.Decomposer):
    """Per-channel mean (low) and the rest (high)."""

    name = "mean"
    default_params = (1,)

    def decompose(self, x, param, *, out=None):
        low = x.mean(dim=(-2, -1), keepdim=True).expand_as(x).clone()
        return {"low": low, "high": x - low}


def test_check_decomposer_catches_parts_that_do_not_sum(freqprobe_images):
    class Broken(_MeanDecomposer):
        name = "broken"

        def decompose(self, x, param, *, out=None):
            return {"low": super().decompose(x, param)["low"], "high": x.clone()}

    check_decomposer(_MeanDecomposer, freqprobe_images)
    with pytest.raises(AssertionError, match=r"check_decomposer\('broken'\) at r=1 \(float32\): the components .* do not sum back to the input"):
        check_decomposer(Broken, freqprobe_images)


@pytest.mark.parametrize("bug,message", [
    ("float64-rounding", r"at r=1 \(float64\): the components \('low', 'high'\) do not sum back to the input"),
    ("dtype", r"is torch.float64, the input torch.float32 \(dtype must be preserved\)"),
    ("components", r"returned components \('lo', 'hi'\) but the class declares \('low', 'high'\)"),
    ("in-place", r"changed its input x in place"),
    ("out", r"with out= buffers differs from decompose\(\) without"),
    ("decompose_all", r"decompose_all\(x, params\) did not yield r=2"),
    ("name", r"registration would refuse it: .*names must match"),
])
def test_check_decomposer_catches(bug, message, freqprobe_images):
    class Bad(_MeanDecomposer):
        name = "Bad" if bug == "name" else "bad"
        default_params = (1, 2)

        def decompose(self, x, param, *, out=None):
            parts = super().decompose(x, param)
            if bug == "float64-rounding":
                parts["high"] = (x.float() - parts["low"].float()).to(x.dtype)
            elif bug == "dtype":
                parts = {k: v.double() for k, v in parts.items()}
            elif bug == "components":
                parts = {"lo": parts["low"], "hi": parts["high"]}
            elif bug == "in-place":
                x.mul_(1.0 - 1e-3)
            elif bug == "out" and out is not None:
                out["low"].zero_()
                out["high"].copy_(x)
                return out
            return parts

        def decompose_all(self, x, params, *, out=None):
            if bug != "decompose_all":
                yield from super().decompose_all(x, params, out=out)
            else:
                yield from super().decompose_all(x, list(params)[:1], out=out)

    with pytest.raises(AssertionError, match=message):
        check_decomposer(Bad, freqprobe_images)


def test_check_decomposer_catches_a_forgotten_out_buffer(freqprobe_images):
    """A decomposer that writes its first component into the buffers it is given and forgets the second: the
    NaN-filled buffer it leaves must fail the kit (Python's max() drops a NaN that does not come first; issue 17)."""

    class Forgetful(_MeanDecomposer):
        name = "forgetful"

        def decompose(self, x, param, *, out=None):
            parts = super().decompose(x, param)
            if out is None:
                return parts
            out["low"].copy_(parts["low"])
            return out

    with pytest.raises(AssertionError, match=r"check_decomposer\('forgetful'\) at r=1 \(float32\): decompose\(\) with out= "
                                             r"buffers differs from decompose\(\) without by up to nan .*component 'high' "
                                             r"holds NaN"):
        check_decomposer(Forgetful, freqprobe_images)


def test_check_decomposer_non_additive(freqprobe_images):
    """additive = False: checked for finite parts only, as the core checks it."""

    class AmplitudePhase(_MeanDecomposer):
        name = "amp-phase"
        components = ("amplitude", "phase")
        additive = False

        def decompose(self, x, param, *, out=None):
            f = torch.fft.fft2(x)
            return {"amplitude": f.abs(), "phase": f.angle()}

    class NaNPhase(AmplitudePhase):
        name = "nan-phase"

        def decompose(self, x, param, *, out=None):
            parts = super().decompose(x, param)
            return {"amplitude": parts["amplitude"], "phase": parts["phase"] * float("nan")}

    check_decomposer(AmplitudePhase, freqprobe_images)
    with pytest.raises(AssertionError, match=r"component 'phase' holds NaN or inf"):
        check_decomposer(NaNPhase, freqprobe_images)
    with pytest.raises(AssertionError, match=r"do not sum back to the input.*sets additive = False"):
        check_decomposer(type("Claimed", (AmplitudePhase,), {"name": "claimed", "additive": True}), freqprobe_images)


# -- (c) check_attack and check_metric catch broken plugins ------------------------------------


class _SignNoise(freqprobe.Attack):
    """Moves every pixel by ±eps (seeded): inside the L∞ ball, the baseline the broken ones change."""

    name = "sign-noise"
    options = {"bug": ""}

    def forward(self, images01, labels):
        seed = int(torch.randint(0, 2**30, ())) if self.opts["bug"] == "random" else self.seed
        g = torch.Generator().manual_seed(seed)
        step = torch.randint(0, 2, images01.shape, generator=g).to(images01) * 2 - 1
        bug = self.opts["bug"]
        eps = 2 * self.eps if bug == "outside-ball" else self.eps
        adv = images01 + eps * step
        if bug == "in-place":
            images01.mul_(0.5)
        if bug == "dtype":
            adv = adv.double()
        return adv if bug == "outside-01" else adv.clamp(0, 1)


def test_check_attack_accepts_a_correct_attack(freqprobe_classifier, freqprobe_images, freqprobe_labels):
    check_attack(_SignNoise, freqprobe_classifier, freqprobe_images, freqprobe_labels)


@pytest.mark.parametrize("bug,message", [
    ("outside-ball", r"left the L∞ ε-ball: sample \d+ moved by 0.0627\d* in L∞ norm > eps=0.0313725"),
    ("outside-01", r"left \[0, 1\]"),
    ("in-place", r"changed the input images in place"),
    ("random", r"not deterministic"),
    ("dtype", r"returned torch.float64 for torch.float32 images"),
])
def test_check_attack_catches(bug, message, freqprobe_classifier, freqprobe_images, freqprobe_labels):
    eps = 0.25 if bug == "outside-01" else 8 / 255  # the images lie in about [0.12, 0.86]
    with pytest.raises(AssertionError, match=message):
        check_attack(_SignNoise, freqprobe_classifier, freqprobe_images, freqprobe_labels, eps=eps, bug=bug)


def test_check_attack_l2_ball(freqprobe_classifier, freqprobe_images, freqprobe_labels):
    # ±eps on every pixel is inside the L∞ ball but far outside the L2 ball of the same radius
    class L2SignNoise(_SignNoise):
        options = {"bug": "", "norm": "l2"}

    with pytest.raises(AssertionError, match=r"left the L2 ε-ball"):
        check_attack(L2SignNoise, freqprobe_classifier, freqprobe_images, freqprobe_labels, eps=0.5, norm="l2")


class _WrongMerge(AccuracyMetric):
    """Accuracy whose totals merge by max instead of sum."""

    name = "wrong-merge"

    def __init__(self, ctx=None, **options):
        super().__init__(ctx, **options)
        self.add_state("total", 0, reduce="max")


def test_check_metric_catches_a_wrong_merge():
    outputs, targets = _logits_and_targets()
    with pytest.raises(AssertionError, match=r"check_metric\('wrong-merge'\): merging .* is not the same as one instance "
                                             r"seeing all the data: wrong-merge=0.14\d* instead of 0.0769\d*"):
        check_metric(_WrongMerge, outputs, targets)


def test_check_metric_catches_a_reset_that_keeps_state():
    class Sticky(AccuracyMetric):
        name = "sticky"

        def reset(self):
            if not hasattr(self, "total"):
                super().reset()

    outputs, targets = _logits_and_targets()
    with pytest.raises(AssertionError, match=r"reset\(\)"):
        check_metric(Sticky, outputs, targets)


def test_check_metric_without_declared_state():
    class Plain(freqprobe.Metric):
        name = "plain"

        def reset(self):
            self.hits, self.n = 0, 0

        def update(self, outputs, targets):
            self.hits += int((outputs.argmax(-1) == targets).sum())
            self.n += len(targets)

        def compute(self):
            return self.hits / self.n if self.n else float("nan")

    outputs, targets = _logits_and_targets()
    with pytest.raises(AssertionError, match=r"declares no state with add_state\(\).*mergeable=False"):
        check_metric(Plain, outputs, targets)
    assert check_metric(Plain, outputs, targets, mergeable=False)["plain"] == check_metric(AccuracyMetric, outputs, targets)["accuracy"]
