"""Built-in spectral decomposers: ``fft-radial`` (paper §3.1) and ``svd`` (paper §8)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Iterator, Mapping

import torch

from ..errors import UserFacingError
from ..hookspecs import hookimpl
from ..interfaces import Decomposer

RULES = ("exclusive", "inclusive")


def _freqs(n: int) -> torch.Tensor:
    """Signed integer frequency of each unshifted FFT index (the offset from where fftshift puts 0)."""
    k = torch.arange(n, dtype=torch.float64)
    return torch.where(k < (n + 1) // 2, k, k - n)


class FFTRadialDecomposer(Decomposer):
    """Paper §3.1: per channel, keep frequencies within Euclidean radius r of the centred spectrum (low) vs the rest (high).

    ``rule="exclusive"`` keeps distance < r (the authors' released code; the published numbers),
    ``rule="inclusive"`` keeps distance <= r (the paper's text). The centre is where ``fftshift``
    puts zero frequency, so odd and non-square sizes work. The mask is symmetric under
    f -> -f, so the masked spectrum is Hermitian and the real part of the inverse FFT is computed
    exactly with a real FFT pair; ``high = x - low`` (the same as inverting the complementary mask).
    """

    name = "fft-radial"
    components = ("low", "high")
    param_name = "r"
    param_type = float
    default_params = (4, 8, 12, 16)

    def __init__(self, rule: str = "exclusive") -> None:
        if rule not in RULES:
            raise UserFacingError(f"fft-radial: unknown boundary rule {rule!r}; use one of: {', '.join(RULES)}")
        self.rule = rule
        self._masks: dict[tuple, torch.Tensor] = {}
        self._warned: set[tuple] = set()

    def options(self) -> dict[str, Any]:
        return {"rule": self.rule}

    def mask(self, h: int, w: int, r: float, device: torch.device | str = "cpu", *, full: bool = False) -> torch.Tensor:
        """Low-pass mask (1 = kept) in unshifted layout: (h, w//2+1) for the real FFT, (h, w) with ``full``."""
        key = (h, w, float(r), self.rule, str(device), full)
        m = self._masks.get(key)
        if m is None:
            fu = _freqs(h).view(-1, 1)
            fv = _freqs(w).view(1, -1) if full else torch.arange(w // 2 + 1, dtype=torch.float64).view(1, -1)
            d = torch.sqrt(fu**2 + fv**2)
            keep = d < r if self.rule == "exclusive" else d <= r
            m = keep.to(torch.float32).to(device)
            self._masks[key] = m
            self._check_degenerate(h, w, float(r))
        return m

    def _check_degenerate(self, h: int, w: int, r: float) -> None:
        dmax = math.hypot(h // 2, w // 2)
        whole = r > dmax if self.rule == "exclusive" else r >= dmax
        key = (h, w, r)
        if whole and key not in self._warned:
            self._warned.add(key)
            warnings.warn(
                f"fft-radial: r={r:g} covers the whole {h}x{w} spectrum (farthest frequency at {dmax:.2f}, rule "
                f"{self.rule}): the low part equals the image and the high part is zero",
                UserWarning,
                stacklevel=4,
            )

    def decompose(self, x: torch.Tensor, param: Any, *, out: Mapping[str, torch.Tensor] | None = None) -> dict:
        return next(iter(self.decompose_all(x, [param], out=out)))[1]

    def decompose_all(
        self, x: torch.Tensor, params: Iterable[Any], *, out: Mapping[str, torch.Tensor] | None = None
    ) -> Iterator[tuple[Any, dict]]:
        """Decompose ``x`` at several radii, computing its spectrum once.

        With ``out`` the same two buffers are rewritten for every radius: consume each result
        before asking for the next.
        """
        h, w = x.shape[-2:]
        spec = torch.fft.rfft2(x)
        work = torch.empty_like(spec)
        for r in params:
            m = self.mask(h, w, r, x.device)
            torch.mul(spec, m, out=work)
            low = out["low"] if out is not None else torch.empty_like(x)
            high = out["high"] if out is not None else torch.empty_like(x)
            torch.fft.irfft2(work, s=(h, w), out=low)
            torch.sub(x, low, out=high)
            yield r, {"low": low, "high": high}


class SVDDecomposer(Decomposer):
    """Paper §8: per channel, SVD of each image; dominant part = top-k singular values, trailing part = the rest."""

    name = "svd"
    components = ("dominant", "trailing")
    param_name = "k"
    param_type = int
    default_params = (1, 2, 4, 8)

    def __init__(self) -> None:
        self._warned: set[tuple] = set()

    def decompose(self, x: torch.Tensor, param: Any, *, out: Mapping[str, torch.Tensor] | None = None) -> dict:
        return next(iter(self.decompose_all(x, [param], out=out)))[1]

    def decompose_all(self, x, params, *, out=None):
        h, w = x.shape[-2:]
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        for k in params:
            k = int(k)
            kk = min(k, min(h, w))
            if k >= min(h, w) and (h, w, k) not in self._warned:
                self._warned.add((h, w, k))
                warnings.warn(
                    f"svd: k={k} keeps every singular value of a {h}x{w} image: the trailing part is zero",
                    UserWarning,
                    stacklevel=4,
                )
            dom = out["dominant"] if out is not None else torch.empty_like(x)
            trl = out["trailing"] if out is not None else torch.empty_like(x)
            torch.matmul(u[..., :kk] * s[..., None, :kk], vh[..., :kk, :], out=dom)
            torch.sub(x, dom, out=trl)
            yield k, {"dominant": dom, "trailing": trl}


@hookimpl
def register_decomposers():
    return [FFTRadialDecomposer, SVDDecomposer]
