"""The frequency tracker: accuracy on each split's images and their low/high parts at each radius, per epoch.

It is the probe engine (one evaluation loop, the ``lfc-hfc`` variants) run on the model as it is at the
end of an epoch. Use it from any training loop::

    tracker = FrequencyTracker({"train": train_data, "test": test_data}, radii=(4, 8, 12, 16))
    for epoch in range(1, epochs + 1):
        train_one_epoch(model)
        tracker.track(model, epoch)          # rows: epoch, split, variant, param, metric, value, n
    tracker.write_csv("curves.csv")

or, with Lightning, ``trainer = Trainer(callbacks=[tracker.lightning_callback()])``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

import freqprobe
from freqprobe import ClassifierAdapter, DataSource, DecomposerSource, ModelAdapter, RunContext, UserFacingError, get_class

from .data import fixed_sample
from .settings import DEFAULT_RADII
CURVE_COLUMNS = ("epoch", "split", "variant", "param", "metric", "value", "n")


def default_track_samples(train_size: int) -> int:
    """The default tracking set per split: 2.5 % of the training set, at least 100 and at most 1,000 images.

    Chosen so that tracking four radii (9 variants per split, forward passes only) costs under 15 % of
    an epoch's training: an evaluated image costs about 0.3 of a training step on a CPU, so
    2 splits × 9 variants × 2.5 % ≈ 14 % (measured: benchmarks/bench_tracker.py, docs/training.md).
    """
    return int(min(1000, max(100, round(0.025 * train_size))))


class FrequencyTracker:
    """Per-epoch accuracy on original, low- and high-frequency images of several splits (the paper's Figures 3-6)."""

    def __init__(
        self,
        splits: Mapping[str, DataSource | str],
        *,
        radii: Sequence[float] = DEFAULT_RADII,
        decomposer: str = "fft-radial",
        decomposer_options: Mapping[str, Any] | None = None,
        rescale: str = "none",
        samples: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        batch_size: int = 500,
        channels_last: bool | None = None,
        pm=None,
    ) -> None:
        from freqprobe.plugin import resolve_device

        self.pm = pm
        self.device = resolve_device(device) if not isinstance(device, torch.device) else device
        self.decomposer = freqprobe.get_decomposer(decomposer, pm, **dict(decomposer_options or {}))
        self.radii = self.decomposer.check_params(list(radii))
        self.rescale = get_class("rescale", rescale, pm)()
        #: the metric of every curve (the registered ``accuracy``)
        self.metric = get_class("metrics", "accuracy", pm)
        self.batch_size = int(batch_size)
        #: the engine's memory format (None: its default); False keeps the parameters' layout (what DDP needs)
        self.channels_last = channels_last
        if self.batch_size < 1:
            raise UserFacingError(f"tracking batch size must be at least 1, got {batch_size}")
        self.splits: dict[str, DataSource] = {}
        for name, data in splits.items():
            d = freqprobe.open_data(data, pm=pm) if isinstance(data, str) else data
            self.splits[name] = fixed_sample(d, samples, seed, f"tracked {name}")
        self.rows: list[dict] = []

    def describe(self) -> dict[str, Any]:
        return {"radii": list(self.radii), "decomposer": self.decomposer.name, "options": self.decomposer.options(),
                "rescale": self.rescale.name, "splits": {k: len(v) for k, v in self.splits.items()},
                "batch_size": self.batch_size}

    def _adapter(self, model: Any) -> ModelAdapter:
        if isinstance(model, ModelAdapter):
            return model
        if isinstance(model, torch.nn.Module):
            return ClassifierAdapter(model, spec=type(model).__name__)
        raise UserFacingError(f"the tracker needs a torch.nn.Module or a freqprobe ModelAdapter, got {type(model).__name__}")

    def track(self, model: Any, epoch: int) -> list[dict]:
        """Evaluate ``model`` (a module or adapter; its mode and memory format are restored) and keep the rows."""
        adapter = self._adapter(model)
        module = adapter.module
        was_training = module.training
        formats = _memory_formats(module)
        rows = []
        try:
            for split, data in self.splits.items():
                # non-finite outputs are counted, not refused by the engine (whose advice names `run`'s
                # --allow-nonfinite): the tracker says what they mean for a model in training (_check_finite)
                ctx = RunContext.create(adapter, data, self.decomposer, self.radii, self.rescale, metrics=[self.metric],
                                        device=self.device, pm=self.pm, batch_size=self.batch_size,
                                        channels_last=self.channels_last, allow_nonfinite=True)
                res = ctx.evaluate([DecomposerSource(self.decomposer, self.radii)], probe="track", samples=False)
                _check_finite(res.summary, split, epoch)
                for r in res.summary:
                    if r["metric"] != NONFINITE:
                        rows.append({"epoch": int(epoch), "split": split, "variant": r["variant"], "param": r["param"],
                                     "metric": r["metric"], "value": float(r["value"]), "n": int(r["n"])})
        finally:
            _restore_formats(module, formats)
            module.train(was_training)
        self.rows.extend(rows)
        return rows

    def write_csv(self, path: str | Path, rows: Iterable[Mapping[str, Any]] | None = None) -> None:
        write_curves(path, self.rows if rows is None else rows)

    def lightning_callback(self):
        """A Lightning ``Callback`` that tracks the LightningModule at the end of every training epoch (epochs from 1)."""
        try:
            from lightning.pytorch import Callback
        except ImportError:
            try:
                from pytorch_lightning import Callback
            except ImportError:
                raise UserFacingError("lightning is not installed: pip install lightning") from None
        tracker = self

        class FrequencyTrackerCallback(Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                tracker.track(pl_module, trainer.current_epoch + 1)

        return FrequencyTrackerCallback()


#: the engine's count of non-finite outputs per variant (with ``allow_nonfinite``)
NONFINITE = "nonfinite-outputs"


def _check_finite(summary: Iterable[Mapping[str, Any]], split: str, epoch: int) -> None:
    """Non-finite outputs on tracked images: the model has diverged; one line saying where and what to change."""
    bad = [(r["variant"], r["param"], int(r["value"])) for r in summary if r["metric"] == NONFINITE and r["value"]]
    if not bad:
        return
    from freqprobe.plugin import fmt_param

    shown = ", ".join(f"{v}{'' if p is None else ' r=' + fmt_param(p)}: {c}" for v, p, c in bad[:5])
    raise UserFacingError(f"the model returned non-finite outputs (NaN or inf) on tracked {split} images after epoch {epoch} "
                          f"({shown}); training has diverged: lower the learning rate, or check the data and --mean/--std")


def _memory_formats(module: torch.nn.Module) -> list[tuple[torch.Tensor, bool]]:
    return [(p, p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last))
            for p in module.parameters()]


def _restore_formats(module: torch.nn.Module, formats: list) -> None:
    """Put the parameters back in the memory format training had (the engine feeds channels_last)."""
    if any(p.dim() == 4 and not cl and not p.is_contiguous() for p, cl in formats):
        module.to(memory_format=torch.contiguous_format)


def write_curves(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """The tidy ``curves.csv``: ``epoch,split,variant,param,metric,value,n`` (param empty where there is none)."""
    with open(path, "w", newline="") as f:
        f.write(curves_text(rows))


def curves_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """The text of ``curves.csv`` (what :func:`write_curves` writes)."""
    import io

    from freqprobe.plugin import fmt_param

    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(CURVE_COLUMNS)
    for r in rows:
        p = r.get("param")
        w.writerow([r["epoch"], r["split"], r["variant"], "" if p is None else fmt_param(p), r["metric"],
                    f"{float(r['value']):.6f}", r["n"]])
    return f.getvalue()


def read_curves(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        out = []
        for r in csv.DictReader(f):
            out.append({"epoch": int(r["epoch"]), "split": r["split"], "variant": r["variant"],
                        "param": float(r["param"]) if r["param"] else None, "metric": r["metric"],
                        "value": float(r["value"]), "n": int(r["n"])})
        return out
