"""The ``robustness`` probe: clean (Eq. 1) and robust (Eq. 2) accuracy per attack and ε, the
frequency view of an attack, and Corollary 1 witnesses — all as declarations on the one
evaluation loop (:mod:`freqprobe.engine`).

Variants, for attacks A and budgets ε (each adversarial variant has ``attack`` and ``eps``
columns of its own):

* ``original``; with ``frequency`` on, its ``low``/``high`` parts at every radius;
* ``adversarial`` per attack and ε (:class:`AttackSource`); with ``frequency`` on, the ``low``/
  ``high`` parts of the adversarial images (a :class:`~freqprobe.engine.DecomposerSource` over
  the attack source: composition, not a second loop).

Observers add the two things no neighbour offers:

* :class:`PerturbationSpectrum` — per attack, ε and radius r, the share of the perturbation's
  energy ‖δ_low(r)‖² / ‖δ‖² with δ = x_adv − x summed over pixels, channels and samples, from the
  run's decomposer (the same ``fft-radial`` split and rule): metric ``perturbation-low-fraction``;
* :class:`Corollary1Witnesses` — samples right on x and wrong on x_l(r), with d(x, x_l) in L∞ and
  L2: the paper's Corollary 1 says such a model is not robust at any ε ≥ d(x, x_l) for that
  sample (x_l itself is the adversarial example). Metrics ``corollary1-witnesses`` (fraction of
  samples) and ``corollary1-within-eps`` (fraction with d∞ ≤ ε, per ε of the run).
"""

from __future__ import annotations

import zlib
from typing import Any

import torch

from freqprobe import Probe, RunContext, UserFacingError, Variant, VariantSource
from freqprobe.engine import DecomposerSource, OriginalSource

#: Table 2's budgets and attacks
DEFAULT_EPS = (0.03, 0.06, 0.09)
DEFAULT_ATTACKS = ("fgsm", "pgd")


class AttackSource(VariantSource):
    """Adversarial images of every batch, one variant per attack and ε (``adversarial``, attack=…, eps=…).

    ``attacks`` are ``(Attack class, options)`` pairs. The attacks run batched on the run's
    device with gradients through the adapter's normalisation; random starts are seeded from the
    run's seed, the attack, ε and the batch's first sample index, so a resumed run draws the same.
    """

    def __init__(self, attacks: list, eps: list[float]) -> None:
        if not attacks or not eps:
            raise UserFacingError("the robustness probe needs at least one --attack and one --eps")
        self.specs = [(cls, dict(opts), cls.label(opts)) for cls, opts in attacks]
        self._variants = [Variant("adversarial", None, (("attack", label), ("eps", float(e))))
                          for _, _, label in self.specs for e in eps]
        self.eps = [float(e) for e in eps]
        self._cache: dict = {}

    def variants(self) -> list[Variant]:
        return list(self._variants)

    def _attack(self, cls, opts, eps, adapter):
        key = (cls.label(opts), eps, id(adapter))
        atk = self._cache.get(key)
        if atk is None:
            atk = self._cache[key] = cls(adapter, eps=eps, **opts)
        return atk

    def produce(self, images, targets, ctx, out=None):
        if not isinstance(images, torch.Tensor):
            raise UserFacingError("the robustness probe needs images of one size per batch (a classifier's data)")
        idx = getattr(ctx, "current_indices", None)
        first = int(idx[0]) if idx is not None and len(idx) else 0
        i = 0
        for cls, opts, label in self.specs:
            for e in self.eps:
                atk = self._attack(cls, opts, e, ctx.adapter)
                atk.seed = zlib.crc32(f"{ctx.seed}:{label}:{e!r}:{first}".encode())
                yield self._variants[i], atk(images, targets)
                i += 1

    def describe(self) -> dict[str, Any]:
        return {"source": "attacks", "attacks": [label for _, _, label in self.specs],
                "options": {label: opts for _, opts, label in self.specs}, "eps": self.eps}


