"""Base classes for everything a plugin can register (the evaluator contract is in :mod:`freqprobe.evaluators`,
probes and their run context in :mod:`freqprobe.probing`).

Each registrable class carries a kebab-case ``name`` (a ``ClassVar``) and a one-line docstring
that ``freqprobe list`` shows. Images are always N×C×H×W float tensors in [0, 1]; only a
:class:`ModelAdapter` normalises. This module imports neither torch nor numpy (they are imported
inside the methods that use them), so ``import freqprobe`` and a plugin's hook module stay cheap.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Mapping, NamedTuple, Sequence

from .errors import IncompatibleError, PluginError, UserFacingError, exception_line

if TYPE_CHECKING:  # annotations only
    from pathlib import Path

    import numpy as np
    import torch

Components = dict  # name -> N×C×H×W tensor


class Decomposer(ABC):
    """Splits images into named components that sum back to the input."""

    name: ClassVar[str]
    #: component names; the first is the smooth/dominant part, the second the residual.
    components: ClassVar[tuple[str, ...]] = ("low", "high")
    #: short name of the parameter, used in export keys (``low_r8``) and tables.
    param_name: ClassVar[str] = "r"
    param_type: ClassVar[type] = float
    #: parameters used when the user gives none; must not be empty (checked at registration)
    default_params: ClassVar[tuple] = ()
    #: whether the components sum back to the input (the core checks that they do, for a plugin's
    #: decomposer on every call); False for a split whose parts do not add up (amplitude/phase):
    #: then only their finiteness is checked
    additive: ClassVar[bool] = True

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

    def check_params(self, params: Sequence[Any] | None) -> list:
        """Validated, de-duplicated parameters in the given order (``default_params`` when None)."""
        out: list = []
        dropped: list = []
        given = self.default_params if params is None else params
        for p in given:
            v = self.check_param(p)
            if v not in out:
                out.append(v)
            elif v not in dropped:
                dropped.append(v)
        if dropped and params is not None:
            import warnings

            fmt = lambda v: f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
            warnings.warn(
                f"dropped duplicate {', '.join(f'{self.param_name}={fmt(v)}' for v in dropped)} from "
                f"{','.join(str(p) for p in given)}; using {','.join(fmt(v) for v in out)}",
                stacklevel=2,
            )
        return out

    @abstractmethod
    def decompose(self, x: torch.Tensor, param: Any, *, out: Mapping[str, torch.Tensor] | None = None) -> Components:
        """Return ``{component: tensor}`` for the N×C×H×W batch ``x`` at ``param``, on ``x``'s device.

        ``out`` may hold preallocated tensors (same shape and dtype as ``x``) to write into.
        """

    def decompose_all(
        self, x: torch.Tensor, params: Iterable[Any], *, out: Mapping[Any, Mapping[str, torch.Tensor]] | None = None
    ) -> Iterator[tuple[Any, Components]]:
        """Yield ``(param, components)`` for several parameters; override to share work between them.

        ``out`` is ``None``, one ``{component: tensor}`` mapping rewritten for every parameter, or
        ``{param: {component: tensor}}``. Results may live in ``out``: consume each before the next
        when one mapping is shared.
        """
        per_param = out is not None and not all(c in out for c in self.components)
        for p in params:
            yield p, self.decompose(x, p, out=(out[p] if per_param else out))


class ModelAdapter(ABC):
    """A model as freqprobe sees it: takes [0,1] images, normalises them itself, returns outputs.

    Abstract: each task has its adapter, registered through ``register_adapters`` —
    :class:`ClassifierAdapter` (built in: N×C×H×W in, N×K logits out) and, from a plugin, e.g.
    a detector adapter. An adapter declares its ``task``, the per-sample columns it writes
    (:attr:`sample_columns`, :meth:`sample_values`) and how it refuses data it cannot take
    (:meth:`check_data`). ``ModelAdapter(module, ...)`` itself still builds a classifier adapter,
    as it did before the two were siblings.
    """

    #: the registry name (``freqprobe list adapters``); one adapter per task is looked up by ``task``
    name: ClassVar[str]
    task: ClassVar[str]
    #: per-sample columns this adapter writes to ``samples.csv`` (see :meth:`sample_values`)
    sample_columns: ClassVar[tuple[str, ...]] = ()
    #: whether several image variants of a batch may be concatenated into one forward pass
    #: (true when each output depends on its own input only, e.g. a classifier in eval mode)
    stackable: ClassVar[bool] = False

    def __new__(cls, *args: Any, **kwargs: Any) -> "ModelAdapter":
        if cls is ModelAdapter:  # the adapter before the task split: a classifier
            cls = ClassifierAdapter
        return super().__new__(cls)

    def __init__(
        self,
        module: Any,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        spec: str = "",
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.module = module
        self.spec = spec
        self.info = dict(info or {})
        self._norm_cache: tuple | None = None
        self.set_normalization(mean, std)

    def set_normalization(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        """Normalise with ``mean``/``std`` from now on (None: that part is left out); std values must be positive."""
        self.mean = tuple(float(m) for m in mean) if mean is not None else None
        self.std = tuple(float(s) for s in std) if std is not None else None
        if self.std is not None and any(s <= 0 for s in self.std):
            raise UserFacingError(f"--std values must be positive, got {self.std}")
        self._norm_cache = None

    @property
    def device(self) -> "torch.device":
        import torch

        for p in self.module.parameters():
            return p.device
        for b in self.module.buffers():
            return b.device
        return torch.device("cpu")

    def to(self, device: "torch.device | str") -> "ModelAdapter":
        self.module.to(device)
        self._norm_cache = None
        return self

    def _stats(self, x: "torch.Tensor") -> "tuple[torch.Tensor, torch.Tensor] | None":
        if self.mean is None and self.std is None:
            return None
        key = (x.device, x.dtype, x.shape[1])
        if self._norm_cache is None or self._norm_cache[0] != key:
            import torch

            c = x.shape[1]
            mean = self.mean or (0.0,) * c
            std = self.std or (1.0,) * c
            if len(mean) not in (1, c) or len(std) not in (1, c):
                raise UserFacingError(
                    f"normalisation has {len(mean)} mean / {len(std)} std values but the images have {c} channels; "
                    f"pass --mean/--std with {c} values"
                )
            with torch.inference_mode(False):  # normal tensors: usable in inference mode and in an attack's autograd graph
                m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
                s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            self._norm_cache = (key, m, s)
        return self._norm_cache[1], self._norm_cache[2]

    def normalize(self, images01: "torch.Tensor") -> "torch.Tensor":
        stats = self._stats(images01)
        if stats is None:
            return images01
        return (images01 - stats[0]).div_(stats[1])  # = (x - mean) / std, without a second image-sized temporary

    def forward(self, images01: "torch.Tensor") -> "torch.Tensor":
        """Differentiable call (for attacks and training): normalise, then run the module."""
        return self.module(self.normalize(images01))

    def predict(self, images01: "torch.Tensor") -> Any:
        """Outputs for [0,1] images in eval mode, without gradients."""
        import torch

        with torch.inference_mode():
            was_training = self.module.training
            self.module.eval()
            try:
                return self.module(self.normalize(images01))
            finally:
                self.module.train(was_training)

    # -- the task contract ---------------------------------------------------------------------
    @abstractmethod
    def sample_values(self, outputs: Any, targets: Any) -> dict[str, Any]:
        """Per-sample columns (:attr:`sample_columns`) for a batch's ``outputs`` (N-long tensors, kept on the device)."""

    @abstractmethod
    def check_data(self, data: "DataSource", device: "torch.device") -> None:
        """Refuse, before any compute, a data set this model cannot be evaluated on (raise IncompatibleError)."""

    def check_input_size(self, images: "torch.Tensor", data: "DataSource | None" = None) -> None:
        """Refuse images of another size than a model with a fixed input size takes (a ViT: timm's ``fixed_input_size``)."""
        size = self.info.get("input_size")
        if not self.info.get("fixed_input_size") or not size or images.dim() != 4:
            return
        want = tuple(int(v) for v in size[-2:])
        got = tuple(int(v) for v in images.shape[-2:])
        if want == got:
            return
        hints = []
        if data is not None and hasattr(data, "image_size"):
            hints.append(f"pass --image-size {want[0]}" if want[0] == want[1] else f"resize the data to {want[0]}×{want[1]}")
        else:
            hints.append(f"use data of {want[0]}×{want[1]} images")
        if not self.info.get("has_weights") and got[0] == got[1]:
            hints.append(f"or build it for this size with --model-arg img_size={got[0]}")
        raise IncompatibleError(
            f"{self.spec or type(self.module).__name__} takes only {want[0]}×{want[1]} images (fixed input size) "
            f"but the data gives {got[0]}×{got[1]}; {' '.join(hints)}"
        )

    def prepare(self, *, channels_last: bool = False) -> None:
        """Put the module in eval mode and the memory format the engine feeds it."""
        import torch

        self.module.eval()
        if channels_last and not isinstance(self.module, torch.jit.ScriptModule):
            self.module.to(memory_format=torch.channels_last)

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "task": self.task, "mean": self.mean, "std": self.std, **self.info}


