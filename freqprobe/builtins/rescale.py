"""Built-in rescale policies for component images that leave [0, 1]."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..hookspecs import hookimpl
from ..interfaces import RescalePolicy

if TYPE_CHECKING:  # annotations only: torch is imported where it is used, so importing this plugin stays cheap
    import torch


class NoRescale(RescalePolicy):
    """Feed component images as they are (the high part is zero-mean with negative pixels)."""

    name = "none"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ClipRescale(RescalePolicy):
    """Clip component images to [0, 1]."""

    name = "clip"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 1.0)


class MinMaxRescale(RescalePolicy):
    """Stretch each component image to [0, 1] by its own min and max (a constant image becomes 0)."""

    name = "minmax"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        flat = x.flatten(1)
        lo = flat.amin(1).view(-1, 1, 1, 1)
        span = (flat.amax(1).view(-1, 1, 1, 1) - lo)
        return torch.where(span > 0, (x - lo) / span.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


class PaperRescale(RescalePolicy):
    """The authors' code: divide every image, clean ones included, by its own maximum (where that is positive)."""

    name = "paper"
    applies_to_original = True

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        mx = x.flatten(1).amax(1).view(-1, 1, 1, 1)
        return torch.where(mx > 0, x / mx.clamp_min(torch.finfo(x.dtype).tiny), x)


@hookimpl
def register_rescale_policies():
    return [NoRescale, ClipRescale, MinMaxRescale, PaperRescale]
