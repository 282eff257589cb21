"""FGSM and PGD (freqprobe_attacks.attacks): references, budgets, seeding, inference mode, option
checks, the real ResNet-20 and a cross-check with torchattacks where it is installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import freqprobe
from freqprobe import UserFacingError
from freqprobe.plugin import parse_kv
from freqprobe_attacks.attacks import ATTACKS, FGSM, PGD, folded_module

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
EPS_L2 = 0.5


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


class Normalize(nn.Module):
    def __init__(self, mean, std) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def adapter(seed: int = 0):
    return freqprobe.build_model(tiny_net(seed), mean=MEAN, std=STD)


def batch(n: int = 6, size: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.arange(n) % 4


def linf(adv, x):
    return (adv - x).abs().flatten(1).amax(1)


def l2(adv, x):
    return (adv - x).flatten(1).norm(dim=1)


# ------------------------------------------------------------------------------------------ FGSM
def test_fgsm_equals_a_plain_autograd_reference():
    ad = adapter()
    x, y = batch()
    eps = 8 / 255
    # reference: by hand, normalisation written out
    xr = x.clone().requires_grad_(True)
    z = (xr - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    F.cross_entropy(ad.module(z), y, reduction="sum").backward()
    ref = (x + eps * xr.grad.sign()).clamp(0, 1)
    for cl in (False, True):
        atk = FGSM(ad, eps=eps)
        atk.channels_last, atk.fold_batchnorm = cl, False
        got = atk(x, y)
        assert got.shape == x.shape and got.dtype == x.dtype
        assert (got - ref).abs().max() <= 1e-7, cl
    # by default through the BN-folded copy: the same function up to rounding, which may flip
    # the sign of a near-zero gradient component
    got = FGSM(ad, eps=eps)(x, y)
    assert (got == ref).float().mean() >= 0.99 and (got - ref).abs().max() <= 2 * eps + 1e-6
    assert ATTACKS == [FGSM, PGD] and FGSM.name == "fgsm" and PGD.name == "pgd"


# ------------------------------------------------------------------------------------------ budgets
CASES = [
    ("fgsm", {}, 8 / 255),
    ("pgd", {"steps": 3}, 8 / 255),
    ("pgd", {"steps": 3, "random_start": False}, 8 / 255),
    ("pgd", {"steps": 3, "alpha": 0.05}, 0.03),  # alpha > eps: the projection does the work
    ("pgd", {"steps": 3, "norm": "l2"}, EPS_L2),
    ("pgd", {"steps": 3, "norm": "l2", "random_start": False}, EPS_L2),
    ("pgd", {"steps": 2, "norm": "l2", "alpha": 2.0}, EPS_L2),
]


def make(name, opts, eps, ad=None, seed=0):
    cls = {"fgsm": FGSM, "pgd": PGD}[name]
    return cls(ad or adapter(), eps=eps, seed=seed, **cls.check_options(opts))


@pytest.mark.parametrize("name,opts,eps", CASES)
def test_attacks_stay_within_budget_and_pixel_range(name, opts, eps):
    x, y = batch(8)
    x[0] = 0.0  # saturated images: the [0, 1] clamp binds
    x[1] = 1.0
    atk = make(name, opts, eps)
    adv = atk(x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert adv.min() >= 0 and adv.max() <= 1
    if opts.get("norm") == "l2":
        assert (l2(adv, x) <= eps * (1 + 1e-5)).all(), l2(adv, x)
    else:
        assert (linf(adv, x) <= eps + 1e-6).all(), linf(adv, x)
    assert (adv != x).any()  # it moved
    # it raises the loss (the attack's objective) over the clean images
    with torch.no_grad():
        lc = F.cross_entropy(atk.adapter.forward(x), y, reduction="sum")
        la = F.cross_entropy(atk.adapter.forward(adv), y, reduction="sum")
    assert la > lc


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_seeded(norm):
    x, y = batch()
    eps = 8 / 255 if norm == "linf" else EPS_L2
    ad = adapter()
    a = PGD(ad, eps=eps, seed=3, steps=2, norm=norm)
    first = a(x, y)
    assert torch.equal(a(x, y), first)  # re-seeded at every call
    assert torch.equal(PGD(ad, eps=eps, seed=3, steps=2, norm=norm)(x, y), first)
    a.seed = 4  # the probe sets the seed per batch
    assert not torch.equal(a(x, y), first)
    # without a random start the seed plays no part
    b = PGD(ad, eps=eps, seed=3, steps=2, norm=norm, random_start=False)
    c = PGD(ad, eps=eps, seed=4, steps=2, norm=norm, random_start=False)
    assert torch.equal(b(x, y), c(x, y))
    # and it does not touch torch's global generator
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a(x, y)
    assert torch.equal(torch.rand(1), before)


def test_l2_random_start_lies_in_the_ball():
    # steps=1 with a tiny alpha: the result is the start (plus a negligible step), radius ≤ eps
    x = torch.full((64, 3, 8, 8), 0.5)
    y = torch.arange(64) % 4
    adv = PGD(adapter(), eps=EPS_L2, steps=1, alpha=1e-9, norm="l2")(x, y)
    r = l2(adv, x)
    assert (r <= EPS_L2 * (1 + 1e-5)).all()
    assert r.min() < 0.3 * EPS_L2 and r.max() > 0.7 * EPS_L2  # the radius is drawn, not fixed at eps


def test_defaults_and_labels():
    a = PGD(adapter(), eps=0.03)
    assert a.opts == {"steps": 10, "alpha": None, "random_start": True, "norm": "linf"}
    assert a.alpha == pytest.approx(2.5 * 0.03 / 10) and a.steps == 10
    assert PGD(adapter(), eps=0.03, steps=5, alpha=0.01).alpha == 0.01
    assert PGD.label(PGD.check_options({})) == "pgd"
    assert PGD.label(PGD.check_options({"steps": 20, "norm": "L2"})) == "pgd:norm=l2,steps=20"
    assert FGSM.label({}) == "fgsm"


def test_zero_gradient_and_zero_eps():
    """A model whose loss does not depend on the image: no step, no NaN (the L2 step divides by ‖g‖)."""
    const = freqprobe.build_model(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)), mean=MEAN, std=STD)
    nn.init.zeros_(const.module[1].weight)
    x, y = batch()
    for atk in (PGD(const, eps=EPS_L2, norm="l2", random_start=False, steps=2), PGD(const, eps=0.03, random_start=False, steps=2), FGSM(const, eps=0.03)):
        assert torch.equal(atk(x, y), x)
    adv = PGD(adapter(), eps=0.0, norm="l2", steps=2)(x, y)
    assert torch.isfinite(adv).all() and torch.equal(adv, x)
    with pytest.raises(UserFacingError, match="eps"):
        PGD(adapter(), eps=float("nan"))


# ------------------------------------------------------------------------------------------ calling context
def test_works_inside_inference_mode_after_predict():
    ad = adapter()
    x, y = batch()
    with torch.inference_mode():
        ad.predict(x)  # caches the normalisation tensors as inference tensors
        xi, yi = x.clone(), y.clone()
        assert xi.is_inference()
        outs = [FGSM(ad, eps=0.03)(xi, yi), PGD(ad, eps=0.03, steps=2)(xi, yi),
                PGD(ad, eps=EPS_L2, steps=2, norm="l2")(xi, yi)]
    for o in outs:
        assert not o.is_inference() and o.shape == x.shape and o.dtype == x.dtype
    assert torch.equal(outs[1], PGD(ad, eps=0.03, steps=2)(x, y))  # the same outside


def test_parameters_frozen_and_restored_and_mode_kept():
    ad = adapter()
    params = list(ad.module.parameters())
    params[0].requires_grad_(False)  # a mix: one frozen by the user stays frozen
    before = [p.requires_grad for p in params]
    seen = []

    def spy(module, inp, out):
        seen.append([p.requires_grad for p in module.parameters()])

    h = ad.module.register_forward_hook(spy)
    x, y = batch()
    PGD(ad, eps=0.03, steps=2)(x, y)
    h.remove()
    assert seen and all(not any(s) for s in seen)  # frozen during the attack
    assert [p.requires_grad for p in params] == before
    assert all(p.grad is None for p in params)  # no weight gradients
    assert not ad.module.training
    ad.module.train()
    FGSM(ad, eps=0.03)(x, y)
    assert ad.module.training  # the attack does not change the mode
    ad.module.eval()
    # restored on errors too (a label the model has no class for)
    with pytest.raises(IndexError):
        PGD(ad, eps=0.03, steps=2)(x, torch.full_like(y, 99))
    assert [p.requires_grad for p in params] == before


def test_uses_the_adapters_normalisation():
    """An attack on a model with mean/std equals the attack on the same model normalising internally."""
    x, y = batch()
    net = tiny_net()
    outer = freqprobe.build_model(net, mean=MEAN, std=STD)
    inner = freqprobe.build_model(nn.Sequential(Normalize(MEAN, STD), net).eval())
    assert inner.mean is None
    for name, opts, eps in CASES:
        a, b = make(name, opts, eps, outer, seed=5), make(name, opts, eps, inner, seed=5)
        a.fold_batchnorm = b.fold_batchnorm = False
        assert (a(x, y) - b(x, y)).abs().max() <= 1e-7, (name, opts)
    # and without the normalisation the result differs
    raw = freqprobe.build_model(net)
    assert not torch.equal(PGD(raw, eps=0.03, steps=3)(x, y), PGD(outer, eps=0.03, steps=3)(x, y))


def test_channels_last_and_memory_format_of_the_result():
    ad = adapter()
    x, y = batch(8, 16)
    a = PGD(ad, eps=0.03, steps=3)
    a.fold_batchnorm = False
    on = a(x, y)
    a.channels_last = False
    off = a(x, y)
    assert on.is_contiguous() and off.is_contiguous()
    # another memory format can change the conv's rounding, rarely a gradient's sign
    assert (on == off).float().mean() > 0.99 and linf(on, off).max() <= 2 * 0.03 + 1e-6
    xc = x.contiguous(memory_format=torch.channels_last)
    assert a(xc, y).is_contiguous(memory_format=torch.channels_last)


def test_bf16_autocast_runs():
    ad = adapter()
    x, y = batch()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        adv = PGD(ad, eps=0.03, steps=2)(x, y)
        adv2 = PGD(ad, eps=EPS_L2, steps=2, norm="l2")(x, y)
    assert adv.dtype == torch.float32 and (linf(adv, x) <= 0.03 + 1e-6).all()
    assert adv2.dtype == torch.float32 and (l2(adv2, x) <= EPS_L2 * (1 + 1e-5)).all()


def test_batchnorm_folding():
    from torch.nn.modules.batchnorm import _BatchNorm

    ad = adapter()
    net = ad.module
    z = ad.normalize(batch()[0])
    f = folded_module(net, z)
    assert f is not None and not any(isinstance(m, _BatchNorm) for m in f.modules())
    assert not any(p.requires_grad for p in f.parameters())
    with torch.no_grad():
        assert (f(z) - net(z)).abs().max() <= 1e-5
    assert folded_module(net) is f  # cached
    with torch.no_grad():
        net[1].running_mean.add_(0.1)  # a change in place: folded again
    f2 = folded_module(net, z)
    assert f2 is not f
    with torch.no_grad():
        assert (f2(z) - net(z)).abs().max() <= 1e-5
    # not folded: training mode, hooks, no BatchNorm, untraceable control flow
    net.train()
    assert folded_module(net) is None
    net.eval()
    h = net.register_forward_hook(lambda m, i, o: o)
    assert folded_module(net) is None
    h.remove()
    assert folded_module(nn.Sequential(nn.Conv2d(3, 4, 3)).eval()) is None

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            x = self.bn(self.conv(x))
            return x.flatten(1) if x.sum() > 0 else -x.flatten(1)  # depends on values: fx cannot trace it

    assert folded_module(Branchy().eval()) is None
    b = freqprobe.build_model(Branchy().eval())
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    assert (linf(FGSM(b, eps=0.03)(x, y), x) <= 0.03 + 1e-6).all()  # falls back to the model itself


def test_folding_gives_the_same_attack_up_to_rounding():
    ad = adapter()
    x, y = batch(16, 16)
    for opts, eps in (({"steps": 5}, 0.03), ({"steps": 5, "norm": "l2"}, EPS_L2)):
        a = PGD(ad, eps=eps, seed=2, **opts)
        folded = a(x, y)
        a.fold_batchnorm = False
        plain = a(x, y)
        if opts.get("norm") == "l2":
            assert (folded - plain).abs().max() <= 1e-4
        else:
            assert (folded == plain).float().mean() >= 0.98


# ------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("given,match", [
    (["steps=0"], r"attack 'pgd': option steps=0 must be at least 1"),
    (["steps=2.5"], r"option steps=2.5 must be a int"),
    (["norm=l3"], r"attack 'pgd': option norm='l3' must be one of linf, l2"),
    (["alpha=-1"], r"attack 'pgd': option alpha=-1 must be a positive finite number"),
    (["alpha=0"], r"alpha=0 must be a positive finite number"),
    (["alpha=nan"], r"alpha='nan' must be a positive finite number"),
    (["alpha=inf"], r"alpha='inf' must be a positive finite number"),
    (["alpha=abc"], r"alpha='abc' must be a positive number"),
    (["alpha=true"], r"alpha=True must be a positive number"),
    (["stpes=3"], r"Unknown option of attack 'pgd' 'stpes'\. Did you mean: steps\?"),
])
def test_pgd_option_errors(given, match):
    with pytest.raises(UserFacingError, match=match) as err:
        PGD.check_options(parse_kv(given, "option of attack pgd"))
    assert "\n" not in str(err.value)


def test_pgd_options_parse():
    opts = PGD.check_options(parse_kv(["random_start=false", "steps=5", "alpha=2/255", "norm=L2"], "option of attack pgd"))
    assert opts == {"steps": 5, "alpha": 2 / 255, "random_start": False, "norm": "l2"}
    assert opts["random_start"] is False
    assert PGD.check_options(parse_kv(["alpha=0.01"], "x"))["alpha"] == 0.01
    with pytest.raises(UserFacingError, match="takes no options"):
        FGSM.check_options({"steps": 1})
    with pytest.raises(UserFacingError, match="steps"):  # checked in the constructor too
        PGD(adapter(), eps=0.03, steps=0)


def test_options_through_the_command_line_parser(pm):
    from freqprobe_attacks import hooks
    from freqprobe_attacks.spec import parse_attacks, parse_eps

    pm.register(hooks)
    got = parse_attacks(["pgd:steps=5,random_start=false,norm=l2", "fgsm"], pm)
    assert got == [(PGD, {"steps": 5, "alpha": None, "random_start": False, "norm": "l2"}), (FGSM, {})]
    with pytest.raises(UserFacingError, match="norm='l3'"):
        parse_attacks(["pgd:norm=l3"], pm)
    with pytest.raises(UserFacingError, match=r"^--attack fgsm is given twice; pass each attack once$"):
        parse_attacks(["fgsm", "fgsm"], pm)
    assert parse_eps("0.03,8/255") == [0.03, 8 / 255] and parse_eps([0.1, 0.2]) == [0.1, 0.2] and parse_eps(None) == []
    for text, message in (("0.1,0.1", "--eps 0.1 is given twice; pass each budget once"),
                          ("0,0.1", "--eps values must be positive and finite, got '0'"),
                          ("a", "--eps must be comma-separated numbers like 0.03,0.06 or 8/255, got 'a'")):
        with pytest.raises(UserFacingError) as err:
            parse_eps(text)
        assert str(err.value) == message


# ------------------------------------------------------------------------------------------ real data
def test_resnet20_fgsm_and_pgd_on_cifar10(shared_data):
    ckpt = shared_data / "cifar10_resnet_akamaster" / "resnet20-12fca82f.th"
    npz = shared_data / "cifar10_test" / "cifar10_test_first100_lossless.npz"
    from pathlib import Path

    model = f"{Path(__file__).resolve().parents[3] / 'tests' / 'fixtures' / 'cifar_resnet.py'}:resnet20"
    ad = freqprobe.build_model(model, checkpoint=ckpt, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), num_classes=10)
    ad.prepare(channels_last=True)  # as the engine does
    with np.load(npz) as d:
        x = torch.from_numpy(d["x"]).permute(0, 3, 1, 2).float().div(255).contiguous()
        y = torch.from_numpy(d["y"]).long()
    eps = 8 / 255

    def acc(images):
        return float((ad.predict(images).argmax(1) == y).float().mean())

    with torch.inference_mode():  # as the robustness probe calls them
        clean = acc(x)
        fgsm = FGSM(ad, eps=eps)(x, y)
        pgd = PGD(ad, eps=eps, steps=5, seed=0)(x, y)
        fa, pa = acc(fgsm), acc(pgd)
    assert clean == pytest.approx(0.94)  # SOURCE.md: 94 % on these 100 images
    assert (linf(fgsm, x) <= eps + 1e-6).all() and (linf(pgd, x) <= eps + 1e-6).all()
    # measured: FGSM 0.18, PGD-5 (random start, seed 0) 0.00; Table 2's M_natural at ε = 0.03: 0.107 / 0.003
    assert fa <= 0.25, fa
    assert pa <= 0.02, pa
    assert pa <= fa


# ------------------------------------------------------------------------------------------ torchattacks
@pytest.mark.parametrize("which", ["fgsm", "pgd-linf", "pgd-l2"])
def test_agrees_with_torchattacks(which):
    torchattacks = pytest.importorskip("torchattacks")
    net = tiny_net()
    ad = freqprobe.build_model(net, mean=MEAN, std=STD)
    # .eval(): torchattacks restores the mode its model had, and a fresh wrapper is in train mode
    wrapped = nn.Sequential(Normalize(MEAN, STD), net).eval()
    x, y = batch(16, 16)
    if which == "fgsm":
        ours, theirs = FGSM(ad, eps=8 / 255), torchattacks.FGSM(wrapped, eps=8 / 255)
    elif which == "pgd-linf":
        ours = PGD(ad, eps=8 / 255, steps=5, alpha=2 / 255, random_start=False)
        theirs = torchattacks.PGD(wrapped, eps=8 / 255, alpha=2 / 255, steps=5, random_start=False)
    else:
        ours = PGD(ad, eps=EPS_L2, steps=5, alpha=0.2, random_start=False, norm="l2")
        theirs = torchattacks.PGDL2(wrapped, eps=EPS_L2, alpha=0.2, steps=5, random_start=False)
    ref = theirs(x, y)
    # the same memory format as theirs: the same arithmetic. Their loss is a mean and ours a sum,
    # which scales the gradient (same signs; for L2 the same direction up to rounding).
    ours.channels_last, ours.fold_batchnorm = False, False
    got = ours(x, y)
    assert (got - ref).abs().max() <= 1e-6
    if which != "pgd-l2":
        assert torch.equal(got, ref)
    # channels_last and the BN-folded copy (the defaults) round differently; a near-zero gradient
    # component may change sign
    for cl, fold in ((True, False), (True, True)):
        ours.channels_last, ours.fold_batchnorm = cl, fold
        got = ours(x, y)
        if which == "pgd-l2":  # every pixel moves with the rounding, by little
            assert (got - ref).abs().max() <= 1e-5
        else:
            assert (got == ref).float().mean() >= 0.98
    assert wrapped.training is False and net.training is False
