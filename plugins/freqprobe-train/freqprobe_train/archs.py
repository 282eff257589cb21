"""The paper's model families sized for 28×28 (MNIST, Fashion-MNIST) and 32×32 (CIFAR-10) inputs.

Wang et al. (CVPR 2020) train LeNet, AlexNet, VGG and ResNet (§5.1 "Model architecture", Figure 5)
in a *vanilla set-up* (§4.2: Xavier initialisation, Adam 1e-4, batch 100, pixels in [0, 1]) and
compare it with heuristics (§5.1): dropout on the fully connected layers with p = 0.5 and
BatchNorm with γ = 1, β = 0 at the start. Every builder here is

    fn(num_classes=10, in_chans=3, image_size=32, bn=False, dropout=0.0) -> nn.Module

* ``bn=True`` puts a ``BatchNorm2d`` after every convolution (before its ReLU; the ResNets'
  projection shortcuts included). The fully connected heads get **no** ``BatchNorm1d``.
  ``bn=False`` leaves no BatchNorm layer anywhere: convolutions then carry biases, and the
  ResNets are plain residual blocks (conv-ReLU-conv + shortcut, ReLU).
* ``dropout=p`` (> 0) adds ``nn.Dropout(p)`` before each fully connected layer that has another
  fully connected layer before it (LeNet, AlexNet and VGG have three FC layers, so two dropouts:
  after the ReLU of FC1 and of FC2, as in torchvision's VGG), and for the ResNets, whose head is
  one linear layer, before that final linear layer (after global average pooling).
  ``dropout=0`` adds no Dropout module at all.
* ``in_chans`` is 1 for MNIST-like data and 3 for CIFAR; ``image_size`` is the side of the square
  input. LeNet, AlexNet and VGG flatten their last feature map into the FC head, so their first
  FC layer is sized from ``image_size`` (they refuse another size in one line); the ResNets end
  with global average pooling and take any size of at least 8 px.

Widths (reduced so that one epoch of 1,000 images takes seconds on two CPU cores):

* ``lenet``: LeNet-5; conv 5×5 (pad 2) 6 → max-pool → conv 5×5 16 → max-pool → FC 120 → FC 84 → FC K
  (flatten 16·5·5 at 28 px, 16·6·6 at 32 px).
* ``alexnet``: the usual small-image AlexNet (3×3 kernels, three 2×2 max-pools) at half width:
  conv 32 → pool → conv 64 → pool → conv 96 → conv 96 → conv 64 → pool → FC 256 → FC 256 → FC K.
* ``vgg11`` / ``vgg16``: VGG configurations A / D with 3×3 convolutions at a quarter of the
  width (64..512 → 16..128) and four max-pools instead of five (so 28 px keeps a 1×1 map and
  32 px a 2×2 one) → FC 256 → FC 256 → FC K.
* ``resnet20``: He et al.'s CIFAR ResNet-20: 3×3 stem 16, three stages of three basic blocks
  (16, 32, 64 channels; stride 2 at stages 2 and 3; parameter-free "option A" shortcuts that
  subsample and zero-pad channels), global average pooling, FC K.
* ``resnet18``: the CIFAR ResNet-18 the paper uses (full width): 3×3 stem 64 with no max-pool,
  four stages of two basic blocks (64, 128, 256, 512; 1×1 projection shortcuts), global average
  pooling, FC K. About 11 M parameters: slow on a CPU, but it is the paper's model.

:func:`xavier_init` is the vanilla set-up's initialisation; the ``paper:`` model source
(:class:`freqprobe_train.source.PaperModelSource`, which imports this module when it builds a model, so
registering it loads no torch) builds these and applies it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn


__all__ = [
    "ARCHITECTURES",
    "alexnet",
    "lenet",
    "resnet18",
    "resnet20",
    "vgg11",
    "vgg16",
    "xavier_init",
]


# -- building blocks ---------------------------------------------------------------------------

def _conv(cin: int, cout: int, k: int, *, bn: bool, stride: int = 1, padding: int | None = None) -> list[nn.Module]:
    """Conv (+ BatchNorm2d) + ReLU; the conv has a bias only without BatchNorm."""
    pad = k // 2 if padding is None else padding
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


def _fc_head(in_features: int, hidden: tuple[int, ...], num_classes: int, dropout: float) -> nn.Sequential:
    """FC → ReLU → ... → FC K, with Dropout(p) before every FC layer that follows another FC layer."""
    layers: list[nn.Module] = []
    width = in_features
    for i, h in enumerate(hidden):
        if i > 0 and dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    if hidden and dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class SizedFlatten(nn.Module):
    """Flatten a C×h×w feature map into the FC head, refusing (in one line) a map of another size
    than the one the head was sized for (an input of another ``image_size``)."""

    def __init__(self, channels: int, side: int, image_size: int) -> None:
        super().__init__()
        self.channels, self.side, self.image_size = channels, side, image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.channels, self.side, self.side):
            raise ValueError(
                f"this model was built for {self.image_size}×{self.image_size} inputs; rebuild it for this data's size "
                f"with --model-arg image_size=N (and in_chans=C)"
            )
        return torch.flatten(x, 1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, side={self.side}, image_size={self.image_size}"


def _check(name: str, num_classes: int, in_chans: int, image_size: int, dropout: float, min_size: int) -> None:
    for key, val in (("num_classes", num_classes), ("in_chans", in_chans), ("image_size", image_size)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name}: {key} must be a positive whole number, got {val!r}")
    if image_size < min_size:
        raise ValueError(f"{name}: image_size={image_size} is too small; it needs at least {min_size}×{min_size} inputs")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"{name}: dropout must be a probability in [0, 1), got {dropout!r}")


# -- LeNet, AlexNet, VGG -----------------------------------------------------------------------

class FlatNet(nn.Module):
    """Convolutional features, a sized flatten and an FC head (LeNet, AlexNet, VGG)."""

    def __init__(self, features: nn.Sequential, flatten: SizedFlatten, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.flatten = flatten
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def lenet(num_classes: int = 10, in_chans: int = 3, image_size: int = 32, bn: bool = False, dropout: float = 0.0) -> nn.Module:
    """LeNet-5: conv5×5(pad 2) 6, pool, conv5×5 16, pool, FC 120, FC 84, FC K (ReLU, max-pool)."""
    _check("lenet", num_classes, in_chans, image_size, dropout, 12)
    features = nn.Sequential(
        *_conv(in_chans, 6, 5, bn=bn, padding=2), nn.MaxPool2d(2),
        *_conv(6, 16, 5, bn=bn, padding=0), nn.MaxPool2d(2),
    )
    side = (image_size // 2 - 4) // 2
    return FlatNet(features, SizedFlatten(16, side, image_size), _fc_head(16 * side * side, (120, 84), num_classes, dropout))


def alexnet(num_classes: int = 10, in_chans: int = 3, image_size: int = 32, bn: bool = False, dropout: float = 0.0) -> nn.Module:
    """Small-image AlexNet: five 3×3 convs (32, 64, 96, 96, 64), three max-pools, FC 256, FC 256, FC K."""
    _check("alexnet", num_classes, in_chans, image_size, dropout, 8)
    features = nn.Sequential(
        *_conv(in_chans, 32, 3, bn=bn), nn.MaxPool2d(2),
        *_conv(32, 64, 3, bn=bn), nn.MaxPool2d(2),
        *_conv(64, 96, 3, bn=bn),
        *_conv(96, 96, 3, bn=bn),
        *_conv(96, 64, 3, bn=bn), nn.MaxPool2d(2),
    )
    side = image_size // 2 // 2 // 2
    return FlatNet(features, SizedFlatten(64, side, image_size), _fc_head(64 * side * side, (256, 256), num_classes, dropout))


#: VGG configurations A (11 layers) and D (16 layers) at a quarter of the width, four max-pools ("M")
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128],
    "vgg16": [16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M", 128, 128, 128],
}


def _vgg(name: str, num_classes: int, in_chans: int, image_size: int, bn: bool, dropout: float) -> nn.Module:
    _check(name, num_classes, in_chans, image_size, dropout, 16)
    layers: list[nn.Module] = []
    c, side = in_chans, image_size
    for v in VGG_CONFIGS[name]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            side //= 2
        else:
            layers += _conv(c, int(v), 3, bn=bn)
            c = int(v)
    return FlatNet(nn.Sequential(*layers), SizedFlatten(c, side, image_size), _fc_head(c * side * side, (256, 256), num_classes, dropout))


def vgg11(num_classes: int = 10, in_chans: int = 3, image_size: int = 32, bn: bool = False, dropout: float = 0.0) -> nn.Module:
    """VGG-11 (configuration A) at quarter width (16..128), four max-pools, FC 256, FC 256, FC K."""
    return _vgg("vgg11", num_classes, in_chans, image_size, bn, dropout)


def vgg16(num_classes: int = 10, in_chans: int = 3, image_size: int = 32, bn: bool = False, dropout: float = 0.0) -> nn.Module:
    """VGG-16 (configuration D) at quarter width (16..128), four max-pools, FC 256, FC 256, FC K."""
    return _vgg("vgg16", num_classes, in_chans, image_size, bn, dropout)


# -- ResNets -----------------------------------------------------------------------------------

class PadShortcut(nn.Module):
    """He et al.'s parameter-free "option A" shortcut: subsample by 2 and zero-pad the new channels."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cin, self.cout = cin, cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        extra = self.cout - self.cin
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))

    def extra_repr(self) -> str:
        return f"{self.cin} -> {self.cout}, stride 2"


