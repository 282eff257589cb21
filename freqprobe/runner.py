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
from typing import Any, Callable, Mapping, Sequence

import torch

from . import guard as _guard
from .checkpoint import (check_checkpoint_trust, checkpoint_head_size, load_state_dict_checked, read_checkpoint, read_checkpoint_with_meta,
                         save_model, sha256_file)
from .errors import PluginError, StopRequested, UnknownNameError, UserFacingError
from .interfaces import DataSource, Decomposer, ModelAdapter, ProbeResult
from .options import API_ONLY, RunConfig, parse_component
from .options import parse_kv  # noqa: F401  (where it was: freqprobe.runner.parse_kv)
from .plugins import collect, collect_options, get_class, get_entry
from .probing import RunContext, Services
from .version import __version__

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
    cls = get_class("decomposers", name, pm)
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
    sources = collect("models", pm)
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
    (what the probe and the data ask for: a detection probe wraps ``file.py:callable`` as a
    detector), else classification.
    """
    mean, std = parse_mean_std(mean, std)
    if isinstance(spec, (ModelAdapter, torch.nn.Module)):
        return _adapter_of_object(spec, mean, std, task, pm)
    if pretrained and checkpoint:
        raise UserFacingError("pass either --pretrained or --checkpoint, not both")
    source_name, target = parse_model_spec(spec, pm)
    entry = get_entry("models", source_name, pm)
    source = _guard.call(entry.cls, "the constructor", entry.cls)
    args = dict(model_args or {})
    sd = kind = meta = None
    own_format = bool(checkpoint) and bool(getattr(source, "reads_checkpoints", False))
    if own_format:  # the source reads its own format: the core checks the file (and the trust rule), nothing more
        kind = check_checkpoint_trust(checkpoint, trust=trust_checkpoint)
    elif checkpoint:  # read (and refuse a bad file) before building anything
        # a freqprobe model.pt also knows the normalisation the model was trained with (meta)
        obj, kind, meta = read_checkpoint_with_meta(checkpoint, trust=trust_checkpoint)
        sd = dict((obj.state_dict() if kind == "torchscript" else obj).items())
    explicit_k = "num_classes" in args
    hint = None if (explicit_k or pretrained) else num_classes
    built = _guard.call(source, "build()", source.build, target, pretrained=pretrained, num_classes=hint, model_args=args)
    info: dict[str, Any] = {"source": source_name, "provided_by": entry.plugin, "pretrained": pretrained, **built.info}
    model_task = built.info.get("task") or (source.task if source.task != "classification" else None) or task or "classification"
    adapter_cls = source.adapter_class if source.adapter_class not in (None, ModelAdapter) else adapter_for(model_task, pm)
    has_weights = built.has_weights
    if own_format:
        got = _guard.call(source, "load_checkpoint()", source.load_checkpoint, built, str(checkpoint), strict=strict)
        info.update({"checkpoint_kind": kind, **dict(got or {}), "checkpoint": str(Path(checkpoint).resolve()),
                     "checkpoint_sha256": sha256_file(checkpoint), "checkpoint_strict": strict})
        has_weights = True
    if sd is not None:
        if built.info.get("plain_callable"):
            raise UserFacingError(f"--checkpoint given, but {spec} returned a plain callable (not a torch.nn.Module), "
                                  "which has no weights to load; load them inside your callable, or return a module")
        k = None if explicit_k or model_task != "classification" else checkpoint_head_size(built.module, sd)
        if k is not None:  # the checkpoint's head has another class count: build the model it was trained as
            built = _guard.call(source, "build()", source.build, target, pretrained=False, num_classes=k, model_args=args)
            info.update(built.info)
            log.info("sized the model's head from checkpoint %s: %d classes", checkpoint, k)
        info.update(_load_weights(built.module, sd, checkpoint, kind, strict))
        has_weights = True
    if meta is not None and "mean" in meta and mean is None:
        info["normalisation_from"] = "checkpoint"
        built.mean, built.std = meta.get("mean"), meta.get("std")  # None: trained on raw [0, 1] pixels
    else:
        info["normalisation_from"] = "override" if mean is not None else (source_name if built.mean is not None else "none")
    info["has_weights"] = has_weights
    info["input_size"] = list(built.input_size) if built.input_size else None
    return adapter_cls(built.module, mean=mean if mean is not None else built.mean, std=std if std is not None else built.std,
                       spec=spec, info=info)


def _adapter_of_object(obj: Any, mean, std, task: str | None, pm) -> ModelAdapter:
    """An adapter given as is (``mean``/``std`` override its normalisation), or an ``nn.Module`` wrapped in its task's adapter."""
    from .builtins.models import has_fixed_input_size, module_data_config

    if isinstance(obj, ModelAdapter):
        if mean is not None:
            obj.set_normalization(mean, std)
            obj.info["normalisation_from"] = "override"
        obj.info.setdefault("has_weights", True)
        return obj
    cfg = module_data_config(obj)
    info = {"has_weights": True, "source": "module", "input_size": cfg["input_size"],
            "fixed_input_size": has_fixed_input_size(obj),
            "normalisation_from": "override" if mean is not None else ("pretrained_cfg" if cfg["mean"] is not None else "none")}
    cls = adapter_for(task or "classification", pm)
    return cls(obj, mean=mean if mean is not None else cfg["mean"], std=std if std is not None else cfg["std"],
               spec=type(obj).__name__, info=info)


