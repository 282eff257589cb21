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
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from . import registry
from .checkpoint import load_state_dict_checked, read_checkpoint, sha256_file
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
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        return [float(s) for s in items]
    except ValueError:
        raise UserFacingError(f"{what} must be comma-separated numbers, got {text!r}") from None


def parse_kv(pairs: Iterable[str], what: str) -> dict[str, Any]:
    """``["depth=20", "pretrained=False"]`` -> ``{"depth": 20, "pretrained": False}`` (Python literals, else strings)."""
    import ast

    out: dict[str, Any] = {}
    for item in pairs or ():
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserFacingError(f"malformed {what} {item!r}: use KEY=VALUE")
        try:
            out[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            out[key] = val
    return out


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserFacingError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserFacingError(f"unknown device {device!r}: use auto, cpu or cuda") from None


# ---------------------------------------------------------------- components
def get_decomposer(name: str, pm=None, **options: Any) -> Decomposer:
    cls = registry.get_class("decomposers", name, pm)
    try:
        return cls(**options)
    except TypeError as exc:
        raise UserFacingError(f"decomposer '{name}' rejected its options {options}: {exc}") from None


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
    parts = dec.decompose(x.contiguous(), dec.check_param(param))
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
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_classes: int | None = None,
    pm=None,
) -> ModelAdapter:
    """A :class:`ModelAdapter` from a spec (``timm:resnet18``...), an ``nn.Module`` or an adapter.

    ``info["has_weights"]`` says whether it carries weights (pretrained, checkpoint or TorchScript).
    """
    if isinstance(spec, ModelAdapter):
        adapter = spec
        if mean is not None:
            adapter.mean = tuple(mean)
        if std is not None:
            adapter.std = tuple(std)
        adapter.info.setdefault("has_weights", True)
        return adapter
    if isinstance(spec, torch.nn.Module):
        return ModelAdapter(spec, mean=mean, std=std, spec=type(spec).__name__, info={"has_weights": True, "source": "module"})
    if pretrained and checkpoint:
        raise UserFacingError("pass either --pretrained or --checkpoint, not both")
    source_name, target = parse_model_spec(spec, pm)
    entry = registry.get_entry("models", source_name, pm)
    source = entry.cls()
    built = source.build(target, pretrained=pretrained, num_classes=num_classes, model_args=dict(model_args or {}))
    info: dict[str, Any] = {"source": source_name, "provided_by": entry.plugin, "pretrained": pretrained, **built.info}
    has_weights = built.has_weights
    if checkpoint:
        obj, kind = read_checkpoint(checkpoint, trust=trust_checkpoint)
        sd = obj.state_dict() if kind == "torchscript" else obj
        sd = {k: v for k, v in sd.items()}
        loaded = load_state_dict_checked(built.module, sd, strict=strict, source=f"checkpoint {checkpoint}")
        info.update(
            checkpoint=str(Path(checkpoint).resolve()),
            checkpoint_sha256=sha256_file(checkpoint),
            checkpoint_kind=kind,
            checkpoint_strict=strict,
            checkpoint_missing=loaded["missing"],
            checkpoint_unexpected=loaded["unexpected"],
        )
        has_weights = True
    mean_src = "override" if mean is not None else (source_name if built.mean is not None else "none")
    info["normalisation_from"] = mean_src if std is None else "override"
    info["has_weights"] = has_weights
    info["input_size"] = list(built.input_size) if built.input_size else None
    return source.adapter_class(
        built.module,
        mean=mean if mean is not None else built.mean,
        std=std if std is not None else built.std,
        spec=spec,
        info=info,
    )


def open_data(
    spec: str | DataSource,
    *,
    root: str | os.PathLike | None = None,
    split: str = "test",
    image_size: int | None = None,
    seed: int = 0,
    pm=None,
) -> DataSource:
    """A :class:`DataSource` from a spec: ``synth10``, ``cifar10``, ``npz:PATH``, ``imagefolder:PATH``..."""
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
    opts: dict[str, Any] = {"seed": seed}  # every source takes **options; those that draw (synth10) use the seed
    if image_size:
        opts["image_size"] = image_size
    return cls(arg or None, root=Path(root) if root else None, split=split, **opts)


def _default_out(model: str, probe: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(model)).strip("-")[:40]
    base = Path("runs") / f"{stamp}-{slug}-{probe}"
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
    metrics: Sequence[str] = ("accuracy",)
    transforms: Sequence[str] = ()
    checkpoint: str | os.PathLike | None = None
    pretrained: bool = False
    trust_checkpoint: bool = False
    strict: bool = True
    model_args: Mapping[str, Any] | None = None
    mean: str | Sequence[float] | None = None
    std: str | Sequence[float] | None = None
    device: str | torch.device = "auto"
    batch_size: int = 128
    forward_batch: int | None = None
    precision: str = "fp32"
    channels_last: bool | None = None
    seed: int = 0
    fit_epochs: int | None = None
    fit_lr: float | None = None
    fit: bool | None = None
    out: str | os.PathLike | None = None
    command: str | None = None


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


