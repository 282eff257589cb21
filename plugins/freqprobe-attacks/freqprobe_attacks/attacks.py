"""FGSM and PGD (L∞, L2) in [0, 1] pixel space, batched, through the adapter's normalisation.

Both follow the torchattacks shape (``attack(images01, labels) -> adv01``) and its update rules
(Goodfellow et al. 2015; Madry et al. 2018, the paper's [21] and [37]), so their results can be
compared with ``torchattacks.FGSM`` / ``PGD`` / ``PGDL2`` on a model that normalises inside:

* the loss is the cross-entropy of :meth:`ModelAdapter.forward` (which normalises) against the
  labels, summed over the batch (torchattacks takes the mean: the same signs, and for L2 the
  same directions up to rounding);
* the whole batch is attacked at once; the core's ``Attack.__call__`` (how the probe and training
  call an attack) runs ``forward`` outside the evaluation loop's ``torch.inference_mode()`` with
  gradients on, on copies of the inputs, and checks the answer (shape, dtype, device, finite, in
  [0, 1], within ε in the attack's norm); ``forward`` also works on a normal clone of the images in
  a block with inference mode off and gradients on itself, so a direct call works too, and returns
  a normal tensor of the input's shape and dtype;
* the model's parameters are frozen while it runs (no weight gradients are computed; their
  ``requires_grad`` is restored afterwards, also on errors) and its train/eval mode is left alone;
* 4-D images are attacked in ``channels_last`` (the memory format the engine gives the model);
* a model in eval mode with BatchNorm layers right after convolutions is attacked through a copy
  with those layers folded into the convolutions (:func:`folded_module`: the same function up to
  float rounding, about 1.4× faster on the CPU for ResNet-20); the adversarial images are then
  evaluated on the model as given. Set ``fold_batchnorm = False`` on an attack to differentiate the
  model itself;
* random starts come from a ``torch.Generator`` on the images' device seeded with ``self.seed`` at
  every call, so the same seed gives the same adversarial images (the robustness probe sets the
  seed per batch);
* an active autocast (``--precision bf16``) is respected: the model runs in it, the loss and
  the images stay float32.

torch is imported inside the functions that use it: registering the attacks (``freqprobe --help`` lists
them) imports this module without loading torch.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Mapping

from freqprobe import Attack, ModelAdapter, UserFacingError

if TYPE_CHECKING:  # annotations only
    import torch

__all__ = ["ATTACKS", "FGSM", "PGD", "folded_module"]

NORMS = ("linf", "l2")


@contextlib.contextmanager
def _frozen(module: torch.nn.Module) -> Iterator[None]:
    """Parameters with ``requires_grad=False`` inside, restored on the way out (errors included)."""
    saved = [(p, p.requires_grad) for p in module.parameters() if p.requires_grad]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


#: module -> (fingerprint, folded copy or None); shared by all attacks on the same module
_FOLDED: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _fingerprint(module: torch.nn.Module) -> tuple:
    """Changes when a parameter or buffer is replaced or changed in place, or a mode flips."""
    tensors = tuple((id(t), t._version, t.device, t.dtype) for t in (*module.parameters(), *module.buffers()))
    return tensors, tuple(m.training for m in module.modules())


def _foldable(module: torch.nn.Module) -> bool:
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.utils import parametrize

    if isinstance(module, torch.jit.ScriptModule) or any(m.training for m in module.modules()):
        return False
    has_bn = False
    for m in module.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None):
            return False  # hooks may change what the module computes: differentiate it as it is
        if parametrize.is_parametrized(m):
            return False
        has_bn = has_bn or isinstance(m, _BatchNorm)
    return has_bn


def folded_module(module: torch.nn.Module, probe: torch.Tensor | None = None) -> torch.nn.Module | None:
    """A copy of ``module`` (in eval mode) with BatchNorm folded into the convolutions before them, or None.

    ``torch.fx`` traces the module and folds every Conv→BN pair whose conv output feeds only the BN
    (``torch.fx.experimental.optimization.fuse``). None when the module is training, has hooks or
    parametrizations, has no BatchNorm, cannot be traced, nothing folds, or the copy's outputs on
    ``probe`` (a normalised batch) differ from the module's by more than rounding. The copy's
    parameters do not require gradients; it is cached per module until a parameter or buffer
    changes (in place too) or a mode flips.
    """
    import torch

    key = _fingerprint(module)
    hit = _FOLDED.get(module)
    if hit is not None and hit[0] == key:
        return hit[1]
    folded = None
    if _foldable(module):
        try:
            from torch.fx.experimental.optimization import fuse
            from torch.nn.modules.batchnorm import _BatchNorm

            with torch.inference_mode(False), torch.no_grad():
                candidate = fuse(module)
                n_bn = lambda m: sum(isinstance(b, _BatchNorm) for b in m.modules())  # noqa: E731
                if n_bn(candidate) < n_bn(module):
                    candidate.requires_grad_(False)
                    candidate.eval()
                    if any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
                           for p in module.parameters()):
                        candidate.to(memory_format=torch.channels_last)
                    folded = candidate
                    if probe is not None:
                        with torch.autocast(probe.device.type, enabled=False):
                            want = module(probe.float()).float()
                            got = candidate(probe.float()).float()
                        if not (want.shape == got.shape and
                                (got - want).abs().max() <= 1e-3 * (1 + float(want.abs().max()))):
                            folded = None
        except Exception:  # untraceable (control flow on values, unsupported ops...): no folding
            folded = None
    _FOLDED[module] = (key, folded)
    return folded


class _GradientAttack(Attack):
    """What FGSM and PGD share: the gradient of the summed cross-entropy w.r.t. the [0, 1] images."""

    #: attack 4-D images in channels_last (set False to keep the caller's memory format)
    channels_last: ClassVar[bool] = True
    #: differentiate a copy with BatchNorm folded into the convolutions when that is possible
    #: (:func:`folded_module`); False: the model itself, bit for bit
    fold_batchnorm: ClassVar[bool] = True

    def __init__(self, adapter: Any, *, eps: float, seed: int = 0, **options: Any) -> None:
        super().__init__(adapter, eps=eps, seed=seed, **options)
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise UserFacingError(f"attack '{self.name}': eps={eps!r} must be a finite number >= 0")

    _net: Any = None  # the folded copy for the current call, or None

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self._net is not None:
            return self._net(self.adapter.normalize(x))
        return self.adapter.forward(x)

    def _loss_grad(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """∇x Σ CE(adapter.forward(x), labels), for a leaf ``x`` (float32, requires grad)."""
        import torch

        logits = self._logits(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        return grad

    def _prepare(self, images01: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normal (non-inference) copies: x0 in float32 or float64 (channels_last when 4-D), labels as int64."""
        import torch

        if not isinstance(images01, torch.Tensor) or images01.dim() < 2:
            raise UserFacingError(f"attack '{self.name}' needs a batch tensor of images, got {type(images01).__name__}")
        fmt = torch.channels_last if self.channels_last and images01.dim() == 4 else torch.contiguous_format
        dtype = images01.dtype if images01.dtype in (torch.float32, torch.float64) else torch.float32
        x0 = images01.to(dtype=dtype).clone(memory_format=fmt)
        y = labels.to(device=x0.device, dtype=torch.long).clone()
        return x0, y

    def forward(self, images01: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode(False), torch.enable_grad(), _frozen(self.adapter.module):
            x0, y = self._prepare(images01, labels)
            self._net = self._folded(x0)
            try:
                adv = self._attack(x0, y)
            finally:
                self._net = None
            out = adv.to(dtype=images01.dtype).contiguous(memory_format=_memory_format(images01))
        return out

    def _folded(self, x0: torch.Tensor) -> torch.nn.Module | None:
        """The BN-folded copy of the adapter's module, when folding applies (the adapter's own differentiable call is the default one)."""
        import torch

        ad = self.adapter
        if not self.fold_batchnorm or type(ad).forward is not ModelAdapter.forward:
            return None
        try:
            hit = _FOLDED.get(ad.module)
            if hit is not None and hit[0] == _fingerprint(ad.module):
                return hit[1]
            with torch.no_grad():
                return folded_module(ad.module, ad.normalize(x0[:8]))
        except (RuntimeError, TypeError):  # e.g. inference-mode weights have no version counter
            return None

    def _attack(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    import torch

    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class FGSM(_GradientAttack):
    """Fast gradient sign method (L∞): x + ε·sign(∇x loss), clamped to [0, 1]."""

    name = "fgsm"
    options: ClassVar[Mapping[str, Any]] = {}

    def _attack(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x0.clone().requires_grad_(True)
        g = self._loss_grad(x, y)
        return x0.add_(g.sign_(), alpha=self.eps).clamp_(0, 1)


class PGD(_GradientAttack):
    """Projected gradient descent, L∞ or L2 (options steps, alpha, random_start, norm)."""

    name = "pgd"
    options: ClassVar[Mapping[str, Any]] = {"steps": 10, "alpha": None, "random_start": True, "norm": "linf"}

    @classmethod
    def check_options(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        opts = super().check_options(given)
        norm = str(opts["norm"]).strip().lower()
        if norm not in NORMS:
            raise UserFacingError(f"attack 'pgd': option norm={opts['norm']!r} must be one of {', '.join(NORMS)}")
        opts["norm"] = norm
        if opts["steps"] < 1:
            raise UserFacingError(f"attack 'pgd': option steps={opts['steps']!r} must be at least 1")
        alpha = opts["alpha"]
        if alpha is not None:
            try:
                if isinstance(alpha, bool):
                    raise ValueError
                if isinstance(alpha, str) and "/" in alpha:  # alpha=2/255, as --eps 8/255
                    num, _, den = alpha.partition("/")
                    alpha = float(num) / float(den)
                else:
                    alpha = float(alpha)
            except (TypeError, ValueError, ZeroDivisionError):
                raise UserFacingError(
                    f"attack 'pgd': option alpha={opts['alpha']!r} must be a positive number (default: 2.5·eps/steps)"
                ) from None
            if not (alpha > 0 and math.isfinite(alpha)):
                raise UserFacingError(
                    f"attack 'pgd': option alpha={opts['alpha']!r} must be a positive finite number (default: 2.5·eps/steps)"
                )
            opts["alpha"] = alpha
        return opts

    @property
    def steps(self) -> int:
        return int(self.opts["steps"])

    @property
    def alpha(self) -> float:
        a = self.opts["alpha"]
        return 2.5 * self.eps / self.steps if a is None else float(a)

    def _generator(self, x: torch.Tensor) -> torch.Generator:
        import torch

        g = torch.Generator(device=x.device)
        g.manual_seed(self.seed)
        return g

    def _attack(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.opts["norm"] == "l2":
            return self._attack_l2(x0, y)
        return self._attack_linf(x0, y)

    def _attack_linf(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torch

        eps, alpha = self.eps, self.alpha
        x = x0.clone()
        if self.opts["random_start"]:
            noise = torch.rand(x0.shape, generator=self._generator(x0), device=x0.device, dtype=x0.dtype)
            x.add_(noise.mul_(2 * eps).sub_(eps)).clamp_(0, 1)
        for _ in range(self.steps):
            x.requires_grad_(True)
            g = self._loss_grad(x, y)
            x = x.detach()
            # project (in place, torchattacks' arithmetic): δ = clamp(x − x0, ±ε), x = clamp(x0 + δ, 0, 1)
            x.add_(g.sign_(), alpha=alpha).sub_(x0).clamp_(-eps, eps).add_(x0).clamp_(0, 1)
        return x

    def _attack_l2(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torch

        eps, alpha = self.eps, self.alpha
        n = x0.shape[0]
        view = (n,) + (1,) * (x0.dim() - 1)
        x = x0.clone()
        if self.opts["random_start"]:
            gen = self._generator(x0)
            delta = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
            r = torch.rand(view, generator=gen, device=x0.device, dtype=x0.dtype)
            norms = _norms(delta).view(view).clamp_min_(1e-12)
            x.add_(delta.mul_(r.mul_(eps).div_(norms))).clamp_(0, 1)
        for _ in range(self.steps):
            x.requires_grad_(True)
            g = self._loss_grad(x, y)
            x = x.detach()
            gn = _norms(g).add_(1e-10).view(view)  # a zero gradient: no step (as torchattacks)
            x.add_(g.div_(gn), alpha=alpha)
            delta = x.sub_(x0)  # x now holds δ
            dn = _norms(delta).view(view)
            factor = torch.where(dn > eps, eps / dn.clamp_min(1e-30), torch.ones_like(dn))
            x = delta.mul_(factor).add_(x0).clamp_(0, 1)
        return x


def _norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norms (N,) of an N×... tensor in any memory format."""
    import torch

    return torch.linalg.vector_norm(t, ord=2, dim=tuple(range(1, t.dim())))


ATTACKS = [FGSM, PGD]