def _load_weights(module, sd: Mapping[str, Any], checkpoint, kind: str, strict: bool) -> dict[str, Any]:
    """Load a checkpoint's state dict into ``module``; what the adapter's info records about it."""
    loaded = load_state_dict_checked(module, sd, strict=strict, source=f"checkpoint {checkpoint}")
    if loaded["missing"] or loaded["unexpected"]:
        warnings.warn(_non_strict_summary(checkpoint, module, loaded), stacklevel=3)
    return {"checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": sha256_file(checkpoint),
            "checkpoint_kind": kind, "checkpoint_strict": strict, "checkpoint_missing": loaded["missing"],
            "checkpoint_unexpected": loaded["unexpected"]}


def adapter_for(task: str, pm=None) -> type[ModelAdapter]:
    """The adapter class registered for ``task`` (``classification``: the built-in ``classifier``)."""
    entries = collect("adapters", pm)
    for e in entries.values():
        if getattr(e.cls, "task", None) == task:
            return e.cls
    raise UserFacingError(f"no model adapter for {task} models is installed (a plugin provides one: is it installed and "
                          "switched on? see `freqprobe list adapters` and `freqprobe plugins --all`)")


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
    options: Mapping[str, Any] | None = None,
    pm=None,
) -> DataSource:
    """A :class:`DataSource` from a spec: ``synth10``, ``cifar10``, ``npz:PATH``, ``imagefolder:PATH``...

    ``image_size`` resizes sources that take it (``imagefolder:``; others warn that they ignore
    it); ``class_map`` (a JSON file ``{folder: index}``, a text file of folder names in index
    order, a dict, or ``"imagenet"``) gives ``imagefolder:`` class folders their label indices;
    ``options`` are more keywords for the source's constructor (the plugin options routed to it,
    ``add_option(..., dataset=NAME, key=...)``). A ``split`` the data does not have is refused.
    """
    check_image_size(image_size)
    if isinstance(spec, DataSource):
        return spec
    name, sep, arg = spec.partition(":")
    entries = collect("datasets", pm)
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
    data = cls(arg or None, root=Path(root) if root else None, split=split, **opts, **dict(options or {}))
    if not data.has_split(split):
        raise UserFacingError(f"{spec} has no {split} split; use --split test" if split != "test"
                              else f"{spec} has no test split")
    return data


def data_name(spec: Any) -> str | None:
    """The registered name a data spec (``coco:IMAGES:ANN``) or a :class:`DataSource` is of."""
    if isinstance(spec, DataSource):
        return getattr(spec, "name", None)
    return str(spec).partition(":")[0] if spec is not None else None


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
    """The versions a manifest records (freqprobe, torch, python, timm, torchvision, numpy)."""
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


@dataclasses.dataclass(frozen=True)
class Plan:
    """The checked, cheap parts of a run (no data or model loaded yet), built from its :class:`RunConfig`."""

    config: RunConfig
    probe_entry: Any
    probe: Any
    decomposer: Decomposer
    params: tuple
    rescale: Any
    metric_classes: tuple
    transforms: tuple
    device: Any
    out_dir: Path


def run_config(pm, values: Mapping[str, Any]) -> RunConfig:
    """The :class:`RunConfig` of ``values`` (Python keywords or parsed command-line values) over the declared options.

    Every key must be a declared option of ``run`` (the core's or a plugin's) or ``command``; the
    rest of the options take their defaults.
    """
    opts = collect_options(pm, "run")
    unknown = sorted(set(values) - set(opts) - set(API_ONLY))
    if unknown:
        raise TypeError(f"run() got unexpected keyword argument(s) {', '.join(unknown)}; "
                        f"the options are {', '.join(sorted(opts))}")
    return RunConfig({**API_ONLY, **opts.defaults(), **values}, opts)


def _check_numbers(c: RunConfig) -> None:
    for what, value in (("--batch-size", c.batch_size), ("--limit", c.limit), ("--fit-epochs", c.fit_epochs),
                        ("--forward-batch", c.forward_batch)):
        if value is not None and value < 1:
            raise UserFacingError(f"{what} must be at least 1, got {value}")
    check_image_size(c.image_size)
    check_seed(c.seed)
    if c.fit_lr is not None and not (isinstance(c.fit_lr, (int, float)) and math.isfinite(c.fit_lr) and c.fit_lr > 0):
        raise UserFacingError(f"--fit-lr must be a positive number (e.g. 1e-3), got {c.fit_lr!r}")
    parse_mean_std(c.mean, c.std, warn=False)  # both or neither, finite, std > 0: refused before anything is loaded