class PerturbationSpectrum:
    """Per attack, ε and radius: Σ‖low(δ)‖² / Σ‖δ‖² over the data set, δ = x_adv − x (metric ``perturbation-low-fraction``)."""

    def __init__(self, source: AttackSource, decomposer, params, original: Variant) -> None:
        self.source, self.decomposer, self.params, self.original = source, decomposer, list(params), original
        self.low: dict = {}
        self.total: dict = {}
        self.n = 0

    def on_batch(self, batch, images, values, targets) -> None:
        x = images[self.original]
        for v in self.source.variants():
            delta = (images[v].float() - x.float()).contiguous()
            key_total = v.key()
            self.total[key_total] = self.total.get(key_total, 0.0) + delta.double().pow(2).sum()
            for p, parts in self.decomposer.decompose_all(delta, self.params):
                k = (v.key(), p)
                self.low[k] = self.low.get(k, 0.0) + parts[self.decomposer.components[0]].double().pow(2).sum()
        self.n += len(batch.indices)

    def rows(self) -> list[dict]:
        out = []
        for v in self.source.variants():
            total = float(self.total.get(v.key(), 0.0))
            for p in self.params:
                low = float(self.low.get((v.key(), p), 0.0))
                out.append({"variant": v.name, "param": p, **dict(v.extra), "metric": "perturbation-low-fraction",
                            "value": low / total if total > 0 else float("nan"), "n": self.n})
        return out

    def finish(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        keys = [v.key() for v in self.source.variants()]
        return {"n": self.n,
                "total": [float(self.total.get(k, 0.0)) for k in keys],
                "low": [[float(self.low.get((k, p), 0.0)) for p in self.params] for k in keys]}

    def load_state_dict(self, state: dict) -> None:
        keys = [v.key() for v in self.source.variants()]
        self.n = int(state["n"])
        self.total = {k: torch.tensor(t, dtype=torch.float64) for k, t in zip(keys, state["total"])}
        self.low = {(k, p): torch.tensor(l, dtype=torch.float64) for k, ls in zip(keys, state["low"]) for p, l in zip(self.params, ls)}


class Corollary1Witnesses:
    """Samples right on the original and wrong on its low part at r, with d∞ and d2 = ‖x − x_l‖ (Corollary 1)."""

    def __init__(self, clean: DecomposerSource, original: Variant, eps: list[float]) -> None:
        self.clean, self.original, self.eps = clean, original, list(eps)
        self.low = clean.decomposer.components[0]
        self.rows: list = []  # (param, index, label, pred_original, pred_low, linf, l2)
        self.n = 0

    def on_batch(self, batch, images, values, targets) -> None:
        y = batch.targets
        p0 = values[self.original]["pred"].cpu()
        x = images[self.original]
        for p in self.clean.params:
            vl = self.clean.variant_for(self.original, self.low, p)
            pl = values[vl]["pred"].cpu()
            sel = ((p0 == y) & (pl != y)).nonzero().flatten()
            if len(sel):
                d = (x[sel.to(x.device)] - images[vl][sel.to(x.device)]).float().flatten(1)
                linf, l2 = d.abs().amax(1).cpu(), d.norm(dim=1).cpu()
                for j, a, b in zip(sel.tolist(), linf.tolist(), l2.tolist()):
                    self.rows.append((float(p), int(batch.indices[j]), int(y[j]), int(p0[j]), int(pl[j]), a, b))
        self.n += len(batch.indices)

    def summary_rows(self) -> list[dict]:
        out = []
        for p in self.clean.params:
            mine = [r for r in self.rows if r[0] == float(p)]
            out.append({"variant": self.low, "param": p, "metric": "corollary1-witnesses",
                        "value": len(mine) / self.n if self.n else float("nan"), "n": self.n})
            for e in self.eps:
                within = sum(1 for r in mine if r[5] <= e)
                out.append({"variant": self.low, "param": p, "eps": e, "metric": "corollary1-within-eps",
                            "value": within / self.n if self.n else float("nan"), "n": self.n})
        return out

    def finish(self) -> dict:
        return {"corollary1": sorted(self.rows, key=lambda r: (r[0], r[1]))}

    def state_dict(self) -> dict:
        return {"n": self.n, "rows": [list(r) for r in self.rows]}

    def load_state_dict(self, state: dict) -> None:
        self.n = int(state["n"])
        self.rows = [tuple(r) for r in state["rows"]]


class RobustnessProbe(Probe):
    """Clean and robust accuracy per --attack and --eps (Table 2), the perturbation's spectrum and Corollary 1 witnesses."""

    name = "robustness"
    requires = {"task": "classification"}
    takes_attacks = True
    #: frequency: also the low/high parts of clean and adversarial images, the perturbation's
    #: spectrum and the Corollary 1 witnesses (off: Table 2's clean and robust accuracy only)
    options = {"frequency": True}

    def _attacks(self, ctx: RunContext) -> list:
        if ctx.attacks:
            return list(ctx.attacks)
        from freqprobe import registry

        return [(registry.get_class("attacks", n, ctx.pm), {}) for n in DEFAULT_ATTACKS]

    def sources(self, ctx: RunContext) -> list:
        eps = list(ctx.eps) or list(DEFAULT_EPS)
        self._eps = eps
        self._attack_source = AttackSource(self._attacks(ctx), eps)
        if not self.opts["frequency"]:
            self._clean = None
            return [OriginalSource(), self._attack_source]
        self._clean = DecomposerSource(ctx.decomposer, ctx.params, OriginalSource())
        return [self._clean, DecomposerSource(ctx.decomposer, ctx.params, self._attack_source)]

    def observers(self, ctx: RunContext) -> list:
        if self._clean is None:
            self._spectrum = self._witnesses = None
            return []
        original = self._clean.base.variants()[0]
        self._spectrum = PerturbationSpectrum(self._attack_source, ctx.decomposer, ctx.params, original)
        self._witnesses = Corollary1Witnesses(self._clean, original, self._eps)
        return [self._spectrum, self._witnesses]

    def run(self, ctx: RunContext):
        if self.model_sweep(ctx):  # pragma: no cover - this probe never sweeps
            raise UserFacingError("the robustness probe evaluates the one model it is given")
        result = ctx.evaluate(self.sources(ctx), probe=self.name, observers=self.observers(ctx))
        if self._spectrum is not None:
            base = {"probe": self.name, "transform": ctx.transform, "decomposer": ctx.decomposer.name}
            extra = list(result.extras.get("extra_columns") or [])
            rows = [{**base, **r} for r in self._spectrum.rows() + self._witnesses.summary_rows()]
            for r in rows:
                for c in extra:
                    r.setdefault(c, None)
            result.summary.extend(rows)
        return result
