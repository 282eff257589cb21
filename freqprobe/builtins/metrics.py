"""Built-in metrics. State is declared with ``add_state`` so partial results (shards) merge."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..hookspecs import hookimpl
from ..evaluators import Metric

if TYPE_CHECKING:  # annotations only: the metrics work on the tensors they are given, without importing torch
    import torch


class AccuracyMetric(Metric):
    """Top-1 accuracy: the fraction of samples whose arg-max logit is the label."""

    name = "accuracy"

    def __init__(self, ctx=None, **options) -> None:
        super().__init__(ctx, **options)
        # counts stay on the run's device between batches: no host synchronisation per batch
        self.add_state("correct", 0, reduce="sum")
        self.add_state("total", 0, reduce="sum")

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        pred = outputs.argmax(-1) if outputs.dim() > 1 else outputs
        self.correct = self.correct + (pred == targets.to(pred.device)).sum()
        self.total += int(targets.numel())

    def compute(self) -> float:
        return int(self.correct) / self.total if self.total else float("nan")


class Top5AccuracyMetric(AccuracyMetric):
    """Top-5 accuracy: the label is among the five highest logits."""

    name = "top5-accuracy"

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        k = min(5, outputs.shape[-1])
        top = outputs.topk(k, dim=-1).indices
        self.correct = self.correct + (top == targets.to(top.device).view(-1, 1)).any(1).sum()
        self.total += int(targets.numel())


@hookimpl
def register_metrics():
    return [AccuracyMetric, Top5AccuracyMetric]
