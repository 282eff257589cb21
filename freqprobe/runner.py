"""Building the parts of a run from specs, validating them, and running a probe.

Everything is validated before any output is created; outputs are written to a temporary
sibling folder and renamed into place at the end, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import platform
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from . import guard as _guard
from . import registry
from .checkpoint import (checkpoint_head_size, load_state_dict_checked, read_checkpoint, read_checkpoint_with_meta,
                         save_model, sha256_file)
from .errors import PluginError, UnknownNameError, UserFacingError
from .interfaces import DataSource, Decomposer, ModelAdapter, ProbeResult, RunContext

log = logging.getLogger("freqprobe")

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


# ---------------------------------------------------------------- parsing helpers
def parse_params(text: str | Sequence | None) -> list | None:
    """``"4,8,12,16"`` -> ``["4", "8", "12", "16"]`` (validated later by the decomposer)."""
    if text is None:
        return None
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    if not items or any(s == "" for s in items):
        raise UserFacingError(f"malformed parameter list {text!r}: use comma-separated positive numbers like 4,8,12,16")
    return items


def parse_floats(text: str | Sequence[float] | None, what: str) -> list[float] | None:
    """``"0.5,0.4"`` (or a sequence) -> ``[0.5, 0.4]``; empty items, non-numbers, NaN and inf are refused."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = [float(s) for s in items]
    except (TypeError, ValueError):
        raise UserFacingError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise UserFacingError(f"{what} must be comma-separated numbers, got {text!r}")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise UserFacingError(f"{what} must be finite numbers, got {text if isinstance(text, str) else values!r}")
    return values


def parse_mean_std(mean: str | Sequence[float] | None, std: str | Sequence[float] | None, *,
                   warn: bool = True) -> tuple[list[float] | None, list[float] | None]:
    """The ``--mean``/``--std`` pair, parsed and checked (both or neither; finite; std > 0).

    Values that look like a 0–255 scale get a warning (with ``warn``): freqprobe's images are in [0, 1].
    """
    m, s = parse_floats(mean, "--mean"), parse_floats(std, "--std")
    if s is not None and any(v <= 0 for v in s):
        raise UserFacingError(f"--std values must be positive, got {tuple(s)}")
    if (m is None) != (s is None):
        given, missing = ("--mean", "--std") if s is None else ("--std", "--mean")
        raise UserFacingError(
            f"{given} given without {missing}; pass both (e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)"
        )
    if warn and m is not None and (max(abs(v) for v in m) > 1 or max(s) > 1):
        warnings.warn(
            f"--mean {','.join(f'{v:g}' for v in m)} --std {','.join(f'{v:g}' for v in s)} look like a 0–255 scale, "
            "but freqprobe feeds the model images in [0,1]; divide them by 255 if the model was trained on "
            "0–255 statistics (e.g. 123.7 -> 0.485)",
            stacklevel=2,
        )
    return m, s


def check_image_size(image_size: int | None) -> None:
    """``--image-size`` must be a positive whole number (None: keep the data's own size)."""
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserFacingError(f"--image-size must be a positive number of pixels (e.g. 224), got {image_size!r}")