class BasicBlock(nn.Module):
    """conv3×3 (+BN) ReLU conv3×3 (+BN), plus the shortcut, ReLU. Without BN: a plain residual block with biases."""

    def __init__(self, cin: int, cout: int, stride: int, *, bn: bool, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=not bn)
        self.bn2 = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.shortcut: nn.Module
        if stride == 1 and cin == cout:
            self.shortcut = nn.Identity()
        elif shortcut == "pad":
            self.shortcut = PadShortcut(cin, cout)
        else:
            proj: list[nn.Module] = [nn.Conv2d(cin, cout, 1, stride=stride, bias=not bn)]
            if bn:
                proj.append(nn.BatchNorm2d(cout))
            self.shortcut = nn.Sequential(*proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """3×3 stem (no max-pool), stages of basic blocks, global average pooling, (Dropout,) FC K."""

    def __init__(self, widths: tuple[int, ...], blocks: int, *, num_classes: int, in_chans: int, bn: bool,
                 dropout: float, shortcut: str) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv(in_chans, widths[0], 3, bn=bn))
        stages = []
        cin = widths[0]
        for i, w in enumerate(widths):
            blks = []
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blks.append(BasicBlock(cin, w, stride, bn=bn, shortcut=shortcut))
                cin = w
            stages.append(nn.Sequential(*blks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.fc(self.dropout(x))


def resnet20(num_classes: int = 10, in_chans: int = 3, image_size: int = 32, bn: bool = False, dropout: float = 0.0) -> nn.Module:
    """CIFAR ResNet-20 (He et al.): 3 stages × 3 basic blocks, 16/32/64 channels, option-A shortcuts, GAP, FC K."""
    _check("resnet20", num_classes, in_chans, image_size, dropout, 8)
    return CifarResNet((16, 32, 64), 3, num_classes=num_classes, in_chans=in_chans, bn=bn, dropout=dropout, shortcut="pad")


def resnet18(num_classes: int = 10, in_chans: int = 3, image_size: int = 32, bn: bool = False, dropout: float = 0.0) -> nn.Module:
    """CIFAR ResNet-18 (the paper's): 3×3 stem, no max-pool, 4 stages × 2 basic blocks, 64..512, GAP, FC K."""
    _check("resnet18", num_classes, in_chans, image_size, dropout, 8)
    return CifarResNet((64, 128, 256, 512), 2, num_classes=num_classes, in_chans=in_chans, bn=bn, dropout=dropout,
                       shortcut="conv")


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "lenet": lenet,
    "alexnet": alexnet,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "resnet18": resnet18,
    "resnet20": resnet20,
}


# -- initialisation ----------------------------------------------------------------------------

def xavier_init(module: nn.Module) -> nn.Module:
    """The vanilla set-up's initialisation (§4.2, Glorot & Bengio 2010), in place; returns ``module``.

    Every convolution and linear layer (any ``nn.Module`` tree: timm and torchvision models too)
    gets Xavier-uniform weights (U(−a, a), a = sqrt(6 / (fan_in + fan_out)), so std
    sqrt(2 / (fan_in + fan_out))) and zero biases; ``nn.MultiheadAttention``'s packed input
    projection likewise. BatchNorm (and the other affine normalisation layers) get scale γ = 1 and
    offset β = 0 (§5.1), and BatchNorm's running statistics are reset. Lazy (uninitialised)
    parameters are left alone. Random draws come from torch's global generator, so
    ``torch.manual_seed`` makes it deterministic.
    """
    lazy = getattr(nn.parameter, "UninitializedParameter", ())

    def ready(p: Any) -> bool:
        return isinstance(p, torch.Tensor) and not (lazy and isinstance(p, lazy)) and p.numel() > 0

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear)):
                if ready(m.weight) and m.weight.dim() >= 2:
                    nn.init.xavier_uniform_(m.weight)
                if ready(getattr(m, "bias", None)):
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.MultiheadAttention):
                for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                    w = getattr(m, name, None)
                    if ready(w):
                        nn.init.xavier_uniform_(w)
                for name in ("in_proj_bias", "bias_k", "bias_v"):
                    b = getattr(m, name, None)
                    if ready(b):
                        nn.init.zeros_(b)
            elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None:
                    m.reset_running_stats()
                if ready(getattr(m, "weight", None)):
                    nn.init.ones_(m.weight)
                if ready(getattr(m, "bias", None)):
                    nn.init.zeros_(m.bias)
    return module
