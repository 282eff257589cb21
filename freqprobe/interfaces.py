"""Base classes for everything a plugin can register.

Each registrable class carries a kebab-case ``name`` (a ``ClassVar``) and a one-line docstring
that ``freqprobe list`` shows. Images are always N×C×H×W float tensors in [0, 1]; only a
:class:`ModelAdapter` normalises.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import torch

from .errors import UserFacingError

Components = dict  # name -> N×C×H×W tensor


class Decomposer(ABC):
    """Splits images into named components that sum back to the input."""

    name: ClassVar[str]
    #: component names; the first is the smooth/dominant part, the second the residual.
    components: ClassVar[tuple[str, ...]] = ("low", "high")
    #: short name of the parameter, used in export keys (``low_r8``) and tables.
    param_name: ClassVar[str] = "r"
    param_type: ClassVar[type] = float
    #: parameters used when the user gives none
    default_params: ClassVar[tuple] = ()

    def __init__(self, **options: Any) -> None:
        if options:
            raise UserFacingError(
                f"decomposer '{self.name}' takes no options, got: {', '.join(sorted(options))}"
            )

    def options(self) -> dict[str, Any]:
        """The options this instance was built with (recorded in manifests)."""
        return {}

    def check_param(self, param: Any) -> Any:
        """Validate and normalise one parameter value; raise :class:`UserFacingError` if bad."""
        try:
            value = self.param_type(param)
        except (TypeError, ValueError):
            if self.param_type is int:
                try:  # "2.5" for an integer parameter: a number, just not a whole one
                    float(param)
                except (TypeError, ValueError):
                    pass
                else:
                    raise UserFacingError(f"{self.name}: {self.param_name}={param!r} must be a whole number") from None
            raise UserFacingError(
                f"{self.name}: {self.param_name}={param!r} is not a number; pass positive numbers like 4,8,12,16"
            ) from None
        if not value > 0 or value != value or value in (float("inf"),):
            raise UserFacingError(f"{self.name}: {self.param_name}={param!r} must be a positive number")
        if self.param_type is int and float(param) != int(value):
            raise UserFacingError(f"{self.name}: {self.param_name}={param!r} must be a whole number")
        return value

    @abstractmethod
    def decompose(self, x: torch.Tensor, param: Any, *, out: Mapping[str, torch.Tensor] | None = None) -> Components:
        """Return ``{component: tensor}`` for the N×C×H×W batch ``x`` at ``param``, on ``x``'s device.

        ``out`` may hold preallocated tensors (same shape and dtype as ``x``) to write into.
        """


class ModelAdapter:
    """A model as freqprobe sees it: takes [0,1] images, normalises them itself, returns outputs.

    A classifier's :meth:`predict` returns logits (N×K). Detection adapters set ``task = "detection"``.
    """

    task: str = "classification"

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        spec: str = "",
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.module = module
        self.spec = spec
        self.info = dict(info or {})
        self.mean = tuple(float(m) for m in mean) if mean is not None else None
        self.std = tuple(float(s) for s in std) if std is not None else None
        if self.std is not None and any(s <= 0 for s in self.std):
            raise UserFacingError(f"--std values must be positive, got {self.std}")
        self._norm_cache: tuple | None = None

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        for b in self.module.buffers():
            return b.device
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> "ModelAdapter":
        self.module.to(device)
        self._norm_cache = None
        return self

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.mean is None and self.std is None:
            return None
        key = (x.device, x.dtype, x.shape[1])
        if self._norm_cache is None or self._norm_cache[0] != key:
            c = x.shape[1]
            mean = self.mean or (0.0,) * c
            std = self.std or (1.0,) * c
            if len(mean) not in (1, c) or len(std) not in (1, c):
                raise UserFacingError(
                    f"normalisation has {len(mean)} mean / {len(std)} std values but the images have {c} channels; "
                    f"pass --mean/--std with {c} values"
                )
            m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            self._norm_cache = (key, m, s)
        return self._norm_cache[1], self._norm_cache[2]

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        stats = self._stats(images01)
        if stats is None:
            return images01
        return (images01 - stats[0]) / stats[1]

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        """Differentiable call (for attacks and training): normalise, then run the module."""
        return self.module(self.normalize(images01))

    @torch.inference_mode()
    def predict(self, images01: torch.Tensor) -> torch.Tensor:
        """Outputs for [0,1] images in eval mode, without gradients."""
        was_training = self.module.training
        self.module.eval()
        try:
            return self.module(self.normalize(images01))
        finally:
            self.module.train(was_training)

    def num_outputs(self, sample: torch.Tensor) -> int:
        """Number of classes the classifier predicts (probed with one sample)."""
        out = self.predict(sample[:1].to(self.device))
        return int(out.shape[-1])

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "task": self.task, "mean": self.mean, "std": self.std, **self.info}


@dataclasses.dataclass
class BuiltModel:
    """What a :class:`ModelSource` returns: the module and what it knows about its inputs."""

    module: torch.nn.Module
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    input_size: Sequence[int] | None = None
    #: True when ``module`` already carries weights (pretrained, TorchScript, pickled module).
    has_weights: bool = False
    info: dict = dataclasses.field(default_factory=dict)


class ModelSource(ABC):
    """Builds a model from the part of a model spec after ``<name>:`` (``resnet18`` in ``timm:resnet18``)."""

    name: ClassVar[str]
    task: ClassVar[str] = "classification"
    adapter_class: ClassVar[type[ModelAdapter]] = ModelAdapter

    @abstractmethod
    def build(
        self, target: str, *, pretrained: bool = False, num_classes: int | None = None, model_args: Mapping[str, Any] = {}
    ) -> BuiltModel:
        """Build the architecture (with weights when ``pretrained``). ``num_classes`` is a hint for fresh heads."""


class DataSource(ABC):
    """A labelled image set streamed as batches of N×C×H×W float [0,1] tensors."""

    name: ClassVar[str]
    #: whether the spec takes an argument after ``name:`` (``npz:PATH``)
    takes_argument: ClassVar[bool] = False
    #: default number of fitting epochs when a model must be fitted on this data first
    default_fit_epochs: ClassVar[int] = 1

    def __init__(self, argument: str | None = None, *, root: Path | None = None, split: str = "test", **options: Any):
        self.argument, self.root, self.split = argument, root, split

    num_classes: int
    class_names: Sequence[str] | None = None
    #: True when the class count is fixed by the data set (not inferred from the labels seen)
    fixed_num_classes: bool = True

    def has_split(self, split: str) -> bool:
        return split == "test"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "argument": self.argument, "split": self.split, "n": len(self)}

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def batches(
        self, batch_size: int, *, limit: int | None = None, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels, indices)``: float32 N×C×H×W in [0,1], int64 labels, int64 sample indices."""


