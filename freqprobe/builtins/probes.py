"""Built-in probes: ``lfc-hfc`` (the paper's Figure 2 and its accuracy-vs-radius tables) and ``bands`` (accuracy on
band-pass images)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import UserFacingError
from ..evaluators import EvalStep, Evaluator
from ..hookspecs import hookimpl
from ..interfaces import ProbeResult, Variant
from ..probing import Probe, RunContext
from ..sources import BandSource, DecomposerSource, OriginalSource

if TYPE_CHECKING:
    from pathlib import Path


def _first_by_index(size: int):
    """The merge of two galleries (torchrun): per parameter the first ``size`` entries in data order, as one process keeps."""

    def merge(mine: list, theirs: list) -> list:
        return [sorted(list(a) + list(b), key=lambda e: e["index"])[:size] for a, b in zip(mine, theirs)]

    return merge


class Figure2Gallery(Evaluator):
    """The paper's Figure 2: samples right on the original and the residual (high) part, wrong on the smooth (low) part.

    Keeps the first ``size`` such samples per parameter, in data order. Reads predictions only
    until every parameter's gallery is full (one host synchronisation per batch until then).
    Writes ``figure2.csv`` and ``figure2_<param><value>.png`` per parameter.
    """

    name = "figure2-gallery"

    def __init__(self, source: DecomposerSource, base: Variant, size: int, ctx: Any = None) -> None:
        super().__init__(ctx)
        self.source, self.base, self.size = source, base, int(size)
        comps = source.decomposer.components
        self.low, self.high = comps[0], comps[1]
        self.params = list(source.params)
        # one list of entries per parameter (in the order of ``params``)
        self.add_state("entries", [[] for _ in self.params], reduce=_first_by_index(self.size))

    @property
    def gallery(self) -> dict[Any, list]:
        return dict(zip(self.params, self.entries))

    def _full(self) -> bool:
        return all(len(g) >= self.size for g in self.entries)

    def process(self, step: EvalStep) -> None:
        if self.size <= 0 or self._full():
            return
        y = step.batch.targets
        values, images = step.values, step.images
        p0, c0 = values[self.base]["pred"].cpu(), values[self.base]["confidence"].cpu()
        for p, entries in zip(self.params, self.entries):
            if len(entries) >= self.size:
                continue
            vl = self.source.variant_for(self.base, self.low, p)
            vh = self.source.variant_for(self.base, self.high, p)
            pl, cl = values[vl]["pred"].cpu(), values[vl]["confidence"].cpu()
            ph, ch = values[vh]["pred"].cpu(), values[vh]["confidence"].cpu()
            sel = ((p0 == y) & (ph == y) & (pl != y)).nonzero().flatten()
            for j in sel[: self.size - len(entries)].tolist():
                entries.append({
                    "index": int(step.batch.indices[j]),
                    "label": int(y[j]),
                    "images": {"original": _keep(images[self.base][j]), self.low: _keep(images[vl][j]),
                               self.high: _keep(images[vh][j])},
                    "pred": {"original": int(p0[j]), self.low: int(pl[j]), self.high: int(ph[j])},
                    "confidence": {"original": float(c0[j]), self.low: float(cl[j]), self.high: float(ch[j])},
                })

    def extras(self) -> dict[str, Any]:
        return {"gallery": self.gallery}

    def write(self, out_dir: "Path") -> list[str]:
        from .report import plot_gallery, write_gallery_csv

        gallery = self.gallery
        if not gallery:
            return []
        dec = self.source.decomposer
        names = list(self.ctx.data.class_names) if self.ctx is not None and self.ctx.data.class_names else None
        write_gallery_csv(gallery, tuple(dec.components), out_dir / "figure2.csv")
        written = ["figure2.csv"]
        for p, entries in gallery.items():
            if entries:
                name = plot_gallery(entries, p, tuple(dec.components), dec.param_name, names, out_dir)
                written.append(name)
        return written


def _keep(img: Any) -> Any:
    return img.detach().float().cpu().clone()


class LfcHfcProbe(Probe):
    """Accuracy on the original images and on each frequency component at each radius/rank."""

    name = "lfc-hfc"
    requires = {"task": "classification"}
    options = {"gallery_size": 8}

    @classmethod
    def check_options(cls, given):
        opts = super().check_options(given)
        if opts["gallery_size"] < 0:
            raise UserFacingError(f"--gallery-size (gallery_size) must be 0 or more, got {opts['gallery_size']}")
        return opts

    def sources(self, ctx: RunContext) -> list:
        self._source = DecomposerSource(ctx.decomposer, ctx.params, OriginalSource())
        return [self._source]

    def evaluators(self, ctx: RunContext) -> list:
        base = self._source.base.variants()[0]
        return [Figure2Gallery(self._source, base, self.opts["gallery_size"], ctx)]

    def derive(self, result: ProbeResult, ctx: RunContext) -> None:
        """The HFC-reliance score per transform and accuracy metric (docs/results.md), as summary rows and extras."""
        from ..scores import hfc_reliance, score_rows

        names = {r["metric"] for r in result.summary}
        scored = [m for m in SCORED_METRICS if m in names]
        comps = result.components or tuple(ctx.decomposer.components)
        scores = hfc_reliance(result.summary, metric=scored, component=comps[0]) if scored else []
        result.summary.extend(score_rows(scores, probe=result.probe))
        result.extras["hfc_reliance"] = scores


#: metrics the HFC-reliance score is computed for: fractions in [0, 1] where higher is better
SCORED_METRICS = ("accuracy", "top5-accuracy")


class BandsProbe(Probe):
    """Accuracy on the original images and on band-pass images low(r[i+1]) - low(r[i]) of consecutive radii."""

    name = "bands"
    requires = {"task": "classification"}
    #: band edges: 0-4, 4-8, 8-12, 12-16
    default_params = {"fft-radial": (0, 4, 8, 12, 16), "svd": (0, 4, 8, 12, 16)}

    def check_params(self, decomposer, given):
        """Band edges: at least two, strictly increasing; the first may be 0 (``low(0)`` is the zero image)."""
        if given is None:
            given = list(self.default_params.get(decomposer.name) or (0, *decomposer.default_params))
        edges = []
        for p in given:
            try:
                zero = float(p) == 0.0
            except (TypeError, ValueError):
                zero = False
            edges.append(0 if zero and not edges else decomposer.check_param(p))
        if len(edges) < 2:
            raise UserFacingError(f"--probe bands takes at least two band edges ({decomposer.param_name} values, e.g. "
                                  f"0,4,8,12,16: the bands 0-4, 4-8, ...); got {len(edges)}")
        bad = next((i for i in range(1, len(edges)) if not edges[i] > edges[i - 1]), None)
        if bad is not None:
            raise UserFacingError(f"--probe bands: band edges must increase; {edges[bad - 1]:g} is followed by {edges[bad]:g} "
                                  f"(pass them in order, e.g. 0,4,8,12,16)")
        return tuple(edges)

    def sources(self, ctx: RunContext) -> list:
        return [BandSource(ctx.decomposer, ctx.params, OriginalSource())]

    def derive(self, result: ProbeResult, ctx: RunContext) -> None:
        """The bands are the result's component (``accuracy.png``: accuracy per band, in the edges' order)."""
        result.components = ("band",)
        result.param_name = f"band ({ctx.decomposer.param_name})"


@hookimpl
def register_probes():
    return [LfcHfcProbe, BandsProbe]


@hookimpl
def add_options(parser):
    parser.add_option("--gallery-size", type=int, probe="lfc-hfc", key="gallery_size",
                      help="Figure-2 examples kept per parameter (lfc-hfc's gallery_size, default 8; as --probe-opt gallery_size=N).")


@hookimpl
def manifest_entries(context, result):
    """The ``hfc_reliance`` manifest section: each score with its radius range and original accuracy."""
    scores = getattr(result, "extras", {}).get("hfc_reliance")
    if scores is None:
        return None

    def num(v):  # JSON has no NaN: an undefined number is null
        return None if v is None or v != v else v

    section = []
    for s in scores:
        section.append({
            "metric": s["metric"], "transform": s["transform"], "decomposer": s["decomposer"], "component": s["component"],
            "param_name": getattr(result, "param_name", "") or "param",
            "range": [s["radii"][0], s["radii"][-1]] if s["radii"] else None, "radii": list(s["radii"]),
            "original": num(s["original"]), "low": [num(v) for v in s["low"]], "value": num(float(s["value"])), "n": s["n"],
        })
    return {"hfc_reliance": section}
