"""The built-in variant sources: the original images, and a decomposer's parts of another source's images.

``DecomposerSource(decomposer, params, base=AttackSource(...))`` is composition: the low and high
parts of adversarial images, with the attack's columns kept, in the same loop (docs/engine.md).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from . import guard as _guard
from .interfaces import Decomposer, SourceBatch, Variant, VariantSource


class OriginalSource(VariantSource):
    """The batch's images as they are (the ``original`` variant)."""

    def __init__(self) -> None:
        self.variant = Variant("original")

    def variants(self) -> list[Variant]:
        return [self.variant]

    def generate(self, batch: SourceBatch, ctx: Any, out: Any = None) -> Iterator[tuple[Variant, Any]]:
        yield self.variant, batch.images

    def describe(self) -> dict[str, Any]:
        return {"source": "original"}


class DecomposerSource(VariantSource):
    """Each component of a decomposer at each parameter, of another source's images (default: the original).

    ``include_base`` also evaluates the base's own variants (the original images of ``lfc-hfc``,
    the adversarial images themselves of an attack source).
    """

    def __init__(self, decomposer: Decomposer, params: Sequence[Any], base: VariantSource | None = None, *,
                 include_base: bool = True) -> None:
        self.decomposer = decomposer
        self.params = list(params)
        self.base = base if base is not None else OriginalSource()
        self.include_base = include_base
        self._derived: dict[tuple, Variant] = {}
        for bv in self.base.variants():
            for p in self.params:
                for c in decomposer.components:
                    self._derived[(bv.key(), c, p)] = bv.derive(c, p)

    def variant_for(self, base: Variant, component: str, param: Any) -> Variant:
        """The variant holding ``component`` at ``param`` of the base variant ``base``."""
        return self._derived[(base.key(), component, param)]

    def variants(self) -> list[Variant]:
        out = []
        for bv in self.base.variants():
            if self.include_base:
                out.append(bv)
            out += [self._derived[(bv.key(), c, p)] for p in self.params for c in self.decomposer.components]
        return out

    def generate(self, batch: SourceBatch, ctx: Any, out: Any = None) -> Iterator[tuple[Variant, Any]]:
        comps = self.decomposer.components
        for bv, bimgs in self.base.generate(batch, ctx, out):
            if self.include_base:
                yield bv, bimgs
            derived = {(c, p): self._derived[(bv.key(), c, p)] for p in self.params for c in comps}
            if isinstance(bimgs, (list, tuple)):  # images of different sizes: one at a time
                yield from self._per_image(bimgs, derived)
                continue
            bufs = None
            if out is not None and all(v in out for v in derived.values()):
                bufs = {p: {c: out[derived[(c, p)]] for c in comps} for p in self.params}
            for p, got in _guard.decompose_all(self.decomposer, bimgs.contiguous(), self.params, out=bufs):
                for c in comps:
                    yield derived[(c, p)], got[c]

    def _per_image(self, images: Sequence[Any], derived: dict) -> Iterator[tuple[Variant, list]]:
        parts: dict = {k: [] for k in derived}
        for img in images:
            for p, got in _guard.decompose_all(self.decomposer, img[None].contiguous(), self.params):
                for c in self.decomposer.components:
                    parts[(c, p)].append(got[c][0])
        for k, v in derived.items():
            yield v, parts[k]

    def describe(self) -> dict[str, Any]:
        d = self.decomposer
        return {"source": "decomposer", "decomposer": d.name, "options": d.options(), "param_name": d.param_name,
                "params": self.params, "components": list(d.components), "base": self.base.describe(),
                "include_base": self.include_base}


class BandSource(VariantSource):
    """Band-pass images ``low(e[i+1]) − low(e[i])`` of another source's images (default: the original), one per
    consecutive pair of the edges as given (``bands``).

    ``low`` is the decomposer's first part (``fft-radial``'s low part: its boundary rule applies at both
    edges; ``svd``'s dominant part: rank bands); ``low(0)`` is the zero image whatever the rule, so the bands of edges ``0, r1, …, rk`` sum to
    ``low(rk)``. Each band is a variant ``band`` whose param is the pair as text (``"0-4"``, ``"4-8"``),
    derived from its base variant (the band content of adversarial images keeps the attack's columns),
    and a component, so the run's rescale policy applies to it. The low parts of all edges come from one
    :meth:`~freqprobe.Decomposer.decompose_all` per base variant (the spectrum computed once).
    """

    def __init__(self, decomposer: Decomposer, edges: Sequence[Any], base: VariantSource | None = None, *,
                 include_base: bool = True, name: str = "band") -> None:
        from .tables import fmt_param

        self.part = decomposer.components[0]
        self.decomposer, self.edges = decomposer, list(edges)
        self.base = base if base is not None else OriginalSource()
        self.include_base = include_base
        self.pairs = list(zip(self.edges, self.edges[1:]))
        self.labels = [f"{fmt_param(a)}-{fmt_param(b)}" for a, b in self.pairs]
        self._derived = {(bv.key(), lab): bv.derive(name, lab) for bv in self.base.variants() for lab in self.labels}

    def variants(self) -> list[Variant]:
        out = []
        for bv in self.base.variants():
            if self.include_base:
                out.append(bv)
            out += [self._derived[(bv.key(), lab)] for lab in self.labels]
        return out

    def generate(self, batch: SourceBatch, ctx: Any, out: Any = None) -> Iterator[tuple[Variant, Any]]:
        positive = [e for e in dict.fromkeys(self.edges) if e > 0]
        for bv, bimgs in self.base.generate(batch, ctx, out):
            if self.include_base:
                yield bv, bimgs
            if isinstance(bimgs, (list, tuple)):  # images of different sizes: one at a time
                per = [self._bands(img[None].contiguous(), positive, None) for img in bimgs]
                for k, lab in enumerate(self.labels):
                    yield self._derived[(bv.key(), lab)], [b[k][0] for b in per]
                continue
            bufs = [out.get(self._derived[(bv.key(), lab)]) if out is not None else None for lab in self.labels]
            for lab, band in zip(self.labels, self._bands(bimgs.contiguous(), positive, bufs)):
                yield self._derived[(bv.key(), lab)], band

    def _bands(self, x: Any, positive: list, bufs: list | None) -> list:
        import torch

        lows = {p: got[self.part] for p, got in _guard.decompose_all(self.decomposer, x, positive)}
        bands = []
        for k, (a, b) in enumerate(self.pairs):
            buf = bufs[k] if bufs else None
            if a > 0:
                bands.append(torch.sub(lows[b], lows[a], out=buf) if buf is not None else lows[b] - lows[a])
            elif buf is not None:  # low(0) is the zero image
                bands.append(buf.copy_(lows[b]))
            else:
                bands.append(lows[b].clone())
        return bands

    def describe(self) -> dict[str, Any]:
        d = self.decomposer
        return {"source": "bands", "decomposer": d.name, "options": d.options(), "param_name": d.param_name,
                "edges": self.edges, "bands": self.labels, "base": self.base.describe(), "include_base": self.include_base}


__all__ = ["BandSource", "DecomposerSource", "OriginalSource"]