def parse_kv(pairs: Iterable[str], what: str) -> dict[str, Any]:
    """``["depth=20", "pretrained=False"]`` -> ``{"depth": 20, "pretrained": False}`` (Python literals, else strings)."""
    import ast

    out: dict[str, Any] = {}
    for item in pairs or ():
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserFacingError(f"malformed {what} {item!r}: use KEY=VALUE")
        low = val.strip().lower()
        if low in ("true", "false", "none"):  # random_start=false: a boolean, as on every command line
            out[key] = {"true": True, "false": False, "none": None}[low]
            continue
        try:
            out[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            out[key] = val
    return out


def available_devices() -> list[str]:
    """The device names this torch can run on here: ``cpu``, ``cuda:0``..., ``mps``, ``xpu:0``..."""
    out = ["cpu"]
    with contextlib.suppress(Exception):
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    with contextlib.suppress(Exception):
        if torch.backends.mps.is_available():
            out.append("mps")
    with contextlib.suppress(Exception):
        if hasattr(torch, "xpu") and torch.xpu.is_available():
            out += [f"xpu:{i}" for i in range(torch.xpu.device_count())]
    return out


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (the first GPU, else the CPU), or a device torch has here; anything else is refused in one line."""
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    avail = available_devices()
    choices = "auto, " + ", ".join(avail)
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device).strip().lower())
    except (RuntimeError, TypeError, ValueError):
        raise UserFacingError(f"unknown device {device!r}; available here: {choices}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserFacingError(f"--device {device} asked for, but torch sees no CUDA GPU; available here: {choices}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserFacingError(f"--device {device}: torch sees only {torch.cuda.device_count()} CUDA GPU(s); available here: {choices}")
    if dev.type != "cuda" and not any(a.split(":")[0] == dev.type for a in avail):
        raise UserFacingError(f"device {str(device)!r} is not available in this torch build or machine; available here: {choices}")
    if dev.type == "xpu" and dev.index is not None and f"xpu:{dev.index}" not in avail:
        raise UserFacingError(f"device {str(device)!r} is not available; available here: {choices}")
    return dev


# ---------------------------------------------------------------- components
def get_decomposer(name: str, pm=None, **options: Any) -> Decomposer:
    cls = registry.get_class("decomposers", name, pm)
    import inspect

    try:
        sig = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover
        sig = {}
    known = [k for k, p in sig.items() if k != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in sig.values()) and cls.__init__ is not Decomposer.__init__
    if not takes_any:
        for key in options:
            if key not in known:
                raise UnknownNameError(f"option of decomposer '{name}'", key, known) if known else UserFacingError(
                    f"decomposer '{name}' takes no options (got {key}={options[key]!r})")
    with _guard.guarded(cls, "the constructor"):
        try:
            return cls(**options)
        except TypeError as exc:
            raise UserFacingError(f"decomposer '{name}' rejected its options {options}: {exc}") from None


#: seeds are refused outside what every random generator freqprobe feeds (torch, numpy) takes
MAX_SEED = 2**32 - 1


def check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserFacingError(f"--seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")


def decompose(images: torch.Tensor, name: str = "fft-radial", param: Any = 8, *, pm=None, **options: Any) -> dict[str, torch.Tensor]:
    """Split an N×C×H×W float tensor in [0,1] into named components, on the images' device.

    float32 and float64 images are decomposed in their own precision; float16/bfloat16 in float32
    and returned in the input dtype.

    >>> parts = decompose(x, "fft-radial", 8)          # {"low": ..., "high": ...}
    >>> parts = decompose(x, "fft-radial", 8, rule="inclusive")
    >>> parts = decompose(x, "svd", 4)                 # {"dominant": ..., "trailing": ...}
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise UserFacingError(f"decompose expects an N×C×H×W tensor, got {shape}; add a batch axis with x[None]")
    if not images.is_floating_point():
        raise UserFacingError(f"decompose expects float images in [0,1], got {images.dtype}; use x.float() / 255")
    dec = get_decomposer(name, pm, **options)
    exact = images.dtype in (torch.float32, torch.float64)  # float16/bfloat16 are computed in float32
    x = images if exact else images.float()
    parts = _guard.decompose(dec, x.contiguous(), dec.check_param(param))
    return {k: v if exact else v.to(images.dtype) for k, v in parts.items()}


def parse_model_spec(spec: str, pm=None) -> tuple[str, str]:
    """``timm:resnet18`` -> ("timm", "resnet18"); ``net.py:make`` / ``pkg.mod:make`` -> ("python", spec)."""
    sources = registry.collect("models", pm)
    prefix, sep, rest = spec.partition(":")
    if not sep or not prefix:
        raise UserFacingError(
            f"malformed model spec {spec!r}: use SOURCE:NAME ({', '.join(sorted(sources))}), path/to/file.py:callable or package.module:callable"
        )
    if prefix in sources:
        return prefix, rest
    if prefix.endswith(".py") or "/" in prefix or os.sep in prefix:
        return "python", spec
    if _IDENT.match(prefix) and rest.isidentifier() and "." in prefix:
        return "python", spec
    if _IDENT.match(prefix) and rest.isidentifier() and prefix not in sources:
        # a bare module name such as "mymodels:resnet" — only when importable, else a typo of a source
        import importlib.util

        if importlib.util.find_spec(prefix) is not None:
            return "python", spec
    raise UnknownNameError("model source", prefix, sources)


def build_model(
    spec: str | torch.nn.Module | ModelAdapter,
    *,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    trust_checkpoint: bool = False,
    strict: bool = True,
    model_args: Mapping[str, Any] | None = None,
    mean: str | Sequence[float] | None = None,
    std: str | Sequence[float] | None = None,
    num_classes: int | None = None,
    task: str | None = None,
    pm=None,
) -> ModelAdapter:
    """A :class:`ModelAdapter` from a spec (``timm:resnet18``...), an ``nn.Module`` or an adapter.

    ``info["has_weights"]`` says whether it carries weights (pretrained, checkpoint or TorchScript).

    Class count: ``num_classes`` (the data's) only sizes the head of a model built *without*
    weights. A model with weights keeps its own: with ``checkpoint``, the head is sized from the
    checkpoint's classifier weight (the model is rebuilt when they differ); ``--model-arg
    num_classes=K`` (``model_args``) wins over both. Normalisation: ``mean``/``std`` (both or
    neither) override what the source (or a module's timm ``pretrained_cfg``) says.

    Task: the model is wrapped in the adapter registered for its task (``register_adapters``):
    the task its source reports (torchvision's detection models are detectors), else ``task``
    (what the probe and the data ask for: ``coco-map`` wraps ``file.py:callable`` as a
    detector), else classification.
    """
    from .builtins.models import has_fixed_input_size, module_data_config

    mean, std = parse_mean_std(mean, std)
    if isinstance(spec, ModelAdapter):
        adapter = spec
        if mean is not None:
            adapter.mean, adapter.std = tuple(mean), tuple(std)
            adapter._norm_cache = None
            adapter.info["normalisation_from"] = "override"
        adapter.info.setdefault("has_weights", True)
        return adapter
    if isinstance(spec, torch.nn.Module):
        cfg = module_data_config(spec)
        info = {"has_weights": True, "source": "module", "input_size": cfg["input_size"],
                "fixed_input_size": has_fixed_input_size(spec),
                "normalisation_from": "override" if mean is not None else ("pretrained_cfg" if cfg["mean"] is not None else "none")}
        cls = adapter_for(task or "classification", pm)
        return cls(spec, mean=mean if mean is not None else cfg["mean"], std=std if std is not None else cfg["std"],
                   spec=type(spec).__name__, info=info)
    if pretrained and checkpoint:
        raise UserFacingError("pass either --pretrained or --checkpoint, not both")
    source_name, target = parse_model_spec(spec, pm)
    entry = registry.get_entry("models", source_name, pm)
    source = _guard.call(entry.cls, "the constructor", entry.cls)
    args = dict(model_args or {})
    sd = kind = None
    meta = None
    if checkpoint:  # read (and refuse a bad file) before building anything
        # a freqprobe model.pt also knows the normalisation the model was trained with (meta)
        obj, kind, meta = read_checkpoint_with_meta(checkpoint, trust=trust_checkpoint)
        sd = dict((obj.state_dict() if kind == "torchscript" else obj).items())
    explicit_k = "num_classes" in args
    hint = None if (explicit_k or pretrained) else num_classes
    built = _guard.call(source, "build()", source.build, target, pretrained=pretrained, num_classes=hint, model_args=args)
    info: dict[str, Any] = {"source": source_name, "provided_by": entry.plugin, "pretrained": pretrained, **built.info}
    model_task = built.info.get("task") or (source.task if source.task != "classification" else None) or task or "classification"
    adapter_cls = source.adapter_class if source.adapter_class is not ModelAdapter else adapter_for(model_task, pm)
    has_weights = built.has_weights
    if sd is not None and built.info.get("plain_callable"):
        raise UserFacingError(f"--checkpoint given, but {spec} returned a plain callable (not a torch.nn.Module), "
                              "which has no weights to load; load them inside your callable, or return a module")
    if sd is not None:
        k = None if explicit_k or model_task != "classification" else checkpoint_head_size(built.module, sd)
        if k is not None:  # the checkpoint's head has another class count: build the model it was trained as
            built = _guard.call(source, "build()", source.build, target, pretrained=False, num_classes=k, model_args=args)
            info.update(built.info)
            log.info("sized the model's head from checkpoint %s: %d classes", checkpoint, k)
        loaded = load_state_dict_checked(built.module, sd, strict=strict, source=f"checkpoint {checkpoint}")
        info.update(
            checkpoint=str(Path(checkpoint).resolve()),
            checkpoint_sha256=sha256_file(checkpoint),
            checkpoint_kind=kind,
            checkpoint_strict=strict,
            checkpoint_missing=loaded["missing"],
            checkpoint_unexpected=loaded["unexpected"],
        )
        if loaded["missing"] or loaded["unexpected"]:
            warnings.warn(_non_strict_summary(checkpoint, built.module, loaded), stacklevel=2)
        has_weights = True
    if meta is not None and "mean" in meta and mean is None:
        info["normalisation_from"] = "checkpoint"
        built.mean, built.std = meta.get("mean"), meta.get("std")  # None: trained on raw [0, 1] pixels
    else:
        info["normalisation_from"] = "override" if mean is not None else (source_name if built.mean is not None else "none")
    info["has_weights"] = has_weights
    info["input_size"] = list(built.input_size) if built.input_size else None
    return adapter_cls(
        built.module,
        mean=mean if mean is not None else built.mean,
        std=std if std is not None else built.std,
        spec=spec,
        info=info,
    )


def adapter_for(task: str, pm=None) -> type[ModelAdapter]:
    """The adapter class registered for ``task`` (``classification``: the built-in ``classifier``)."""
    entries = registry.collect("adapters", pm)
    for e in entries.values():
        if getattr(e.cls, "task", None) == task:
            return e.cls
    hint = (" (the first-party freqprobe-coco plugin provides one: is it installed and switched on? "
            "see `freqprobe plugins --all`)") if task == "detection" else ""
    raise UserFacingError(f"no model adapter for {task} models is installed{hint}")


def _non_strict_summary(checkpoint, module: torch.nn.Module, loaded: Mapping[str, list]) -> str:
    own = [k for k in module.state_dict() if not k.endswith("num_batches_tracked")]
    missing, unexpected = loaded["missing"], loaded["unexpected"]

    def few(items):
        return ", ".join(items[:3]) + (f", +{len(items) - 3} more" if len(items) > 3 else "")

    msg = f"loaded {checkpoint} with --non-strict: {len(missing)} of {len(own)} model weights missing"
    msg += f" ({few(missing)}) — they keep their initial (random) values" if missing else ""
    if unexpected:
        msg += f"; {len(unexpected)} checkpoint weights unused ({few(unexpected)})"
    if own and len(missing) > len(own) // 2:
        msg += "; most of the model is untrained: check --model against the checkpoint"
    return msg


def warn_if_unnormalised(adapter: ModelAdapter) -> None:
    """A model with weights that gets [0,1] pixels unnormalised: say so (it may have been trained on normalised ones)."""
    if adapter.mean is not None or adapter.std is not None or not adapter.info.get("has_weights"):
        return
    if adapter.info.get("normalises_inside") or adapter.info.get("plain_callable"):  # torchvision detectors; the user's own callable
        return
    if adapter.info.get("normalisation_from") == "checkpoint":  # freqprobe's model.pt says it was trained on raw pixels
        return
    if type(adapter).normalize is not ModelAdapter.normalize:  # the adapter normalises in its own way
        return
    warnings.warn(
        f"the model gets [0,1] pixels unnormalised (no mean/std known for {adapter.spec}); "
        "pass --mean/--std if it was trained on normalised inputs",
        stacklevel=2,
    )


def open_data(
    spec: str | DataSource,
    *,
    root: str | os.PathLike | None = None,
    split: str = "test",
    image_size: int | None = None,
    seed: int = 0,
    class_map: str | os.PathLike | Mapping[str, int] | None = None,
    pm=None,
) -> DataSource:
    """A :class:`DataSource` from a spec: ``synth10``, ``cifar10``, ``npz:PATH``, ``imagefolder:PATH``...

    ``image_size`` resizes sources that take it (``imagefolder:``; others warn that they ignore
    it); ``class_map`` (a JSON file ``{folder: index}``, a text file of folder names in index
    order, a dict, or ``"imagenet"``) gives ``imagefolder:`` class folders their label indices.
    A ``split`` the data does not have is refused.
    """
    check_image_size(image_size)
    if isinstance(spec, DataSource):
        return spec
    name, sep, arg = spec.partition(":")
    entries = registry.collect("datasets", pm)
    if name not in entries:
        raise UnknownNameError("dataset", name, entries)
    cls = entries[name].cls
    if sep and not cls.takes_argument:
        raise UserFacingError(f"dataset '{name}' takes no argument after ':' (got {spec!r})")
    if cls.takes_argument and not arg:
        raise UserFacingError(f"dataset '{name}' needs an argument: {name}:PATH")
    params = _init_params(cls)
    opts: dict[str, Any] = {"seed": seed}  # every source takes **options; those that draw (synth10) use the seed
    if image_size:
        if "image_size" in params:
            opts["image_size"] = image_size
        else:
            warnings.warn(f"--image-size {image_size} is ignored: {name} data is used at its own size "
                          "(only sources such as imagefolder: resize)", stacklevel=2)
    if class_map is not None:
        if "class_map" not in params:
            raise UserFacingError(f"--class-map applies to imagefolder: data (folders named by class), not to {name}; "
                                  f"{name} data carries its own integer labels")
        opts["class_map"] = class_map
    data = cls(arg or None, root=Path(root) if root else None, split=split, **opts)
    if not data.has_split(split):
        raise UserFacingError(f"{spec} has no {split} split; use --split test" if split != "test"
                              else f"{spec} has no test split")
    return data


def _init_params(cls) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):  # pragma: no cover
        return set()


