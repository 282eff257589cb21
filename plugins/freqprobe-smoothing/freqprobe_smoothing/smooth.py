"""First-layer kernel smoothing, the paper's Eq. 3, as the model transform ``smooth``.

Each weight of a convolution kernel becomes itself plus ρ times the sum of its eight spatial
neighbours; a neighbour outside the kernel is the nearest weight on its boundary (edge
replication); there is no renormalisation. PyTorch stores a ``Conv2d`` weight as
``[out, in/groups, kh, kw]``: the smoothing runs over the last two (spatial) axes of every
``[kh, kw]`` slice on its own, never across channels.

torch is imported inside the functions that use it: registering the transform (``freqprobe --help``)
does not load it.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from freqprobe import ModelAdapter, Transform, UnknownNameError, UserFacingError

if TYPE_CHECKING:  # annotations only
    import torch
    from torch import nn

#: the smallest kernel side Eq. 3 is applied to (a 1×1 kernel has no spatial neighbours)
MIN_KERNEL = 3


def smooth_kernels(weight: torch.Tensor, rho: float) -> torch.Tensor:
    """Eq. 3 on every ``[kh, kw]`` slice of an ``[out, in, kh, kw]`` weight; a new tensor (same dtype, device).

    ``w'[i, j] = w[i, j] + rho * sum of the 8 neighbours of (i, j)``, out-of-bound neighbours
    duplicated from the boundary, no renormalisation. Computed in float64 on the CPU as a sum of
    shifted copies (no convolution kernel, so no TF32 or backend differences): the result is the
    same on every device, rounded once to the weight's dtype.
    """
    import torch

    if weight.dim() != 4:
        raise ValueError(f"expected a 4-D [out, in, kh, kw] conv weight, got shape {tuple(weight.shape)}")
    o, i, kh, kw = weight.shape
    with torch.no_grad():
        w = weight.detach().to("cpu", torch.float64)
        if w.numel() == 0:
            return weight.detach().clone()
        p = torch.nn.functional.pad(w.reshape(o * i, 1, kh, kw), (1, 1, 1, 1), mode="replicate")[:, 0]
        neighbours = sum(p[:, 1 + dy:1 + dy + kh, 1 + dx:1 + dx + kw]
                         for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
        out = w + float(rho) * neighbours.reshape(o, i, kh, kw)
        return out.to(device=weight.device, dtype=weight.dtype)


def is_conv2d(module: nn.Module) -> bool:
    """An ``nn.Conv2d`` (or subclass), or a TorchScript module compiled from one."""
    import torch

    if isinstance(module, torch.nn.Conv2d):
        return True
    if isinstance(module, torch.jit.ScriptModule):
        w = getattr(module, "weight", None)
        return getattr(module, "original_name", None) == "Conv2d" and isinstance(w, torch.Tensor) and w.dim() == 4
    return False


def _named_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    try:
        return list(module.named_modules())
    except Exception as exc:  # e.g. a module type that cannot list its submodules
        raise UserFacingError(
            f"smooth: cannot list the layers of {type(module).__name__} ({type(exc).__name__}); "
            "smooth needs a torch.nn.Module (or a TorchScript module) whose layers it can walk"
        ) from None


def conv_layers(module: nn.Module) -> list[str]:
    """Names of the 2-D convolutions in ``named_modules()`` order."""
    return [name for name, m in _named_modules(module) if is_conv2d(m)]


def _size(m: nn.Module) -> tuple[int, int]:
    return int(m.weight.shape[-2]), int(m.weight.shape[-1])


def first_conv(module: nn.Module, layer: str | None = None, *, model: str | None = None) -> tuple[str, nn.Module]:
    """``(name, conv)``: the first 2-D convolution in ``named_modules()`` order, or the one named ``layer``.

    timm's and torchvision's ResNets give ``conv1`` (timm's deep-stem ``resnet10t`` ``conv1.0``),
    a ViT ``patch_embed.proj``, a user ``nn.Sequential`` ``0``. Raises :class:`UserFacingError`
    (one line) when there is none, when ``layer`` is unknown ("Did you mean ...") or not a
    convolution, and when the kernels are smaller than 3×3.
    """
    what = model or type(module).__name__
    modules = _named_modules(module)
    convs = [(n, m) for n, m in modules if is_conv2d(m)]
    if layer is None:
        if not convs:
            raise UserFacingError(f"smooth: {what} has no Conv2d layer; Eq. 3 smooths 2-D convolution kernels")
        name, conv = convs[0]
    else:
        layer = str(layer)
        named = dict(modules)
        if layer not in named:
            if not convs:
                raise UserFacingError(f"smooth: {what} has no Conv2d layer (layer={layer!r} is not one of its modules either)")
            raise UnknownNameError("conv layer", layer, [n for n, _ in convs if n])
        conv = named[layer]
        if not is_conv2d(conv):
            kind = getattr(conv, "original_name", None) or type(conv).__name__
            hint = f" (its conv layers: {_few([n for n, _ in convs])})" if convs else ""
            raise UserFacingError(f"smooth: layer '{layer}' of {what} is a {kind}, not a Conv2d; pass the name of a 2-D convolution{hint}")
        name = layer
    kh, kw = _size(conv)
    if min(kh, kw) < MIN_KERNEL:
        big = [n for n, m in convs if min(_size(m)) >= MIN_KERNEL]
        hint = f"pick a larger one with layer=NAME, e.g. layer={big[0]}" if big else f"{what} has no conv layer with kernels of 3×3 or more"
        raise UserFacingError(
            f"smooth: layer '{name or '(the model itself)'}' of {what} has {kh}×{kw} kernels; Eq. 3 needs kernels of at least "
            f"{MIN_KERNEL}×{MIN_KERNEL}; {hint}"
        )
    return name, conv


def _few(names: list[str], n: int = 6) -> str:
    shown = ", ".join(x or "(the model itself)" for x in names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def check_rho(value: Any, *, what: str = "smooth") -> float:
    """``rho`` as a finite float >= 0 (0 is the identity), else a one-line :class:`UserFacingError`."""
    if value is None:
        raise UserFacingError(f"{what} needs rho, e.g. --transform smooth:rho=0.5")
    bad = UserFacingError(f"{what}: rho={value!r} must be a finite number >= 0 (0 leaves the model as it is), e.g. rho=0.5")
    if isinstance(value, bool):
        raise bad
    try:
        rho = float(value)
    except (TypeError, ValueError):
        raise bad from None
    if not math.isfinite(rho) or rho < 0:
        raise bad
    return rho + 0.0  # -0.0 is 0


def checked_smooth(weight: torch.Tensor, rho: float, *, where: str, what: str = "smooth") -> torch.Tensor:
    """:func:`smooth_kernels`, refused in one line (:class:`UserFacingError`) when a smoothed weight is not finite.

    Eq. 3 multiplies a kernel by up to 1 + 8ρ, so a large enough ρ overflows the weight's dtype (float32:
    about 3.4e38, float64: 1.8e308) and every number computed from it would be NaN or inf. ``where`` names
    the layer and model, ``what`` the option (``smooth`` or ``--rho``).
    """
    import torch

    if not bool(torch.isfinite(weight).all()):
        raise UserFacingError(f"{what}: the kernels of {where} hold NaN or inf before any smoothing; check the weights")
    out = smooth_kernels(weight, rho)
    if not bool(torch.isfinite(out).all()):
        dtype = str(weight.dtype).replace("torch.", "")
        peak, top = float(weight.detach().abs().max()), torch.finfo(weight.dtype).max
        room = f"; rho up to about {top / (8 * peak) - 0.125:.3g} stays finite" if peak > 0 else ""
        raise UserFacingError(f"{what}: rho={rho:g} makes the smoothed kernels of {where} overflow {dtype} (Eq. 3 multiplies "
                              f"a kernel by up to 1 + 8·rho; its largest weight is {peak:.3g}){room}; use a smaller rho")
    return out


class SmoothTransform(Transform):
    """Smooth the first conv layer's kernels (Eq. 3): w + rho * sum of its 8 spatial neighbours."""

    name: ClassVar[str] = "smooth"
    options: ClassVar[Mapping[str, Any]] = {"rho": None, "layer": None}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.opts["rho"] = check_rho(self.opts.get("rho"))
        layer = self.opts.get("layer")
        if layer is not None:
            layer = str(layer).strip()  # layer=0 (a Sequential's first module) arrives as an int
            if not layer:
                raise UserFacingError("smooth: layer= needs a module name, e.g. layer=conv1")
        self.opts["layer"] = layer

    @property
    def rho(self) -> float:
        return self.opts["rho"]

    @property
    def layer(self) -> str | None:
        return self.opts["layer"]

    def apply(self, adapter: ModelAdapter) -> ModelAdapter:
        """A copy of ``adapter`` whose first conv (or ``layer``) has smoothed kernels; ``adapter`` is not changed."""
        import torch

        module = adapter.module if isinstance(adapter, ModelAdapter) else adapter
        what = getattr(adapter, "spec", "") or type(module).__name__
        name, old = first_conv(module, self.layer, model=what)  # refuse before copying anything
        smoothed = checked_smooth(old.weight, self.rho, where=f"layer '{name or '(the model itself)'}' of {what}")
        new = copy.deepcopy(adapter)
        new_module = new.module if isinstance(new, ModelAdapter) else new
        conv = dict(new_module.named_modules())[name]
        weight = conv.weight
        with torch.no_grad():
            weight.copy_(smoothed)
        if isinstance(new, ModelAdapter):
            record = {"layer": name, "rho": self.rho, "kernel": list(_size(conv))}
            new.info["smoothed"] = [*new.info.get("smoothed", []), record]
        return new