def _check_metrics(c: RunConfig, probe_entry, pm) -> tuple:
    names = list(c.metrics or getattr(probe_entry.cls, "default_metrics", None) or ("accuracy",))
    classes = tuple(get_class("metrics", m, pm) for m in names)
    task = (getattr(probe_entry.cls, "requires", None) or {}).get("task")
    for mname, mcls in zip(names, classes):
        mtask = getattr(mcls, "task", None)
        if task and mtask and mtask != task:
            fitting = [n for n, e in collect("metrics", pm).items() if getattr(e.cls, "task", None) == task]
            raise UserFacingError(f"metric '{mname}' is a {mtask} metric but probe '{c.probe}' evaluates {task}; "
                                  f"use {' or '.join(fitting) or 'a ' + task + ' metric'}")
    return classes


def plan(config: RunConfig, pm, *, check_out: bool = True) -> Plan:
    """Check every name and number the user gave, before anything is loaded (``check_out``: the output folder too)."""
    from .engine import check_precision

    c = config
    _check_numbers(c)
    dev = resolve_device(c.device)
    check_precision(dev, c.precision)
    probe_entry = get_entry("probes", c.probe, pm)
    c.check_applicable(probe=c.probe, decomposer=c.decomposer, dataset=data_name(c.data))
    c.check_values(pm)
    popts = {**dict(c.probe_options or {}), **c.routed("probe", c.probe)}
    probe_obj = _guard.call(probe_entry.cls, "the constructor", probe_entry.cls, **popts)
    dopts = {**dict(c.decomposer_options or {}), **c.routed("decomposer", c.decomposer)}
    dec = get_decomposer(c.decomposer, pm, **dopts)
    # the probe's default for this decomposer (a detection probe's r = 128), else the decomposer's, checked by the probe
    params = tuple(_guard.call(probe_entry.cls, "check_params()", probe_obj.check_params, dec, parse_params(c.params)))
    rescale_obj = get_class("rescale", c.rescale, pm)()
    transforms = []
    for t in c.transforms or ():
        tname, topts = parse_component(t, "transform")
        transforms.append(get_class("transforms", tname, pm)(**topts))
    model_name = c.model if isinstance(c.model, str) else type(c.model).__name__
    if c.resume and c.out is None:
        raise UserFacingError("--resume needs the --out folder of the interrupted run")
    out_dir = Path(c.out) if c.out is not None else _default_out(model_name, c.probe)
    if check_out:
        check_out_dir(out_dir, resume=c.resume)
    return Plan(c, probe_entry, probe_obj, dec, params, rescale_obj, _check_metrics(c, probe_entry, pm), tuple(transforms),
                dev, out_dir)


def build_context(p: Plan, pm, services: Services) -> RunContext:
    """Open the data, build the model (weights, normalisation), check that they fit together."""
    from .engine import check_task

    c = p.config
    data = open_data(c.data, root=c.data_root, split="test", image_size=c.image_size, seed=c.seed, class_map=c.class_map,
                     options=c.routed("dataset", data_name(c.data)), pm=pm)
    task = p.probe.requires.get("task") or getattr(data, "task", "classification")
    adapter = build_model(
        c.model, checkpoint=c.checkpoint, pretrained=c.pretrained, trust_checkpoint=c.trust_checkpoint, strict=c.strict,
        model_args=c.model_args, mean=c.mean, std=c.std,
        num_classes=data.num_classes if task == "classification" else None,  # sizes only the head of a model without weights
        task=task, pm=pm,
    )
    warn_if_unnormalised(adapter)
    if adapter.task != "classification" and not adapter.info.get("has_weights"):
        warnings.warn(f"{adapter.spec} has random weights (no --pretrained or --checkpoint) and is probed as it is "
                      "(a detector is never fitted): its scores test the pipeline, not the model", stacklevel=2)
    check_task(p.probe.requires, adapter, data, c.probe)
    adapter.to(p.device)
    if fit_needed(c, adapter) and not data.has_split("train"):
        name = c.data if isinstance(c.data, str) else data.name
        raise UserFacingError(
            f"{adapter.spec} has no weights and {name} has no training split to fit it on; pass --checkpoint PATH (or --pretrained)"
        )
    adapter.check_data(data, p.device)
    config = c.replace(batch_size=c.batch_size or getattr(data, "default_batch_size", None) or 128)
    return RunContext(adapter=adapter, data=data, decomposer=p.decomposer, params=p.params, rescale=p.rescale,
                      metrics=p.metric_classes, device=p.device, config=config, services=services,
                      transform=",".join(t.label() for t in p.transforms), options=dict(p.probe.opts))


def fit_needed(config: RunConfig, adapter: ModelAdapter) -> bool:
    if adapter.task != "classification":  # a detector is never fitted: it is probed as given
        return False
    return (not adapter.info.get("has_weights")) if config.fit is None else bool(config.fit)