def slug(text: str, limit: int = 40) -> str:
    """``text`` as a piece of a file name: runs of other characters than letters, digits, ``_.-`` become ``-``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-")[:limit]


def _default_out(model: str, probe: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{slug(model)}-{probe}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def versions() -> dict[str, str]:
    from . import __version__

    out = {"freqprobe": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for mod in ("timm", "torchvision", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover
            out[mod] = "unavailable"
    return out


class Stopwatch:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.stages: dict[str, float] = {}
        self._last = self.t0

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = self.stages.get(name, 0.0) + now - self._last
        self._last = now

    def total(self) -> float:
        return time.perf_counter() - self.t0


@dataclasses.dataclass
class RunSpec:
    """Everything a run is asked to do, as the user gave it (``freqprobe run``'s options).

    :func:`run` turns it into a result in stages: :func:`plan` (check the names and numbers,
    nothing loaded), :func:`build_context` (data, model, decomposer: a :class:`RunContext`),
    :func:`fit_stage` (only for a model without weights), :func:`evaluate_stage` (the probe over
    the one evaluation loop) and :func:`publish` (writers, manifest, the output folder).
    """

    model: str | torch.nn.Module | ModelAdapter
    probe: str = "lfc-hfc"
    probe_options: Mapping[str, Any] | None = None
    data: str | DataSource = "synth10"
    data_root: str | os.PathLike | None = None
    image_size: int | None = None
    limit: int | None = None
    decomposer: str = "fft-radial"
    decomposer_options: Mapping[str, Any] | None = None
    params: str | Sequence | None = None
    rescale: str = "none"
    #: None: the probe's ``default_metrics`` (``accuracy``; ``coco-map`` for the detection probe)
    metrics: Sequence[str] | None = None
    transforms: Sequence[str] = ()
    checkpoint: str | os.PathLike | None = None
    pretrained: bool = False
    trust_checkpoint: bool = False
    strict: bool = True
    model_args: Mapping[str, Any] | None = None
    mean: str | Sequence[float] | None = None
    std: str | Sequence[float] | None = None
    device: str | torch.device = "auto"
    #: None: the data's ``default_batch_size`` (8 for COCO images), else 128
    batch_size: int | None = None
    forward_batch: int | None = None
    precision: str = "fp32"
    channels_last: bool | None = None
    seed: int = 0
    fit_epochs: int | None = None
    fit_lr: float | None = None
    fit: bool | None = None
    out: str | os.PathLike | None = None
    command: str | None = None
    #: imagefolder class folders -> label indices: a JSON/text file, a dict, or "imagenet" (WordNet ids)
    class_map: str | os.PathLike | Mapping[str, int] | None = None
    #: continue the interrupted run at ``out`` from its last checkpoint (see :mod:`freqprobe.journal`)
    resume: bool = False
    #: finish even when the model returns NaN/inf (counted in ``nonfinite-outputs`` rows) instead of failing
    allow_nonfinite: bool = False
    #: ``--attack NAME[:K=V,...]`` specs, for probes that take attacks (``robustness``)
    attacks: Sequence[str] = ()
    #: ``--eps``: attack budgets, a comma list or numbers (None: the probe's default)
    eps: str | Sequence[float] | None = None


@dataclasses.dataclass
class Plan:
    """The checked, cheap parts of a run (no data or model loaded yet)."""

    spec: RunSpec
    probe_entry: Any
    probe: Any
    decomposer: Decomposer
    params: list
    rescale: Any
    metric_classes: list
    transforms: list
    device: torch.device
    out_dir: Path
    attacks: list = dataclasses.field(default_factory=list)
    eps: list = dataclasses.field(default_factory=list)


def parse_attacks(specs: Sequence[str], pm) -> list:
    """``["fgsm", "pgd:steps=10,random_start=false"]`` -> ``[(FGSM, {...}), (PGD, {...})]``, options checked."""
    out, seen = [], set()
    for spec in specs or ():
        aname, _, aargs = str(spec).partition(":")
        acls = registry.get_class("attacks", aname.strip(), pm)
        opts = _guard.call(acls, "check_options()", acls.check_options,
                           parse_kv([x for x in aargs.split(",") if x.strip()], f"option of attack {aname}"))
        label = acls.label(opts)
        if label in seen:
            raise UserFacingError(f"--attack {spec} is given twice; pass each attack once")
        seen.add(label)
        out.append((acls, opts))
    return out


def parse_eps(text: str | Sequence[float] | None) -> list[float]:
    """``"0.03,0.06"`` -> ``[0.03, 0.06]``: positive, finite, no duplicates (``8/255`` is accepted)."""
    if text is None:
        return []
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    out: list[float] = []
    for item in items:
        try:
            if isinstance(item, str) and "/" in item:
                num, _, den = item.partition("/")
                v = float(num) / float(den)
            else:
                v = float(item)
        except (TypeError, ValueError, ZeroDivisionError):
            raise UserFacingError(f"--eps must be comma-separated numbers like 0.03,0.06 or 8/255, got {text!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise UserFacingError(f"--eps values must be positive and finite, got {item!r}")
        if v in out:
            raise UserFacingError(f"--eps {item} is given twice; pass each budget once")
        out.append(v)
    if not out:
        raise UserFacingError(f"--eps must be comma-separated numbers like 0.03,0.06, got {text!r}")
    return out


def plan(spec: RunSpec, pm, *, check_out: bool = True) -> Plan:
    """Check every name and number the user gave, before anything is loaded (``check_out``: the output folder too)."""
    for what, value in (("--batch-size", spec.batch_size), ("--limit", spec.limit), ("--fit-epochs", spec.fit_epochs),
                        ("--forward-batch", spec.forward_batch)):
        if value is not None and value < 1:
            raise UserFacingError(f"{what} must be at least 1, got {value}")
    check_image_size(spec.image_size)
    check_seed(spec.seed)
    if spec.fit_lr is not None and not (isinstance(spec.fit_lr, (int, float)) and math.isfinite(spec.fit_lr) and spec.fit_lr > 0):
        raise UserFacingError(f"--fit-lr must be a positive number (e.g. 1e-3), got {spec.fit_lr!r}")
    parse_mean_std(spec.mean, spec.std, warn=False)  # both or neither, finite, std > 0: refused before anything is loaded
    from .engine import check_precision

    dev = resolve_device(spec.device)
    check_precision(dev, spec.precision)
    probe_entry = registry.get_entry("probes", spec.probe, pm)
    probe_obj = _guard.call(probe_entry.cls, "the constructor", probe_entry.cls, **dict(spec.probe_options or {}))
    dec = get_decomposer(spec.decomposer, pm, **dict(spec.decomposer_options or {}))
    given = parse_params(spec.params)
    if given is None:  # the probe's default for this decomposer (coco-map: the paper's r = 128), else the decomposer's
        default = (getattr(probe_entry.cls, "default_params", None) or {}).get(dec.name)
        given = list(default) if default else None
    params = dec.check_params(given)
    rescale_obj = registry.get_class("rescale", spec.rescale, pm)()
    metric_names = list(spec.metrics or getattr(probe_entry.cls, "default_metrics", None) or ("accuracy",))
    metric_classes = [registry.get_class("metrics", m, pm) for m in metric_names]
    task = (getattr(probe_entry.cls, "requires", None) or {}).get("task")
    for mname, mcls in zip(metric_names, metric_classes):
        mtask = getattr(mcls, "task", None)
        if task and mtask and mtask != task:
            fitting = [n for n, e in registry.collect("metrics", pm).items() if getattr(e.cls, "task", None) == task]
            raise UserFacingError(f"metric '{mname}' is a {mtask} metric but probe '{spec.probe}' evaluates {task}; "
                                  f"use {' or '.join(fitting) or 'a ' + task + ' metric'}")
    transforms = []
    for t in spec.transforms:
        tname, _, targs = t.partition(":")
        tcls = registry.get_class("transforms", tname, pm)
        transforms.append(tcls(**parse_kv([a for a in targs.split(",") if a], f"option of transform {tname}")))
    model_name = spec.model if isinstance(spec.model, str) else type(spec.model).__name__
    if spec.resume and spec.out is None:
        raise UserFacingError("--resume needs the --out folder of the interrupted run")
    out_dir = Path(spec.out) if spec.out is not None else _default_out(model_name, spec.probe)
    if check_out:
        check_out_dir(out_dir, resume=spec.resume)
    attacks, eps = parse_attacks(spec.attacks, pm), parse_eps(spec.eps)
    if (attacks or eps) and not getattr(probe_entry.cls, "takes_attacks", False):
        what = "--attack" if attacks else "--eps"
        raise UserFacingError(f"probe '{spec.probe}' takes no attacks, so {what} has no effect; use --probe robustness")
    return Plan(spec, probe_entry, probe_obj, dec, params, rescale_obj, metric_classes, transforms, dev, out_dir, attacks, eps)


def build_context(p: Plan, pm) -> RunContext:
    """Open the data, build the model (weights, normalisation), check that they fit together."""
    from .engine import check_task

    spec = p.spec
    data = open_data(spec.data, root=spec.data_root, split="test", image_size=spec.image_size, seed=spec.seed,
                     class_map=spec.class_map, pm=pm)
    task = p.probe.requires.get("task") or getattr(data, "task", "classification")
    adapter = build_model(
        spec.model,
        checkpoint=spec.checkpoint,
        pretrained=spec.pretrained,
        trust_checkpoint=spec.trust_checkpoint,
        strict=spec.strict,
        model_args=spec.model_args,
        mean=spec.mean,
        std=spec.std,
        num_classes=data.num_classes if task == "classification" else None,  # sizes only the head of a model without weights
        task=task,
        pm=pm,
    )
    warn_if_unnormalised(adapter)
    if adapter.task != "classification" and not adapter.info.get("has_weights"):
        warnings.warn(f"{adapter.spec} has random weights (no --pretrained or --checkpoint) and is probed as it is "
                      "(a detector is never fitted): its scores test the pipeline, not the model", stacklevel=2)
    check_task(p.probe.requires, adapter, data, spec.probe)
    adapter.to(p.device)
    if fit_needed(spec, adapter) and not data.has_split("train"):
        name = spec.data if isinstance(spec.data, str) else data.name
        raise UserFacingError(
            f"{adapter.spec} has no weights and {name} has no training split to fit it on; pass --checkpoint PATH (or --pretrained)"
        )
    adapter.check_data(data, p.device)
    return RunContext(
        adapter=adapter, data=data, decomposer=p.decomposer, params=p.params, rescale=p.rescale,
        metrics=p.metric_classes, device=p.device, limit=spec.limit, seed=spec.seed,
        batch_size=spec.batch_size or getattr(data, "default_batch_size", None) or 128,
        transform=",".join(t.label() for t in p.transforms), options=dict(p.probe.opts), pm=pm,
        precision=spec.precision, channels_last=spec.channels_last, forward_batch=spec.forward_batch,
        attacks=list(p.attacks), eps=list(p.eps),
    )


def fit_needed(spec: RunSpec, adapter: ModelAdapter) -> bool:
    if adapter.task != "classification":  # a detector is never fitted: it is probed as given
        return False
    return (not adapter.info.get("has_weights")) if spec.fit is None else bool(spec.fit)


def fit_stage(ctx: RunContext, spec: RunSpec, pm, *, progress=None, say=None) -> dict | None:
    """Fit a model that has no weights on the data's training split (the paper's vanilla recipe, Adam)."""
    if not fit_needed(spec, ctx.adapter):
        return None
    from .training import fit as _fit

    train = open_data(spec.data, root=spec.data_root, split="train", image_size=spec.image_size, seed=spec.seed,
                      class_map=spec.class_map, pm=pm)
    if hasattr(train, "use_model_classes") and ctx.adapter.info.get("num_classes"):
        train.use_model_classes(int(ctx.adapter.info["num_classes"]))  # the same label mapping as the test split
    epochs = spec.fit_epochs or train.default_fit_epochs
    lr = spec.fit_lr or train.default_fit_lr
    say = say or (lambda msg: log.info(msg))
    say(
        f"No weights given (--checkpoint/--pretrained): fitting {ctx.adapter.spec} on {train.name} train split "
        f"({len(train)} images, {epochs} epoch{'s' if epochs != 1 else ''}, Adam lr {lr:g}, batch 100) before probing."
    )
    cb = progress("fitting", len(train) * epochs) if progress else None
    return _fit(
        ctx.adapter, train, epochs=epochs, lr=lr, batch_size=100, seed=spec.seed, device=ctx.device, progress=cb,
        on_epoch=lambda e, r: say(f"  epoch {e}/{epochs}: loss {r['loss']:.3f}, train accuracy {r['train_accuracy']:.3f}"),
    )


def evaluate_stage(ctx: RunContext, p: Plan, *, progress=None) -> ProbeResult:
    """Apply the model transforms, then run the probe (its declaration over the evaluation loop)."""
    for t in p.transforms:
        ctx.adapter = t.apply(ctx.adapter)
    n = len(ctx.data) if ctx.limit is None else min(ctx.limit, len(ctx.data))
    passes = max(1, len(_guard.call(p.probe, "model_sweep()", p.probe.model_sweep, ctx)))
    ctx.progress = progress("probing", n * passes) if progress else None
    return _guard.call(p.probe, "run()", p.probe.run, ctx)


def manifest_for(ctx: RunContext, p: Plan, result: ProbeResult, *, fit_record, timings: Mapping[str, float],
                 outputs: Sequence[str]) -> dict:
    """The run's manifest: the core's sections, then what plugins add through ``manifest_entries``."""
    spec, data = p.spec, ctx.data
    n_eval = len(data) if ctx.limit is None else min(ctx.limit, len(data))
    manifest = {
        "versions": versions(),
        "command": spec.command or " ".join(sys.argv),
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "seed": spec.seed,
        "device": str(ctx.device),
        "precision": ctx.precision,
        "probe": {"name": spec.probe, "provided_by": p.probe_entry.plugin, "options": p.probe.opts},
        "model": {**ctx.adapter.describe(), "fitted": fit_record},
        "data": {**data.describe(), "spec": spec.data if isinstance(spec.data, str) else data.name, "n_evaluated": n_eval,
                 "limit": ctx.limit, "num_classes": data.num_classes,
                 "class_names": list(data.class_names) if data.class_names else None},
        "decomposer": {"name": p.decomposer.name, "options": p.decomposer.options(), "param_name": p.decomposer.param_name,
                       "params": p.params, "components": list(p.decomposer.components)},
        "rescale": {"policy": p.rescale.name, "applies_to_original": p.rescale.applies_to_original},
        "metrics": [m.name for m in p.metric_classes],
        "transform": ctx.transform,
        "batch_size": ctx.batch_size,
        "engine": result.extras.get("engine"),
        "variant_sources": result.extras.get("sources"),
        "timings": dict(timings),
        "outputs": sorted(outputs) + ["manifest.json"],
    }
    for plugin_name, entries in _plugin_entries(ctx.pm, ctx, result):
        for key, value in entries.items():
            if key in manifest:
                raise PluginError(f"plugin {plugin_name!r} returned manifest section {key!r}, which the core already writes; use a name of its own")
            manifest[key] = value
    return manifest


def _plugin_entries(pm, ctx, result):
    for impl in reversed(pm.hook.manifest_entries.get_hookimpls()):
        with _guard.hook_guarded(pm, impl, "manifest_entries()"):
            got = impl.function(context=ctx, result=result) if "result" in impl.argnames else impl.function(context=ctx)
        if got:
            if not isinstance(got, Mapping):
                name = pm.get_name(impl.plugin)
                raise PluginError(f"plugin {name!r}: manifest_entries must return a dict, got {type(got).__name__}")
            yield pm.get_name(impl.plugin), got


def check_out_dir(out_dir: Path, *, resume: bool = False, flag: str = "--out") -> None:
    """An output folder must be new or empty (a file, or a folder with results, is refused)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserFacingError(f"{flag} {out_dir} is an existing file; pass the path of a new folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if resume and (out_dir / "manifest.json").is_file():
            raise UserFacingError(f"{out_dir} already holds a finished run (manifest.json); nothing to resume")
        raise UserFacingError(f"output folder {out_dir} already exists and is not empty; pass another {flag} or remove it")


def fingerprint(spec: RunSpec, ctx: RunContext) -> dict[str, Any]:
    """What decides a run's results: its options (not where it writes) and what they resolved to.

    A resumed run must match the interrupted one in all of these.
    """
    from .journal import module_digest

    out: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        if f.name in ("out", "command", "resume"):
            continue
        v = getattr(spec, f.name)
        if isinstance(v, ModelAdapter):
            v = f"{type(v).__name__}:{module_digest(v.module)}"
        elif isinstance(v, torch.nn.Module):
            v = f"{type(v).__name__}:{module_digest(v)}"
        elif isinstance(v, DataSource):
            v = f"{type(v).__name__}:{len(v)}"
        out[f.name] = v
    out["resolved_device"] = str(ctx.device)
    out["checkpoint_sha256"] = ctx.adapter.info.get("checkpoint_sha256")
    out["data_described"] = ctx.data.describe()
    return json.loads(json.dumps(out, default=str))


def resume_hint(spec: RunSpec, out_dir: Path) -> str:
    """How to continue an interrupted run: its own command with --out and --resume."""
    import shlex

    if spec.command:
        cmd = spec.command
        if " --out " not in f" {cmd} " and " --out=" not in cmd:
            cmd += f" --out {shlex.quote(str(out_dir))}"
        return cmd if " --resume" in cmd else cmd + " --resume"
    return f"freqprobe.run(..., out={str(out_dir)!r}, resume=True) with the same options"


def publish(ctx: RunContext, p: Plan, result: ProbeResult, tmp: Path, *, fit_record, sw: "Stopwatch") -> dict:
    """Writers (``report_result``), the fitted weights, the manifest; into the run's unfinished folder."""
    ctx.out_dir = tmp
    if fit_record is not None and not (tmp / "model.pt").exists():
        _save_fitted(ctx, tmp / "model.pt")
    _guard.call_hook(ctx.pm, "report_result", result=result, context=ctx)
    sw.lap("write_s")
    timings = {**sw.stages, **result.extras.get("timings", {}), "total_s": sw.total()}
    from .journal import STATE_FILES

    outputs = [q.name for q in tmp.iterdir() if q.name not in STATE_FILES]
    manifest = manifest_for(ctx, p, result, fit_record=fit_record, timings=timings, outputs=outputs)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=_json_default) + "\n")
    return manifest


