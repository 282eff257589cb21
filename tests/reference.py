"""The one independent float64 reference of the paper's decompositions, shared by every test.

fft-radial (§3.1), written as the authors' code does it: per image and channel ``fft2``,
``fftshift``, multiply by the radial mask, ``ifftshift``, ``ifft2``, real part.

The mask is the definition of which frequencies a radius keeps, so it is decided exactly here
too: a bin at integer offset (u, v) from where ``fftshift`` puts zero frequency has distance
``math.sqrt(u*u + v*v)`` — a scalar IEEE-754 square root, correctly rounded on every processor —
and is kept when that distance is ``< r`` (``exclusive``) or ``<= r`` (``inclusive``). No
vectorised square root is involved (those may be one ulp off, which is what broke the suite on
AVX-512 machines). freqprobe decides the same rule differently (an integer threshold from
rational arithmetic), so the two are independent.

svd (§8): per channel, keep the top-k singular values.
"""

from __future__ import annotations

import math

import numpy as np


def sq_distance(h: int, w: int) -> np.ndarray:
    """Integer squared distance of every bin of the fftshifted (centred) spectrum from its centre."""
    u = np.arange(h, dtype=np.int64)[:, None] - h // 2
    v = np.arange(w, dtype=np.int64)[None, :] - w // 2
    return u * u + v * v


def distance_of(k: int) -> float:
    """The float64 distance of a bin with squared distance ``k``: the correctly rounded square root."""
    return math.sqrt(int(k))


def kept(h: int, w: int, r: float, rule: str = "exclusive") -> np.ndarray:
    """Boolean low-pass mask in the centred layout."""
    d2 = sq_distance(h, w)
    keep = {int(k): (distance_of(k) < r if rule == "exclusive" else distance_of(k) <= r) for k in np.unique(d2)}
    return np.vectorize(keep.__getitem__, otypes=[bool])(d2)


def on_ring(h: int, w: int, r: float) -> np.ndarray:
    """Bins whose distance equals r (where the two rules differ)."""
    d2 = sq_distance(h, w)
    ring = {int(k): distance_of(k) == r for k in np.unique(d2)}
    return np.vectorize(ring.__getitem__, otypes=[bool])(d2)


def fft_radial(x, r: float, rule: str = "exclusive") -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of N×C×H×W (or any ...×H×W) images in float64, per image and channel."""
    x = np.asarray(x, dtype=np.float64)
    h, w = x.shape[-2:]
    keep = kept(h, w, r, rule)
    low = np.empty_like(x)
    high = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:-2]):
        f = np.fft.fftshift(np.fft.fft2(x[idx]))
        low[idx] = np.real(np.fft.ifft2(np.fft.ifftshift(f * keep)))
        high[idx] = np.real(np.fft.ifft2(np.fft.ifftshift(f * ~keep)))
    return low, high


def fft_ring(x, r: float) -> np.ndarray:
    """The inverse transform of the ring of r alone (inclusive low minus exclusive low)."""
    x = np.asarray(x, dtype=np.float64)
    ring = on_ring(*x.shape[-2:], r)
    f = np.fft.fftshift(np.fft.fft2(x), axes=(-2, -1))
    return np.real(np.fft.ifft2(np.fft.ifftshift(f * ring, axes=(-2, -1))))


def svd_dominant(x, k: int) -> np.ndarray:
    """Per image and channel, the rank-k truncation (top-k singular values)."""
    x = np.asarray(x, dtype=np.float64)
    dom = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:-2]):
        u, s, vh = np.linalg.svd(x[idx], full_matrices=False)
        dom[idx] = (u[:, :k] * s[:k]) @ vh[:k]
    return dom