def fit_stage(ctx: RunContext, pm, *, progress=None, say=None) -> dict | None:
    """Fit a model that has no weights on the data's training split (the paper's vanilla recipe, Adam)."""
    c = ctx.config
    if not fit_needed(c, ctx.adapter):
        return None
    from .training import fit as _fit

    train = open_data(c.data, root=c.data_root, split="train", image_size=c.image_size, seed=c.seed, class_map=c.class_map,
                     options=c.routed("dataset", data_name(c.data)), pm=pm)
    if hasattr(train, "use_model_classes") and ctx.adapter.info.get("num_classes"):
        train.use_model_classes(int(ctx.adapter.info["num_classes"]))  # the same label mapping as the test split
    epochs = c.fit_epochs or train.default_fit_epochs
    lr = c.fit_lr or train.default_fit_lr
    say = say or (lambda msg: log.info(msg))
    say(
        f"No weights given (--checkpoint/--pretrained): fitting {ctx.adapter.spec} on {train.name} train split "
        f"({len(train)} images, {epochs} epoch{'s' if epochs != 1 else ''}, Adam lr {lr:g}, batch 100) before probing."
    )
    cb = progress("fitting", len(train) * epochs) if progress else None
    return _fit(
        ctx.adapter, train, epochs=epochs, lr=lr, batch_size=100, seed=c.seed, device=ctx.device, progress=cb, workers=c.workers,
        on_epoch=lambda e, r: say(f"  epoch {e}/{epochs}: loss {r['loss']:.3f}, train accuracy {r['train_accuracy']:.3f}"),
    )


def evaluate_stage(ctx: RunContext, p: Plan, *, progress=None) -> tuple[RunContext, ProbeResult]:
    """Apply the model transforms, then run the probe (its declaration over the evaluation loop)."""
    adapter = ctx.adapter
    for t in p.transforms:
        adapter = t.apply(adapter)
    ctx = ctx.replace(adapter=adapter)
    n = len(ctx.data) if ctx.limit is None else min(ctx.limit, len(ctx.data))
    passes = max(1, len(_guard.call(p.probe, "model_sweep()", p.probe.model_sweep, ctx)))
    if progress:
        ctx = ctx.replace(progress=progress("probing", n * passes))
    return ctx, _guard.call(p.probe, "run()", p.probe.run, ctx)


def manifest_for(ctx: RunContext, p: Plan, result: ProbeResult, *, fit_record, timings: Mapping[str, float],
                 outputs: Sequence[str], skipped_writers: Sequence[Mapping[str, Any]] = ()) -> dict:
    """The run's manifest: the core's sections, then what plugins add through ``manifest_entries``.

    ``provenance`` names the plugin and distribution of every registered class the run used;
    ``skipped_writers`` the third-party output hooks that failed (``report_result`` writers from
    ``skipped_writers``, and ``manifest_entries`` hooks, whose sections are left out).
    """
    c, data = p.config, ctx.data
    n_eval = len(data) if ctx.limit is None else min(ctx.limit, len(data))
    skipped = [dict(s) for s in skipped_writers]
    manifest = {
        "versions": versions(),
        "command": c.command or " ".join(sys.argv),
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "seed": c.seed,
        "device": str(ctx.device),
        "precision": ctx.precision,
        "probe": {"name": c.probe, "provided_by": p.probe_entry.plugin, "options": p.probe.opts,
                  **({"plot_metrics": list(p.probe.plot_metrics)} if getattr(p.probe, "plot_metrics", ()) else {})},
        "model": {**ctx.adapter.describe(), "fitted": fit_record},
        "data": {**data.describe(), "spec": c.data if isinstance(c.data, str) else data.name, "n_evaluated": n_eval,
                 "limit": ctx.limit, "num_classes": data.num_classes,
                 "class_names": list(data.class_names) if data.class_names else None},
        "decomposer": {"name": p.decomposer.name, "options": p.decomposer.options(), "param_name": p.decomposer.param_name,
                       "params": list(p.params), "components": list(p.decomposer.components)},
        "rescale": {"policy": p.rescale.name, "applies_to_original": p.rescale.applies_to_original},
        "metrics": [m.name for m in p.metric_classes],
        "transform": ctx.transform,
        "batch_size": ctx.batch_size,
        "plugin_options": c.plugin_values(),
        "engine": result.extras.get("engine"),
        "variant_sources": result.extras.get("sources"),
        "provenance": provenance_of(ctx, p, result),
        "skipped_writers": skipped,  # filled in below too: manifest_entries hooks that failed
        "timings": dict(timings),
        "outputs": sorted(outputs) + ["manifest.json"],
    }
    manifest.update(_plugin_entries(ctx.pm, ctx, result, set(manifest), skipped))
    return manifest