def _save_fitted(ctx: RunContext, path: Path) -> None:
    """A fitted model's ``model.pt``: its weights and the normalisation it was fitted with."""
    a = ctx.adapter
    save_model(path, a.module, mean=a.mean, std=a.std, model=a.spec if isinstance(a.spec, str) else None)


def _fit_or_restore(ctx: RunContext, spec: RunSpec, pm, ws, *, progress, say) -> dict | None:
    """Fit (and keep the fitted weights in the run's folder at once), or reuse those of the interrupted run."""
    if not fit_needed(spec, ctx.adapter):
        return None
    saved = ws.dir / "model.pt"
    record = ws.journal.get("fit")
    if ws.resumed and saved.is_file() and record is not None:
        obj, _ = read_checkpoint(saved)
        ctx.adapter.module.load_state_dict(obj)
        ctx.adapter.to(ctx.device)
        say(f"resuming: using the model fitted before the stop ({saved.name}); not fitting again")
        return record
    record = fit_stage(ctx, spec, pm, progress=progress, say=say)
    _save_fitted(ctx, saved)
    ws.note("fit", record)
    return record


def run(
    model: str | torch.nn.Module | ModelAdapter,
    *,
    pm=None,
    progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
    announce: Callable[[str], None] | None = None,
    **options: Any,
) -> ProbeResult:
    """Run a probe on ``model``; write results to ``out`` (None: a new dated folder under ``runs/``).

    ``options`` are the fields of :class:`RunSpec` (probe, data, decomposer, params, checkpoint,
    mean, std, device, batch_size, precision, resume, ...). With no weights (no ``checkpoint``/``pretrained``,
    and a spec that builds a fresh model) the model is first fitted on the data's training split
    (Adam, batch 100), or pass ``fit=False`` to probe it as is. ``progress(stage, total)`` may
    return a callback that receives counts of processed samples. Returns the
    :class:`ProbeResult`; ``result.extras["out_dir"]`` is where the files are.

    The run works in ``.NAME.partial`` beside ``out`` (per-sample rows streamed, checkpoints) and
    renames it to ``out`` when done; ``resume=True`` continues an interrupted run from its last
    checkpoint (:mod:`freqprobe.journal`).
    """
    from .journal import RunJournal, StopRequested, workspace
    from .plugins import default_plugin_manager

    names = {f.name for f in dataclasses.fields(RunSpec)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"run() got unexpected keyword argument(s) {', '.join(unknown)}; see freqprobe.runner.RunSpec")
    spec = RunSpec(model=model, **options)
    pm = pm or default_plugin_manager()
    say = announce or (lambda msg: log.warning(msg))
    sw = Stopwatch()
    check_seed(spec.seed)
    torch.manual_seed(spec.seed)
    from . import distributed

    if distributed.from_env() is not None:
        if spec.resume:
            raise UserFacingError("--resume is not available under torchrun; run the interrupted job again from the start")
        d, device = distributed.setup(str(spec.device))
        spec = dataclasses.replace(spec, device=device)
        if not d.is_main:  # the other ranks evaluate their share and write nothing
            return _run_rank(spec, pm, d)
    else:
        d = None
    p = plan(spec, pm)
    stage = "loading"
    with workspace(p.out_dir, kind="run", resume=spec.resume, announce=say) as ws:
        try:
            ctx = build_context(p, pm)
            if d is not None:
                _refuse_fit_under_torchrun(spec, ctx)
            ws.bind(fingerprint(spec, ctx), command=spec.command)
            sw.lap("load_s")
            stage = "fitting"
            fit_record = _fit_or_restore(ctx, spec, pm, ws, progress=progress, say=say)
            if fit_record is not None:
                sw.lap("fit_s")
            stage = "probing"
            journal = RunJournal(ws) if d is None else None  # under torchrun: no streaming or checkpoints
            ctx.journal, ctx.allow_nonfinite = journal, spec.allow_nonfinite
            if d is not None:
                ctx.dist, ctx.shard = d, (d.rank, d.world)
            try:
                result = evaluate_stage(ctx, p, progress=progress)
            finally:
                if journal is not None:
                    journal.close()
            sw.lap("probe_s")
            manifest = publish(ctx, p, result, ws.dir, fit_record=fit_record, sw=sw)
        except StopRequested as exc:
            if stage == "probing":
                what = f"{exc}; the finished part is kept in {ws.dir}. Resume with: {resume_hint(spec, p.out_dir)}"
            else:
                what = f"stopped while {stage}, before any result; {resume_hint(spec, p.out_dir)} starts it again"
            raise StopRequested(what, exc.signum) from None
        ws.commit()
    result.extras["out_dir"] = p.out_dir
    result.extras["manifest"] = manifest
    return result


def _run_rank(spec: RunSpec, pm, d) -> ProbeResult:
    """A torchrun rank other than 0: build the same context, evaluate its share of the batches, write nothing."""
    p = plan(spec, pm, check_out=False)
    ctx = build_context(p, pm)
    _refuse_fit_under_torchrun(spec, ctx)
    ctx.allow_nonfinite, ctx.dist, ctx.shard = spec.allow_nonfinite, d, (d.rank, d.world)
    result = evaluate_stage(ctx, p)
    result.extras["rank"] = d.rank
    return result


def _refuse_fit_under_torchrun(spec: RunSpec, ctx: RunContext) -> None:
    if fit_needed(spec, ctx.adapter):
        raise UserFacingError(f"{ctx.adapter.spec} has no weights, and under torchrun a model is not fitted first; "
                              "pass --checkpoint (or fit it in one process), or --no-fit")


def _json_default(o: Any):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.device):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return repr(o)
