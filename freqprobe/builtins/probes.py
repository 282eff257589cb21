"""Built-in probes: ``lfc-hfc`` (the paper's Figure 2 and its accuracy-vs-radius tables)."""

from __future__ import annotations

from typing import Any

from ..engine import DecomposerSource, OriginalSource
from ..hookspecs import hookimpl
from ..interfaces import Probe, ProbeResult, RunContext, Variant


class Figure2Gallery:
    """The paper's Figure 2: samples right on the original and the residual (high) part, wrong on the smooth (low) part.

    Keeps the first ``size`` such samples per parameter, in data order. Reads predictions only
    until every parameter's gallery is full (one host synchronisation per batch until then).
    """

    def __init__(self, source: DecomposerSource, base: Variant, size: int) -> None:
        self.source, self.base, self.size = source, base, int(size)
        comps = source.decomposer.components
        self.low, self.high = comps[0], comps[1]
        self.gallery: dict[Any, list] = {p: [] for p in source.params}

    def _full(self) -> bool:
        return all(len(g) >= self.size for g in self.gallery.values())

    def on_batch(self, batch, images, values, targets) -> None:
        if self.size <= 0 or self._full():
            return
        y = batch.targets
        p0 = values[self.base]["pred"].cpu()
        c0 = values[self.base]["confidence"].cpu()
        for p, entries in self.gallery.items():
            if len(entries) >= self.size:
                continue
            vl = self.source.variant_for(self.base, self.low, p)
            vh = self.source.variant_for(self.base, self.high, p)
            pl, cl = values[vl]["pred"].cpu(), values[vl]["confidence"].cpu()
            ph, ch = values[vh]["pred"].cpu(), values[vh]["confidence"].cpu()
            sel = ((p0 == y) & (ph == y) & (pl != y)).nonzero().flatten()
            for j in sel[: self.size - len(entries)].tolist():
                entries.append({
                    "index": int(batch.indices[j]),
                    "label": int(y[j]),
                    "images": {
                        "original": images[self.base][j].detach().float().cpu().clone(),
                        self.low: images[vl][j].detach().float().cpu().clone(),
                        self.high: images[vh][j].detach().float().cpu().clone(),
                    },
                    "pred": {"original": int(p0[j]), self.low: int(pl[j]), self.high: int(ph[j])},
                    "confidence": {"original": float(c0[j]), self.low: float(cl[j]), self.high: float(ch[j])},
                })

    def finish(self) -> dict:
        return {"gallery": self.gallery}

    def state_dict(self) -> dict:
        """What a checkpoint keeps (a resumed run continues the gallery where it stopped)."""
        return {"params": list(self.gallery), "entries": [self.gallery[p] for p in self.gallery]}

    def load_state_dict(self, state: dict) -> None:
        self.gallery = {p: list(e) for p, e in zip(state["params"], state["entries"])}

    def merge_state(self, state: dict) -> None:
        """Another process's gallery (torchrun): the first ``size`` entries per parameter in data order, as one process keeps."""
        for p, entries in zip(state["params"], state["entries"]):
            both = sorted(self.gallery.get(p, []) + list(entries), key=lambda e: e["index"])
            self.gallery[p] = both[: self.size]


class LfcHfcProbe(Probe):
    """Accuracy on the original images and on each frequency component at each radius/rank."""

    name = "lfc-hfc"
    requires = {"task": "classification"}
    options = {"gallery_size": 8}

    @classmethod
    def check_options(cls, given):
        opts = super().check_options(given)
        if opts["gallery_size"] < 0:
            from ..errors import UserFacingError

            raise UserFacingError(f"--gallery-size (gallery_size) must be 0 or more, got {opts['gallery_size']}")
        return opts

    def sources(self, ctx: RunContext) -> list:
        self._source = DecomposerSource(ctx.decomposer, ctx.params, OriginalSource())
        return [self._source]

    def observers(self, ctx: RunContext) -> list:
        base = self._source.base.variants()[0]
        return [Figure2Gallery(self._source, base, self.opts["gallery_size"])]

    def run(self, ctx: RunContext) -> ProbeResult:
        """The default evaluation, then the HFC-reliance score per transform and accuracy metric (docs/results.md)."""
        result = super().run(ctx)
        from ..scores import hfc_reliance, score_rows

        names = {r["metric"] for r in result.summary}
        scored = [m for m in SCORED_METRICS if m in names]
        comps = result.components or tuple(ctx.decomposer.components)
        scores = hfc_reliance(result.summary, metric=scored, component=comps[0]) if scored else []
        result.summary.extend(score_rows(scores, probe=result.probe))
        result.extras["hfc_reliance"] = scores
        return result


#: metrics the HFC-reliance score is computed for: fractions in [0, 1] where higher is better
SCORED_METRICS = ("accuracy", "top5-accuracy")


@hookimpl
def register_probes():
    return [LfcHfcProbe]


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
