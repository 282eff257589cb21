"""A fused Triton kernel for ``fft-radial`` on small planes (sides <= 64), used on CUDA.

One program per image plane: load the plane once, take its real-Fourier-basis spectrum pruned to
the kept frequencies (``S = Qh_k X Qw_kᵀ``), mask it, invert (``L = Qh_kᵀ (S ∘ M) Qw_k``) and
store ``low = L`` and ``high = X − L``. Per radius that reads the batch once and writes both parts:
the memory traffic of the copy floor, with the arithmetic in registers. ``tl.dot`` runs with
``input_precision="ieee"`` (true fp32 FMAs, no TF32), so results match the GEMM and FFT paths to
float32 rounding. Tested on CPU through Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import functools
import importlib.util

import torch

MAX_SIDE = 64


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def radial_lowpass(x_ptr, lo_ptr, hi_ptr, qh_ptr, qw_ptr, m_ptr,
                       H: tl.constexpr, W: tl.constexpr, HB: tl.constexpr, WB: tl.constexpr, KB: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        h = tl.arange(0, HB)
        w = tl.arange(0, WB)
        k = tl.arange(0, KB)
        inb = (h[:, None] < H) & (w[None, :] < W)
        off = pid * (H * W) + h[:, None] * W + w[None, :]
        x = tl.load(x_ptr + off, mask=inb, other=0.0)
        qh = tl.load(qh_ptr + k[:, None] * HB + h[None, :])  # (KB, HB): kept basis rows, zero padded
        qw = tl.load(qw_ptr + k[:, None] * WB + w[None, :])  # (KB, WB)
        t = tl.dot(qh, x, input_precision="ieee")  # (KB, WB)
        s = tl.dot(t, tl.trans(qw), input_precision="ieee")  # (KB, KB): the pruned spectrum
        m = tl.load(m_ptr + k[:, None] * KB + k[None, :])
        u = tl.dot(tl.trans(qh), s * m, input_precision="ieee")  # (HB, KB)
        lo = tl.dot(u, qw, input_precision="ieee")  # (HB, WB)
        tl.store(lo_ptr + off, lo, mask=inb)
        tl.store(hi_ptr + off, x - lo, mask=inb)

    return radial_lowpass


def _pow2(n: int) -> int:
    return max(16, 1 << (max(1, n) - 1).bit_length())


def available() -> bool:
    return importlib.util.find_spec("triton") is not None


def padded_operands(qh: torch.Tensor, qw: torch.Tensor, mask: torch.Tensor, h: int, w: int, device) -> tuple:
    """Zero-padded basis rows (KB×HB, KB×WB) and mask (KB×KB) for one radius, float32 on ``device``."""
    kh, kw = mask.shape
    hb, wb, kb = _pow2(h), _pow2(w), _pow2(max(kh, kw))
    qhp = torch.zeros(kb, hb, dtype=torch.float32, device=device)
    qwp = torch.zeros(kb, wb, dtype=torch.float32, device=device)
    mp = torch.zeros(kb, kb, dtype=torch.float32, device=device)
    qhp[:kh, :h] = qh[:kh].to(device=device, dtype=torch.float32)
    qwp[:kw, :w] = qw[:kw].to(device=device, dtype=torch.float32)
    mp[:kh, :kw] = mask.to(device=device, dtype=torch.float32)
    return qhp, qwp, mp, hb, wb, kb


def lowpass(xs: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, operands: tuple) -> None:
    """``lo``/``hi`` (P, H, W, contiguous float32) = low/high parts of planes ``xs`` (P, H, W, contiguous)."""
    p, h, w = xs.shape
    if p == 0:
        return
    qhp, qwp, mp, hb, wb, kb = operands
    _kernel()[(p,)](xs, lo, hi, qhp, qwp, mp, H=h, W=w, HB=hb, WB=wb, KB=kb, num_warps=4 if max(hb, wb, kb) <= 32 else 8)
