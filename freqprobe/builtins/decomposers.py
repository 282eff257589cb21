"""Built-in spectral decomposers: ``fft-radial`` (paper §3.1) and ``svd`` (paper §8)."""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from ..errors import UserFacingError
from ..hookspecs import hookimpl
from ..interfaces import Decomposer

if TYPE_CHECKING:  # annotations only: torch is imported where it is used, so importing this plugin stays cheap
    import torch

RULES = ("exclusive", "inclusive")
log = logging.getLogger("freqprobe.decomposers")


_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _caller_stacklevel() -> int:
    """``stacklevel`` for a warning issued from this package: point at the first frame outside it."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PKG_DIR):
        frame, level = frame.f_back, level + 1
    return level


def _freqs(n: int) -> torch.Tensor:
    """Signed integer frequency of each unshifted FFT index (the offset from where fftshift puts 0), int64."""
    import torch

    k = torch.arange(n, dtype=torch.int64)
    return torch.where(k < (n + 1) // 2, k, k - n)


def max_kept_sq_distance(r: float, rule: str = "exclusive") -> int:
    """The largest squared distance ``k = u² + v²`` a frequency bin may have and still be kept at radius ``r``.

    This is the one membership rule of ``fft-radial``: a bin is in the low part exactly when its
    integer squared distance from the centre is ``<=`` this number, decided without any floating
    point on the bins, so the result does not depend on the processor, the SIMD path or the device.

    A bin's distance is ``√k`` compared with ``r`` as float64 numbers compare: the bin is *on the
    ring* of ``r`` when ``√k`` rounds to ``r`` (so ``r = math.sqrt(2)`` is the ring of the corner
    bins (1, 1), and ``r = 5`` that of (3, 4) and (5, 0)). ``exclusive`` keeps ``√k < r`` (the
    ring is high), ``inclusive`` keeps ``√k <= r`` (the ring is low). Exactly, with ``r⁻``/``r⁺``
    the floats next to ``r``: ``fl(√k) < r`` iff ``k < ((r⁻ + r) / 2)²`` and ``fl(√k) <= r`` iff
    ``k < ((r + r⁺) / 2)²``, evaluated once in rational arithmetic.
    """
    if rule not in RULES:
        raise ValueError(f"unknown boundary rule {rule!r}")
    r = float(r)
    if r != r or r < 0.0:
        return -1  # nothing is kept
    if math.isinf(r):
        return sys.maxsize  # everything is kept
    rf = Fraction(r)
    side = math.nextafter(r, 0.0) if rule == "exclusive" else math.nextafter(r, math.inf)
    mid = (rf + Fraction(side)) / 2
    bound = mid * mid  # keep k < bound; equality needs √k = mid, a midpoint that is an integer (r >= 2**53)
    return math.ceil(bound) - 1


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

    #: ``unit``: ``px`` (radii in frequency bins, the paper's r) or ``nyquist`` (radii as a fraction of the
    #: shorter side's Nyquist frequency, ``r_px = r * min(H, W) / 2`` per image: the same share of every
    #: image's spectrum when sizes differ, as in COCO)
    UNITS = ("px", "nyquist")

    def __init__(self, rule: str = "exclusive", unit: str = "px") -> None:
        if rule not in RULES:
            raise UserFacingError(f"fft-radial: unknown boundary rule {rule!r}; use one of: {', '.join(RULES)}")
        if unit not in self.UNITS:
            raise UserFacingError(f"fft-radial: unknown radius unit {unit!r}; use unit=px (frequency bins) or "
                                  "unit=nyquist (a fraction of each image's shorter-side Nyquist frequency)")
        self.rule = rule
        self.unit = unit
        self._masks: dict[tuple, torch.Tensor] = {}
        self._warned: set[tuple] = set()

    def options(self) -> dict[str, Any]:
        return {"rule": self.rule} if self.unit == "px" else {"rule": self.rule, "unit": self.unit}

    @staticmethod
    def pixel_radius(r: float, h: int, w: int, unit: str = "nyquist") -> float:
        """The radius in frequency bins of ``r`` given in ``unit`` for an h×w image (``nyquist``: ``r * min(h, w) / 2``)."""
        return float(r) if unit == "px" else float(r) * (min(h, w) / 2.0)

    def mask(self, h: int, w: int, r: float, device: torch.device | str = "cpu", *, full: bool = False) -> torch.Tensor:
        """Low-pass mask (1 = kept) in unshifted layout: (h, w//2+1) for the real FFT, (h, w) with ``full``."""
        import torch

        key = (h, w, float(r), self.rule, str(device), full)
        m = self._masks.get(key)
        if m is None:
            fu = _freqs(h).view(-1, 1)
            fv = _freqs(w).view(1, -1) if full else torch.arange(w // 2 + 1, dtype=torch.int64).view(1, -1)
            keep = fu * fu + fv * fv <= self.max_sq(r)  # integers: exact on every processor and device
            m = keep.to(torch.float32).to(device)
            self._masks[key] = m
            self._check_degenerate(h, w, float(r))
        return m

    def max_sq(self, r: float) -> int:
        """The largest kept squared distance at radius ``r`` under this rule (see :func:`max_kept_sq_distance`)."""
        return max_kept_sq_distance(r, self.rule)

    def _check_degenerate(self, h: int, w: int, r: float) -> None:
        dmax = math.hypot(h // 2, w // 2)
        whole = self.max_sq(r) >= (h // 2) ** 2 + (w // 2) ** 2
        key = (h, w, r)
        if whole and key not in self._warned:
            self._warned.add(key)
            warnings.warn(
                f"fft-radial: r={r:g} covers the whole {h}x{w} spectrum (farthest frequency at {dmax:.2f}, rule "
                f"{self.rule}): the low part equals the image and the high part is zero",
                UserWarning,
                stacklevel=_caller_stacklevel(),
            )

    def decompose(self, x: torch.Tensor, param: Any, *, out: Mapping[str, torch.Tensor] | None = None) -> dict:
        return next(iter(self.decompose_all(x, [param], out=out)))[1]

    def decompose_all(
        self, x: torch.Tensor, params: Iterable[Any], *, out: Mapping[str, torch.Tensor] | None = None
    ) -> Iterator[tuple[Any, dict]]:
        """Decompose ``x`` at several radii, computing its spectrum once.

        ``out`` is either one ``{"low": t, "high": t}`` pair, rewritten for every radius (consume
        each result before asking for the next), or a mapping ``{r: {"low": t, "high": t}}`` with
        a pair per radius. With per-radius buffers (or no ``out``) small images are decomposed
        chunk by chunk for all radii at once, so each chunk's spectrum never leaves the cache:
        the fastest way to decompose a large batch (see docs/benchmarks.md).

        Small images (sides <= ``MATMUL_MAX_SIDE``) use an exact real-Fourier-basis formulation
        (two small GEMMs each way, pruned to the frequencies below r); larger ones use
        rfft2/irfft2. Both run over chunks of the batch so the work buffers stay in cache.
        See docs/benchmarks.md for the measurements behind this.
        """
        params = list(params)
        if self.unit != "px":  # relative radii: this batch's size fixes them in frequency bins
            h, w = x.shape[-2:]
            px = [self.pixel_radius(p, h, w, self.unit) for p in params]
            if out is not None and not ("low" in out and "high" in out):
                out = {q: out[p] for p, q in zip(params, px)}
            unit, self.unit = self.unit, "px"
            try:
                for p, (_, comps) in zip(params, self.decompose_all(x, px, out=out)):
                    yield p, comps
            finally:
                self.unit = unit
            return
        per_param = out is not None and not ("low" in out and "high" in out)
        if per_param:
            missing = [p for p in params if p not in out]
            if missing:
                raise UserFacingError(f"fft-radial: out has no buffers for r={missing[0]!r}; give a {{'low', 'high'}} pair per radius")
        if self._use_triton(x):
            yield from self._decompose_triton(x, params, out, per_param)
            return
        basis = self._use_basis(x, params)
        if basis and (out is None or per_param):
            yield from self._decompose_basis_all(x, params, out)
        elif per_param:
            for r in params:
                yield from self._decompose_fft(x, [r], out[r])
        elif basis:
            yield from self._decompose_basis(x, params, out)
        else:
            yield from self._decompose_fft(x, params, out)

    # -- internals ---------------------------------------------------------------------------

    #: largest side for which the real-basis GEMM path beats rfft2/irfft2 (measured on CPU).
    MATMUL_MAX_SIDE = 64
    #: on CUDA, larger images use the real basis too when the kept band of rows/columns is at most this wide
    #: (the GEMMs then read the batch once and stay memory-bound); wider bands use rfft2/irfft2
    CUDA_MAX_BAND = 64
    #: target bytes of one chunk's input (the outputs and work buffers are about as big again).
    CHUNK_BYTES = 1 << 20
    #: on CUDA, chunks are as large as this: a few large kernels instead of many small ones
    CUDA_CHUNK_BYTES = 1 << 28
    #: the fused Triton kernel for float32 planes up to 64x64 on CUDA: "auto", "off", or "force"
    #: ("force" also runs it on CPU tensors, through Triton's interpreter: for tests)
    TRITON = "auto"
    _triton_broken: str | None = None

    def _use_triton(self, x: torch.Tensor) -> bool:
        import torch

        from . import _radial_triton

        if self.TRITON == "off" or FFTRadialDecomposer._triton_broken or x.dtype != torch.float32 or x.numel() == 0:
            return False
        if max(x.shape[-2:]) > _radial_triton.MAX_SIDE:
            return False
        if self.TRITON != "force" and x.device.type != "cuda":
            return False
        return _radial_triton.available()

    def _use_basis(self, x: torch.Tensor, params: list | None = None) -> bool:
        import torch

        if x.dtype not in (torch.float32, torch.float64) or x.numel() == 0:
            return False
        if max(x.shape[-2:]) > self.MATMUL_MAX_SIDE:
            if x.device.type != "cuda" or not params:
                return False
            h, w = x.shape[-2:]
            kmax = max(self.max_sq(float(r)) for r in params)
            band = 2 * math.isqrt(max(kmax, 0)) + 1  # rows/columns of the real basis with f² <= kmax
            if band > self.CUDA_MAX_BAND:
                return False
        if x.dtype == torch.float32:
            # The basis path relies on true fp32 GEMMs; a reduced-precision matmul setting (TF32,
            # bf16) would cost ~1e-3 accuracy, so keep the FFT path then.
            if torch.get_float32_matmul_precision() != "highest":
                return False
            if x.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
                return False
        return x.device.type in ("cpu", "cuda")

    def _fused_high(self, device: torch.device) -> bool:
        """On CUDA one GEMM writes ``high = x - Qhᵀ Z`` (baddbmm) instead of a separate subtraction pass."""
        return device.type == "cuda"

    def _chunk_rows(self, plane_bytes: int, total: int, device: torch.device | None = None) -> int:
        budget = self.CUDA_CHUNK_BYTES if device is not None and device.type == "cuda" else self.CHUNK_BYTES
        return max(1, min(total, budget // max(1, plane_bytes)))

    def _decompose_triton(self, x: torch.Tensor, params: list, out, per_param: bool) -> Iterator[tuple[Any, dict]]:
        import torch

        from . import _radial_triton

        h, w = x.shape[-2:]
        shape = (x.numel() // (h * w), h, w)
        xs = x.reshape(shape).contiguous()
        cpu = torch.device("cpu")
        qh, _ = self._basis(h, torch.float64, cpu)
        qw, _ = self._basis(w, torch.float64, cpu)
        for i, r in enumerate(params):
            self.mask(h, w, r, x.device)  # degenerate-radius warning
            key = ("triton", h, w, float(r), self.rule, str(x.device))
            ops = self._masks.get(key)
            if ops is None:
                ops = _radial_triton.padded_operands(qh, qw, self._basis_mask(h, w, float(r), torch.float64, cpu), h, w, x.device)
                self._masks[key] = ops
            low, lo, high, hi = self._targets(out[r] if per_param else out, x, shape)
            try:
                _radial_triton.lowpass(xs, lo, hi, ops)
            except Exception as exc:  # no compiler, no driver support...: the GEMM/FFT paths give the same result
                FFTRadialDecomposer._triton_broken = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log.warning(
                    "fft-radial: the Triton kernel is unavailable (%s); using the GEMM/FFT paths", FFTRadialDecomposer._triton_broken)
                rest = params[i:]
                yield from self.decompose_all(x, rest, out=out)
                return
            yield r, self._publish(low, lo, high, hi)

    @staticmethod
    def _flat_out(t: torch.Tensor | None, like: torch.Tensor, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """(user-visible tensor, contiguous (B, H, W) view to write into)."""
        import torch

        if t is None:
            t = torch.empty_like(like, memory_format=torch.contiguous_format)
        if t.is_contiguous():
            return t, t.view(shape)
        return t, torch.empty(shape, dtype=t.dtype, device=t.device)

    def _basis(self, n: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Orthonormal real Fourier basis of length ``n`` (rows), ordered by |frequency|, and those |f| (int64)."""
        import torch

        key = ("basis", n, dtype, str(device))
        hit = self._masks.get(key)
        if hit is None:
            t = torch.arange(n, dtype=torch.float64)
            rows, fs = [torch.full((n,), 1.0 / math.sqrt(n), dtype=torch.float64)], [0]
            for f in range(1, n // 2 + 1):
                ang = (2.0 * math.pi * f / n) * t
                if 2 * f == n:  # Nyquist: cos only
                    rows.append(torch.cos(ang) / math.sqrt(n))
                    fs.append(f)
                else:
                    rows += [torch.cos(ang) * math.sqrt(2.0 / n), torch.sin(ang) * math.sqrt(2.0 / n)]
                    fs += [f, f]
            hit = (torch.stack(rows).to(device=device, dtype=dtype), torch.tensor(fs, dtype=torch.int64))
            self._masks[key] = hit
        return hit

    def _basis_mask(self, h: int, w: int, r: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The low-pass mask in the real basis, cropped to the kept rows/columns: (kh, kw)."""
        key = ("basis-mask", h, w, float(r), self.rule, str(device), dtype)
        m = self._masks.get(key)
        if m is None:
            fh, fw = self._basis(h, dtype, device)[1], self._basis(w, dtype, device)[1]
            kmax = self.max_sq(r)
            # rows/columns with |f| beyond r hold no kept bin; the same integer rule as mask()
            kh, kw = int((fh * fh <= kmax).sum()), int((fw * fw <= kmax).sum())
            d2 = fh[:kh].view(-1, 1) ** 2 + fw[:kw].view(1, -1) ** 2  # the signs do not matter
            m = (d2 <= kmax).to(device=device, dtype=dtype)
            self._masks[key] = m
        return m

    @staticmethod
    def _publish(low: torch.Tensor, lo: torch.Tensor, high: torch.Tensor, hi: torch.Tensor) -> dict:
        """Copy the (B, H, W) work views back into non-contiguous user buffers; the result dict."""
        if lo.data_ptr() != low.data_ptr():
            low.copy_(lo.view(low.shape))
        if hi.data_ptr() != high.data_ptr():
            high.copy_(hi.view(high.shape))
        return {"low": low, "high": high}

    def _targets(self, out: Mapping[str, torch.Tensor] | None, x: torch.Tensor, shape: tuple) -> tuple:
        """(low, lo, high, hi): the user-visible outputs (from ``out`` or new) and contiguous views to write."""
        low, lo = self._flat_out(out["low"] if out is not None else None, x, shape)
        high, hi = self._flat_out(out["high"] if out is not None else None, x, shape)
        return low, lo, high, hi

    def _decompose_basis(self, x: torch.Tensor, params: list, out) -> Iterator[tuple[Any, dict]]:
        import torch

        # Radius-major, for one {"low", "high"} pair rewritten per radius: the spectrum of the
        # whole batch is computed once (for the largest r), then inverted radius by radius.
        plan = _BasisPlan(self, x, params)
        spec = torch.empty(plan.b, plan.khm, plan.kwm, dtype=x.dtype, device=x.device)
        for s, e in plan.chunks():
            plan.forward(s, e, spec[s:e])
        for i, r in enumerate(params):
            low, lo, high, hi = self._targets(out, x, plan.shape)
            for s, e in plan.chunks():
                plan.inverse(i, spec[s:e], s, e, lo, hi)
            yield r, self._publish(low, lo, high, hi)

    def _decompose_basis_all(self, x: torch.Tensor, params: list, out) -> Iterator[tuple[Any, dict]]:
        import torch

        # Chunk-major, for per-radius buffers (or none): every radius of a chunk is finished while
        # the chunk's spectrum is in cache, instead of writing the whole batch's spectrum to memory
        # and reading it back once per radius (measured ~30% faster on 10k CIFAR-sized images).
        plan = _BasisPlan(self, x, params)
        targets = [self._targets(out[r] if out is not None else None, x, plan.shape) for r in params]
        spec = torch.empty(plan.cb, plan.khm, plan.kwm, dtype=x.dtype, device=x.device)
        for s, e in plan.chunks():
            plan.forward(s, e, spec[: e - s])
            for i, (_, lo, _, hi) in enumerate(targets):
                plan.inverse(i, spec[: e - s], s, e, lo, hi)
        for r, t in zip(params, targets):
            yield r, self._publish(*t)

    def _decompose_fft(self, x: torch.Tensor, params: list, out) -> Iterator[tuple[Any, dict]]:
        import torch

        h, w = x.shape[-2:]
        b = x.numel() // max(1, h * w)
        xs = x.reshape(b, h, w)
        if b == 0 and h * w > 0:  # an empty batch: nothing to transform (MKL refuses a 0-length FFT batch)
            for r in params:
                self.mask(h, w, r, x.device)  # same warnings as a full batch
                yield r, self._publish(*self._targets(out, x, (b, h, w)))
            return
        spec = torch.fft.rfft2(xs)
        cb = self._chunk_rows(h * w * x.element_size(), b, x.device)
        work = torch.empty((cb,) + spec.shape[1:], dtype=spec.dtype, device=spec.device)
        for r in params:
            m = self.mask(h, w, r, x.device)
            low, lo, high, hi = self._targets(out, x, (b, h, w))
            for s in range(0, b, cb):
                e = min(b, s + cb)
                wk = work[: e - s]
                torch.mul(spec[s:e], m, out=wk)
                torch.fft.irfft2(wk, s=(h, w), out=lo[s:e])
                torch.sub(xs[s:e], lo[s:e], out=hi[s:e])
            yield r, self._publish(low, lo, high, hi)


class _BasisPlan:
    """The real-Fourier-basis filter for one batch and set of radii, applied chunk by chunk.

    The radial mask depends only on fu^2 + fv^2, so it is even in each of fu and fv and the
    filter is diagonal in the separable real (cos/sin) Fourier basis Q:
        low = Qh^T ((Qh x Qw^T) * M) Qw
    with Q orthonormal and exact. Rows of Q are sorted by |f|, so only the first kh (kw) rows with
    |f| < r matter; the spectrum is computed once, for the largest r.
    """

    def __init__(self, dec: FFTRadialDecomposer, x: torch.Tensor, params: list) -> None:
        import torch

        h, w = x.shape[-2:]
        dev, dt = x.device, x.dtype
        self.b = x.numel() // (h * w)
        self.shape = (self.b, h, w)
        self.xs = x.reshape(self.shape)
        qh_all, _ = dec._basis(h, dt, dev)
        qw_all, _ = dec._basis(w, dt, dev)
        self.masks = [dec._basis_mask(h, w, float(r), dt, dev) for r in params]
        for r in params:
            dec.mask(h, w, r, dev)  # degenerate-radius warning, mask cache
        self.khm = max((m.shape[0] for m in self.masks), default=0)
        self.kwm = max((m.shape[1] for m in self.masks), default=0)
        self.qh, self.qwt = qh_all[: self.khm], qw_all[: self.kwm].t()
        # per radius: (mask, kh, kw, Qh[:kh]^T, Qw[:kw])
        self.inv = [(m, *m.shape, qh_all[: m.shape[0]].t().contiguous(), qw_all[: m.shape[1]].contiguous()) for m in self.masks]
        self.cb = dec._chunk_rows(h * w * x.element_size(), self.b, dev)
        self.fused_high = dec._fused_high(dev)
        self.t1 = torch.empty(self.cb, h, self.kwm, dtype=dt, device=dev)
        self.ym = torch.empty(self.cb * self.khm * self.kwm, dtype=dt, device=dev)
        self.t2 = torch.empty(self.cb * self.khm * w, dtype=dt, device=dev)

    def chunks(self) -> Iterator[tuple[int, int]]:
        for s in range(0, self.b, self.cb):
            yield s, min(self.b, s + self.cb)

    def forward(self, s: int, e: int, spec: torch.Tensor) -> None:
        """spec (n, khm, kwm) = Qh x Qw^T for planes s:e."""
        import torch

        n, h, w = e - s, self.shape[1], self.shape[2]
        t1 = self.t1[:n]
        torch.matmul(self.xs[s:e].reshape(n * h, w), self.qwt, out=t1.view(n * h, self.kwm))
        torch.matmul(self.qh, t1, out=spec)

    def inverse(self, i: int, spec: torch.Tensor, s: int, e: int, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """lo[s:e] = low part for radius number i from the chunk's spectrum; hi[s:e] = x - lo."""
        import torch

        m, kh, kw, qht, qw = self.inv[i]
        n, w = e - s, self.shape[2]
        y = self.ym[: n * kh * kw].view(n, kh, kw)
        z = self.t2[: n * kh * w].view(n, kh, w)
        torch.mul(spec[:, :kh, :kw], m, out=y)
        torch.matmul(y.view(n * kh, kw), qw, out=z.view(n * kh, w))
        torch.matmul(qht, z, out=lo[s:e])
        if self.fused_high:
            torch.baddbmm(self.xs[s:e], qht.expand(n, *qht.shape), z, alpha=-1.0, out=hi[s:e])
        else:
            torch.sub(self.xs[s:e], lo[s:e], out=hi[s:e])


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
        """All ranks from one SVD per plane; ``out`` as for :meth:`Decomposer.decompose_all`."""
        import torch

        params = list(params)
        per_param = out is not None and not ("dominant" in out and "trailing" in out)
        h, w = x.shape[-2:]
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        for k in params:
            o = out[k] if per_param else out
            k = int(k)
            kk = min(k, min(h, w))
            if k >= min(h, w) and (h, w, k) not in self._warned:
                self._warned.add((h, w, k))
                warnings.warn(
                    f"svd: k={k} keeps every singular value of a {h}x{w} image: the trailing part is zero",
                    UserWarning,
                    stacklevel=_caller_stacklevel(),
                )
            dom = o["dominant"] if o is not None else torch.empty_like(x)
            trl = o["trailing"] if o is not None else torch.empty_like(x)
            torch.matmul(u[..., :kk] * s[..., None, :kk], vh[..., :kk, :], out=dom)
            torch.sub(x, dom, out=trl)
            yield k, {"dominant": dom, "trailing": trl}


@hookimpl
def register_decomposers():
    return [FFTRadialDecomposer, SVDDecomposer]


@hookimpl
def add_options(parser):
    parser.add_option("--rule", type=("exclusive", "inclusive"), decomposer="fft-radial", key="rule", commands=("run", "decompose"),
                      help="fft-radial boundary: distance < r (exclusive, default; the authors' code) or <= r (the paper's text).")
