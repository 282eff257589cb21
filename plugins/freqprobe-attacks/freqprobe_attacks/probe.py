"""The ``robustness`` probe: clean (Eq. 1) and robust (Eq. 2) accuracy per attack and ε, the
frequency view of an attack, and Corollary 1 witnesses — all as declarations on the one
evaluation loop (``freqprobe.evaluate``).

Variants, for attacks A and budgets ε (each adversarial variant has ``attack`` and ``eps``
columns of its own):

* ``original``; with ``frequency`` on, its ``low``/``high`` parts at every radius;
* ``adversarial`` per attack and ε (:class:`AttackSource`); with ``frequency`` on, the ``low``/
  ``high`` parts of the adversarial images (a :class:`~freqprobe.DecomposerSource` over
  the attack source: composition, not a second loop).

Evaluators add the two things no neighbour offers:

* :class:`PerturbationSpectrum` — per attack, ε and radius r, the share of the perturbation's
  energy ‖δ_low(r)‖² / ‖δ‖² with δ = x_adv − x summed over pixels, channels and samples, from the
  run's decomposer (the same ``fft-radial`` split and rule): metric ``perturbation-low-fraction``;
* :class:`Corollary1Witnesses` — samples right on x and wrong on x_l(r), with d(x, x_l) in L∞ and
  L2: the paper's Corollary 1 says such a model is not robust at any ε ≥ d(x, x_l) for that
  sample (x_l itself is the adversarial example). Metrics ``corollary1-witnesses`` (fraction of
  samples) and ``corollary1-within-eps`` (fraction with d∞ ≤ ε, per ε of the run), and the file
  ``corollary1.csv``.

``--attack`` and ``--eps`` are the plugin's options (:mod:`freqprobe_attacks.spec`), read from
the run's configuration; without them Table 2's attacks (fgsm, pgd) and budgets (0.03, 0.06, 0.09).
Both evaluators keep declared state, so a run resumes and merges across torchrun processes; float
sums are kept per batch and added up in batch order, so they come out bit for bit the same.

torch is imported where it is used: registering the probe (``freqprobe --help``) does not load it.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, NamedTuple

from freqprobe import (DecomposerSource, Evaluator, EvalStep, OriginalSource, Probe, RunContext, UserFacingError, Variant,
                       VariantSource)

from .spec import DEFAULT_ATTACKS, DEFAULT_EPS, run_attacks, run_eps

__all__ = ["DEFAULT_ATTACKS", "DEFAULT_EPS", "AttackSource", "Corollary1Witnesses", "PerturbationSpectrum", "RobustnessProbe"]

#: the columns of ``corollary1.csv`` (one witness a row)
COROLLARY1_COLUMNS = ["param", "index", "label", "pred_original", "pred_low", "linf", "l2"]


class AttackSource(VariantSource):
    """Adversarial images of every batch, one variant per attack and ε (``adversarial``, attack=…, eps=…).

    ``attacks`` are ``(Attack class, options)`` pairs. The attacks run batched on the run's
    device with gradients through the adapter's normalisation; random starts are seeded from the
    run's seed, the attack, ε and the batch's first sample index, so a resumed or sharded run draws the same.
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

    def generate(self, batch, ctx, out=None):
        import torch

        images, targets, idx = batch.images, batch.targets, batch.indices
        if not isinstance(images, torch.Tensor):
            raise UserFacingError("the robustness probe needs images of one size per batch (a classifier's data)")
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


def _position(ctx: Any) -> int:
    """This process's rank among the shards of the data (0 in one process): the second key of a batch's entry."""
    shard = ctx.shard if ctx is not None else None
    return int(shard[0]) if shard else 0


class PerturbationSpectrum(Evaluator):
    """Per attack, ε and radius: Σ‖low(δ)‖² / Σ‖δ‖² over the data set, δ = x_adv − x (metric ``perturbation-low-fraction``).

    Keeps one float64 vector of sums per batch (``batches``: ``(batch number, rank, sums)``, the
    sums ‖δ‖², then ‖low(δ)‖² per radius, for each adversarial variant) and adds them up in batch
    order when it reports: the same float64 additions, in the same order, in one process or many.
    """

    name = "perturbation-spectrum"

    def __init__(self, source: AttackSource, decomposer, params, original: Variant, ctx: Any = None) -> None:
        super().__init__(ctx)
        self.source, self.decomposer, self.params, self.original = source, decomposer, list(params), original
        self.rank = _position(ctx)
        self.add_state("batches", [], reduce="cat")
        self.add_state("n", 0, reduce="sum")

    def process(self, step: EvalStep) -> None:
        import torch

        x = step.images[self.original]
        low = self.decomposer.components[0]
        sums = []
        for v in self.source.variants():
            delta = (step.images[v].float() - x.float()).contiguous()
            sums.append(delta.double().pow(2).sum())
            for _, parts in self.decomposer.decompose_all(delta, self.params):
                sums.append(parts[low].double().pow(2).sum())
        self.batches.append((int(step.number), self.rank, torch.stack(sums)))
        self.n += len(step)

    def _sums(self) -> list[list[float]]:
        """Per variant: [Σ‖δ‖², Σ‖low(δ)‖² per radius], added up batch after batch in data order."""
        width = 1 + len(self.params)
        acc = [[0.0] * width for _ in self.source.variants()]
        for _, _, got in sorted(self.batches, key=lambda e: (e[0], e[1])):
            vals = got.tolist()
            for i, row in enumerate(acc):
                for j in range(width):
                    row[j] = row[j] + vals[i * width + j]
        return acc

    def rows(self) -> list[dict]:
        out = []
        for v, (total, *lows) in zip(self.source.variants(), self._sums()):
            for p, low in zip(self.params, lows):
                out.append({"variant": v.name, "param": p, **dict(v.extra), "metric": "perturbation-low-fraction",
                            "value": low / total if total > 0 else float("nan"), "n": self.n})
        return out