def provenance_of(ctx: RunContext, p: Plan, result: ProbeResult) -> list[dict]:
    """Who provided each registered class the run used: probe, decomposer, rescale policy, metrics, model source and
    adapter, data source, transforms, attacks (named in the configuration or in the variants' ``attack`` column)."""
    from .registry import provenance

    pm, a = ctx.pm, ctx.adapter
    used: list[tuple[str, Any, Any]] = [
        ("probes", p.probe_entry.cls, p.probe_entry.name), ("decomposers", p.decomposer, p.decomposer.name),
        ("rescale", p.rescale, p.rescale.name), *(("metrics", m, m.name) for m in p.metric_classes),
    ]
    source = a.info.get("source")  # a model given as an object (not a spec) has no registered source
    if isinstance(source, str) and source in collect("models", pm):
        used.append(("models", None, source))
    used += [("adapters", a, getattr(a, "name", None)), ("datasets", ctx.data, getattr(ctx.data, "name", None)),
             *(("transforms", t, t.name) for t in p.transforms),
             *(("attacks", None, n) for n in _attack_names(p.config, result) if n in collect("attacks", pm))]
    out: list[dict] = []
    for kind, obj, name in used:
        rec = provenance(pm, kind, obj, name)
        if rec not in out:
            out.append(rec)
    return out


def _attack_names(config: RunConfig, result: ProbeResult) -> list[str]:
    """Attack names a run used: its ``attacks`` option (``NAME[:K=V,...]``), else the variants' ``attack`` column."""
    given = config.get("attacks") or ()
    specs = [given] if isinstance(given, str) else list(given)
    specs += [dict(v.extra).get("attack") for v in result.variants or () if isinstance(getattr(v, "extra", None), tuple)]
    names: list[str] = []
    for spec in specs:
        name = spec.partition(":")[0].strip() if isinstance(spec, str) else None
        if name and name not in names:
            names.append(name)
    return names


def _skip_writer(pm, plugin: str, hook: str, error: str, removed: Sequence[str] = ()) -> dict:
    """Record (and warn about) a third-party output hook that failed and was skipped."""
    from .errors import PluginWarning
    from .manager import disable_hint
    from .registry import distribution

    dist = distribution(pm, plugin)
    gone = f"; its unfinished files were removed ({', '.join(removed)})" if removed else ""
    warnings.warn(f"plugin {plugin!r} ({dist}) failed in {hook}(): {error}; its output is skipped, the run's own files "
                  f"stand{gone} (switch it off with {disable_hint(plugin)})", PluginWarning, stacklevel=3)
    return {"plugin": plugin, "distribution": dist, "hook": hook, "error": error, **({"removed": list(removed)} if removed else {})}


def _plugin_entries(pm, ctx, result, core: set[str], skipped: list) -> dict[str, Any]:
    """The sections plugins add (``manifest_entries``), each hook on its own.

    A third-party hook that raises, returns something other than a dict, or a section the core
    (or an earlier plugin) writes, or one that is not JSON, loses that section (or all, when it
    raised): recorded in ``skipped`` and warned about; a built-in's is a bug and raises.
    """
    from .manager import contained, failure_line, is_builtin

    sections: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for impl in reversed(pm.hook.manifest_entries.get_hookimpls()):
        name = pm.get_name(impl.plugin)
        kwargs = {"context": ctx, "result": result}
        kwargs = {k: v for k, v in kwargs.items() if k in impl.argnames}
        if is_builtin(name):
            got = impl.function(**kwargs)
        else:
            with contained(passthrough=(StopRequested,)) as call:
                got = impl.function(**kwargs)
            if call.error is not None:
                skipped.append(_skip_writer(pm, name, "manifest_entries", failure_line(call.error)))
                continue
        if not got:
            continue
        if not isinstance(got, Mapping):
            why = f"returned a {type(got).__name__}, not a dict of sections"
            if is_builtin(name):
                raise PluginError(f"freqprobe bug: built-in {name}: manifest_entries() {why}")
            skipped.append(_skip_writer(pm, name, "manifest_entries", why))
            continue
        for key, value in got.items():
            why = _section_problem(key, value, core, owner)
            if why is None:
                sections[key], owner[key] = value, name
            elif is_builtin(name):
                raise PluginError(f"freqprobe bug: built-in {name}: manifest_entries() {why}")
            else:
                skipped.append(_skip_writer(pm, name, "manifest_entries", f"{why}; the section is skipped"))
    return sections


def _section_problem(key: Any, value: Any, core: set[str], owner: Mapping[str, str]) -> str | None:
    """Why a plugin's manifest section cannot be written, or None."""
    if not isinstance(key, str) or not key:
        return f"returned a section named {key!r}; section names are non-empty strings"
    if key in core:
        return f"returned section {key!r}, which the core writes; use a name of its own"
    if key in owner:
        return f"returned section {key!r}, which plugin {owner[key]!r} already wrote"
    try:
        json.dumps(value, default=_json_default)
    except (TypeError, ValueError, RecursionError) as exc:
        return f"returned section {key!r}, which cannot be written as JSON ({type(exc).__name__}: {exc})"
    return None