class ClassifierAdapter(ModelAdapter):
    """Classifiers: N×C×H×W [0, 1] images in, N×K logits out (arg-max class and softmax confidence per sample)."""

    name = "classifier"
    task = "classification"
    sample_columns = ("pred", "confidence")
    stackable = True

    def sample_values(self, outputs: Any, targets: Any) -> dict[str, Any]:
        """The arg-max class and its softmax probability, per sample."""
        import torch

        prob = torch.softmax(outputs.float(), dim=-1)
        conf, pred = prob.max(-1)
        return {"pred": pred, "confidence": conf}

    def num_outputs(self, sample: "torch.Tensor") -> int:
        """Number of classes the classifier predicts (probed with one sample)."""
        out = self.predict(sample[:1].to(self.device))
        return int(out.shape[-1])

    def output_count(self, images: "torch.Tensor", device: "torch.device") -> int:
        """Run the model once on ``images`` (a small N×C×H×W batch) and return its class count K.

        Whatever goes wrong is one :class:`IncompatibleError` line naming the image shape: the
        model raising (anything, ``sys.exit`` included), or returning something other than N×K
        logits (a scalar, a tuple/list/dict, another shape).
        """
        import torch

        shape = "×".join(map(str, images.shape[1:]))
        name = self.spec or type(self.module).__name__
        try:
            out = self.predict(images.to(device))
        except UserFacingError:
            raise
        except (Exception, SystemExit) as exc:
            raise IncompatibleError(f"the model {name} failed on a batch of this data's {shape} images: {exception_line(exc)}") from None
        n = images.shape[0]
        if not isinstance(out, torch.Tensor):
            kind = type(out).__name__
            if isinstance(out, (tuple, list)):
                kind += f" of {len(out)} items"
            elif isinstance(out, dict):
                kind += f" with keys {', '.join(map(str, list(out)[:4]))}"
            raise IncompatibleError(
                f"the model {name} returned a {kind} for {n} images; a classifier must return one tensor of N×K logits "
                "(wrap it to return only the logits)"
            )
        if out.dim() != 2 or out.shape[0] != n or out.shape[1] < 1:
            got = "a scalar" if out.dim() == 0 else f"a tensor of shape {tuple(out.shape)}"
            raise IncompatibleError(
                f"the model {name} returned {got} for {n} images of {shape}; a classifier must return N×K logits "
                f"(here {n}×K)"
            )
        return int(out.shape[1])

    def check_data(self, data: "DataSource", device: "torch.device") -> None:
        """Refuse, before any compute, a data set this model cannot be evaluated on (raise IncompatibleError).

        One forward of the data's first two images gives the model's class count K (recorded in
        ``info["num_classes"]``); a data source with ``use_model_classes(K)`` is told it (an
        ImageNet folder of WordNet ids then maps them to ImageNet's indices). Labels that are a
        subset of the model's classes are fine; a label >= K is refused.
        """
        import warnings

        batch = next(iter(data.batches(2)))
        x = batch.images
        self.check_input_size(x, data)
        k = self.output_count(x, device)
        self.info["num_classes"] = k
        if hasattr(data, "use_model_classes"):
            data.use_model_classes(k)
        max_label = data.max_label() if hasattr(data, "max_label") else data.num_classes - 1
        if max_label is not None and max_label >= k:
            if not self.info.get("has_weights"):
                advice = f"build it with {max_label + 1} outputs (--model-arg num_classes={max_label + 1})"
            else:
                advice = "use a model or checkpoint trained on these classes"
                if hasattr(data, "use_model_classes"):
                    advice += ", or map the class folders to the model's classes with --class-map FILE.json"
            raise IncompatibleError(
                f"class-count mismatch: the data has labels up to {max_label} ({data.num_classes} classes) "
                f"but the model outputs only {k} classes; {advice}"
            )
        if k != data.num_classes and data.fixed_num_classes and getattr(data, "labels_by_position", False):
            warnings.warn(
                f"the model outputs {k} classes but {data.name} has {data.num_classes}: its labels 0–{data.num_classes - 1} "
                f"are read as the model's classes 0–{data.num_classes - 1}; make sure they are the same classes"
                + (" (or pass --class-map)" if hasattr(data, "use_model_classes") else ""),
                stacklevel=2,
            )