class RescalePolicy(ABC):
    """How a component image (which may leave [0,1]) is fed to a model."""

    name: ClassVar[str]
    #: apply to the original images too (the authors' code stretched every image, clean ones included)
    applies_to_original: ClassVar[bool] = False

    @abstractmethod
    def apply(self, x: torch.Tensor) -> torch.Tensor: ...


class Metric(ABC):
    """Accumulates model outputs against targets over batches and reports one number."""

    name: ClassVar[str]
    task: ClassVar[str] = "classification"

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def update(self, outputs: Any, targets: Any) -> None: ...

    @abstractmethod
    def compute(self) -> float: ...


class Attack(ABC):
    """An adversarial attack in the torchattacks shape; works in [0,1] pixel space and never normalises."""

    name: ClassVar[str]

    def __init__(self, adapter: ModelAdapter, **options: Any) -> None:
        self.adapter = adapter

    @abstractmethod
    def forward(self, images01: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, images01: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.forward(images01, labels)


class Transform(ABC):
    """A model -> model rewrite (e.g. first-layer kernel smoothing); recorded in the ``transform`` column."""

    name: ClassVar[str]

    def __init__(self, **options: Any) -> None:
        self.opts = options

    def label(self) -> str:
        if not self.opts:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.opts.items()))

    @abstractmethod
    def apply(self, adapter: ModelAdapter) -> ModelAdapter: ...


@dataclasses.dataclass
class RunContext:
    """Everything a probe needs, built and validated by the runner before any compute."""

    adapter: ModelAdapter
    data: DataSource
    decomposer: Decomposer
    params: list
    rescale: RescalePolicy
    metrics: list
    device: torch.device
    batch_size: int = 128
    limit: int | None = None
    seed: int = 0
    transform: str = ""
    out_dir: Path | None = None
    progress: Callable[[int], None] | None = None
    options: dict = dataclasses.field(default_factory=dict)
    manifest: dict = dataclasses.field(default_factory=dict)
    pm: Any = None


@dataclasses.dataclass
class ProbeResult:
    """A probe's output: tidy summary rows, per-sample rows and extras for writers."""

    probe: str
    #: dicts with keys probe, transform, decomposer, variant, param, metric, value, n
    summary: list
    #: dicts with keys index, label, variant, param, pred, confidence
    samples: list = dataclasses.field(default_factory=list)
    #: component names in order, e.g. ("low", "high")
    components: tuple = ()
    param_name: str = ""
    #: extras for writers (e.g. the Figure-2 gallery)
    extras: dict = dataclasses.field(default_factory=dict)


class Probe(ABC):
    """An experiment run against a model and data set; returns a :class:`ProbeResult`."""

    name: ClassVar[str]
    requires: ClassVar[Mapping[str, Any]] = {"task": "classification"}

    def __init__(self, **options: Any) -> None:
        self.opts = options

    @abstractmethod
    def run(self, ctx: RunContext) -> ProbeResult: ...