def check_out_dir(out_dir: Path, *, resume: bool = False, flag: str = "--out") -> None:
    """An output folder must be new or empty (a file, or a folder with results, is refused)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserFacingError(f"{flag} {out_dir} is an existing file; pass the path of a new folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if resume and (out_dir / "manifest.json").is_file():
            raise UserFacingError(f"{out_dir} already holds a finished run (manifest.json); nothing to resume")
        raise UserFacingError(f"output folder {out_dir} already exists and is not empty; pass another {flag} or remove it")


def fingerprint(config: RunConfig, ctx: RunContext) -> dict[str, Any]:
    """What decides a run's results: its options (not where it writes) and what they resolved to.

    A resumed run must match the interrupted one in all of these.
    """
    from .journal import module_digest

    out: dict[str, Any] = {}
    for name, v in config.items():
        if name in ("out", "command", "resume", "batch_size_resolved", "workers"):  # workers: the same results for every N
            continue
        if isinstance(v, ModelAdapter):
            v = f"{type(v).__name__}:{module_digest(v.module)}"
        elif _is_module(v):
            v = f"{type(v).__name__}:{module_digest(v)}"
        elif isinstance(v, DataSource):
            v = f"{type(v).__name__}:{len(v)}"
        out[name] = v
    out["resolved_device"] = str(ctx.device)
    out["checkpoint_sha256"] = ctx.adapter.info.get("checkpoint_sha256")
    out["data_described"] = ctx.data.describe()
    return json.loads(json.dumps(out, default=str))


def _is_module(v: Any) -> bool:
    import torch

    return isinstance(v, torch.nn.Module)


def resume_hint(config: RunConfig, out_dir: Path) -> str:
    """How to continue an interrupted run: its own command with --out and --resume."""
    import shlex

    if config.command:
        cmd = config.command
        if " --out " not in f" {cmd} " and " --out=" not in cmd:
            cmd += f" --out {shlex.quote(str(out_dir))}"
        return cmd if " --resume" in cmd else cmd + " --resume"
    return f"freqprobe.run(..., out={str(out_dir)!r}, resume=True) with the same options"


def publish(ctx: RunContext, p: Plan, result: ProbeResult, tmp: Path, *, fit_record, sw: "Stopwatch") -> dict:
    """Writers (``report_result``), the evaluators' files, the fitted weights, the manifest; into the run's unfinished folder."""
    ctx = ctx.replace(out_dir=tmp)
    if fit_record is not None and not (tmp / "model.pt").exists():
        _save_fitted(ctx, tmp / "model.pt")
    skipped = call_writers(ctx, result, tmp)
    for ev in result.evaluators:
        _guard.call(getattr(ev, "observer", ev), "write()", ev.write, tmp)
    sw.lap("write_s")
    timings = {**sw.stages, **result.extras.get("timings", {}), "total_s": sw.total()}
    from .journal import STATE_FILES

    outputs = [q.name for q in tmp.iterdir() if q.name not in STATE_FILES]
    manifest = manifest_for(ctx, p, result, fit_record=fit_record, timings=timings, outputs=outputs, skipped_writers=skipped)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=_json_default) + "\n")
    return manifest


def call_writers(ctx: RunContext, result: ProbeResult, out_dir: Path) -> list[dict]:
    """The ``report_result`` writers, each on its own (last registered first, as pluggy calls them).

    A third-party writer that fails (an exception, ``sys.exit``; not a real Ctrl-C, not a stop
    request) is skipped: the files it had created in ``out_dir`` are removed, a PluginWarning
    names it, and its record is returned for the manifest's ``skipped_writers``. A built-in's
    failure is a bug and raises. Hooks with wrappers go through pluggy as one call.
    """
    from .manager import contained, failure_line, is_builtin

    pm = ctx.pm
    impls = pm.hook.report_result.get_hookimpls()
    if any(getattr(i, "hookwrapper", False) or getattr(i, "wrapper", False) for i in impls):
        _guard.call_hook(pm, "report_result", result=result, context=ctx)
        return []
    skipped = []
    for impl in reversed(impls):
        name = pm.get_name(impl.plugin)
        kwargs = {k: v for k, v in {"result": result, "context": ctx}.items() if k in impl.argnames}
        if is_builtin(name):
            impl.function(**kwargs)
            continue
        before = {q.name for q in out_dir.iterdir()}
        with contained(passthrough=(StopRequested,)) as call:
            impl.function(**kwargs)
        if call.error is not None:
            removed = sorted(q.name for q in out_dir.iterdir() if q.name not in before)
            for q in removed:
                _remove(out_dir / q)
            skipped.append(_skip_writer(pm, name, "report_result", failure_line(call.error), removed))
    return skipped


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _save_fitted(ctx: RunContext, path: Path) -> None:
    """A fitted model's ``model.pt``: its weights and the normalisation it was fitted with."""
    a = ctx.adapter
    save_model(path, a.module, mean=a.mean, std=a.std, model=a.spec if isinstance(a.spec, str) else None)


