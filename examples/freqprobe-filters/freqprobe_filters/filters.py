"""Smooth-edged radial low/high-pass decomposers: ``gaussian`` and ``butterworth``.

The paper (Wang et al., CVPR 2020, §3.1) splits every channel's centred spectrum with a *hard*
radial cut at radius r (freqprobe's built-in ``fft-radial``). These decomposers use the same
geometry and the same unit (r in frequency bins of the centred spectrum, d = √(u² + v²) with u, v
the signed integer frequencies, 0 where ``fftshift`` puts the centre) but weigh every bin with a
smooth transfer function H(d) in [0, 1] instead of keeping or dropping it:

* ``gaussian``:    H(d) = exp(-d² / (2 r²))            (H(r) ≈ 0.61: r is the filter's standard deviation)
* ``butterworth``: H(d) = 1 / (1 + (d / r)^(2 n))      (H(r) = 0.5; order n, default 2; n → ∞ is the hard cut)

low = F⁻¹(H · F(x)), high = x - low, per channel. H is real, H(0) = 1 (a constant image is all
low) and H(-f) = H(f), so the filtered spectrum is Hermitian and its inverse is real: it is computed
exactly with a real FFT pair (``rfft2``/``irfft2``), as ``fft-radial`` does.

torch is imported where it is used, not at the top: registering the classes (what ``freqprobe --help``
and ``freqprobe plugins`` do) imports this module, and should not cost an ``import torch``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from freqprobe import Decomposer, UserFacingError

if TYPE_CHECKING:  # annotations only
    import torch

__all__ = ["RadialFilterDecomposer", "GaussianDecomposer", "ButterworthDecomposer", "signed_freqs"]


def signed_freqs(n: int) -> torch.Tensor:
    """Signed integer frequency of each unshifted FFT index (``np.fft.fftfreq(n) * n``), int64."""
    import torch

    k = torch.arange(n, dtype=torch.int64)
    return torch.where(k < (n + 1) // 2, k, k - n)


class RadialFilterDecomposer(Decomposer):
    """Base of the smooth radial filters: low = inverse FFT of H(d; r) times the spectrum, high = x - low.

    A subclass sets ``name`` and implements :meth:`transfer`. Transfer functions are cached per
    (H, W, r, device, dtype), the most recent :attr:`MAX_CACHED` of them (images of many sizes, as
    in COCO, would otherwise fill the memory).
    """

    components = ("low", "high")
    param_name = "r"
    param_type = float
    default_params = (4, 8, 12, 16)

    #: how many transfer functions are kept (least recently used dropped first)
    MAX_CACHED = 64

    def __init__(self) -> None:
        self._masks: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    # -- the filter ----------------------------------------------------------------------------
    def transfer(self, d2: torch.Tensor, r: float) -> torch.Tensor:
        """H at squared distances ``d2`` (float64, in bins²) for cut-off radius ``r``; float64 in [0, 1], H(0) = 1."""
        raise NotImplementedError

    def mask(
        self,
        h: int,
        w: int,
        r: float,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        *,
        full: bool = False,
    ) -> torch.Tensor:
        """The low-pass transfer function in unshifted FFT layout: (h, w//2+1) for the real FFT, (h, w) with ``full``.

        ``dtype`` defaults to float32.
        """
        import torch

        dtype = torch.float32 if dtype is None else dtype
        key = (h, w, float(r), str(torch.device(device)), dtype, full)
        m = self._masks.get(key)
        if m is not None:
            self._masks.move_to_end(key)
            return m
        fu = signed_freqs(h).view(-1, 1)
        fv = signed_freqs(w).view(1, -1) if full else torch.arange(w // 2 + 1, dtype=torch.int64).view(1, -1)
        d2 = (fu * fu + fv * fv).to(torch.float64)  # exact integers, then one float64 evaluation of H
        m = self.transfer(d2, float(r)).to(device=device, dtype=dtype)
        self._masks[key] = m
        while len(self._masks) > self.MAX_CACHED:
            self._masks.popitem(last=False)
        return m

    # -- the decomposer contract ---------------------------------------------------------------
    def decompose(self, x: torch.Tensor, param: Any, *, out: Mapping[str, torch.Tensor] | None = None) -> dict:
        return next(iter(self.decompose_all(x, [param], out=out)))[1]

    def decompose_all(
        self, x: torch.Tensor, params: Iterable[Any], *, out: Mapping[Any, Mapping[str, torch.Tensor]] | None = None
    ) -> Iterator[tuple[Any, dict]]:
        """All radii from one spectrum of the batch; ``out`` as for :meth:`freqprobe.Decomposer.decompose_all`."""
        import torch

        params = list(params)
        per_param = out is not None and not all(c in out for c in self.components)
        h, w = x.shape[-2:]
        # float32/float64 in their own precision; anything else (half, bfloat16) through float32
        work_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        b = x.numel() // (h * w) if h * w else 0
        xs = x.reshape(b, h, w).to(work_dtype)
        if b == 0:  # nothing to transform (MKL refuses a 0-length FFT batch)
            for r in params:
                low, high = self._targets(out[r] if per_param else out, x)
                yield r, {"low": low, "high": high}
            return
        spec = torch.fft.rfft2(xs)
        work = torch.empty_like(spec)
        for r in params:
            m = self.mask(h, w, r, x.device, work_dtype)
            low, high = self._targets(out[r] if per_param else out, x)
            lo, hi = self._view(low, (b, h, w), work_dtype), self._view(high, (b, h, w), work_dtype)
            torch.mul(spec, m, out=work)
            torch.fft.irfft2(work, s=(h, w), out=lo)
            torch.sub(xs, lo, out=hi)
            if lo.data_ptr() != low.data_ptr() or lo.dtype != low.dtype:
                low.copy_(lo.view(low.shape))
            if hi.data_ptr() != high.data_ptr() or hi.dtype != high.dtype:
                high.copy_(hi.view(high.shape))
            yield r, {"low": low, "high": high}

    @staticmethod
    def _targets(out: Mapping[str, torch.Tensor] | None, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high): the caller's buffers from ``out``, or new tensors like ``x``."""
        import torch

        if out is not None:
            return out["low"], out["high"]
        new = lambda: torch.empty_like(x, memory_format=torch.contiguous_format)  # noqa: E731
        return new(), new()

    @staticmethod
    def _view(t: torch.Tensor, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """A (B, H, W) view of ``t`` to write into, or a scratch tensor when ``t`` is not contiguous or not ``dtype``."""
        import torch

        if t.is_contiguous() and t.dtype == dtype:
            return t.view(shape)
        return torch.empty(shape, dtype=dtype, device=t.device)


class GaussianDecomposer(RadialFilterDecomposer):
    """Gaussian low-pass exp(-d²/2r²) of the centred spectrum (low) and its residual (high); r in frequency bins."""

    name = "gaussian"

    def transfer(self, d2: torch.Tensor, r: float) -> torch.Tensor:
        import torch

        q = torch.sqrt(d2) / r  # d/r, not d²/r²: r*r would underflow to 0 for a tiny r (0/0 at the centre)
        return torch.exp(-0.5 * q * q)


class ButterworthDecomposer(RadialFilterDecomposer):
    """Butterworth low-pass 1/(1+(d/r)^2n) of the centred spectrum (low) and its residual (high); r in bins, option order."""

    name = "butterworth"

    #: the steepest order accepted; from about 100 on the filter is already fft-radial's hard cut away from the ring
    MAX_ORDER = 1000

    def __init__(self, order: int = 2) -> None:
        super().__init__()
        self.order = self._check_order(order)

    @classmethod
    def _check_order(cls, order: Any) -> int:
        bad = UserFacingError(
            f"butterworth: order={order!r} must be a whole number from 1 to {cls.MAX_ORDER} "
            "(the steepness of the cut-off; default 2, larger is closer to fft-radial's hard cut)"
        )
        if isinstance(order, bool):
            raise bad
        if isinstance(order, int):
            n = order
        elif isinstance(order, float) and math.isfinite(order) and order.is_integer():
            n = int(order)
        else:
            raise bad
        if not 1 <= n <= cls.MAX_ORDER:
            raise bad
        return n

    def options(self) -> dict[str, Any]:
        return {"order": self.order}

    def transfer(self, d2: torch.Tensor, r: float) -> torch.Tensor:
        # overflow of (d/r)^(2n) to inf gives H = 0, underflow to 0 gives H = 1
        import torch

        q = torch.sqrt(d2) / r
        return 1.0 / (1.0 + q ** (2 * self.order))
