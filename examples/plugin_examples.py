"""The worked plugin examples of docs/plugins.md, as one plugin module (tests import this file and
check that the docs show exactly this code). Register it with ``pm.register(module, "examples")``
or an entry point ``[project.entry-points.freqprobe] examples = "plugin_examples"``."""

# --8<-- [start:metric]
import torch

import freqprobe
from freqprobe import hookimpl


class ExpectedCalibrationError(freqprobe.Metric):
    """Expected calibration error of the softmax confidence (15 equal-width bins)."""

    name = "ece"

    def __init__(self, ctx=None, bins: int = 15):
        super().__init__(ctx)
        self.bins = bins
        # per-bin sums; declared state is reset by reset() and summed across shards by merge()
        self.add_state("count", torch.zeros(bins, dtype=torch.float64), reduce="sum")
        self.add_state("confidence", torch.zeros(bins, dtype=torch.float64), reduce="sum")
        self.add_state("correct", torch.zeros(bins, dtype=torch.float64), reduce="sum")

    def update(self, outputs, targets):
        # outputs: this variant's logits (N×K) on the run's device; targets: int64 labels (N,)
        conf, pred = outputs.float().softmax(-1).max(-1)
        idx = (conf * self.bins).long().clamp(max=self.bins - 1)
        hit = (pred == targets).double()
        dev = outputs.device
        self.count = self.count.to(dev) + torch.bincount(idx, minlength=self.bins).double()
        self.confidence = self.confidence.to(dev) + torch.bincount(idx, weights=conf.double(), minlength=self.bins)
        self.correct = self.correct.to(dev) + torch.bincount(idx, weights=hit, minlength=self.bins)

    def compute(self):
        n = float(self.count.sum())
        if n == 0:
            return float("nan")
        return float((self.confidence - self.correct).abs().sum()) / n


@hookimpl
def register_metrics():
    return [ExpectedCalibrationError]
# --8<-- [end:metric]


# --8<-- [start:error-rate]
class ErrorRate(freqprobe.Metric):
    """1 - accuracy."""
    name = "error-rate"

    def __init__(self, ctx=None, **options):
        super().__init__(ctx, **options)
        self.add_state("wrong", 0)
        self.add_state("total", 0)

    def update(self, outputs, targets):
        self.wrong = self.wrong + int((outputs.argmax(-1) != targets).sum())
        self.total += len(targets)

    def compute(self):
        return self.wrong / self.total if self.total else float("nan")  # a fresh instance has seen nothing
# --8<-- [end:error-rate]


# --8<-- [start:probe]
from freqprobe import OriginalSource, Probe, Variant, VariantSource
from freqprobe.plugin import decompose_with


class LowPartSource(VariantSource):
    """The decomposer's first (smooth) component at every parameter, and nothing else."""

    def __init__(self, decomposer, params):
        self.decomposer, self.params = decomposer, list(params)
        self.part = decomposer.components[0]
        # component=True: the run's --rescale policy applies to these images
        self.by_param = {p: Variant(self.part, p, component=True) for p in self.params}

    def variants(self):
        return list(self.by_param.values())

    def generate(self, batch, ctx, out=None):
        # batch: the original images and targets on the run's device, the sample indices, the batch number
        for p in self.params:
            # decompose_with: decompose() with the core's checks of what it returns (a plugin decomposer's too)
            low = decompose_with(self.decomposer, batch.images, p)[self.part]
            yield self.by_param[p], low  # the loop copies it into its stack


class LowOnlyProbe(Probe):
    """Accuracy on the low-frequency part only (and, by default, on the original images)."""

    name = "low-only"
    options = {"with_original": True}  # --probe-opt with_original=False

    def sources(self, ctx):
        low = LowPartSource(ctx.decomposer, ctx.params)
        return [OriginalSource(), low] if self.opts["with_original"] else [low]


@hookimpl
def register_probes():
    return [LowOnlyProbe]
# --8<-- [end:probe]


# --8<-- [start:attack]
import torch.nn.functional as F


class GradientL2(freqprobe.Attack):
    """Gradient ascent in L2: `steps` steps of eps/steps along the normalised gradient of the loss."""

    name = "grad-l2"
    norm = "l2"  # eps is an L2 budget: the core checks ‖adv − x‖₂ ≤ eps for every image
    options = {"steps": 1}  # --attack grad-l2:steps=5 (converted to the default's type, unknown keys refused)

    def forward(self, images01, labels):
        # The core calls this with gradients enabled and outside inference mode, on copies of the
        # batch (N×C×H×W in [0, 1], on the run's device) and its labels. adapter.forward normalises.
        steps = max(1, self.opts["steps"])
        x = images01.clone()
        for _ in range(steps):
            x.requires_grad_(True)
            loss = F.cross_entropy(self.adapter.forward(x).float(), labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            x = (x.detach() + self.eps / steps * grad / norms).clamp(0, 1)
        return x  # the core checks: x's shape, dtype and device, finite, in [0, 1], within eps in L2


@hookimpl
def register_attacks():
    return [GradientL2]
# --8<-- [end:attack]