def _fit_or_restore(ctx: RunContext, pm, ws, *, progress, say) -> dict | None:
    """Fit (and keep the fitted weights in the run's folder at once), or reuse those of the interrupted run."""
    if not fit_needed(ctx.config, ctx.adapter):
        return None
    saved = ws.dir / "model.pt"
    record = ws.journal.get("fit")
    if ws.resumed and saved.is_file() and record is not None:
        obj, _ = read_checkpoint(saved)
        ctx.adapter.module.load_state_dict(obj)
        ctx.adapter.to(ctx.device)
        say(f"resuming: using the model fitted before the stop ({saved.name}); not fitting again")
        return record
    record = fit_stage(ctx, pm, progress=progress, say=say)
    _save_fitted(ctx, saved)
    ws.note("fit", record)
    return record


def run(
    model: Any,
    *,
    pm=None,
    progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
    announce: Callable[[str], None] | None = None,
    **options: Any,
) -> ProbeResult:
    """Run a probe on ``model``; write results to ``out`` (None: a new dated folder under ``runs/``).

    ``options`` are the declared options of ``freqprobe run`` by their Python names (probe, data,
    decomposer, params, checkpoint, mean, std, device, batch_size, precision, resume, ...; a
    plugin's too, e.g. ``attacks``/``eps`` of the attacks plugin; ``freqprobe.options`` lists the
    core's), and ``command`` (what the manifest records). With no weights (no ``checkpoint``/
    ``pretrained``, and a spec that builds a fresh model) the model is first fitted on the data's
    training split (Adam, batch 100), or pass ``fit=False`` to probe it as is.
    ``progress(stage, total)`` may return a callback that receives counts of processed samples.
    Returns the :class:`ProbeResult`; ``result.extras["out_dir"]`` is where the files are.

    The run works in ``.NAME.partial`` beside ``out`` (per-sample rows streamed, checkpoints) and
    renames it to ``out`` when done; ``resume=True`` continues an interrupted run from its last
    checkpoint (:mod:`freqprobe.journal`).
    """
    from . import distributed
    from .plugins import default_plugin_manager

    pm = pm or default_plugin_manager()
    if options.get("models") or isinstance(model, (list, tuple)):
        raise UserFacingError("several models are a study: use freqprobe.run_study(entries, out=...) "
                              "(the command line: repeat --model, or --models FILE)")
    if model is None:
        raise UserFacingError("pass --model SPEC (several: repeat it, or --models FILE)")
    config = run_config(pm, {"model": model, **options})
    say = announce or (lambda msg: log.warning(msg))
    check_seed(config.seed)
    import torch

    torch.manual_seed(config.seed)
    d = None
    if distributed.from_env() is not None:
        if config.resume:
            raise UserFacingError("--resume is not available under torchrun; run the interrupted job again from the start")
        d, device = distributed.setup(str(config.device))
        config = config.replace(device=device)
        if not d.is_main:  # the other ranks evaluate their share and write nothing
            return _run_rank(config, pm, d)
    return _run_main(config, pm, d, progress=progress, say=say)


def _run_main(config: RunConfig, pm, d, *, progress, say) -> ProbeResult:
    """The process that writes: plan, build, fit, evaluate, publish, inside the run's workspace."""
    from .journal import RunJournal, workspace

    sw = Stopwatch()
    p = plan(config, pm)
    stage = "loading"
    with workspace(p.out_dir, kind="run", resume=config.resume, announce=say) as ws:
        try:
            ctx = build_context(p, pm, Services(pm=pm, dist=d, say=say))
            if d is not None:
                _refuse_fit_under_torchrun(ctx)
            ws.bind(fingerprint(config, ctx), command=config.command)
            sw.lap("load_s")
            stage = "fitting"
            fit_record = _fit_or_restore(ctx, pm, ws, progress=progress, say=say)
            if fit_record is not None:
                sw.lap("fit_s")
            stage = "probing"
            journal = RunJournal(ws) if d is None else None  # under torchrun: no streaming or checkpoints
            try:
                ctx, result = evaluate_stage(ctx.replace(journal=journal), p, progress=progress)
            finally:
                if journal is not None:
                    journal.close()
            sw.lap("probe_s")
            manifest = publish(ctx, p, result, ws.dir, fit_record=fit_record, sw=sw)
        except StopRequested as exc:
            if stage == "probing":
                what = f"{exc}; the finished part is kept in {ws.dir}. Resume with: {resume_hint(config, p.out_dir)}"
            else:
                what = f"stopped while {stage}, before any result; {resume_hint(config, p.out_dir)} starts it again"
            raise StopRequested(what, exc.signum) from None
        ws.commit()
    result.extras["out_dir"] = p.out_dir
    result.extras["manifest"] = manifest
    return result


#: the file that marks a study's folder and lists its runs
STUDY_FILE = "study.json"