@dataclasses.dataclass
class BuiltModel:
    """What a :class:`ModelSource` returns: the module and what it knows about its inputs."""

    module: Any  # a torch.nn.Module (or, from file.py:callable, a plain callable)
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
    #: how a spec of this source is written in help texts (None: ``NAME:TARGET``, e.g. ``timm:NAME``)
    usage: ClassVar[str | None] = None
    #: the adapter class for every model of this source; None (or ModelAdapter): the adapter registered for the model's task
    adapter_class: ClassVar[type[ModelAdapter] | None] = None
    #: True when ``--checkpoint`` files are in this source's own format (detectron2's ``.pkl``...): the core then
    #: checks the file (it exists; pickled Python objects only with ``--trust-checkpoint``) and hands it to
    #: :meth:`load_checkpoint` after :meth:`build`, instead of reading it as a state dict itself
    reads_checkpoints: ClassVar[bool] = False

    @abstractmethod
    def build(
        self, target: str, *, pretrained: bool = False, num_classes: int | None = None, model_args: Mapping[str, Any] = {}
    ) -> BuiltModel:
        """Build the architecture (with weights when ``pretrained``). ``num_classes`` is a hint for fresh heads."""

    def load_checkpoint(self, built: BuiltModel, path: str, *, strict: bool = True) -> Mapping[str, Any]:
        """Load the ``--checkpoint`` file ``path`` into ``built.module`` (only called when :attr:`reads_checkpoints`).

        The core has checked the trust rule first: a file that holds pickled Python objects reaches this
        method only with ``--trust-checkpoint``. ``strict``: refuse (a :class:`UserFacingError`) missing or
        unexpected weights; shape conflicts are refused either way. Return facts for the manifest (e.g.
        ``{"checkpoint_kind": "detectron2-pkl", "checkpoint_missing": [...], "checkpoint_unexpected": [...]}``);
        the core adds the file's path and sha256.
        """
        raise NotImplementedError(f"{type(self).__name__} sets reads_checkpoints but does not implement load_checkpoint()")


