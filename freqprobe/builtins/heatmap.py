"""``--probe fourier-heatmap``: the error rate under a Fourier basis perturbation at every frequency (Yin et al., NeurIPS 2019).

For each frequency (u, v) of the centred spectrum of the run's H×W images and each budget E
(``--heatmap-eps``), the model is evaluated on ``clip(x + r·E·U_uv, 0, 1)``: ``U_uv`` is the real
Fourier basis image of unit L2 norm whose spectrum is non-zero only at (u, v) and its mirror (−u, −v)
(a cosine, the same for every channel), and ``r ∈ {−1, +1}`` is drawn per image and channel by
:func:`signs` from the run's seed, the sample's index and (u, v) — so resume, the batch size,
``--workers`` and torchrun give identical results. A frequency and its mirror have the same basis
image, so each pair is evaluated once and written to both cells. Frequencies farther than
``--max-freq`` from the centre may be skipped.

Every (u, v, E) is one variant of the one evaluation loop (stacked into shared forward passes like the
other probes' variants); the probe keeps no per-sample table (``frequencies × images`` rows). It writes
``heatmap_eps<E>.csv`` (u, v, distance, error, n and each metric's value), ``heatmap_eps<E>.png`` (low
frequencies in the centre) and summary rows that condense each map: the mean error over all frequencies,
below and at-or-above the split radius (``--probe-opt split=R``; default a quarter of the shorter side).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterator

from ..errors import UserFacingError
from ..hookspecs import hookimpl
from ..interfaces import ProbeResult, SourceBatch, Variant, VariantSource
from ..probing import Probe, RunContext
from ..sources import OriginalSource
from ..tables import fmt_param

#: the variant name of a perturbed image (param: "u,v"; the ``eps`` column: the budget)
VARIANT = "fourier"
#: the stacked variant images of one batch are kept under this many bytes (the batch shrinks to fit)
STACK_BYTES = 256 << 20


def frequencies(h: int, w: int, max_freq: float | None = None) -> list[tuple[int, int]]:
    """One (u, v) of each mirror pair {(u, v), (−u, −v)} of the centred h×w spectrum (u: rows, v: columns, from
    −h//2 and −w//2), within ``max_freq`` of the centre when given; in row-major order of the centred grid."""
    out = []
    for u in range(-(h // 2), h - h // 2):
        for v in range(-(w // 2), w - w // 2):
            if max_freq is not None and u * u + v * v > max_freq * max_freq:
                continue
            if (u, v) <= mirror(u, v, h, w):
                out.append((u, v))
    return out


def mirror(u: int, v: int, h: int, w: int) -> tuple[int, int]:
    """The frequency (−u, −v) in centred coordinates (the Nyquist row and column are their own mirror)."""
    return ((-u + h // 2) % h) - h // 2, ((-v + w // 2) % w) - w // 2


def basis(u: int, v: int, h: int, w: int, device: Any = None, dtype: Any = None):
    """``U_uv``: cos(2π(u·m/h + v·n/w)) over the h×w grid, scaled to unit L2 norm (float64 sums, then ``dtype``)."""
    import torch

    m = torch.arange(h, dtype=torch.float64).view(-1, 1)
    n = torch.arange(w, dtype=torch.float64).view(1, -1)
    # the phase reduced exactly in integers first (u·m mod h), so large images keep full precision
    phase = 2 * math.pi * ((u * m) % h / h + (v * n) % w / w)
    b = torch.cos(phase)
    b = b / torch.linalg.vector_norm(b)
    return b.to(device=device, dtype=dtype or torch.float32)


_MASK = 0x7FFFFFFF


def _mix(x):
    """A few rounds of an integer hash kept below 2³¹ (exact in int64 on every device and processor)."""
    for _ in range(3):
        x = (x * 1103515245 + 12345) & _MASK
        x = x ^ (x >> 13)
    return x


def signs(seed: int, indices, u: int, v: int, channels: int, device: Any = None):
    """``r ∈ {−1, +1}`` per image and channel (an N×C×1×1 float tensor) for frequency (u, v): a function of the seed,
    the samples' indices in the data set, (u, v) and the channel only."""
    import torch

    idx = torch.as_tensor(indices, dtype=torch.int64).to(device).view(-1, 1)
    ch = torch.arange(channels, dtype=torch.int64, device=idx.device).view(1, -1)
    x = _mix(idx & _MASK)
    x = _mix(x ^ (int(seed) & _MASK))
    x = _mix(x ^ ((u + 65536) * 131071 & _MASK))
    x = _mix(x ^ ((v + 65536) * 8191 & _MASK))
    x = _mix(x ^ ch)
    r = 1.0 - 2.0 * ((x >> 17) & 1).to(torch.float32)
    return r.view(len(idx), channels, 1, 1)


class FourierPerturbationSource(VariantSource):
    """The original images and, per budget and frequency, ``clip(x + r·E·U_uv, 0, 1)`` (variant ``fourier``, param
    ``"u,v"``, column ``eps``)."""

    def __init__(self, size: tuple[int, int], eps: list[float], freqs: list[tuple[int, int]], seed: int) -> None:
        self.size, self.eps, self.freqs, self.seed = tuple(size), list(eps), list(freqs), int(seed)
        self.base = OriginalSource()
        self.of = {(e, f): Variant(VARIANT, f"{f[0]},{f[1]}", (("eps", e),), False) for e in self.eps for f in self.freqs}
        self._basis: dict = {}

    def variants(self) -> list[Variant]:
        return [self.base.variant, *self.of.values()]

    def generate(self, batch: SourceBatch, ctx: Any, out: Any = None) -> Iterator[tuple[Variant, Any]]:
        import torch

        x = batch.images
        if isinstance(x, (list, tuple)) or tuple(x.shape[-2:]) != self.size:
            got = "images of several sizes" if isinstance(x, (list, tuple)) else f"{x.shape[-2]}x{x.shape[-1]} images"
            raise UserFacingError(f"fourier-heatmap: the data holds {got}, but its first image is "
                                  f"{self.size[0]}x{self.size[1]}: a heat map needs one size (resize the data, e.g. --image-size)")
        yield self.base.variant, x
        h, w = self.size
        for f in self.freqs:
            key = (f, x.device, x.dtype)
            if key not in self._basis:
                self._basis[key] = basis(f[0], f[1], h, w, x.device, x.dtype)
            b = self._basis[key]
            r = signs(self.seed, batch.indices, f[0], f[1], x.shape[1], x.device).to(x.dtype)
            for e in self.eps:
                v = self.of[(e, f)]
                buf = out.get(v) if out is not None else None
                img = torch.addcmul(x, r, b * e, out=buf) if buf is not None else torch.addcmul(x, r, b * e)
                yield v, img.clamp_(0.0, 1.0)

    def describe(self) -> dict[str, Any]:
        return {"source": "fourier-heatmap", "size": list(self.size), "eps": self.eps, "frequencies": len(self.freqs),
                "seed": self.seed, "basis": "cos(2π(u·m/H + v·n/W)), unit L2 norm, the same for each channel",
                "signs": "freqprobe.builtins.heatmap.signs(seed, index, u, v, channel)"}


class FourierHeatmapProbe(Probe):
    """Error rate under a Fourier basis perturbation of L2 norm E at every frequency (Yin et al. 2019)."""

    name = "fourier-heatmap"
    requires = {"task": "classification"}
    options = {"eps": "4", "max_freq": 0.0, "split": 0.0}
    samples = False  # frequencies × images rows: the maps and the summary hold the results

    @classmethod
    def check_options(cls, given):
        from ..options import parse_numbers

        opts = super().check_options(given)
        opts["eps"] = parse_numbers(str(opts["eps"]), "--heatmap-eps", example="4,8", unit="budget")
        for k in ("max_freq", "split"):
            if not (opts[k] >= 0 and math.isfinite(opts[k])):
                raise UserFacingError(f"fourier-heatmap: {k} must be 0 (none) or a positive radius, got {opts[k]!r}")
        return opts

    def check_params(self, decomposer, given):
        if given is not None:
            raise UserFacingError("--probe fourier-heatmap takes no radii or ranks (it evaluates every frequency); "
                                  "leave out --radii/--params, use --max-freq to skip high frequencies")
        return ()

    def _plan(self, ctx: RunContext) -> None:
        """The images' channels and size (from the data's first image, read once) and the frequencies to evaluate."""
        if not any(getattr(m, "name", "") == "accuracy" for m in ctx.metrics):
            raise UserFacingError("--probe fourier-heatmap maps the error rate 1 - accuracy: keep the accuracy metric "
                                  "(--metric accuracy, with any others)")
        x = ctx.data.load([0]).images[0]
        c, h, w = (int(d) for d in x.shape[-3:])
        self._channels = c
        self._freqs = frequencies(h, w, self.opts["max_freq"] or None)
        if not self._freqs:
            raise UserFacingError(f"fourier-heatmap: --max-freq {self.opts['max_freq']:g} keeps no frequency")
        self._size_hw = (h, w)

    def configure(self, ctx: RunContext) -> RunContext:
        """A batch small enough that all its variants' images fit in :data:`STACK_BYTES`; the cost said up front."""
        self._plan(ctx)
        h, w = self._size_hw
        k = 1 + len(self._freqs) * len(self.opts["eps"])
        fit = max(1, STACK_BYTES // (k * self._channels * h * w * 4))
        n = len(ctx.data) if ctx.limit is None else min(ctx.limit, len(ctx.data))
        ctx.announce(f"fourier-heatmap: {len(self._freqs)} frequencies (of {h * w}; a mirror pair once) x "
                     f"{len(self.opts['eps'])} budget(s) + the original on {n} images of {h}x{w}: {k * n} forwards, "
                     f"batches of {min(ctx.batch_size, fit)}")
        return ctx.replace(config=ctx.config.replace(batch_size=min(ctx.batch_size, fit))) if fit < ctx.batch_size else ctx

    def sources(self, ctx: RunContext) -> list:
        if not hasattr(self, "_size_hw"):  # evaluated without run() (a test's loop): plan here
            self._plan(ctx)
        return [FourierPerturbationSource(self._size_hw, self.opts["eps"], self._freqs, ctx.seed)]

    def derive(self, result: ProbeResult, ctx: RunContext) -> None:
        """The per-frequency rows become the maps (extras) and condensed summary rows."""
        h, w = self._size_hw
        split = self.opts["split"] or min(h, w) / 4
        keep, maps = [], {}
        for r in result.summary:
            if r.get("variant") != VARIANT:
                keep.append(r)
                continue
            u, v = (int(t) for t in str(r["param"]).split(","))
            maps.setdefault(float(r["eps"]), {}).setdefault((u, v), {})[r["metric"]] = (float(r["value"]), r.get("n"))
        for e, cells in maps.items():
            errs = {f: 1.0 - vals["accuracy"][0] for f, vals in cells.items() if "accuracy" in vals}
            for name, sel in (("all", lambda d: True), (f"<{fmt_param(split)}", lambda d: d < split),
                              (f">={fmt_param(split)}", lambda d: d >= split)):
                got = [_weight(f, h, w) * err for f, err in errs.items() if sel(math.hypot(*f))]
                wsum = sum(_weight(f, h, w) for f in errs if sel(math.hypot(*f)))
                keep.append({"probe": result.probe, "transform": ctx.transform, "decomposer": "", "variant": "heatmap",
                             "param": name, "eps": e, "metric": "error", "value": sum(got) / wsum if wsum else float("nan"),
                             "n": next(iter(cells.values()))["accuracy"][1] if cells else None})
        result.summary[:] = keep
        result.components = ()
        result.extras["fourier_heatmap"] = {"size": [h, w], "split": split, "maps": {
            e: {f"{u},{v}": {m: val for m, (val, _) in vals.items()} for (u, v), vals in cells.items()} for e, cells in maps.items()}}


def _weight(f: tuple[int, int], h: int, w: int) -> int:
    """How many cells of the full grid a canonical frequency stands for (itself and its mirror, or itself alone)."""
    return 1 if mirror(f[0], f[1], h, w) == f else 2


def write_maps(result, out: Path) -> None:
    """``heatmap_eps<E>.csv`` and ``.png`` per budget (every cell of the evaluated grid, mirrors written out)."""
    import numpy as np

    hm = result.extras["fourier_heatmap"]
    h, w = hm["size"]
    for e, cells in hm["maps"].items():
        stem = f"heatmap_eps{fmt_param(e)}"
        grid = np.full((h, w), np.nan)
        metrics = sorted({m for vals in cells.values() for m in vals})
        rows = []
        for key, vals in cells.items():
            u, v = (int(t) for t in key.split(","))
            for cu, cv in dict.fromkeys([(u, v), mirror(u, v, h, w)]):
                grid[cu + h // 2, cv + w // 2] = 1.0 - vals["accuracy"]
                rows.append([cu, cv, f"{math.hypot(cu, cv):.6f}", f"{1.0 - vals['accuracy']:.6f}",
                             *(f"{vals[m]:.6f}" for m in metrics)])
        rows.sort(key=lambda r: (r[0], r[1]))
        n = next((r.get("n") for r in result.summary if r.get("variant") == "heatmap" and r.get("eps") == e), None)
        with open(out / f"{stem}.csv", "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["u", "v", "distance", "error", "n", *metrics])
            for r in rows:
                wr.writerow([*r[:4], n, *r[4:]])
        _plot(grid, out / f"{stem}.png", f"{result.probe}: error, ||perturbation||2 = {fmt_param(e)} ({h}x{w})")


def _plot(grid, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    h, w = grid.shape
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    im = ax.imshow(grid, cmap="jet", vmin=0.0, vmax=1.0, interpolation="nearest",
                   extent=(-(w // 2) - 0.5, w - w // 2 - 0.5, h - h // 2 - 0.5, -(h // 2) - 0.5))
    ax.set_xlabel("v (horizontal frequency)")
    ax.set_ylabel("u (vertical frequency)")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label="error rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@hookimpl
def register_probes():
    return [FourierHeatmapProbe]


@hookimpl
def add_options(parser):
    parser.add_option("--heatmap-eps", probe="fourier-heatmap", key="eps", metavar="E[,E2...]",
                      help="fourier-heatmap: L2 norm(s) of the Fourier basis perturbation (default 4; as --probe-opt eps=4).")
    parser.add_option("--max-freq", type=float, probe="fourier-heatmap", key="max_freq",
                      help="fourier-heatmap: skip frequencies farther than this from the centre (default: all).")


@hookimpl
def report_result(result, context):
    """``heatmap_eps<E>.csv`` and ``heatmap_eps<E>.png`` of a fourier-heatmap run."""
    out = getattr(context, "out_dir", None)
    if out is not None and "fourier_heatmap" in result.extras:
        write_maps(result, Path(out))
