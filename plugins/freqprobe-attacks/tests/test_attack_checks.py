"""fgsm and pgd under the core's checked call (issue 17): ``Attack.__call__`` runs ``forward`` with autograd on copies
and checks the answer; the first-party attacks pass it and give byte-identical images (what ``forward`` alone gives,
which is what the call gave before the check existed)."""

from __future__ import annotations

import pytest
import torch

from freqprobe import PluginError
from freqprobe.testing import make_classifier, make_images
from freqprobe_attacks.attacks import FGSM, PGD

CASES = [
    (FGSM, {}, 8 / 255),
    (PGD, {"steps": 3}, 8 / 255),
    (PGD, {"steps": 3, "random_start": False}, 0.03),
    (PGD, {"steps": 3, "norm": "l2"}, 0.5),
    (PGD, {"steps": 2, "norm": "l2", "alpha": 2.0}, 2.0),
]


@pytest.mark.parametrize("cls,opts,eps", CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_checked_call_is_byte_identical_to_forward(cls, opts, eps):
    adapter = make_classifier()
    x = make_images(n=6, seed=2)
    y = adapter.predict(x).argmax(-1)
    atk = cls(adapter, eps=eps, seed=5, **opts)
    plain = atk.forward(x, y)  # the first-party forward enables autograd itself
    with torch.inference_mode():  # as the robustness probe calls it
        xi, yi = x.clone(), y.clone()
        checked = atk(xi, yi)
    assert checked.dtype == plain.dtype and checked.stride() == plain.stride()
    assert torch.equal(checked, plain)
    assert torch.equal(atk(x, y), plain)
    assert torch.equal(xi, x)  # the caller's images are untouched


@pytest.mark.parametrize("size", [32, 224])
def test_l2_projection_in_float32_is_within_the_tolerance(size):
    """PGD-L2 projects with float32 norms: on many pixels that lands a few 1e-6·ε past the ball; the core allows
    ε·(1 + 1e-4) + 1e-6 in L2 (measured up to 8.6e-6·ε on 3×512×512 images), so the first-party attack is never refused."""
    adapter = make_classifier()
    x = torch.full((2, 3, size, size), 0.5) + torch.linspace(0, 0.01, size).view(1, 1, 1, -1)
    y = adapter.predict(x).argmax(-1)
    for eps in (0.5, 2.0, 5.0):
        adv = PGD(adapter, eps=eps, norm="l2", steps=2, alpha=eps)(x, y)
        moved = (adv.double() - x.double()).flatten(1).norm(dim=1).max().item()
        assert moved <= eps * (1 + 1e-4) + 1e-6


def test_a_broken_subclass_is_refused_and_named():
    class Overshoot(PGD):
        """PGD that forgets to project."""

        name = "overshoot"

        def _attack(self, x0, y):
            return (super()._attack(x0, y) + 2 * self.eps).clamp(0, 1)

    adapter = make_classifier()
    x = make_images(n=2)
    y = adapter.predict(x).argmax(-1)
    with pytest.raises(PluginError, match=r"^attack 'overshoot' \(.*Overshoot\) left the L∞ ε-ball: sample \d moved by "):
        Overshoot(adapter, eps=0.03, steps=1)(x, y)