class Batch(NamedTuple):
    """One batch of a data set. Unpacks as ``images, targets, indices``.

    ``images``: an N×C×H×W float tensor in [0, 1], or a list of C×H×W tensors of different sizes
    (detection). ``targets``: int64 class labels (N,), or one dict per image (boxes, categories).
    ``indices``: int64 (N,), each sample's position in the data set.
    """

    images: Any
    targets: Any
    indices: Any  # an int64 tensor


def batch_indices(
    n: int, batch_size: int, *, limit: int | None = None, shuffle: bool = False, seed: int = 0,
    shard: tuple[int, int] | None = None,
) -> Iterator[np.ndarray]:
    """The sample indices of each batch: the first ``limit`` samples (shuffled with ``seed``), cut into
    batches of ``batch_size``; with ``shard=(rank, world)`` only every ``world``-th batch from ``rank``
    on, so each sample is in the same batch as in one process."""
    import numpy as np

    if batch_size < 1:
        raise UserFacingError(f"batch size must be at least 1, got {batch_size}")
    n = n if limit is None else min(limit, n)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    rank, world = shard or (0, 1)
    if world < 1 or not 0 <= rank < world:
        raise UserFacingError(f"bad shard {shard!r}: use (rank, world) with 0 <= rank < world")
    for b, i in enumerate(range(0, n, batch_size)):
        if b % world == rank:
            yield order[i : i + batch_size]


