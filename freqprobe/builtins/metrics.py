"""Built-in metrics."""

from __future__ import annotations

import torch

from ..hookspecs import hookimpl
from ..interfaces import Metric


class AccuracyMetric(Metric):
    """Top-1 accuracy: the fraction of samples whose arg-max logit is the label."""

    name = "accuracy"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        pred = outputs.argmax(-1) if outputs.dim() > 1 else outputs
        self.correct += int((pred.cpu() == targets.cpu()).sum())
        self.total += int(targets.numel())

    def compute(self) -> float:
        return self.correct / self.total if self.total else float("nan")


class Top5AccuracyMetric(AccuracyMetric):
    """Top-5 accuracy: the label is among the five highest logits."""

    name = "top5-accuracy"

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        k = min(5, outputs.shape[-1])
        top = outputs.topk(k, dim=-1).indices.cpu()
        self.correct += int((top == targets.cpu().view(-1, 1)).any(1).sum())
        self.total += int(targets.numel())


@hookimpl
def register_metrics():
    return [AccuracyMetric, Top5AccuracyMetric]