class Corollary1Witnesses(Evaluator):
    """Samples right on the original and wrong on its low part at r, with d∞ and d2 = ‖x − x_l‖ (Corollary 1).

    ``found``: one ``(param, index, label, pred_original, pred_low, linf, l2)`` per witness;
    :meth:`write` puts them, sorted by radius and index, into ``corollary1.csv``.
    """

    name = "corollary1-witnesses"

    def __init__(self, clean: DecomposerSource, original: Variant, eps: list[float], ctx: Any = None) -> None:
        super().__init__(ctx)
        self.clean, self.original, self.eps = clean, original, list(eps)
        self.low = clean.decomposer.components[0]
        self.add_state("found", [], reduce="cat")
        self.add_state("n", 0, reduce="sum")

    def process(self, step: EvalStep) -> None:
        y = step.batch.targets
        images, values = step.images, step.values
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
                    self.found.append((float(p), int(step.indices[j]), int(y[j]), int(p0[j]), int(pl[j]), a, b))
        self.n += len(step)

    def witnesses(self) -> list[tuple]:
        """Every witness, sorted by radius and sample index."""
        return sorted((tuple(r) for r in self.found), key=lambda r: (r[0], r[1]))

    def rows(self) -> list[dict]:
        out = []
        for p in self.clean.params:
            mine = [r for r in self.found if r[0] == float(p)]
            out.append({"variant": self.low, "param": p, "metric": "corollary1-witnesses",
                        "value": len(mine) / self.n if self.n else float("nan"), "n": self.n})
            for e in self.eps:
                within = sum(1 for r in mine if r[5] <= e)
                out.append({"variant": self.low, "param": p, "eps": e, "metric": "corollary1-within-eps",
                            "value": within / self.n if self.n else float("nan"), "n": self.n})
        return out

    def extras(self) -> dict[str, Any]:
        return {"corollary1": self.witnesses()}

    def write(self, out_dir: Path) -> list[str]:
        """``corollary1.csv``: every witness with d∞ and d2 (header only when there is none)."""
        import csv

        with open(Path(out_dir) / "corollary1.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COROLLARY1_COLUMNS)
            for p, i, y, po, pl, linf, l2 in self.witnesses():
                w.writerow([f"{p:g}", i, y, po, pl, f"{linf:.6f}", f"{l2:.6f}"])
        return ["corollary1.csv"]


class _Plan(NamedTuple):
    """What one evaluation of the probe declares: its sources and evaluators (built together)."""

    ctx: Any
    sources: list
    evaluators: list


class RobustnessProbe(Probe):
    """Clean and robust accuracy per --attack and --eps (Table 2), the perturbation's spectrum and Corollary 1 witnesses."""

    name = "robustness"
    requires = {"task": "classification"}
    #: frequency: also the low/high parts of clean and adversarial images, the perturbation's
    #: spectrum and the Corollary 1 witnesses (off: Table 2's clean and robust accuracy only)
    options = {"frequency": True}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._plan: _Plan | None = None

    def _planned(self, ctx: RunContext) -> _Plan:
        """The sources and evaluators for ``ctx`` (built once per context: the evaluators refer to the sources)."""
        if self._plan is not None and self._plan.ctx is ctx:
            return self._plan
        attacks = run_attacks(ctx.config, ctx.pm)
        eps = run_eps(ctx.config)
        attack_source = AttackSource(attacks, eps)
        if not self.opts["frequency"]:
            self._plan = _Plan(ctx, [OriginalSource(), attack_source], [])
            return self._plan
        clean = DecomposerSource(ctx.decomposer, ctx.params, OriginalSource())
        original = clean.base.variants()[0]
        evaluators = [PerturbationSpectrum(attack_source, ctx.decomposer, ctx.params, original, ctx),
                      Corollary1Witnesses(clean, original, eps, ctx)]
        self._plan = _Plan(ctx, [clean, DecomposerSource(ctx.decomposer, ctx.params, attack_source)], evaluators)
        return self._plan

    def sources(self, ctx: RunContext) -> list[VariantSource]:
        return list(self._planned(ctx).sources)

    def evaluators(self, ctx: RunContext) -> list[Evaluator]:
        return list(self._planned(ctx).evaluators)