def read_models_file(path: str | os.PathLike) -> list[tuple[str, str | None]]:
    """``SPEC [CHECKPOINT]`` per line of a study's models file (blank lines and ``#`` comments skipped); a relative
    checkpoint path is relative to the file's folder."""
    p = Path(path)
    if not p.is_file():
        raise UserFacingError(f"--models {p} not found; pass a text file with one model spec per line")
    out = []
    for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 2:
            raise UserFacingError(f"--models {p}, line {i}: {line.strip()!r} has {len(words)} fields; write SPEC [CHECKPOINT]")
        ckpt = None
        if len(words) == 2:
            c = Path(words[1]).expanduser()
            ckpt = str(c if c.is_absolute() else p.parent / c)
        out.append((words[0], ckpt))
    if not out:
        raise UserFacingError(f"--models {p} lists no model; write one SPEC [CHECKPOINT] per line")
    return out


def study_folder_names(entries: Sequence[tuple[str, str | None]]) -> list[str]:
    """One folder name per entry: the spec (and the checkpoint's name) as a file name; an entry listed twice is refused."""
    names = []
    for spec, ckpt in entries:
        head, sep, rest = spec.partition(":")  # a file's path or a config's folder: only its last part names the run
        short = (Path(head).name if ("/" in head or os.sep in head) else head) + sep + (Path(rest).name if "/" in rest else rest)
        name = slug(short, 60) + (f"--{slug(Path(ckpt).stem, 40)}" if ckpt else "")
        if name in names:
            raise UserFacingError(f"{spec}{' ' + ckpt if ckpt else ''} is listed twice in the study; list each model once")
        names.append(name)
    return names


def run_study(entries: Sequence[str | tuple[str, str | None]], *, out: str | os.PathLike | None, resume: bool = False,
              pm=None, progress=None, announce: Callable[[str], None] | None = None, **options: Any) -> list[ProbeResult]:
    """A study: :func:`run` once per model of ``entries`` (specs, or ``(spec, checkpoint)`` pairs), each into its own run
    folder under ``out`` (resumable and locked like any run). With ``resume``, finished runs are skipped and an
    interrupted one continues; without, a study folder that already holds any of the runs is refused before anything runs.
    ``freqprobe report OUT`` shows the runs and a comparison table."""
    from . import distributed
    from .journal import partial_dir

    pairs = [(e, None) if isinstance(e, str) else (str(e[0]), None if e[1] is None else str(e[1])) for e in entries]
    if not pairs:
        raise UserFacingError("a study needs at least one model")
    if out is None:
        raise UserFacingError("several models: pass --out FOLDER (one run folder per model is written under it)")
    if distributed.from_env() is not None:
        raise UserFacingError("a study of several models does not run under torchrun; start one torchrun job per model")
    if options.get("checkpoint") and any(c for _, c in pairs):
        raise UserFacingError("give checkpoints either with --checkpoint (the same file for every model) or per model in "
                              "--models FILE, not both")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise UserFacingError(f"--out {root} is an existing file; pass the path of a new folder")
    if not root.parent.exists():
        raise UserFacingError(f"folder {root.parent} does not exist; create it or choose another --out")
    subs = [root / n for n in study_folder_names(pairs)]
    if not resume:
        taken = [s for s in subs if s.exists() or partial_dir(s).exists()]
        if taken:
            raise UserFacingError(f"{taken[0]} already exists (a run of this study); pass --resume to finish the study, "
                                  "or choose another --out")
    say = announce or (lambda msg: log.warning(msg))
    root.mkdir(exist_ok=True)
    marker = {"kind": "freqprobe study", "command": options.get("command"),
              "runs": [{"model": spec, "checkpoint": ckpt, "folder": sub.name} for (spec, ckpt), sub in zip(pairs, subs)]}
    tmp = root / f".{STUDY_FILE}.tmp"
    tmp.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, root / STUDY_FILE)  # what marks the folder as a study (freqprobe report)
    results = []
    for k, ((spec, ckpt), sub) in enumerate(zip(pairs, subs), 1):
        if resume and (sub / "manifest.json").is_file():
            say(f"study {k}/{len(pairs)}: {spec} finished before ({sub}); skipped")
            continue
        say(f"study {k}/{len(pairs)}: {spec}{' ' + ckpt if ckpt else ''} -> {sub}")
        kw = dict(options, checkpoint=ckpt or options.get("checkpoint"))
        results.append(run(spec, out=sub, resume=resume, pm=pm, progress=progress, announce=announce, **kw))
    return results


def _run_rank(config: RunConfig, pm, d) -> ProbeResult:
    """A torchrun rank other than 0: build the same context, evaluate its share of the batches, write nothing."""
    p = plan(config, pm, check_out=False)
    ctx = build_context(p, pm, Services(pm=pm, dist=d))
    _refuse_fit_under_torchrun(ctx)
    _, result = evaluate_stage(ctx, p)
    result.extras["rank"] = d.rank
    return result


def _refuse_fit_under_torchrun(ctx: RunContext) -> None:
    if fit_needed(ctx.config, ctx.adapter):
        raise UserFacingError(f"{ctx.adapter.spec} has no weights, and under torchrun a model is not fitted first; "
                              "pass --checkpoint (or fit it in one process), or --no-fit")


def _json_default(o: Any):
    if isinstance(o, Path):
        return str(o)
    if type(o).__module__.startswith("torch") and type(o).__name__ == "device":
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return repr(o)