class DataSource(ABC):
    """A labelled image set streamed as :class:`Batch` es of float [0,1] images.

    Implement ``__len__`` and :meth:`load` (the images and targets of given sample indices);
    the core then does limits, shuffling and sharding, and calls :meth:`load` in ``--workers``
    worker processes (freqprobe.loading: one batch per call, delivered in data order). A source
    may override :meth:`batches` instead when it cannot load by index; it is then read in this process.
    """

    name: ClassVar[str]
    #: whether the spec takes an argument after ``name:`` (``npz:PATH``)
    takes_argument: ClassVar[bool] = False
    #: how help texts write that argument (``npz:PATH``, ``NAME:IMAGES:ANN.json``)
    argument_metavar: ClassVar[str] = "PATH"
    #: the task of its targets: ``classification`` (int labels) or ``detection`` (per-image dicts)
    task: ClassVar[str] = "classification"
    #: default number of fitting epochs when a model must be fitted on this data first
    default_fit_epochs: ClassVar[int] = 1
    #: default Adam learning rate of that fit (the paper's vanilla setting)
    default_fit_lr: ClassVar[float] = 1e-4
    #: images per batch when the user gives no ``--batch-size`` (None: 128)
    default_batch_size: ClassVar[int | None] = None
    #: images already decoded in memory (arrays): ``--workers auto`` reads them in this process, where
    #: a worker would only copy them (freqprobe.loading); a source that decodes files leaves it False
    in_memory: ClassVar[bool] = False

    def __init__(self, argument: str | None = None, *, root: "Path | None" = None, split: str = "test", **options: Any):
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

    def load(self, indices: np.ndarray) -> Batch:
        """The :class:`Batch` of the samples at ``indices`` (an int64 array)."""
        raise NotImplementedError(f"data source {self.name!r} implements neither load() nor batches()")

    def batches(
        self, batch_size: int, *, limit: int | None = None, shuffle: bool = False, seed: int = 0,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[Batch]:
        """Yield :class:`Batch` es (see :func:`batch_indices` for ``limit``, ``shuffle`` and ``shard``)."""
        for idx in batch_indices(len(self), batch_size, limit=limit, shuffle=shuffle, seed=seed, shard=shard):
            yield self.load(idx)

    def batches_from(self, start: int, batch_size: int, *, limit: int | None = None,
                     shard: tuple[int, int] | None = None) -> Iterator[Batch]:
        """The batches of :meth:`batches` from the ``start``-th on: a resumed run skips what it finished
        (without loading it when the source loads by index)."""
        if start == 0:
            yield from self.batches(batch_size, limit=limit, shard=shard)
        elif type(self).batches is DataSource.batches:
            for i, idx in enumerate(batch_indices(len(self), batch_size, limit=limit, shard=shard)):
                if i >= start:
                    yield self.load(idx)
        else:
            for i, batch in enumerate(self.batches(batch_size, limit=limit, shard=shard)):
                if i >= start:
                    yield batch

    def target_columns(self, targets: Any) -> dict[str, Any]:
        """Per-sample columns taken from the targets (``label`` for classification)."""
        import torch

        if isinstance(targets, torch.Tensor):
            return {"label": targets}
        return {}


class RescalePolicy(ABC):
    """How a component image (which may leave [0,1]) is fed to a model."""

    name: ClassVar[str]
    #: apply to the original images too (the authors' code stretched every image, clean ones included)
    applies_to_original: ClassVar[bool] = False

    @abstractmethod
    def apply(self, x: torch.Tensor) -> torch.Tensor: ...


def check_declared_options(kind: str, name: str, declared: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``declared`` defaults updated with ``given`` (the options of a ``NAME:K=V,...`` spec, ``--probe-opt``...).

    An unknown key answers "Did you mean ...?"; a value is converted to its default's type
    (``"10"`` -> 10; booleans only from booleans: ``random_start=false`` is parsed as one); a
    default of None takes any value.
    """
    from .errors import UnknownNameError

    out = dict(declared)
    for key, value in given.items():
        if key not in declared:
            raise UnknownNameError(f"option of {kind} '{name}'", key, declared) if declared else UserFacingError(
                f"{kind} '{name}' takes no options (got {key}={value!r})"
            )
        default = declared[key]
        if default is not None and not isinstance(value, type(default)):
            try:
                if isinstance(default, bool) or (isinstance(default, int) and isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                if isinstance(value, bool):  # True is an int: never a number by accident
                    raise ValueError
                value = type(default)(value)
            except (TypeError, ValueError):
                raise UserFacingError(
                    f"{kind} '{name}': option {key}={value!r} must be a {type(default).__name__} (default {default!r})"
                ) from None
        out[key] = value
    return out


#: the norms an attack's budget ``eps`` may be measured in (:meth:`Attack.budget_norm`)
ATTACK_NORMS = ("linf", "l2")
#: how far past the ε-ball an attack's images may land (rounding): ``EPS_TOL``, plus ``L2_RTOL × eps`` in L2;
#: the testing kit's check_attack uses the same. The relative part is the float32 rounding of an L2 norm
#: over many pixels: PGD-L2 projected in float32 lands up to 2.5e-6 × eps past the ball on 3×224×224
#: images and 8.6e-6 × eps on 3×512×512 (measured); elementwise L∞ steps round by far less than 1e-6
EPS_TOL = 1e-6
L2_RTOL = 1e-4


class Attack(ABC):
    """An adversarial attack in the torchattacks shape: ``forward(images01, labels) -> adv01``.

    Works in [0, 1] pixel space: the adapter's :meth:`ModelAdapter.forward` normalises inside
    the differentiable call, so an attack never sees normalised pixels. ``eps`` is the budget in
    the attack's norm (:meth:`budget_norm`: ``linf`` or ``l2``, in [0, 1] pixel units); ``seed``
    makes random starts deterministic. ``options`` declares what an attack spec ``NAME:K=V,...``
    may set, with defaults.

    Call an attack (``attack(images01, labels)``), do not call ``forward`` directly: the call
    (foolbox's ``Attack.__call__`` shape) runs ``forward`` on copies of the inputs with autograd
    available — outside ``torch.inference_mode()`` (in which the evaluation loop runs), gradients
    enabled — and checks what it returns (:func:`adversarial_problem`): the input's shape, dtype
    and device, finite, in [0, 1], within ``eps`` of the input in the attack's norm (+1e-6 for
    rounding; in L2 also + 1e-4 × eps). A violation is a :class:`~freqprobe.errors.PluginError`
    naming the attack and its plugin.
    """

    name: ClassVar[str]
    #: options a spec ``NAME:K=V,...`` may set, with their defaults (None: any value)
    options: ClassVar[Mapping[str, Any]] = {}
    #: the norm ``eps`` is measured in, ``linf`` or ``l2``; an option ``norm`` (when the attack declares one) overrides it
    norm: ClassVar[str] = "linf"

    def __init__(self, adapter: ModelAdapter, *, eps: float, seed: int = 0, **options: Any) -> None:
        self.adapter = adapter
        self.eps = float(eps)
        self.seed = int(seed)
        self.opts = self.check_options(options)

    @classmethod
    def check_options(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        return check_declared_options("attack", cls.name, cls.options, given)

    @classmethod
    def label(cls, options: Mapping[str, Any] | None = None) -> str:
        """``pgd`` or ``pgd:steps=20`` (only options that differ from the defaults): the ``attack`` column."""
        diff = {k: v for k, v in (options or {}).items() if cls.options.get(k, object()) != v}
        if not diff:
            return cls.name
        return cls.name + ":" + ",".join(f"{k}={_fmt_opt(v)}" for k, v in sorted(diff.items()))

    def budget_norm(self) -> str:
        """The norm ``eps`` is measured in: the option ``norm`` when the attack has one, else the attribute ``norm``."""
        opts = getattr(self, "opts", None) or {}
        return str(opts["norm"] if "norm" in opts else getattr(self, "norm", "linf")).strip().lower()

    @abstractmethod
    def forward(self, images01: "torch.Tensor", labels: "torch.Tensor") -> "torch.Tensor": ...

    def __call__(self, images01: "torch.Tensor", labels: "torch.Tensor") -> "torch.Tensor":
        """``forward`` on copies of the inputs, with autograd available; its result checked (see the class)."""
        import torch

        if not isinstance(images01, torch.Tensor):
            return self.forward(images01, labels)
        with torch.inference_mode(False), torch.enable_grad():
            x = images01.clone()  # normal tensors (the loop's are inference tensors); the caller's stay untouched
            y = labels.clone() if isinstance(labels, torch.Tensor) else labels
            adv = self.forward(x, y)
        why = adversarial_problem(images01, adv, self.eps, self.budget_norm())
        if why is not None:
            raise PluginError(f"{describe(self, 'attack')} {why}")
        return adv


def describe(obj: Any, label: str) -> str:
    """``attack 'bad' from plugin 'x' (x 1.0)``: a registered class (or its instance) by name and provider;
    ``built-in freqprobe.builtins...`` for a built-in; the module and class of an object nobody registered
    (a subclass of a registered class too: the provider of the class itself counts, not its base's).
    The name of a plugin's class in the messages of the core's checks (:mod:`freqprobe.guard`)."""
    from .manager import PROVIDER_ATTR, Provider

    cls = obj if isinstance(obj, type) else type(obj)
    prov = cls.__dict__.get(PROVIDER_ATTR)
    name = getattr(obj, "name", None) or cls.__name__
    if not isinstance(prov, Provider):
        return f"{label} '{name}' ({cls.__module__}.{cls.__qualname__})"
    return f"{label} '{name}' from {'built-in ' + prov.plugin if prov.builtin else prov.who()}"


def adversarial_problem(images: "torch.Tensor", adv: Any, eps: float, norm: str = "linf") -> str | None:
    """What is wrong with ``adv`` as an attack's answer for ``images`` at budget ``eps``, or None.

    The rules the core applies to every attack and ``freqprobe.testing.check_attack`` asserts: a
    tensor of the images' shape, dtype and device, finite, within [0, 1], and per sample within
    ``eps`` of the images in ``norm`` (``linf``: max |adv − x|; ``l2``: ‖adv − x‖₂; computed in
    float64; + :data:`EPS_TOL` for rounding, in L2 also + :data:`L2_RTOL` × ``eps``). Images that themselves leave [0, 1] (a decomposer's part without rescaling)
    are measured from their nearest image in [0, 1] (what an attack that clamps to [0, 1] can reach).
    The answer reads after the attack's name ("left the L∞ ε-ball: ...").
    """
    import torch

    if norm not in ATTACK_NORMS:
        return f"declares the norm {norm!r}; the budget eps is measured in one of: {', '.join(ATTACK_NORMS)}"
    if not isinstance(adv, torch.Tensor):
        return f"returned a {type(adv).__name__}, not a tensor of images"
    if adv.shape != images.shape:
        return f"returned shape {tuple(adv.shape)} for images of shape {tuple(images.shape)}"
    if adv.dtype != images.dtype:
        return f"returned {adv.dtype} for {images.dtype} images (dtype must be preserved)"
    if adv.device != images.device:
        return f"returned images on {adv.device} for images on {images.device}"
    if adv.numel() == 0:
        return None
    with torch.no_grad():
        a, x = adv.detach(), images.detach()
        delta = (a.double() - x.double().clamp(0, 1)).flatten(1)  # input outside [0, 1]: from its nearest valid image
        size = delta.abs().amax(1) if norm == "linf" else torch.linalg.vector_norm(delta, dim=1)
        worst = size.argmax()
        bad, lo, hi, far, at = torch.stack([(~torch.isfinite(a)).sum().double(), a.min().double(), a.max().double(),
                                            size[worst], worst.double()]).tolist()
    if bad:
        return f"returned non-finite values (NaN or inf) in {int(bad)} of {a.numel()} pixels"
    if lo < 0.0 or hi > 1.0:
        return f"left [0, 1]: the adversarial images range over [{lo:.6g}, {hi:.6g}]"
    slack = EPS_TOL + (L2_RTOL * abs(eps) if norm == "l2" else 0.0)
    if not far <= eps + slack:
        label = "L∞" if norm == "linf" else "L2"
        return (f"left the {label} ε-ball: sample {int(at)} moved by {far:.6g} in {label} norm > eps={eps:.6g} "
                f"(+{slack:.2g} for rounding)")
    return None


def _fmt_opt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


class Transform(ABC):
    """A model -> model rewrite (e.g. first-layer kernel smoothing); recorded in the ``transform`` column.

    ``options`` declares what ``--transform NAME:K=V,...`` may set, with defaults (None: any value).
    """

    name: ClassVar[str]
    options: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        self.opts = check_declared_options("transform", self.name, self.options, options) if self.options or options else {}
        self.given = dict(options)

    def label(self) -> str:
        """``NAME:k=0.5``: the name and the options given (the ``transform`` column)."""
        if not self.given:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_fmt_opt(self.opts[k])}" for k in sorted(self.given))

    @abstractmethod
    def apply(self, adapter: ModelAdapter) -> ModelAdapter:
        """The rewritten model. May change ``adapter`` in place: the core hands it a copy when the original is still needed."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One image variant a probe evaluates, named by the table columns it fills.

    ``name`` fills the ``variant`` column (``original``, ``low``, ``high``, ``adversarial``...),
    ``param`` the ``param`` column (a decomposer's radius or rank; None when there is none), and
    ``extra`` adds columns of its own (``(("attack", "pgd"), ("eps", 0.03))``) instead of
    overloading ``param``. ``component`` marks a decomposer's part, which the run's rescale
    policy applies to (images such as the original get it only with ``applies_to_original``).
    """

    name: str
    param: Any = None
    extra: tuple = ()
    component: bool = False

    def columns(self) -> dict[str, Any]:
        return {"variant": self.name, "param": self.param, **dict(self.extra)}

    def derive(self, name: str, param: Any = None, *, component: bool = True, **extra: Any) -> "Variant":
        """A variant made from this one's images: keeps its extra columns (e.g. the low part of adversarial images)."""
        return Variant(name, param, self.extra + tuple(extra.items()), component)

    def key(self) -> tuple:
        return (self.name, self.param, self.extra)


class SourceBatch(NamedTuple):
    """What a variant source gets for one batch (the per-batch facts, passed as arguments, never read back from a context).

    ``images``/``targets``: the batch's original [0, 1] images and targets on the run's device;
    ``indices``: each sample's position in the data set (int64, on the CPU) — a source that draws
    random numbers seeds from them, so a resumed, re-batched or sharded run draws the same;
    ``number``: the batch's position in data order.
    """

    images: Any
    targets: Any
    indices: Any
    number: int = 0


class VariantSource(ABC):
    """Makes image variants of every batch for the evaluation loop (see docs/engine.md).

    :meth:`variants` declares them up front (they order the tables); :meth:`generate` makes them
    for one batch. Built in: :class:`~freqprobe.sources.OriginalSource` and
    :class:`~freqprobe.sources.DecomposerSource` (a decomposer's parts, optionally of another
    source's images); the attacks plugin adds adversarial images the same way.

    A source implements :meth:`generate` (the current form), or :meth:`produce` (the form before
    per-batch facts were passed: ``produce(images, targets, ctx, out=None)``), which the default
    :meth:`generate` calls.
    """

    @abstractmethod
    def variants(self) -> list[Variant]: ...

    def generate(self, batch: SourceBatch, ctx: Any, out: "Mapping[Variant, torch.Tensor] | None" = None
                 ) -> Iterator[tuple[Variant, Any]]:
        """Yield ``(variant, images)`` for this batch, for every declared variant.

        ``batch`` holds the original images, targets and sample indices (:class:`SourceBatch`);
        ``ctx`` is the run's :class:`~freqprobe.probing.RunContext` (read-only). When ``out`` is
        given it holds one preallocated tensor per variant (the shape of the images): write into
        it and yield it to save a copy (the loop copies anything else into place). Yielded images
        must stay valid until the batch is done.
        """
        return self.produce(batch.images, batch.targets, ctx, out)

    def produce(self, images: Any, targets: Any, ctx: Any, out: "Mapping[Variant, torch.Tensor] | None" = None
                ) -> Iterator[tuple[Variant, Any]]:
        """The earlier form of :meth:`generate` (without the sample indices); implement one of the two."""
        raise NotImplementedError(f"{type(self).__name__} implements neither generate() nor produce()")

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this source."""
        return {"source": type(self).__name__}


@dataclasses.dataclass
class ProbeResult:
    """A probe's output: tidy summary rows, one per-sample table, extras for writers."""

    probe: str
    #: dicts with keys probe, transform, decomposer, variant, param, [extra columns,] metric, value, n
    summary: list
    #: the per-sample table (:class:`freqprobe.tables.SampleTable`): index, target columns
    #: (``label``), variant columns, the adapter's columns (``pred``, ``confidence``)
    samples: Any = None
    #: component names in order, e.g. ("low", "high")
    components: tuple = ()
    param_name: str = ""
    #: the evaluated variants, in table order
    variants: list = dataclasses.field(default_factory=list)
    #: extras for writers (the Figure-2 gallery, timings, class names...)
    extras: dict = dataclasses.field(default_factory=dict)
    #: the finished evaluators (:class:`freqprobe.evaluators.Evaluator`) whose rows and files the result holds
    evaluators: list = dataclasses.field(default_factory=list)
