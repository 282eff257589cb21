"""Built-in probes: ``lfc-hfc`` (the paper's Figure 2 / Table experiments)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..hookspecs import hookimpl
from ..interfaces import Probe, ProbeResult, RunContext


def iter_components(decomposer, x: torch.Tensor, params: list, out: dict | None):
    """``(param, parts)`` for every parameter, using ``decompose_all`` when the decomposer has it."""
    many = getattr(decomposer, "decompose_all", None)
    if many is not None:
        yield from many(x, params, out=out)
    else:
        for p in params:
            yield p, decomposer.decompose(x, p, out=out)


class LfcHfcProbe(Probe):
    """Accuracy on the original images and on each frequency component at each radius/rank."""

    name = "lfc-hfc"
    requires = {"task": "classification"}

    def __init__(self, gallery_size: int = 8, **options: Any) -> None:
        super().__init__(gallery_size=gallery_size, **options)
        self.gallery_size = int(gallery_size)

    def run(self, ctx: RunContext) -> ProbeResult:
        dec, adapter, rescale = ctx.decomposer, ctx.adapter, ctx.rescale
        comps = tuple(dec.components)
        variants = [("original", None)] + [(c, p) for p in ctx.params for c in comps]
        metrics = {v: [m() for m in ctx.metrics] for v in variants}
        preds: dict = {v: [] for v in variants}
        confs: dict = {v: [] for v in variants}
        labels, indices = [], []
        gallery: dict = {p: [] for p in ctx.params}
        t_dec = t_inf = 0.0
        out = None

        def infer(key, images, y):
            nonlocal t_inf
            t = time.perf_counter()
            logits = adapter.predict(images)
            prob = torch.softmax(logits.float(), dim=-1)
            conf, pred = prob.max(-1)
            for m in metrics[key]:
                m.update(logits, y)
            pred_c, conf_c = pred.cpu(), conf.cpu()
            preds[key].append(pred_c)
            confs[key].append(conf_c)
            t_inf += time.perf_counter() - t
            return pred_c, conf_c

        for x, y, idx in ctx.data.batches(ctx.batch_size, limit=ctx.limit):
            x = x.to(ctx.device, non_blocking=True)
            y_dev = y.to(ctx.device)
            labels.append(y)
            indices.append(idx)
            p0, c0 = infer(("original", None), rescale.apply(x) if rescale.applies_to_original else x, y_dev)
            if out is None or out[comps[0]].shape != x.shape:
                out = {c: torch.empty_like(x) for c in comps}
            it = iter_components(dec, x, ctx.params, out)
            while True:
                t = time.perf_counter()
                try:
                    p, parts = next(it)
                except StopIteration:
                    break
                t_dec += time.perf_counter() - t
                results = {}
                for c in comps:
                    results[c] = infer((c, p), rescale.apply(parts[c]), y_dev)
                if len(gallery[p]) < self.gallery_size:
                    # the paper's Figure 2: right on the original and on the residual (high) part, wrong on the smooth (low) part
                    (pl, cl), (ph, ch) = results[comps[0]], results[comps[1]]
                    sel = ((p0 == y) & (ph == y) & (pl != y)).nonzero().flatten()
                    for j in sel[: self.gallery_size - len(gallery[p])].tolist():
                        gallery[p].append(
                            {
                                "index": int(idx[j]),
                                "label": int(y[j]),
                                "images": {
                                    "original": x[j].detach().cpu().clone(),
                                    comps[0]: parts[comps[0]][j].detach().cpu().clone(),
                                    comps[1]: parts[comps[1]][j].detach().cpu().clone(),
                                },
                                "pred": {"original": int(p0[j]), comps[0]: int(pl[j]), comps[1]: int(ph[j])},
                                "confidence": {"original": float(c0[j]), comps[0]: float(cl[j]), comps[1]: float(ch[j])},
                            }
                        )
            if ctx.progress:
                ctx.progress(len(x))

        y_all = torch.cat(labels).numpy()
        idx_all = torch.cat(indices).numpy()
        n = len(y_all)
        summary, samples = [], []
        for (variant, p) in variants:
            for m in metrics[(variant, p)]:
                summary.append(
                    {
                        "probe": self.name,
                        "transform": ctx.transform,
                        "decomposer": dec.name,
                        "variant": variant,
                        "param": "" if p is None else p,
                        "metric": m.name,
                        "value": m.compute(),
                        "n": n,
                    }
                )
            samples.append(
                {
                    "variant": variant,
                    "param": "" if p is None else p,
                    "pred": torch.cat(preds[(variant, p)]).numpy(),
                    "confidence": torch.cat(confs[(variant, p)]).numpy(),
                }
            )
        return ProbeResult(
            probe=self.name,
            summary=summary,
            samples=samples,
            components=comps,
            param_name=dec.param_name,
            extras={
                "index": idx_all,
                "label": y_all,
                "gallery": gallery,
                "class_names": list(ctx.data.class_names) if ctx.data.class_names else None,
                "timings": {"decompose_s": t_dec, "inference_s": t_inf},
            },
        )


@hookimpl
def register_probes():
    return [LfcHfcProbe]