def plan(spec: RunSpec, pm) -> Plan:
    """Check every name and number the user gave, before anything is loaded."""
    for what, value in (("--batch-size", spec.batch_size), ("--limit", spec.limit), ("--fit-epochs", spec.fit_epochs),
                        ("--forward-batch", spec.forward_batch)):
        if value is not None and value < 1:
            raise UserFacingError(f"{what} must be at least 1, got {value}")
    from .engine import check_precision

    dev = resolve_device(spec.device)
    check_precision(dev, spec.precision)
    probe_entry = registry.get_entry("probes", spec.probe, pm)
    probe_obj = probe_entry.cls(**dict(spec.probe_options or {}))
    dec = get_decomposer(spec.decomposer, pm, **dict(spec.decomposer_options or {}))
    params = dec.check_params(parse_params(spec.params))
    rescale_obj = registry.get_class("rescale", spec.rescale, pm)()
    metric_classes = [registry.get_class("metrics", m, pm) for m in spec.metrics]
    transforms = []
    for t in spec.transforms:
        tname, _, targs = t.partition(":")
        tcls = registry.get_class("transforms", tname, pm)
        transforms.append(tcls(**parse_kv([a for a in targs.split(",") if a], f"option of transform {tname}")))
    model_name = spec.model if isinstance(spec.model, str) else type(spec.model).__name__
    out_dir = Path(spec.out) if spec.out is not None else _default_out(model_name, spec.probe)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserFacingError(f"output folder {out_dir} already exists and is not empty; pass another --out or remove it")
    return Plan(spec, probe_entry, probe_obj, dec, params, rescale_obj, metric_classes, transforms, dev, out_dir)


def build_context(p: Plan, pm) -> RunContext:
    """Open the data, build the model (weights, normalisation), check that they fit together."""
    from .engine import check_task

    spec = p.spec
    data = open_data(spec.data, root=spec.data_root, split="test", image_size=spec.image_size, seed=spec.seed, pm=pm)
    adapter = build_model(
        spec.model,
        checkpoint=spec.checkpoint,
        pretrained=spec.pretrained,
        trust_checkpoint=spec.trust_checkpoint,
        strict=spec.strict,
        model_args=spec.model_args,
        mean=parse_floats(spec.mean, "--mean") if isinstance(spec.mean, str) else spec.mean,
        std=parse_floats(spec.std, "--std") if isinstance(spec.std, str) else spec.std,
        num_classes=data.num_classes,
        pm=pm,
    )
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
        metrics=p.metric_classes, device=p.device, batch_size=spec.batch_size, limit=spec.limit, seed=spec.seed,
        transform=",".join(t.label() for t in p.transforms), options=dict(p.probe.opts), pm=pm,
        precision=spec.precision, channels_last=spec.channels_last, forward_batch=spec.forward_batch,
    )


def fit_needed(spec: RunSpec, adapter: ModelAdapter) -> bool:
    return (not adapter.info.get("has_weights")) if spec.fit is None else bool(spec.fit)


def fit_stage(ctx: RunContext, spec: RunSpec, pm, *, progress=None, say=None) -> dict | None:
    """Fit a model that has no weights on the data's training split (the paper's vanilla recipe, Adam)."""
    if not fit_needed(spec, ctx.adapter):
        return None
    from .training import fit as _fit

    train = open_data(spec.data, root=spec.data_root, split="train", image_size=spec.image_size, seed=spec.seed, pm=pm)
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
    passes = max(1, len(p.probe.model_sweep(ctx)))
    ctx.progress = progress("probing", n * passes) if progress else None
    return p.probe.run(ctx)


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
        got = impl.function(context=ctx, result=result) if "result" in impl.argnames else impl.function(context=ctx)
        if got:
            if not isinstance(got, Mapping):
                name = pm.get_name(impl.plugin)
                raise PluginError(f"plugin {name!r}: manifest_entries must return a dict, got {type(got).__name__}")
            yield pm.get_name(impl.plugin), got


@contextlib.contextmanager
def staging(out_dir: Path):
    """A hidden sibling folder to write into; renamed to ``out_dir`` on success, removed on any failure."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked in plan()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(ctx: RunContext, p: Plan, result: ProbeResult, tmp: Path, *, fit_record, sw: "Stopwatch") -> dict:
    """Writers (``report_result``), the fitted weights, the manifest; into the staging folder."""
    ctx.out_dir = tmp
    if fit_record is not None:
        torch.save(ctx.adapter.module.state_dict(), tmp / "model.pt")
    ctx.pm.hook.report_result(result=result, context=ctx)
    sw.lap("write_s")
    timings = {**sw.stages, **result.extras.get("timings", {}), "total_s": sw.total()}
    manifest = manifest_for(ctx, p, result, fit_record=fit_record, timings=timings, outputs=[q.name for q in tmp.iterdir()])
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=_json_default) + "\n")
    return manifest


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
    mean, std, device, batch_size, precision, ...). With no weights (no ``checkpoint``/``pretrained``,
    and a spec that builds a fresh model) the model is first fitted on the data's training split
    (Adam, batch 100), or pass ``fit=False`` to probe it as is. ``progress(stage, total)`` may
    return a callback that receives counts of processed samples. Returns the
    :class:`ProbeResult`; ``result.extras["out_dir"]`` is where the files are.
    """
    from .plugins import default_plugin_manager

    names = {f.name for f in dataclasses.fields(RunSpec)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"run() got unexpected keyword argument(s) {', '.join(unknown)}; see freqprobe.runner.RunSpec")
    spec = RunSpec(model=model, **options)
    pm = pm or default_plugin_manager()
    sw = Stopwatch()
    torch.manual_seed(spec.seed)
    p = plan(spec, pm)
    ctx = build_context(p, pm)
    sw.lap("load_s")
    fit_record = fit_stage(ctx, spec, pm, progress=progress, say=announce)
    if fit_record is not None:
        sw.lap("fit_s")
    with staging(p.out_dir) as tmp:
        result = evaluate_stage(ctx, p, progress=progress)
        sw.lap("probe_s")
        manifest = publish(ctx, p, result, tmp, fit_record=fit_record, sw=sw)
    result.extras["out_dir"] = p.out_dir
    result.extras["manifest"] = manifest
    return result


def _json_default(o: Any):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.device):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return repr(o)
